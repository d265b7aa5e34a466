"""The module's GUI-free logic: a cohort of volume nodes, and the engine run on it.

Usable from the panel, the Python console and batch scripts::

    logic = slicer.util.getModuleLogic("RADASegment")
    logic.addVolume(volume)
    segmentation = logic.annotate(volume, "left atrium")     # paint one slice per plane
    logic.propagate([volume], wait=True)                      # reviewable pseudo-labels
    model = logic.train(wait=True)                            # a model bundle folder
    result = logic.segment(otherVolume, model, wait=True)     # a segmentation node

Every step turns nodes into files (written with the volume's own header), runs the RADALib
engine in its own process (``python -m RADALib.cli ... --events json``) and turns the result
files back into nodes. No algorithm lives here. The user's segmentations are only read.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from RADALib.annotation import (
    SparseAnnotation,
    check_structures,
    missing_structures,
    slice_structures,
)
from RADALib.errors import InputError, RADAError
from RADALib.model_store import default_models_dir, list_bundles, read_manifest
from RADALib.paths import cache_root
from RADALib.terminology import class_entry

from . import nodes
from .parameters import RADASegmentSettings

log = logging.getLogger(__name__)

PLANES = ("sagittal", "coronal", "axial")
EventCallback = Callable[[dict], None]
FinishedCallback = Callable[["EngineJob"], None]
ProcessFactory = Callable[[Sequence[str], dict], Any]


class RADASegmentError(RADAError):
    """A problem the user can fix (no volume, a plane not painted, ...); one line."""


@dataclass
class CohortEntry:
    """One volume of the cohort and what has been done with it.

    ``segmentIDs``: the painted segment of each structure (class number -> segment ID, in the
    cohort's structure order); ``segmentID`` is the first structure's. ``planes``: the painted
    slices of each plane, whichever structure is painted on them. ``missingStructures``: per
    painted plane, the structures its slices miss (allowed while another plane carries them);
    ``unpaintedStructures``: the structures on no painted slice; ``structureProblem``: the
    engine's one-line refusal for such a structure, "" when there is none.
    """

    volumeNodeID: str
    segmentationNodeID: str | None = None
    segmentIDs: dict[int, str] = field(default_factory=dict)
    planes: dict[str, list[int]] = field(default_factory=lambda: {p: [] for p in PLANES})
    pseudoLabelNodeID: str | None = None
    predictionNodeID: str | None = None
    pseudoLabelStatus: str = ""
    predictionStatus: str = ""
    missingStructures: dict[str, list[str]] = field(default_factory=dict)
    unpaintedStructures: list[str] = field(default_factory=list)
    structureProblem: str = ""

    @property
    def segmentID(self) -> str | None:
        """The first structure's painted segment (the one the Segment Editor opens on)."""
        return self.segmentIDs.get(1)

    @segmentID.setter
    def segmentID(self, segmentId: str | None) -> None:
        if segmentId:
            self.segmentIDs[1] = segmentId
        else:
            self.segmentIDs.pop(1, None)

    @property
    def annotated(self) -> bool:
        """True when the sagittal, coronal and axial planes each carry a painted slice."""
        return all(self.planes.get(p) for p in PLANES)

    @property
    def missingPlanes(self) -> list[str]:
        return [p for p in PLANES if not self.planes.get(p)]


@dataclass
class ModelInfo:
    """A trained model bundle in the models folder, as its manifest describes it."""

    name: str
    path: str
    classes: list[str]
    pretrained: bool
    created: str
    largestComponent: list[str] | None = None
    """Classes whose largest region alone the model keeps by default (None: an older model that does not say)."""


def _default_process_factory(args: Sequence[str], env: dict) -> Any:
    from RADALib.engine_process import EngineProcess

    return EngineProcess(list(args), env=env).start()


def _ensure_dependencies_in_slicer() -> None:
    """Inside the Slicer application: install the engine's missing packages after one question."""
    if getattr(slicer, "app", None) is None:
        return  # a plain Python with slicer-core (tests, batch): packages come with pip install
    from .dependencies import ensure_dependencies

    ensure_dependencies()


def _python_executable() -> str:
    """Slicer's own Python launcher where there is one, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def _safe_id(name: str, used: set[str]) -> str:
    """A case id for the volume ``name`` that the engine accepts (a plain file name) and that
    differs from the ``used`` ones even without case (they name folders); added to ``used``."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-") or "volume"
    candidate, k = base, 2
    while candidate.casefold() in used:
        candidate, k = f"{base}_{k}", k + 1
    used.add(candidate.casefold())
    return candidate


def _markEndedEntries(
    entries: list[CohortEntry], status: str, onFinished: FinishedCallback | None
) -> FinishedCallback:
    """An ``onFinished`` that first gives entries still ``running`` the job's end state.

    ``status`` names the entry's status field (``pseudoLabelStatus`` or ``predictionStatus``).
    """

    def finished(job: EngineJob) -> None:
        if job.state != "succeeded":
            for entry in entries:
                if getattr(entry, status) == "running":
                    setattr(entry, status, job.state)
        if onFinished is not None:
            onFinished(job)

    return finished


