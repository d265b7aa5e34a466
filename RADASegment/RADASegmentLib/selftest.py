"""The module's self-test: the whole panel workflow on a small synthetic cohort it makes.

Runs in Slicer (Reload and Test, or ``Slicer --testing``) and, under pytest, against the real
``slicer-core`` scene. It builds volume nodes with different orientations, paints one slice per
plane into the annotation segmentations (as a user would with the Segment Editor), then
propagates, trains a few iterations of the small preset and segments an unlabeled volume, all
through :class:`RADASegmentLogic` and real engine processes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from .dependencies import missing_packages
from .logic import RADASegmentLogic
from .nodes import canonical_to_kji, volume_node_from_canonical
from .parameters import RADASegmentSettings

SHAPE = (48, 40, 32)
SPACING = (2.0, 2.0, 3.0)
DIRECTIONS = (
    np.diag([-1.0, -1.0, 1.0]),  # LPS-aligned, like most NRRD/DICOM volumes
    np.array(
        [[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    ),  # permuted and flipped IJK axes
    np.diag([1.0, 1.0, 1.0]),  # RAS-aligned
)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0


def skip_message(missing: list[str]) -> str:
    """What the self-test says when it cannot run: the missing packages and the way in."""
    return (
        f"RADA self-test skipped: the engine's packages are not installed ({', '.join(missing)}); "
        "the first Propagate, Train or Segment in the RADA Segment panel asks before installing them; "
        "then run the test again"
    )


class RADASegmentTest(ScriptedLoadableModuleTest):
    """Cohort -> annotate -> propagate -> train -> segment, through the console API."""

    iterations = 6

    def setUp(self) -> None:
        slicer.mrmlScene.Clear(0)
        self.folder = Path(tempfile.mkdtemp(prefix="rada-selftest-"))

    def tearDown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def runTest(self) -> None:
        """The whole workflow where the engine's packages are installed; else a skip, said once.

        Slicer's test runner (``Slicer --testing``, the extension's CTest) answers yes to every
        confirmation and, from Slicer 5.12 on, ``pip_ensure`` installs nothing in testing mode:
        the test would try to install several GB, or fail with "still cannot import". So
        without the packages it says what is missing and how to install them, and passes.
        """
        missing = missing_packages()
        if missing:
            self.delayDisplay(skip_message(missing))
            return
        self.setUp()
        try:
            self.test_RADASegment_cohort_to_segmentation()
        finally:
            self.tearDown()

    def test_RADASegment_cohort_to_segmentation(self) -> None:
        from RADALib.annotation import simulate_sparse_annotation
        from RADALib.synthetic import SyntheticConfig, synthetic_cohort

        self.delayDisplay("Making a synthetic cohort of 3 volumes with different orientations")
        logic = RADASegmentLogic(
            workFolder=self.folder / "work",
            modelsFolder=self.folder / "models",
            cacheFolder=self.folder / "cache",
        )
        settings = RADASegmentSettings(
            structureName="kidney",
            preset="small",
            iterations=self.iterations,
            device="cpu",
            modelName="selftest",
            workers=1,
        )
        logic.setSettings(settings)
        config = SyntheticConfig(shape=SHAPE, spacing=SPACING)
        volumes, truths = [], []
        for (case_id, image, label), direction in zip(
            synthetic_cohort(3, seed=3, config=config), DIRECTIONS
        ):
            node = volume_node_from_canonical(image, SPACING, direction, case_id)
            truth = canonical_to_kji(label, direction).astype(np.uint8)
            volumes.append(node)
            truths.append(truth)
            logic.addVolume(node)
        self.assertEqual(len(logic.cohort), 3)

        self.delayDisplay(
            "Painting one sagittal, one coronal and one axial slice in the first two volumes"
        )
        for node, (_, _, label), direction in zip(
            volumes[:2], synthetic_cohort(2, seed=3, config=config), DIRECTIONS
        ):
            segmentation = logic.annotate(node, settings.structureName)
            sparse = simulate_sparse_annotation(label).label
            painted = canonical_to_kji(sparse, direction).astype(np.uint8)
            segmentId = logic.entry(node).segmentID
            slicer.util.updateSegmentBinaryLabelmapFromArray(painted, segmentation, segmentId, node)
            planes = logic.updatePlanes(node)
            self.assertTrue(
                all(len(planes[p]) == 1 for p in ("sagittal", "coronal", "axial")), planes
            )
        self.assertFalse(logic.entry(volumes[2]).annotated)

        self.delayDisplay("Propagating the painted slices")
        pseudo = logic.propagate(wait=True)
        self.assertEqual(len(pseudo), 2)
        for node, segmentation, truth in zip(volumes, pseudo, truths):
            segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName(
                settings.structureName
            )
            array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, node)
            self.assertEqual(array.shape, truth.shape)
            self.assertGreater(dice(array, truth), 0.75)

        self.delayDisplay(f"Training {self.iterations} iterations of the small preset on CPU")
        model = logic.train(wait=True)
        self.assertTrue((Path(model) / "manifest.json").is_file())
        self.assertEqual([m.name for m in logic.listModels()], ["selftest"])
        self.assertGreater(len(logic.trainingCurves()), 0)

        self.delayDisplay(
            "Segmenting a painted volume (its own region prompt) and the unlabeled one"
        )
        results = logic.segment([volumes[0], volumes[2]], model, wait=True)
        for volume, truth, result in zip((volumes[0], volumes[2]), (truths[0], truths[2]), results):
            segmentId = result.GetSegmentation().GetSegmentIdBySegmentName(settings.structureName)
            self.assertTrue(segmentId, "the result has a segment named after the structure")
            array = slicer.util.arrayFromSegmentBinaryLabelmap(result, segmentId, volume)
            self.assertEqual(array.shape, truth.shape)
            self.assertEqual(logic.entry(volume).predictionStatus, "done")
        self.delayDisplay("Test passed")
