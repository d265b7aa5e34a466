"""The RADA Segment panel: widgets from ``Resources/UI/RADASegment.ui`` wired to the logic.

No algorithm lives here. The panel keeps the settings (``RADASegmentSettings``) in the
logic's parameter node, shows the cohort with the slices marked in each plane, and starts
the logic's jobs (propagate, train, segment) without blocking: a ``qt.QTimer`` polls the
running job, its events move the progress bar and the status line, and the pressed button
is the job's Cancel button until the job ends.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from .parameters import RADASegmentSettings

PLANES = ("sagittal", "coronal", "axial")
"""The cohort table's plane columns, in order (keys of ``CohortEntry.planes``)."""
POLL_INTERVAL_MS = 200
"""How often the running job is polled."""
PLANE_REFRESH_DELAY_MS = 500
"""Painting is re-read this long after the last segment change (one read per stroke burst)."""
SHOW_VIEWS_PARAMETER = "RADASegmentShowViews"
"""Parameter-node entry for "Also show each view's pseudo-label" (not part of the settings)."""
JOB_TITLES = {"propagate": "Propagation", "train": "Training", "segment": "Segmentation"}

log = logging.getLogger(__name__)


def formatDuration(seconds: float | None) -> str:
    """``80`` -> ``"1m20s"``, ``3700`` -> ``"1h01m"``, ``42`` -> ``"42s"`` (``""`` for None)."""
    if seconds is None:
        return ""
    seconds = max(0, int(round(float(seconds))))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def formatEvent(event: dict, kind: str = "") -> str:
    """One status line for a job event, e.g. ``"train: 120/6000, loss 0.41, dice 0.8, ETA 1m20s"``."""
    stage = str(event.get("stage") or kind or "working")
    step, total, message = event.get("step"), event.get("total"), event.get("message")
    if total:
        head = f"{stage}: {step or 0}/{total}"
    else:
        head = f"{stage}: {message}" if message else stage
    parts = [head]
    for key in ("loss", "dice"):
        value = event.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{key} {value:.3g}")
    if event.get("eta_s") is not None:
        parts.append(f"ETA {formatDuration(event['eta_s'])}")
    return ", ".join(parts)


def cpuTrainingNote(preset: str, iterations: int = 0) -> str:
    """The device line's words for training on the CPU: no duration, the status line has it;
    whether the cpu preset sizes its run to this computer (``iterations`` 0: the preset's)."""
    sized = (
        " as many iterations as fit half an hour on this computer"
        if preset in ("auto", "cpu") and not iterations
        else ""
    )
    if preset == "paper":
        speed = "The paper preset is a GPU job: on a CPU it is far slower."
    elif preset == "auto":
        how = f"with the cpu preset here,{sized}" if sized else "with the cpu preset here"
        speed = f"The auto preset trains {how}; a CUDA GPU is far faster."
    elif sized:
        speed = f"The cpu preset trains{sized}; a CUDA GPU is far faster."
    else:
        speed = "A CUDA GPU is far faster."
    return (
        "training runs on the CPU; the time left shows in the status line once the first "
        f"iterations have run. {speed}"
    )


def planeText(slices: list[int] | None) -> str:
    """Cohort-table cell for one plane: ``"✓ 42"`` when painted (slice indices), ``"—"`` when not."""
    if not slices:
        return "—"
    return "✓ " + ", ".join(str(s) for s in slices)


def structureNote(entry: Any) -> str:
    """What a cohort entry's painting lacks, structure by structure ("" when nothing).

    Reads what the logic recorded (``unpaintedStructures``, ``missingStructures``); a structure
    on no painted slice is named once, not again for each plane.
    """
    unpainted = list(getattr(entry, "unpaintedStructures", None) or [])
    missing = getattr(entry, "missingStructures", None) or {}
    parts = []
    if unpainted and any((entry.planes or {}).values()):
        parts.append(f"on no painted slice: {', '.join(unpainted)}")
    for plane in PLANES:
        names = [n for n in missing.get(plane, []) if n not in unpainted]
        if names:
            parts.append(f"not on the {plane} slice: {', '.join(names)}")
    return "; ".join(parts)


def postprocessingNote(info: Any) -> str:
    """What *Largest component: auto* does with this model (its manifest's recommendation)."""
    kept = getattr(info, "largestComponent", None)
    if kept is None:
        return (
            "Largest component 'auto': every region kept (this model predates the recommendation)"
        )
    if not kept:
        return "Largest component 'auto': every region kept (the structure was not one region in its pseudo-labels)"
    return f"Largest component 'auto': only the largest region of {', '.join(kept)} kept"


class RADASegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):  # noqa: F405
    """The module panel. ``logic`` may be injected (constructor argument or attribute set before ``setup``).

    A job still running when the panel is cleaned up (module reload, application exit) is
    cancelled: nothing would poll it afterwards, so its results could never be loaded, and an
    orphaned training process would keep the GPU busy for hours.
    """

    def __init__(self, parent: Any = None, logic: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self.ui: Any = None
        self._job: Any = None
        self._jobButton: Any = None
        self._jobButtonText = ""
        self._pollTimer: Any = None
        self._planeTimer: Any = None
        self._pendingPlaneVolumeIDs: set[str] = set()
        self._parameterNode: Any = None
        self._updatingGUI = False
        self._writingParameters = False
        self._syncingSelection = False
        self._settingsError: str | None = None
        self._models: list[Any] = []
        self._cuda: bool | None = None
        self._cudaChecked = False

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        """Load the .ui, create the logic (unless injected), connect the widgets, show the settings."""
        ScriptedLoadableModuleWidget.setup(self)  # noqa: F405
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RADASegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)  # the .ui passes it on to the qMRML widgets

        if self.logic is None:
            from .logic import RADASegmentLogic

            self.logic = RADASegmentLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._onPollTimer)
        self._planeTimer = qt.QTimer()
        self._planeTimer.setSingleShot(True)
        self._planeTimer.setInterval(PLANE_REFRESH_DELAY_MS)
        self._planeTimer.connect("timeout()", self._refreshPendingPlanes)

        ui = self.ui
        header = ui.cohortTable.horizontalHeader()
        header.setSectionResizeMode(qt.QHeaderView.ResizeToContents)
        header.setSectionResizeMode(0, qt.QHeaderView.Stretch)
        ui.addVolumeButton.connect("clicked(bool)", self.onAddVolume)
        ui.addAllVolumesButton.connect("clicked(bool)", self.onAddAllVolumes)
        ui.addFolderButton.connect("clicked(bool)", self.onAddFolder)
        ui.loadSampleCohortButton.connect("clicked(bool)", self.onLoadSampleCohort)
        ui.removeVolumeButton.connect("clicked(bool)", self.onRemoveVolume)
        ui.annotateButton.connect("clicked(bool)", self.onAnnotate)
        ui.propagateButton.connect("clicked(bool)", self.onPropagate)
        ui.trainButton.connect("clicked(bool)", self.onTrain)
        ui.segmentSelectedButton.connect("clicked(bool)", self.onSegmentSelected)
        ui.segmentCohortButton.connect("clicked(bool)", self.onSegmentCohort)
        ui.refreshModelsButton.connect("clicked(bool)", self.onRefreshModels)
        ui.cohortTable.connect("itemSelectionChanged()", self._onTableSelectionChanged)
        ui.volumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onVolumeSelected)

        ui.structureNameLineEdit.connect("textChanged(QString)", self.onSettingsChanged)
        ui.modelNameLineEdit.connect("textChanged(QString)", self.onSettingsChanged)
        ui.extraSettingsLineEdit.connect("textChanged(QString)", self.onSettingsChanged)
        for combo in (
            ui.presetComboBox,
            ui.deviceComboBox,
            ui.strideComboBox,
            ui.fusionComboBox,
            ui.largestComponentComboBox,
            ui.trainingLabelsComboBox,
        ):
            combo.connect("currentIndexChanged(int)", self.onSettingsChanged)
        ui.iterationsSpinBox.connect("valueChanged(int)", self.onSettingsChanged)
        ui.allowDownloadCheckBox.connect("toggled(bool)", self.onSettingsChanged)
        ui.showViewsCheckBox.connect("toggled(bool)", self.onSettingsChanged)
        ui.visionWeightsPathLineEdit.connect("currentPathChanged(QString)", self.onSettingsChanged)
        ui.textWeightsPathLineEdit.connect("currentPathChanged(QString)", self.onSettingsChanged)

        self.addObserver(
            slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self._onSceneStartClose
        )
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self._onSceneEndClose)
        self._observeParameterNode()
        self.updateGUIFromParameterNode()
        self.refreshModels()
        self.refreshCohortTable()
        self._updateActionButtons()

    def cleanup(self) -> None:
        """Stop the timers and observers; cancel a running job (nothing would poll it any more)."""
        job = self._job
        if job is not None and getattr(job, "state", None) == "running":
            log.warning("RADA: the panel is closing while %s runs: cancelling it", job.kind)
            try:
                job.cancel()
            except Exception as exc:  # the panel is going away: report, never raise
                log.error("RADA: could not cancel the %s job: %s", job.kind, exc)
        self._job = None
        for timer in (self._pollTimer, self._planeTimer):
            if timer is not None:
                timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        """Coming back to the panel: re-read the settings, the painted planes and the models."""
        if self.ui is None:
            return
        self._observeParameterNode()
        self.updateGUIFromParameterNode()
        self._rereadAllPlanes()

    def _rereadAllPlanes(self) -> None:
        """Read the painted planes of every cohort volume again (painting may have happened unseen)."""
        self._pendingPlaneVolumeIDs.update(
            entry.volumeNodeID for entry in self.logic.cohort if entry.segmentationNodeID
        )
        self._refreshPendingPlanes()

    def exit(self) -> None:
        """Leaving the panel: a running job goes on (its timer keeps polling)."""

    # ------------------------------------------------------------------ settings <-> parameter node

    def _observeParameterNode(self) -> None:
        node = self.logic.getParameterNode()
        if node is self._parameterNode:
            return
        if self._parameterNode is not None and self.hasObserver(
            self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
        ):
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def _onParameterNodeModified(self, caller: Any = None, event: Any = None) -> None:
        if not self._writingParameters:
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self) -> None:
        """Show the settings the parameter node holds (defaults where it holds none)."""
        node = self.logic.getParameterNode()
        settings = RADASegmentSettings.from_parameter_node(node)
        ui = self.ui
        self._updatingGUI = True
        try:
            ui.structureNameLineEdit.setText(settings.structureName)
            ui.modelNameLineEdit.setText(settings.modelName)
            ui.extraSettingsLineEdit.setText(settings.extraSettings)
            self._setComboText(ui.presetComboBox, settings.preset)
            self._setComboText(ui.deviceComboBox, settings.device)
            self._setComboText(ui.strideComboBox, settings.stride)
            self._setComboText(ui.fusionComboBox, settings.fusion)
            self._setComboText(ui.trainingLabelsComboBox, settings.trainingLabels)
            ui.iterationsSpinBox.setValue(int(settings.iterations))
            ui.allowDownloadCheckBox.setChecked(bool(settings.allowDownload))
            self._setComboText(ui.largestComponentComboBox, settings.largestComponent)
            ui.visionWeightsPathLineEdit.setCurrentPath(settings.visionWeights)
            ui.textWeightsPathLineEdit.setCurrentPath(settings.textWeights)
            ui.showViewsCheckBox.setChecked(
                node is not None and node.GetParameter(SHOW_VIEWS_PARAMETER) == "true"
            )
        finally:
            self._updatingGUI = False
        self._updateDeviceWarning()

    @staticmethod
    def _setComboText(combo: Any, text: str) -> None:
        index = combo.findText(text)
        if index >= 0:
            combo.setCurrentIndex(index)

    def settingsFromGUI(self) -> RADASegmentSettings:
        """The settings the widgets show (values without a widget, e.g. ``workers``, kept from the node)."""
        ui = self.ui
        stored = RADASegmentSettings.from_parameter_node(self.logic.getParameterNode())
        return dataclasses.replace(
            stored,
            structureName=ui.structureNameLineEdit.text.strip(),
            preset=ui.presetComboBox.currentText,
            iterations=int(ui.iterationsSpinBox.value),
            device=ui.deviceComboBox.currentText,
            visionWeights=ui.visionWeightsPathLineEdit.currentPath,
            textWeights=ui.textWeightsPathLineEdit.currentPath,
            allowDownload=bool(ui.allowDownloadCheckBox.checked),
            modelName=ui.modelNameLineEdit.text.strip(),
            stride=ui.strideComboBox.currentText,
            largestComponent=ui.largestComponentComboBox.currentText,
            fusion=ui.fusionComboBox.currentText,
            trainingLabels=ui.trainingLabelsComboBox.currentText,
            extraSettings=" ".join(ui.extraSettingsLineEdit.text.split()),
        )

    def onSettingsChanged(self, *args: Any) -> None:
        """A widget changed: validate and store the settings, or show why they are invalid."""
        if self._updatingGUI or self.ui is None:
            return
        self._updateDeviceWarning()
        settings = self._validSettings()
        if settings is None:
            return
        node = self.logic.getParameterNode()
        self._writingParameters = True
        try:
            settings.to_parameter_node(node)
            node.SetParameter(
                SHOW_VIEWS_PARAMETER, "true" if self.ui.showViewsCheckBox.checked else "false"
            )
        finally:
            self._writingParameters = False

    def _validSettings(self) -> RADASegmentSettings | None:
        """The GUI's settings if valid; else None, with the one-line reason in the status line."""
        try:
            settings = self.settingsFromGUI().validate()
        except (ValueError, TypeError) as exc:
            self._settingsError = f"Invalid setting: {exc}"
            self._setStatus(self._settingsError)
            return None
        if self._settingsError is not None:
            if self.ui.statusLabel.text == self._settingsError:
                self._setStatus("Ready.")
            self._settingsError = None
        return settings

    def _cudaAvailable(self) -> bool | None:
        if not self._cudaChecked:
            try:
                self._cuda = self.logic.cudaAvailable()
            except Exception as exc:  # a broken torch install must not break the panel
                log.warning("RADA: could not check CUDA: %s", exc)
                self._cuda = None
            self._cudaChecked = True
        return self._cuda

    def _updateDeviceWarning(self) -> None:
        """Say where training runs; on the CPU, that the time left shows once training runs.

        No duration is guessed here: how long an iteration takes depends on the computer. The
        engine's progress events carry the time left, estimated from the iterations run so far,
        and the status line shows it from the first logged iteration on.
        """
        ui = self.ui
        device = ui.deviceComboBox.currentText
        cuda = self._cudaAvailable()
        if device != "cpu" and cuda:
            text = "CUDA GPU found: training runs on it."
        elif device == "cuda" and cuda is False:
            text = "No CUDA GPU found: training on 'cuda' would fail; choose 'auto' or 'cpu'."
        elif device != "cpu" and cuda is None:
            text = (
                "PyTorch is not installed yet (Slicer asks before installing it); "
                "without a CUDA GPU training runs on the CPU."
            )
        else:
            reason = "CPU chosen" if device == "cpu" else "No CUDA GPU found"
            text = f"{reason}: {cpuTrainingNote(ui.presetComboBox.currentText, int(ui.iterationsSpinBox.value))}"
        ui.deviceWarningLabel.setText(text)

    # ------------------------------------------------------------------ cohort

    def _selectedVolume(self) -> Any:
        return self.ui.volumeSelector.currentNode()

    def _entryFor(self, volumeNode: Any) -> Any:
        if volumeNode is None:
            return None
        return next((e for e in self.logic.cohort if e.volumeNodeID == volumeNode.GetID()), None)

    def refreshCohortTable(self) -> None:
        """Show ``logic.cohort``: volume, slices marked per plane, pseudo-label and prediction state."""
        table = self.ui.cohortTable
        entries = list(self.logic.cohort)
        flags = qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled
        self._syncingSelection = True
        try:
            table.setRowCount(len(entries))
            for row, entry in enumerate(entries):
                node = (
                    slicer.mrmlScene.GetNodeByID(entry.volumeNodeID) if entry.volumeNodeID else None
                )
                name = node.GetName() if node is not None else f"(removed: {entry.volumeNodeID})"
                planes = entry.planes or {}
                note = structureNote(entry)
                missing = getattr(entry, "missingStructures", None) or {}
                cells = (
                    [name]
                    + [planeText(planes.get(p)) for p in PLANES]
                    + [entry.pseudoLabelStatus or "—", entry.predictionStatus or "—"]
                )
                tips = (
                    [
                        f"{name}: {'all three planes marked' if entry.annotated else 'not fully annotated'}"
                        + (f"; structures {note}" if note else "")
                    ]
                    + [
                        f"{p} slices painted: {', '.join(map(str, planes.get(p) or [])) or 'none'}"
                        + (f"; missing: {', '.join(missing[p])}" if missing.get(p) else "")
                        for p in PLANES
                    ]
                    + ["pseudo-label (Propagate)", "prediction (Segment)"]
                )
                for column, (text, tip) in enumerate(zip(cells, tips)):
                    item = qt.QTableWidgetItem(text)
                    item.setFlags(flags)
                    item.setToolTip(tip)
                    table.setItem(row, column, item)
        finally:
            self._syncingSelection = False
        self._observeSegmentations(entries)
        self._selectRowOf(self._selectedVolume())
        self._updatePlaneStatusLabel()

    def _selectRowOf(self, volumeNode: Any) -> None:
        ids = [e.volumeNodeID for e in self.logic.cohort]
        row = (
            ids.index(volumeNode.GetID())
            if volumeNode is not None and volumeNode.GetID() in ids
            else -1
        )
        table = self.ui.cohortTable
        # QAbstractItemView::clearSelection keeps the current index, so "row == currentRow()"
        # does not mean "row is selected": compare with the selection itself.
        selected = {item.row() for item in table.selectedItems()}
        if (row < 0 and not selected) or (row >= 0 and selected == {row}):
            return
        self._syncingSelection = True
        try:
            if row >= 0:
                self.ui.cohortTable.selectRow(row)
            else:
                self.ui.cohortTable.clearSelection()
        finally:
            self._syncingSelection = False

    def _onTableSelectionChanged(self) -> None:
        if self._syncingSelection:
            return
        row = self.ui.cohortTable.currentRow()
        entries = list(self.logic.cohort)
        if 0 <= row < len(entries):
            node = slicer.mrmlScene.GetNodeByID(entries[row].volumeNodeID)
            if node is not None:
                self._syncingSelection = True
                try:
                    self.ui.volumeSelector.setCurrentNode(node)
                finally:
                    self._syncingSelection = False
        self._updatePlaneStatusLabel()

    def _onVolumeSelected(self, node: Any = None) -> None:
        if not self._syncingSelection:
            self._selectRowOf(node)
        self._updatePlaneStatusLabel()

    def _updatePlaneStatusLabel(self) -> None:
        volume = self._selectedVolume()
        entry = self._entryFor(volume)
        if entry is None:
            text = "Select a cohort volume, then Annotate: mark one sagittal, one coronal and one axial slice."
        else:
            planes = entry.planes or {}
            missing = [p for p in PLANES if not planes.get(p)]
            done = ", ".join(
                f"{p} {', '.join(map(str, planes[p]))}" for p in PLANES if planes.get(p)
            )
            if not missing:
                text = f"{volume.GetName()}: all three planes marked ({done})."
            else:
                marked = f" (marked: {done})." if done else "."
                text = f"{volume.GetName()}: still to mark: {', '.join(missing)}{marked}"
            note = structureNote(entry)
            if note:
                text += f" Structures {note}."
        self.ui.planeStatusLabel.setText(text)

    def onAddVolume(self) -> None:
        """Add the selected volume to the cohort."""
        volume = self._selectedVolume()
        if volume is None:
            self._setStatus("Select a volume to add.")
            return
        if self._tryAction("Adding the volume", lambda: self.logic.addVolume(volume))[0]:
            self._setStatus(f"Added {volume.GetName()} to the cohort.")
        self.refreshCohortTable()

    def onAddAllVolumes(self) -> None:
        """Add every loaded scalar volume to the cohort."""
        ok, entries = self._tryAction(
            "Adding the loaded volumes", self.logic.addAllVolumes, waitCursor=True
        )
        if ok:
            self._setStatus(
                f"Cohort: {len(self.logic.cohort)} volumes ({len(entries)} added or already there)."
            )
        self.refreshCohortTable()

    def onAddFolder(self) -> None:
        """Ask for a folder and add every volume file in it."""
        folder = qt.QFileDialog.getExistingDirectory(
            self.parent, "Folder of volumes (NRRD, NIfTI, MHA)", ""
        )
        if not folder:
            return
        ok, entries = self._tryAction(
            "Adding the folder",
            lambda: self.logic.addVolumesFromFolder(str(folder)),
            waitCursor=True,
        )
        if ok:
            self._setStatus(f"Added {len(entries)} volumes from {folder}.")
        self.refreshCohortTable()

    def onLoadSampleCohort(self) -> None:
        """Make the synthetic sample cohort (some volumes painted) and show its first volume."""
        ok, volumes = self._tryAction(
            "Making the sample cohort", self.logic.loadSampleCohort, waitCursor=True
        )
        if ok and volumes:
            painted = sum(1 for v in volumes if getattr(self._entryFor(v), "annotated", False))
            slicer.util.setSliceViewerLayers(background=volumes[0], fit=True)
            self.updateGUIFromParameterNode()  # the structure's name may have changed
            self._setStatus(
                f"Added {len(volumes)} sample volumes, {painted} painted in three planes: "
                "press Propagate, then Train (auto: the cpu preset without a GPU) and Segment."
            )
        self.refreshCohortTable()

    def onRemoveVolume(self) -> None:
        """Remove the selected volume from the cohort (the volume stays loaded)."""
        volume = self._selectedVolume()
        if self._entryFor(volume) is None:
            self._setStatus("Select a cohort volume to remove.")
            return
        if self._tryAction("Removing the volume", lambda: self.logic.removeVolume(volume))[0]:
            self._setStatus(f"Removed {volume.GetName()} from the cohort.")
        self.refreshCohortTable()

    # ------------------------------------------------------------------ annotation

    def onAnnotate(self) -> None:
        """Create the volume's segment, jump the slice views, and open the Segment Editor on it."""
        volume = self._selectedVolume()
        if volume is None:
            self._setStatus("Select a volume to annotate.")
            return
        structure = self.ui.structureNameLineEdit.text.strip()
        if not structure:
            self._setStatus(
                "Invalid setting: structure name is empty: "
                "name the structure you segment (e.g. 'left atrium')"
            )
            return
        roi = self.ui.roiSelector.currentNode()
        ok, segmentation = self._tryAction(
            "Annotate", lambda: self.logic.annotate(volume, structure, roi), waitCursor=True
        )
        if not ok:
            return
        self.refreshCohortTable()
        self._observeSegmentation(segmentation)
        entry = self._entryFor(volume)
        self._openSegmentEditor(
            segmentation, volume, entry.segmentID if entry is not None else None
        )
        names = RADASegmentSettings(structureName=structure).structureNames()
        what = f"'{names[0]}'" if len(names) == 1 else f"each structure ({', '.join(names)})"
        self._setStatus(
            f"Paint one sagittal, one coronal and one axial slice of {what} in the Segment Editor, "
            "then come back to RADA Segment."
        )

    def _openSegmentEditor(
        self, segmentationNode: Any, volumeNode: Any, segmentID: str | None
    ) -> None:
        try:
            slicer.util.selectModule("SegmentEditor")
        except Exception as exc:
            log.warning("RADA: could not open the Segment Editor: %s", exc)
            return
        try:  # the editor's Python API differs across Slicer versions: preselect where possible
            editor = slicer.modules.SegmentEditorWidget.editor
            editor.setSegmentationNode(segmentationNode)
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(volumeNode)
            else:
                editor.setMasterVolumeNode(volumeNode)
            if segmentID:
                editor.setCurrentSegmentID(segmentID)
        except Exception as exc:
            log.info("RADA: could not preselect the segmentation in the Segment Editor: %s", exc)

    def _observeSegmentations(self, entries: list[Any]) -> None:
        """Watch the cohort's annotation segmentations (and only those) for painting."""
        self.removeObservers(self._onSegmentationModified)
        for entry in entries:
            node = (
                slicer.mrmlScene.GetNodeByID(entry.segmentationNodeID)
                if entry.segmentationNodeID
                else None
            )
            self._observeSegmentation(node)

    def _observeSegmentation(self, node: Any) -> None:
        if node is None:
            return
        # The Segment Editor's effects write through vtkSegmentationModifier, which fires
        # SourceRepresentationModified (Libs/vtkSegmentationCore/vtkSegmentationModifier.cxx);
        # SegmentModified fires only when the segment itself changes (its status on the first
        # stroke, vtkSlicerSegmentEditorLogic.cxx), so an erase or a later stroke shows only there.
        for event in (
            slicer.vtkSegmentation.SourceRepresentationModified,
            slicer.vtkSegmentation.SegmentModified,
            slicer.vtkSegmentation.SegmentAdded,
            slicer.vtkSegmentation.SegmentRemoved,
        ):
            if not self.hasObserver(node, event, self._onSegmentationModified):
                self.addObserver(node, event, self._onSegmentationModified)

    def _onSegmentationModified(self, caller: Any, event: Any = None) -> None:
        nodeID = caller.GetID() if caller is not None else None
        for entry in self.logic.cohort:
            if entry.segmentationNodeID and entry.segmentationNodeID == nodeID:
                self._pendingPlaneVolumeIDs.add(entry.volumeNodeID)
        if self._pendingPlaneVolumeIDs:
            self._planeTimer.start()  # restarts: one read after the last change of a burst

    def _refreshPendingPlanes(self) -> None:
        pending, self._pendingPlaneVolumeIDs = self._pendingPlaneVolumeIDs, set()
        for volumeID in sorted(pending):
            node = slicer.mrmlScene.GetNodeByID(volumeID)
            if node is None:
                continue
            try:
                self.logic.updatePlanes(node)
            except Exception as exc:
                log.warning(
                    "RADA: could not read the painted planes of %s: %s", node.GetName(), exc
                )
        self.refreshCohortTable()

    # ------------------------------------------------------------------ models

    def onRefreshModels(self) -> None:
        """Look for trained models again."""
        self.refreshModels()
        self._setStatus(f"{len(self._models)} model(s) found.")

    def refreshModels(self, selectName: str | None = None) -> None:
        """Fill the model list from ``logic.listModels()``; keep (or pick ``selectName``) the selection."""
        combo = self.ui.modelComboBox
        previous = self.selectedModelPath()
        try:
            models = list(self.logic.listModels())
        except Exception as exc:
            log.warning("RADA: could not list the models: %s", exc)
            models = []
        self._models = models
        combo.blockSignals(True)
        try:
            combo.clear()
            if not models:
                combo.addItem("(no model yet: train one)")
            for info in models:
                classes = ", ".join(info.classes) if info.classes else "no classes"
                combo.addItem(
                    f"{info.name} ({classes})"
                    + (" [pretrained encoders]" if info.pretrained else "")
                )
                combo.setItemData(
                    combo.count - 1,
                    f"{info.path}\ncreated {info.created}\n{postprocessingNote(info)}",
                    qt.Qt.ToolTipRole,
                )
            paths = [m.path for m in models]
            names = [m.name for m in models]
            if selectName in names:
                combo.setCurrentIndex(names.index(selectName))
            elif previous in paths:
                combo.setCurrentIndex(paths.index(previous))
            elif models:
                combo.setCurrentIndex(0)
        finally:
            combo.blockSignals(False)
        self._updateActionButtons()

    def selectedModelPath(self) -> str | None:
        """Path of the model chosen in the list (None when there is none)."""
        index = self.ui.modelComboBox.currentIndex
        return self._models[index].path if 0 <= index < len(self._models) else None

    # ------------------------------------------------------------------ jobs

    def _actionButtons(self) -> list[Any]:
        ui = self.ui
        return [
            ui.addVolumeButton,
            ui.addAllVolumesButton,
            ui.addFolderButton,
            ui.loadSampleCohortButton,
            ui.removeVolumeButton,
            ui.annotateButton,
            ui.propagateButton,
            ui.trainButton,
            ui.segmentSelectedButton,
            ui.segmentCohortButton,
            ui.refreshModelsButton,
        ]

    def _updateActionButtons(self) -> None:
        """While a job runs only its Cancel button works; Segment needs a model."""
        running = self._job is not None
        for button in self._actionButtons():
            button.setEnabled(button is self._jobButton if running else True)
        if not running:
            hasModel = bool(self._models)
            self.ui.segmentSelectedButton.setEnabled(hasModel)
            self.ui.segmentCohortButton.setEnabled(hasModel)
        self.ui.modelComboBox.setEnabled(bool(self._models) and not running)

    def onPropagate(self) -> None:
        """Start (or cancel) propagation over the cohort's annotated volumes."""
        self._startOrCancel(
            self.ui.propagateButton,
            "propagate",
            lambda settings, **callbacks: self.logic.propagate(
                volumeNodes=None,
                settings=settings,
                wait=False,
                showViews=bool(self.ui.showViewsCheckBox.checked),
                **callbacks,
            ),
        )

    def onTrain(self) -> None:
        """Start (or cancel) training on the cohort."""
        self._startOrCancel(
            self.ui.trainButton,
            "train",
            lambda settings, **callbacks: self.logic.train(
                volumeNodes=None, settings=settings, wait=False, **callbacks
            ),
        )

    def onSegmentSelected(self) -> None:
        """Start (or cancel) segmenting the selected volume with the chosen model."""
        if self._job is None and self._selectedVolume() is None:
            self._setStatus("Select a volume to segment.")
            return
        volume = self._selectedVolume()
        self._startOrCancel(
            self.ui.segmentSelectedButton,
            "segment",
            lambda settings, **callbacks: self.logic.segment(
                volumeNodes=[volume],
                model=self.selectedModelPath(),
                settings=settings,
                wait=False,
                **callbacks,
            ),
        )

    def onSegmentCohort(self) -> None:
        """Start (or cancel) segmenting every cohort volume with the chosen model."""
        self._startOrCancel(
            self.ui.segmentCohortButton,
            "segment",
            lambda settings, **callbacks: self.logic.segment(
                volumeNodes=None,
                model=self.selectedModelPath(),
                settings=settings,
                wait=False,
                **callbacks,
            ),
        )

    def _startOrCancel(self, button: Any, kind: str, start: Callable[..., Any]) -> None:
        if self._job is not None:
            if button is self._jobButton:
                self.cancelJob()
            return
        settings = self._validSettings()
        if settings is None:
            return
        title = JOB_TITLES.get(kind, kind)
        if kind == "train":
            self._showTrainingChart()
        try:
            job = start(settings, onEvent=self._onJobEvent, onFinished=self._onJobFinished)
        except Exception as exc:
            message = f"{title} could not start: {exc}"
            self._setStatus(message)
            self._log(message)
            slicer.util.errorDisplay(message, windowTitle=f"RADA: {title.lower()}")
            return
        self._job, self._jobButton, self._jobButtonText = job, button, button.text
        button.setText("Cancel")
        self._updateActionButtons()
        self.ui.progressBar.setRange(0, 0)  # busy until the first event with a total
        self._setStatus(f"{title}: starting…")
        self._log(f"{title} started.")
        self._pollTimer.start()
        if getattr(job, "state", "running") != "running":  # ended before it was returned
            self._endJob(job)

    def _showTrainingChart(self) -> None:
        try:
            chart = self.logic.trainingChartNode()
            scene = slicer.mrmlScene
            viewNode = scene.GetSingletonNode("RADASegmentTraining", "vtkMRMLPlotViewNode")
            if viewNode is None:
                viewNode = scene.CreateNodeByClass("vtkMRMLPlotViewNode")
                viewNode.UnRegister(None)
                viewNode.SetSingletonTag("RADASegmentTraining")
                viewNode.SetName("RADA training view")
                viewNode = scene.AddNode(viewNode)
            viewNode.SetPlotChartNodeID(chart.GetID())
            self.ui.plotWidget.setMRMLPlotViewNode(viewNode)
        except Exception as exc:  # the chart is a view: training goes on without it
            log.warning("RADA: no training chart: %s", exc)

    def cancelJob(self) -> None:
        """Cancel the running job (its Cancel button does this)."""
        job = self._job
        if job is None:
            return
        title = JOB_TITLES.get(job.kind, job.kind)
        self._setStatus(f"{title}: cancelling…")
        self._log(f"{title}: cancel requested.")
        try:
            job.cancel()
        except Exception as exc:
            self._log(f"{title}: cancel failed: {exc}")
            slicer.util.errorDisplay(f"{title}: cancel failed: {exc}")
        if self._job is job and job.state != "running":
            self._endJob(job)

    def _onPollTimer(self) -> None:
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        try:
            running = job.poll()
        except Exception as exc:  # a poll that raises would raise again every 200 ms: end the job
            log.exception("RADA: polling the %s job failed", job.kind)
            try:
                job.cancel()
            except Exception:
                pass
            self._endJob(job, failure=f"{JOB_TITLES.get(job.kind, job.kind)} stopped: {exc}")
            return
        if not running and self._job is job:
            self._endJob(job)

    def _onJobEvent(self, event: dict) -> None:
        """One event of the running job: progress bar, status line, log."""
        kind = self._job.kind if self._job is not None else ""
        step, total = event.get("step"), event.get("total")
        bar = self.ui.progressBar
        if total:
            bar.setRange(0, int(total))
            bar.setValue(max(0, min(int(step or 0), int(total))))
        self._setStatus(formatEvent(event, kind))
        if event.get("message"):
            self._log(f"[{event.get('stage') or kind}] {event['message']}")

    def _onJobFinished(self, job: Any) -> None:
        """The logic's ``onFinished``: handled here when it is the running job (else after start)."""
        if job is self._job:
            self._endJob(job)

    def _endJob(self, job: Any, failure: str | None = None) -> None:
        if job is not self._job:
            return
        self._pollTimer.stop()
        self._job = None
        if self._jobButton is not None:
            self._jobButton.setText(self._jobButtonText)
        self._jobButton = None
        title = JOB_TITLES.get(job.kind, job.kind)
        state = "failed" if failure else job.state
        bar = self.ui.progressBar
        if state == "succeeded":
            bar.setRange(0, 100)
            bar.setValue(100)
            self._setStatus(f"{title}: done.")
            self._log(f"{title} done.")
        elif state == "cancelled":
            bar.setRange(0, 100)
            bar.setValue(0)
            self._setStatus(f"{title}: cancelled.")
            self._log(f"{title} cancelled.")
        else:
            bar.setRange(0, 100)
            bar.setValue(0)
            message = failure or job.message or f"{title} {state} without a message: see Details"
            self._setStatus(f"{title} failed: {message}")
            self._log(f"{title} failed: {message}")
            slicer.util.errorDisplay(message, windowTitle=f"RADA: {title.lower()} failed")
        self.refreshCohortTable()
        if job.kind == "train" and state == "succeeded":
            self.refreshModels(selectName=self.ui.modelNameLineEdit.text.strip())
        self._updateActionButtons()

    @property
    def job(self) -> Any:
        """The running job, or None."""
        return self._job

    # ------------------------------------------------------------------ helpers

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.setText(text)

    def _log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def _tryAction(
        self, what: str, action: Callable[[], Any], waitCursor: bool = False
    ) -> tuple[bool, Any]:
        """Run a quick logic call: (True, its result), or (False, None) with the failure shown in one line."""
        try:
            if waitCursor:
                with slicer.util.WaitCursor():
                    result = action()
            else:
                result = action()
        except Exception as exc:
            message = f"{what} failed: {exc}"
            self._setStatus(message)
            self._log(message)
            slicer.util.errorDisplay(message)
            return False, None
        return True, result

    def _onSceneStartClose(self, caller: Any = None, event: Any = None) -> None:
        """Close Scene: node IDs restart from 1, so a running job ends and nothing is kept."""
        job = self._job
        if job is not None:
            if getattr(job, "state", None) == "running":
                self._log(f"{JOB_TITLES.get(job.kind, job.kind)}: cancelled by Close Scene.")
                try:
                    job.cancel()
                except Exception as exc:  # closing goes on: report, never raise
                    log.error("RADA: could not cancel the %s job: %s", job.kind, exc)
            self._endJob(job)
        self._pendingPlaneVolumeIDs.clear()
        self.removeObservers(self._onSegmentationModified)
        try:
            self.ui.plotWidget.setMRMLPlotViewNode(None)
        except Exception as exc:  # the chart is a view only
            log.info("RADA: could not detach the training chart: %s", exc)

    def _onSceneEndClose(self, caller: Any = None, event: Any = None) -> None:
        self._observeParameterNode()
        self.updateGUIFromParameterNode()
        self.refreshCohortTable()