class EngineJob:
    """One engine run: its process, its events, and what happens to its results.

    ``poll()`` (called by the panel's timer, or by :meth:`wait`) hands new events to
    ``onEvent`` and, once the process has ended, loads the results into the scene on the
    calling (main) thread, then calls ``onFinished(job)``. ``state`` is ``running``,
    ``succeeded``, ``failed`` or ``cancelled``; ``message`` says why on failure.
    """

    def __init__(
        self,
        kind: str,
        process: Any,
        finish: Callable[[], Any],
        onEvent: EventCallback | None = None,
        onFinished: FinishedCallback | None = None,
        workFolder: Path | None = None,
    ) -> None:
        self.kind = kind
        self.process = process
        self.state = "running"
        self.message: str | None = None
        self.result: Any = None
        self.events: list[dict] = []
        self.workFolder = workFolder
        self._finish = finish
        self._onEvent = onEvent
        self._onFinished = onFinished

    @property
    def lastEvent(self) -> dict | None:
        return self.events[-1] if self.events else None

    def poll(self) -> bool:
        """Deliver new events; when the process has ended, load results. True while running."""
        if self.state != "running":
            return False
        for event in self.process.poll():
            self.events.append(event)
            if self._onEvent is not None:
                self._onEvent(event)
        processState = self.process.state
        if processState == "running":
            return True
        if processState == "succeeded":
            try:
                self.result = self._finish()
                self.state = "succeeded"
            except (
                Exception
            ) as exc:  # a result that cannot be loaded is a failed job, said in one line
                self.state, self.message = (
                    "failed",
                    f"{self.kind}: the results could not be loaded: {exc}",
                )
        else:
            self.state = "cancelled" if processState == "cancelled" else "failed"
            self.message = self.process.failure_message() or f"{self.kind} {self.state}"
        if self._onFinished is not None:
            self._onFinished(self)
        return False

    def cancel(self) -> None:
        """End the engine's whole process tree; finished cases and the last checkpoint stay."""
        if self.state == "running":
            self.process.cancel()
            self.poll()

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> EngineJob:
        """Block until the job ends (keeps the Slicer GUI painting meanwhile)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"{self.kind} did not finish within {timeout} s; cancelled")
            app = getattr(slicer, "app", None)
            if app is not None and hasattr(app, "processEvents"):
                app.processEvents()
            time.sleep(interval)
        return self


class RADASegmentLogic(ScriptedLoadableModuleLogic):
    """The console API of RADA Segment (see docs/slicer.md).

    ``processFactory(args, env)`` starts the engine process (injectable for tests);
    ``workFolder`` holds the exchanged files (default: a ``slicer`` folder in the RADA cache,
    never the extension's folder); ``modelsFolder`` is where trained models are kept;
    ``ensureDependencies()`` runs before each engine start (default: in Slicer, ask once and
    install the engine's missing packages); ``cacheFolder`` is the engine's result cache
    (default the engine's own, ``~/.cache/rada``: a case is never registered twice).
    """

    def __init__(
        self,
        processFactory: ProcessFactory | None = None,
        workFolder: str | os.PathLike[str] | None = None,
        modelsFolder: str | os.PathLike[str] | None = None,
        ensureDependencies: Callable[[], None] | None = None,
        cacheFolder: str | os.PathLike[str] | None = None,
    ) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.processFactory = processFactory or _default_process_factory
        self.workFolder = Path(workFolder) if workFolder else None
        self.modelsFolder = Path(modelsFolder) if modelsFolder else default_models_dir()
        self.ensureDependencies = ensureDependencies or _ensure_dependencies_in_slicer
        self.cacheFolder = Path(cacheFolder) if cacheFolder else None
        self.cohort: list[CohortEntry] = []
        self.activeJob: EngineJob | None = None
        self._chart: Any = None
        self._table: Any = None
        # File > Close Scene is vtkMRMLScene::Clear(false) (Base/QTApp/qSlicerMainWindow.cxx), which
        # restarts node IDs (UniqueIDs.clear() in vtkMRMLScene.cxx): the cohort's and the chart's
        # IDs would name unrelated new nodes, so they are dropped when the scene closes.
        if getattr(slicer, "mrmlScene", None) is not None:
            slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self._onSceneStartClose)

    def _onSceneStartClose(self, caller: Any = None, event: Any = None) -> None:
        self.sceneClosed()

    def sceneClosed(self) -> None:
        """Forget the scene: cancel a running job, empty the cohort, drop the training chart."""
        job = self.activeJob
        if job is not None and getattr(job, "state", None) == "running":
            try:
                job.cancel()
            except Exception as exc:  # closing goes on: report, never raise
                log.error("RADA: could not cancel the %s job on Close Scene: %s", job.kind, exc)
        self.cohort = []
        self._chart = None
        self._table = None

    # ------------------------------------------------------------------ settings

    def getSettings(self) -> RADASegmentSettings:
        """The settings held by the module's parameter node (saved with the scene)."""
        return RADASegmentSettings.from_parameter_node(self.getParameterNode())

    def setSettings(self, settings: RADASegmentSettings) -> None:
        settings.validate().to_parameter_node(self.getParameterNode())

    def _settings(self, settings: RADASegmentSettings | None) -> RADASegmentSettings:
        return (settings or self.getSettings()).validate()

    # ------------------------------------------------------------------ cohort

    def entry(self, volumeNode: Any) -> CohortEntry | None:
        """The cohort entry of ``volumeNode`` (None when it is not in the cohort)."""
        return next((e for e in self.cohort if e.volumeNodeID == volumeNode.GetID()), None)

    def addVolume(self, volumeNode: Any) -> CohortEntry:
        """Add a scalar volume to the cohort (once); refuses no volume and oblique volumes."""
        if volumeNode is None:
            raise RADASegmentError(
                "no volume selected: choose a volume in the Cohort section first"
            )
        nodes.check_not_oblique(volumeNode)
        existing = self.entry(volumeNode)
        if existing is not None:
            return existing
        entry = CohortEntry(volumeNode.GetID())
        self.cohort.append(entry)
        return entry

    def addAllVolumes(self) -> list[CohortEntry]:
        """Add every scalar (non-labelmap) volume of the scene; oblique ones are skipped."""
        added = []
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.IsA("vtkMRMLLabelMapVolumeNode"):
                continue
            try:
                added.append(self.addVolume(node))
            except RADAError:
                continue
        return added

    def addVolumesFromFolder(self, folder: str | os.PathLike[str]) -> list[CohortEntry]:
        """Load every image file of ``folder`` (NRRD, NIfTI, MHA) and add it to the cohort."""
        folder = Path(folder)
        if not folder.is_dir():
            raise RADASegmentError(f"{folder}: not a folder")
        suffixes = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
        files = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and p.name.lower().endswith(suffixes) and ".seg." not in p.name.lower()
        )
        if not files:
            raise RADASegmentError(f"{folder}: no NRRD, NIfTI or MHA images found")
        return [self.addVolume(nodes.load_volume(path)) for path in files]

    def loadSampleCohort(self, count: int = 6, painted: int = 3, seed: int = 0) -> list[Any]:
        """Make the demo's synthetic cohort in the scene, to try the workflow without data.

        ``count`` volumes (96×80×64 voxels of 1×1×1.5 mm: an organ-like structure with texture,
        bias field and noise, different in each), all added to the cohort; in the first
        ``painted`` ones one sagittal, one coronal and one axial slice of the structure are
        painted (the largest cross-section of each plane, as a user would choose), so Propagate,
        Train (``auto``: the ``cpu`` preset without a GPU) and Segment can run at once. Computed here, nothing is
        downloaded. The structure is named "organ" unless one structure name was chosen already
        (a cohort of several structures becomes the one-structure "organ" cohort).
        """
        from RADALib.annotation import simulate_sparse_annotation
        from RADALib.synthetic import SyntheticConfig, synthetic_cohort

        if count < 1 or not 0 <= painted <= count:
            raise RADASegmentError(
                f"sample cohort: {count} volumes with {painted} painted is not possible"
            )
        settings = self.getSettings()
        chosen = settings.structureName != RADASegmentSettings.structureName  # not the default name
        single = len(settings.structureNames()) == 1  # the sample has one structure
        structureName = settings.structureName if chosen and single else "organ"
        config = SyntheticConfig()
        direction = np.diag([-1.0, -1.0, 1.0])  # LPS-aligned, as most NRRD and DICOM volumes
        volumes = []
        for index, (_, image, label) in enumerate(
            synthetic_cohort(count, seed=seed, config=config)
        ):
            name = slicer.mrmlScene.GenerateUniqueName(f"RADA sample {index + 1}")
            node = nodes.volume_node_from_canonical(
                image, config.spacing, direction, name, origin=(0.0, 0.0, 0.0)
            )
            self.addVolume(node)
            if index < painted:
                segmentation, segmentId = self.annotationSegmentation(node, structureName)
                sparse = nodes.canonical_to_kji(
                    simulate_sparse_annotation(label).label, direction
                ).astype(np.uint8)
                slicer.util.updateSegmentBinaryLabelmapFromArray(
                    sparse, segmentation, segmentId, node
                )
                self.updatePlanes(node)
            volumes.append(node)
        return volumes

    def removeVolume(self, volumeNode: Any) -> None:
        """Remove a volume from the cohort (its nodes stay in the scene)."""
        self.cohort = [e for e in self.cohort if e.volumeNodeID != volumeNode.GetID()]

    def volumeNode(self, entry: CohortEntry) -> Any:
        node = slicer.mrmlScene.GetNodeByID(entry.volumeNodeID)
        if node is None:
            raise RADASegmentError(
                f"volume {entry.volumeNodeID} is no longer in the scene; remove it from the cohort"
            )
        return node

    # ------------------------------------------------------------------ annotation

    def structureClasses(self, settings: RADASegmentSettings | None = None) -> dict[int, str]:
        """The cohort's structures by class number: 1, 2, ... in the settings' order."""
        names = (settings or self.getSettings()).structureNames()
        return {value: name for value, name in enumerate(names, 1)}

    def _annotationNode(self, entry: CohortEntry) -> Any:
        """The entry's painting segmentation node, None when it has none (or it was deleted)."""
        if not entry.segmentationNodeID:
            return None
        return slicer.mrmlScene.GetNodeByID(entry.segmentationNodeID)

    def _structureSegments(
        self, entry: CohortEntry, segmentation: Any, classes: dict[int, str]
    ) -> dict[int, str]:
        """The segment of each structure that has one; structures without a segment are left out.

        The stored segment stays the structure's unless it is named after another structure
        (the structures were reordered); otherwise the segment named after the structure, matched
        as Slicer's ``GetSegmentIdBySegmentName`` matches (without case). A segment serves one
        structure only.
        """
        if segmentation is None:
            return {}
        segments = segmentation.GetSegmentation()
        lowered = {name.lower(): value for value, name in classes.items()}
        ids: dict[int, str] = {}
        for value in classes:
            segmentId = entry.segmentIDs.get(value)
            segment = segments.GetSegment(segmentId) if segmentId else None
            if (
                segment is not None
                and lowered.get((segment.GetName() or "").lower(), value) == value
            ):
                ids[value] = segmentId
        for value, name in classes.items():
            segmentId = segments.GetSegmentIdBySegmentName(name)
            if value not in ids and segmentId and segmentId not in ids.values():
                ids[value] = segmentId
        return dict(sorted(ids.items()))

    def annotationSegmentation(
        self, volumeNode: Any, structureName: str | None = None
    ) -> tuple[Any, str]:
        """The segmentation the user paints for ``volumeNode``, and its first structure's segment.

        The segmentation holds one segment per structure of the cohort (created when missing,
        coloured as the structure's class). A given ``structureName`` (one name, or several
        separated by commas) becomes the cohort's structures (the settings'), which name the
        pseudo-labels, the model's classes and the results.
        """
        entry = self.addVolume(volumeNode)
        settings = self.getSettings()
        if structureName and structureName.strip() != settings.structureName:
            settings.structureName = structureName.strip()  # the structures of the whole cohort
            self.setSettings(settings)
        classes = self.structureClasses(settings)
        segmentation = self._annotationNode(entry)
        if segmentation is None:
            segmentation = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", nodes.node_name_for(volumeNode, "annotation")
            )
            segmentation.CreateDefaultDisplayNodes()
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            nodes.place_beside(segmentation, volumeNode)
            entry.segmentationNodeID, entry.segmentIDs = segmentation.GetID(), {}
        segments = segmentation.GetSegmentation()
        ids = self._structureSegments(entry, segmentation, classes)
        for value, name in classes.items():
            if value not in ids:
                ids[value] = segments.AddEmptySegment("", name)
                segments.GetSegment(ids[value]).SetColor(*class_entry(name, value)["color"])
        entry.segmentIDs = dict(sorted(ids.items()))
        return segmentation, entry.segmentIDs[1]

    def annotate(
        self, volumeNode: Any, structureName: str | None = None, roiNode: Any = None
    ) -> Any:
        """Prepare painting: the segmentation and segment, and the slice views on suggested slices."""
        segmentation, _ = self.annotationSegmentation(volumeNode, structureName)
        self.showSlices(volumeNode, nodes.suggested_slices(volumeNode, roiNode))
        return segmentation

    def showSlices(self, volumeNode: Any, offsets: dict[str, float]) -> None:
        """Show ``volumeNode`` in the Red/Yellow/Green views at the given axial/sagittal/coronal offsets."""
        orientation = {"Red": "axial", "Yellow": "sagittal", "Green": "coronal"}
        for sliceNode in slicer.util.getNodesByClass("vtkMRMLSliceNode"):
            plane = orientation.get(sliceNode.GetLayoutName())
            if plane is None:
                continue
            sliceNode.SetOrientation(plane.capitalize())
            ras = [0.0, 0.0, 0.0]
            ras[PLANES.index(plane)] = offsets[plane]
            sliceNode.JumpSliceByOffsetting(*ras)
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            composite.SetBackgroundVolumeID(volumeNode.GetID())

    def updatePlanes(
        self, volumeNode: Any, classes: dict[int, str] | None = None
    ) -> dict[str, list[int]]:
        """Which slices of each plane are painted in the volume's structure segments.

        A plane counts as painted when any structure is painted on it. The entry also learns,
        from the engine's own ``check_structures`` / ``missing_structures``, which structures
        each plane misses and which are on no painted slice (``structureProblem``).
        ``classes`` defaults to the settings' structures (:meth:`structureClasses`).
        """
        entry = self.entry(volumeNode)
        if entry is None:
            return {p: [] for p in PLANES}
        classes = classes or self.structureClasses()
        segmentation = self._annotationNode(entry)
        ids = self._structureSegments(entry, segmentation, classes)
        if ids:
            entry.segmentIDs = ids
            annotation = nodes.painted_annotation(segmentation, ids, volumeNode)
            entry.planes = nodes.ijk_slices(annotation, volumeNode)
        else:
            annotation = SparseAnnotation(np.zeros((1, 1, 1), np.uint8), {})
            entry.planes = {p: [] for p in PLANES}
        self._judgeStructures(entry, annotation, classes, volumeNode)
        return entry.planes

    @staticmethod
    def _judgeStructures(
        entry: CohortEntry, annotation: SparseAnnotation, classes: dict[int, str], volumeNode: Any
    ) -> None:
        """Record which structure each painted plane misses and which are on no painted slice."""
        try:
            missing = check_structures(annotation, classes, f"volume '{volumeNode.GetName()}'")
            entry.structureProblem = ""
        except InputError as exc:
            missing = missing_structures(annotation, classes)
            entry.structureProblem = str(exc)
        carried = set().union(*slice_structures(annotation).values())
        entry.unpaintedStructures = [name for v, name in classes.items() if v not in carried]
        entry.missingStructures = {
            plane: [classes[v] for v in values] for plane, values in missing.items()
        }

    def useSegmentation(
        self, volumeNode: Any, segmentationNode: Any, segmentId: str | None = None
    ) -> CohortEntry:
        """Use an existing segmentation (e.g. painted elsewhere) as the volume's annotation.

        One structure: ``segmentId``, else its first segment. Several: the segment named after
        each structure (``segmentId``, when given, is the first structure's).
        """
        entry = self.addVolume(volumeNode)
        segments = segmentationNode.GetSegmentation()
        classes = self.structureClasses()
        if segments.GetNumberOfSegments() == 0:
            raise RADASegmentError(
                f"segmentation '{segmentationNode.GetName()}' has no segment to use"
            )
        ids = {1: segmentId or segments.GetNthSegmentID(0)}
        if len(classes) > 1:
            ids = {1: segmentId} if segmentId else {}
            for value, name in classes.items():
                ids.setdefault(value, segments.GetSegmentIdBySegmentName(name))
                if not ids[value]:
                    raise RADASegmentError(
                        f"segmentation '{segmentationNode.GetName()}' has no segment named '{name}'; "
                        f"name one segment after each structure ({', '.join(classes.values())})"
                    )
        entry.segmentationNodeID, entry.segmentIDs = segmentationNode.GetID(), ids
        self.updatePlanes(volumeNode)
        return entry

    # ------------------------------------------------------------------ files for the engine

    def _newWorkFolder(self, kind: str) -> Path:
        root = self.workFolder or (cache_root() / "slicer")
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))

    def _entries(self, volumeNodes: Iterable[Any] | Any | None) -> list[CohortEntry]:
        if volumeNodes is None:
            if not self.cohort:
                raise RADASegmentError(
                    "the cohort is empty: add volumes in the Cohort section first"
                )
            return list(self.cohort)
        if not isinstance(volumeNodes, (list, tuple)):
            volumeNodes = [volumeNodes]
        return [self.addVolume(v) for v in volumeNodes]

    def _writeCohort(
        self, folder: Path, entries: list[CohortEntry], classes: dict[int, str], unannotated: str
    ) -> tuple[Path, dict[str, CohortEntry]]:
        """Export volumes and painted slices, and write a cohort manifest for the engine.

        A volume not painted on all three planes is an error (``unannotated="error"``), left
        out (``"skip"``) or an unlabeled case (``"unlabeled"``). A painted volume where a
        structure is on no painted slice is always an error. Each structure's segment is
        exported with its class number; the manifest names the classes (``classes``).
        """
        from RADALib.cohort import Case, Cohort, save_cohort

        cases, byId, used = [], {}, set()
        for entry in entries:
            volume = self.volumeNode(entry)
            self.updatePlanes(volume, classes)
            if not entry.annotated and unannotated == "skip":
                continue
            if not entry.annotated and unannotated == "error":
                raise RADASegmentError(
                    f"volume '{volume.GetName()}': no painted {', '.join(entry.missingPlanes)} slice; paint one slice "
                    "of the structure in each of the sagittal, coronal and axial planes"
                )
            if entry.annotated and entry.structureProblem:
                raise RADASegmentError(entry.structureProblem)
            caseId = _safe_id(volume.GetName(), used)
            image = nodes.export_volume(volume, folder / "images" / f"{caseId}.nrrd")
            sparse = None
            if entry.annotated:
                sparse = nodes.export_label_map(
                    self._annotationNode(entry),
                    entry.segmentIDs,
                    volume,
                    folder / "sparse" / f"{caseId}.nrrd",
                )
            cases.append(Case(caseId, image, sparse_label=sparse))
            byId[caseId] = entry
        if not any(c.sparse_label for c in cases):
            raise RADASegmentError(
                "no volume of the cohort is annotated: paint one sagittal, one coronal and one "
                "axial slice of the structure in at least one volume"
            )
        cohort = Cohort("slicer", cases, dict(classes))
        return save_cohort(cohort, folder / "cohort.json"), byId

    def _exportCohort(
        self,
        kind: str,
        volumeNodes: Iterable[Any] | Any | None,
        settings: RADASegmentSettings,
        unannotated: str,
    ) -> tuple[Path, Path, dict[str, CohortEntry]]:
        """A new work folder for ``kind`` with the volumes exported and the cohort file written.

        Returns the folder, the cohort file and the cohort entry of each case id.
        """
        entries = self._entries(volumeNodes)
        folder = self._newWorkFolder(kind)
        cohortFile, byId = self._writeCohort(
            folder, entries, self.structureClasses(settings), unannotated=unannotated
        )
        return folder, cohortFile, byId

    def _start(
        self,
        kind: str,
        arguments: list[str],
        finish: Callable[[], Any],
        onEvent: EventCallback | None,
        onFinished: FinishedCallback | None,
        folder: Path,
        wait: bool,
    ) -> Any:
        if self.activeJob is not None and self.activeJob.state == "running":
            raise RADASegmentError(
                f"a {self.activeJob.kind} job is running: wait for it or cancel it first"
            )
        self.ensureDependencies()
        from RADALib.engine_process import engine_command, engine_environment

        args = engine_command(
            kind if kind != "segment" else "predict",
            *arguments,
            "--events",
            "json",
            python=_python_executable(),
        )
        process = self.processFactory(args, engine_environment())
        job = EngineJob(kind, process, finish, onEvent, onFinished, folder)
        self.activeJob = job
        if not wait:
            return job
        job.wait()
        if job.state != "succeeded":
            raise RADASegmentError(job.message or f"{kind} {job.state}")
        return job.result

    def _cacheArguments(self) -> list[str]:
        return ["--cache-dir", str(self.cacheFolder)] if self.cacheFolder else []

    def cancel(self) -> None:
        """Cancel the running job, if any."""
        if self.activeJob is not None:
            self.activeJob.cancel()

    # ------------------------------------------------------------------ propagate

    def propagate(
        self,
        volumeNodes: Iterable[Any] | Any | None = None,
        settings: RADASegmentSettings | None = None,
        wait: bool = False,
        onEvent: EventCallback | None = None,
        onFinished: FinishedCallback | None = None,
        showViews: bool = False,
    ) -> Any:
        """Propagate the painted slices of the annotated volumes into pseudo-labels.

        Returns the job (``wait=False``), or the fused pseudo-label segmentation nodes.
        """
        settings = self._settings(settings)
        # the whole cohort: its annotated volumes; volumes asked for by name: each must be annotated
        folder, cohortFile, byId = self._exportCohort(
            "propagate", volumeNodes, settings, "skip" if volumeNodes is None else "error"
        )
        out = folder / "propagation"
        for entry in byId.values():
            entry.pseudoLabelStatus = "running"
        classes = {
            value: class_entry(name, value)
            for value, name in self.structureClasses(settings).items()
        }

        def finish() -> list[Any]:
            return [
                self._loadPseudoLabels(out / "cases" / caseId, entry, classes, showViews)
                for caseId, entry in byId.items()
            ]

        finished = _markEndedEntries(list(byId.values()), "pseudoLabelStatus", onFinished)
        arguments = [
            "--cohort",
            str(cohortFile),
            "--out",
            str(out),
            "--fusion",
            settings.fusion,
            "--workers",
            str(settings.workers),
        ] + self._cacheArguments()
        return self._start("propagate", arguments, finish, onEvent, finished, folder, wait)

    def _loadPseudoLabels(
        self, caseFolder: Path, entry: CohortEntry, classes: dict[int, dict], showViews: bool
    ) -> Any:
        """Load a case's fused pseudo-label (and, with ``showViews``, each view's) as nodes."""
        volume = self.volumeNode(entry)
        node = nodes.load_label_map_as_segmentation(
            caseFolder / "fused.nrrd",
            volume,
            classes,
            nodes.node_name_for(volume, "pseudo-label"),
        )
        entry.pseudoLabelNodeID, entry.pseudoLabelStatus = node.GetID(), "done"
        if showViews:
            for plane in PLANES:
                nodes.load_label_map_as_segmentation(
                    caseFolder / f"pseudo_{plane}.nrrd",
                    volume,
                    classes,
                    nodes.node_name_for(volume, f"pseudo-label {plane}"),
                )
        return node

    # ------------------------------------------------------------------ train

    def train(
        self,
        volumeNodes: Iterable[Any] | Any | None = None,
        settings: RADASegmentSettings | None = None,
        wait: bool = False,
        onEvent: EventCallback | None = None,
        onFinished: FinishedCallback | None = None,
    ) -> Any:
        """Train a model on the cohort (annotated volumes labeled, the others unlabeled).

        The model is saved as ``modelsFolder/<modelName>``; an existing model of that name is
        never overwritten. Returns the job (``wait=False``) or the model folder.
        """
        settings = self._settings(settings)
        target = self.modelsFolder / settings.modelName
        if target.exists():
            raise RADASegmentError(
                f"a model named '{settings.modelName}' already exists in {self.modelsFolder}: "
                "choose another model name"
            )
        folder, cohortFile, _ = self._exportCohort("train", volumeNodes, settings, "unlabeled")
        experiment = self.modelsFolder.parent / "experiments" / settings.modelName
        arguments = self._trainArguments(settings, cohortFile, experiment)
        self._resetTrainingCurves()

        def finish() -> Path:
            return self._installModel(experiment / "model", target)

        def event(e: dict) -> None:
            self._recordTrainingEvent(e)
            if onEvent is not None:
                onEvent(e)

        return self._start("train", arguments, finish, event, onFinished, folder, wait)

    def _trainArguments(
        self, settings: RADASegmentSettings, cohortFile: Path, experiment: Path
    ) -> list[str]:
        """``rada train``'s arguments for the settings (options left at their default omitted)."""
        arguments = [
            "--cohort",
            str(cohortFile),
            "--out",
            str(experiment),
            "--preset",
            settings.preset,
            "--device",
            settings.device,
            "--workers",
            str(settings.workers),
        ] + self._cacheArguments()
        if settings.iterations:
            arguments += ["--iterations", str(settings.iterations)]
        if settings.trainingLabels != "views":
            arguments += ["--set", f"label_source={settings.trainingLabels}"]
        for item in settings.extra_settings():
            arguments += ["--set", item]
        if settings.visionWeights:
            arguments += ["--vision-weights", settings.visionWeights]
        if settings.textWeights:
            arguments += ["--text-weights", settings.textWeights]
        if settings.allowDownload:
            arguments.append("--allow-download")
        return arguments

    def _installModel(self, bundle: Path, target: Path) -> Path:
        """Copy a trained bundle into the models folder as ``target``, whole or not at all."""
        self.modelsFolder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=self.modelsFolder))
        shutil.rmtree(staging)
        shutil.copytree(bundle, staging)
        os.replace(staging, target)
        return target

    def cudaAvailable(self) -> bool | None:
        """Whether torch sees a CUDA GPU in this process; None when torch is not installed."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return None
        import torch

        return bool(torch.cuda.is_available())

    # training curves: a table + chart in the scene, shown by the panel's plot widget

    def trainingChartNode(self) -> Any:
        """The loss/Dice chart of the current or last training run."""
        chart = self._chart
        if (
            chart is None
            or slicer.mrmlScene.GetNodeByID(chart.GetID()) is not chart
            or self._table is None
            or slicer.mrmlScene.GetNodeByID(self._table.GetID()) is not self._table
        ):
            self._table = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode", "RADA training curves"
            )
            # AddColumn() without an array makes a vtkStringArray (vtkMRMLTableNode.cxx), and
            # qMRMLPlotView.cxx refuses string X/Y columns: the curve would never show.
            for name in ("iteration", "loss", "dice"):
                column = vtk.vtkDoubleArray()
                column.SetName(name)
                self._table.AddColumn(column)
            self._chart = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLPlotChartNode", "RADA training"
            )
            self._chart.SetXAxisTitle("iteration")
            for name, color in (("loss", (0.85, 0.3, 0.25)), ("dice", (0.2, 0.5, 0.85))):
                series = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"RADA {name}")
                series.SetAndObserveTableNodeID(self._table.GetID())
                series.SetXColumnName("iteration")
                series.SetYColumnName(name)
                series.SetPlotType(series.PlotTypeScatter)
                series.SetColor(*color)
                self._chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return self._chart

    def trainingCurves(self) -> list[tuple[float, float, float]]:
        """(iteration, loss, dice) rows recorded so far (NaN where a value was not reported)."""
        self.trainingChartNode()
        table = self._table.GetTable()
        return [
            tuple(table.GetValue(r, c).ToDouble() for c in range(3))
            for r in range(table.GetNumberOfRows())
        ]

    def _resetTrainingCurves(self) -> None:
        self.trainingChartNode()
        self._table.GetTable().SetNumberOfRows(0)
        self._table.Modified()

    def _recordTrainingEvent(self, event: dict) -> None:
        if event.get("stage") != "train" or event.get("step") is None:
            return
        loss, dice = event.get("loss"), event.get("dice")
        if loss is None and dice is None:
            return
        self.trainingChartNode()
        table = self._table.GetTable()
        row = table.InsertNextBlankRow()
        for column, value in enumerate((event["step"], loss, dice)):
            table.SetValue(row, column, float("nan") if value is None else float(value))
        self._table.Modified()

    # ------------------------------------------------------------------ segment

    def listModels(self) -> list[ModelInfo]:
        """The trained models in the models folder (a user folder, never the extension's)."""
        models = []
        for folder in list_bundles(self.modelsFolder):
            try:
                manifest = read_manifest(folder)
            except RADAError:
                continue
            classes = [
                c.get("name", str(k))
                for k, c in sorted(
                    (manifest.get("classes") or {}).items(), key=lambda kv: int(kv[0])
                )
            ]
            pretrained = (manifest.get("encoder") or {}).get("pretrained") or {}
            record = (manifest.get("inference") or {}).get("largest_component")
            names = {
                str(k): c.get("name", str(k)) for k, c in (manifest.get("classes") or {}).items()
            }
            kept = (
                None
                if not isinstance(record, dict)
                else [names.get(str(c), str(c)) for c in record.get("classes") or []]
            )
            models.append(
                ModelInfo(
                    folder.name,
                    str(folder),
                    classes,
                    bool(pretrained.get("vision")),
                    str(manifest.get("created", "")),
                    kept,
                )
            )
        return models

    def segment(
        self,
        volumeNodes: Iterable[Any] | Any | None = None,
        model: str | os.PathLike[str] | None = None,
        settings: RADASegmentSettings | None = None,
        wait: bool = False,
        onEvent: EventCallback | None = None,
        onFinished: FinishedCallback | None = None,
        usePaintedSlices: bool = True,
    ) -> Any:
        """Segment volumes with a trained model; results become segmentation nodes.

        A volume with painted slices on all three planes gives the model its own region prompt
        (``--sparse-label``); the others use the prompt stored with the model (the training
        cohort's mean). ``usePaintedSlices=False`` uses the stored prompt for every volume.

        Returns the job (``wait=False``), else the segmentation node (one volume) or the list
        of nodes. Each node is named "<volume> RADA", holds the model's classes with their
        names, colours and terminology, and sits in the volume's subject-hierarchy folder.
        """
        settings = self._settings(settings)
        single = volumeNodes is not None and not isinstance(volumeNodes, (list, tuple))
        model = model if model is not None else self._namedModel(settings.modelName)
        manifest = read_manifest(model)
        classes = {int(k): dict(v) for k, v in (manifest.get("classes") or {}).items()}
        self._checkClasses(model, classes, settings)
        entries = self._entries(volumeNodes)
        folder = self._newWorkFolder("segment")
        images, sparse = self._exportForSegment(
            entries, folder, usePaintedSlices, self._modelNumbers(classes, settings), settings
        )
        out = folder / "predictions"
        arguments = self._segmentArguments(model, out, settings)
        for image, label in zip(images, sparse):
            arguments += ["--image", str(image), "--sparse-label", label]

        def finish() -> Any:
            from RADALib.paths import LABEL_SUFFIX

            results = []
            for entry, image in zip(entries, images):
                volume = self.volumeNode(entry)
                stem = image.name[: -len(".nrrd")]
                node = nodes.load_label_map_as_segmentation(
                    out / f"{stem}{LABEL_SUFFIX}.nrrd",
                    volume,
                    classes,
                    nodes.node_name_for(volume, "RADA"),
                )
                entry.predictionNodeID, entry.predictionStatus = node.GetID(), "done"
                results.append(node)
            return results[0] if single else results

        finished = _markEndedEntries(entries, "predictionStatus", onFinished)
        return self._start("segment", arguments, finish, onEvent, finished, folder, wait)

    def _namedModel(self, modelName: str) -> str:
        """The folder of the model called ``modelName`` in the models folder."""
        candidates = [m for m in self.listModels() if m.name == modelName]
        if not candidates:
            raise RADASegmentError(
                f"no model named '{modelName}' in {self.modelsFolder}: train one or pick a model"
            )
        return candidates[0].path

    def _modelNumbers(
        self, classes: dict[int, dict], settings: RADASegmentSettings
    ) -> dict[int, int]:
        """The model's class number of each cohort structure (matched by name; else its own)."""
        from RADALib.terminology import normal_name

        byName = {normal_name(c.get("name", "")): int(v) for v, c in classes.items()}
        return {
            value: byName.get(normal_name(name), value)
            for value, name in self.structureClasses(settings).items()
        }

    def _exportForSegment(
        self,
        entries: list[CohortEntry],
        folder: Path,
        usePaintedSlices: bool,
        numbers: dict[int, int],
        settings: RADASegmentSettings,
    ) -> tuple[list[Path], list[str]]:
        """Export each volume, and its painted slices where it has its own region prompt.

        Each structure's segment is written with the model's number for that structure
        (``numbers``). Returns the image files and, for each, its sparse label file or ``"-"``
        (the model's stored prompt). Each entry's prediction status becomes ``running``.
        """
        images, sparse, used = [], [], set()
        for entry in entries:
            volume = self.volumeNode(entry)
            caseId = _safe_id(volume.GetName(), used)
            images.append(nodes.export_volume(volume, folder / "images" / f"{caseId}.nrrd"))
            self.updatePlanes(volume, self.structureClasses(settings))
            if entry.annotated and usePaintedSlices:  # its own region prompt (docs/method.md)
                label = nodes.export_label_map(
                    self._annotationNode(entry),
                    {numbers.get(v, v): segmentId for v, segmentId in entry.segmentIDs.items()},
                    volume,
                    folder / "sparse" / f"{caseId}.nrrd",
                )
                sparse.append(str(label))
            else:
                sparse.append("-")
            entry.predictionStatus = "running"
        return images, sparse

    def _segmentArguments(
        self, model: str | os.PathLike[str], out: Path, settings: RADASegmentSettings
    ) -> list[str]:
        """``rada predict``'s arguments for the model and settings, before the images."""
        device = settings.device
        if device == "auto":
            device = "cuda" if self.cudaAvailable() else "cpu"
        arguments = ["--model", str(model), "--out", str(out), "--device", device]
        if settings.stride != "model":  # model: the stride the model's manifest names
            arguments += ["--stride", settings.stride]
        if settings.largestComponent != "auto":  # auto: as the model's manifest recommends
            arguments.append(
                "--largest-component"
                if settings.largestComponent == "on"
                else "--no-largest-component"
            )
        return arguments

    def _checkClasses(
        self, model: Any, classes: dict[int, dict], settings: RADASegmentSettings
    ) -> None:
        """Refuse a model trained for another structure than the one named in the settings."""
        from RADALib.terminology import normal_name

        wanted = settings.structureNames()
        if [normal_name(n) for n in wanted] == [normal_name(RADASegmentSettings().structureName)]:
            return  # no structure named: any model goes
        names = [normal_name(c.get("name", "")) for c in classes.values()]
        for name in wanted:
            if normal_name(name) not in names:
                described = (
                    ", ".join(f"'{c.get('name')}'" for c in classes.values()) or "no classes"
                )
                raise RADASegmentError(
                    f"{model}: this model was trained for {described}, not '{name}'; pick a model "
                    "trained for this structure or change the structure name"
                )
