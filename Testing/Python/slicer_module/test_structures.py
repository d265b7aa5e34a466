"""Several structures painted in Slicer: one segment per structure, class numbers by cohort order.

The real slicer-core scene and segmentations, the module's real logic and panel, a fake engine
process (as in test_logic.py): what the engine receives is read back from the written files.
"""

from __future__ import annotations

import importlib
import json

import fakeslicer
import numpy as np
import pytest

from RADALib.cohort import load_cohort
from RADALib.volume import read_label_for, read_volume
from slicer_module.test_logic import FakeProcess, _argument, _volume, fake_predict, fake_propagate

STRUCTURES = "left atrium, right atrium"
SLICES = {"sagittal": 8, "coronal": 10, "axial": 8}
"""Canonical slice painted per plane: sagittal 8 cuts the left half only, the others both."""


def _two_structures(truth: np.ndarray) -> np.ndarray:
    """The test volume's ellipsoid split in two: class 1 where x < 12, class 2 elsewhere."""
    label = truth.astype(np.uint8).copy()
    label[12:][label[12:] > 0] = 2
    return label


def _painted(label: np.ndarray, slices: dict[str, int], keep: dict[str, set[int]] | None = None):
    """The label kept on the given canonical slices only (``keep``: classes kept per plane)."""
    out = np.zeros_like(label)
    for axis, plane in enumerate(("sagittal", "coronal", "axial")):
        if plane not in slices:
            continue
        index = [slice(None)] * 3
        index[axis] = slices[plane]
        part = label[tuple(index)].copy()
        if keep is not None and plane in keep:
            part[~np.isin(part, list(keep[plane]))] = 0
        out[tuple(index)] = np.maximum(out[tuple(index)], part)
    return out


def _paint_structures(logic, node, canonical: np.ndarray, direction, structures=STRUCTURES):
    """Annotate, then paint each class of ``canonical`` into its structure's segment."""
    import slicer

    from RADASegmentLib.nodes import canonical_to_kji

    segmentation = logic.annotate(node, structures)
    entry = logic.entry(node)
    for value, segmentId in entry.segmentIDs.items():
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            canonical_to_kji((canonical == value).astype(np.uint8), direction),
            segmentation,
            segmentId,
            node,
        )
    return segmentation


@pytest.fixture
def make_logic(scene, tmp_path):
    from RADASegmentLib.logic import RADASegmentLogic

    started = []

    def make(work=None):
        def factory(args, env):
            started.append(FakeProcess(args, env, work=work))
            return started[-1]

        logic = RADASegmentLogic(
            processFactory=factory, workFolder=tmp_path / "work", modelsFolder=tmp_path / "models"
        )
        logic.started = started
        return logic

    return make


def test_annotate_makes_one_segment_per_structure_named_and_coloured_in_class_order(make_logic):
    from RADALib.terminology import class_entry

    logic = make_logic()
    node, _, _, _ = _volume("patient 1")
    segmentation = logic.annotate(node, STRUCTURES)
    assert logic.annotate(node) is segmentation, "the same segmentation is reused"
    segments = segmentation.GetSegmentation()
    assert segments.GetNumberOfSegments() == 2
    entry = logic.entry(node)
    assert sorted(entry.segmentIDs) == [1, 2] and entry.segmentID == entry.segmentIDs[1]
    for value, name in ((1, "left atrium"), (2, "right atrium")):
        segment = segments.GetSegment(entry.segmentIDs[value])
        assert segment.GetName() == name
        assert list(segment.GetColor()) == pytest.approx(class_entry(name, value)["color"])
    assert logic.structureClasses() == {1: "left atrium", 2: "right atrium"}


def test_a_plane_counts_as_painted_when_any_structure_is_painted_on_it(make_logic):
    logic = make_logic()
    node, truth, _, direction = _volume("patient 2")
    label = _two_structures(truth)
    # structure 1 on the coronal and axial slices; structure 2 on a sagittal slice, away from
    # the lines where it crosses them (the engine counts every voxel of a slice)
    painted = _painted(label, {"coronal": 10, "axial": 8}, keep={"coronal": {1}, "axial": {1}})
    painted[16, :10, :8] = label[16, :10, :8]
    assert set(np.unique(painted[16])) == {0, 2}
    _paint_structures(logic, node, painted, direction)
    planes = logic.updatePlanes(node)
    entry = logic.entry(node)
    assert all(planes[p] for p in SLICES) and entry.annotated
    assert entry.missingStructures == {
        "sagittal": ["left atrium"],
        "coronal": ["right atrium"],
        "axial": ["right atrium"],
    }
    assert entry.unpaintedStructures == [] and entry.structureProblem == ""


def test_each_structure_segment_exports_with_its_class_number(make_logic):
    import slicer

    logic = make_logic(work=fake_propagate)
    node, truth, _, direction = _volume("patient 3", direction=np.diag([-1.0, -1.0, 1.0]))
    painted = _painted(_two_structures(truth), SLICES)
    _paint_structures(logic, node, painted, direction)
    pseudo = logic.propagate(wait=True)[0]

    cohort = load_cohort(_argument(logic.started[0].args, "--cohort"))
    assert cohort.classes == {1: "left atrium", 2: "right atrium"}
    case = cohort.labeled[0]
    exported = read_label_for(read_volume(case.image, "image"), case.sparse_label).array
    np.testing.assert_array_equal(exported, painted)
    # the pseudo-label comes back with one segment per structure, named by the cohort
    segments = pseudo.GetSegmentation()
    for value, name in ((1, "left atrium"), (2, "right atrium")):
        segmentId = segments.GetSegmentIdBySegmentName(name)
        loaded = slicer.util.arrayFromSegmentBinaryLabelmap(pseudo, segmentId, node)
        np.testing.assert_array_equal(
            loaded > 0,
            slicer.util.arrayFromSegmentBinaryLabelmap(
                slicer.mrmlScene.GetNodeByID(logic.entry(node).segmentationNodeID),
                logic.entry(node).segmentIDs[value],
                node,
            )
            > 0,
        )


def test_training_refuses_a_volume_where_a_structure_is_on_no_painted_slice(make_logic):
    from RADASegmentLib.logic import RADASegmentError

    logic = make_logic(work=fake_propagate)
    node, truth, _, direction = _volume("patient 4")
    painted = _painted(_two_structures(truth), SLICES, keep={p: {1} for p in SLICES})
    _paint_structures(logic, node, painted, direction)
    logic.updatePlanes(node)
    entry = logic.entry(node)
    assert entry.annotated and entry.unpaintedStructures == ["right atrium"]
    message = r"volume 'patient 4': structure 2 \(right atrium\) is on none of the annotated slices"
    assert entry.structureProblem.startswith(message.replace("\\", ""))
    with pytest.raises(RADASegmentError, match=message):
        logic.train()
    with pytest.raises(RADASegmentError, match=message):
        logic.propagate()
    assert not logic.started, "no engine process is started for a refused request"


def test_reordered_structures_keep_their_painted_segments(make_logic):
    logic = make_logic(work=fake_propagate)
    node, truth, _, direction = _volume("patient 5")
    painted = _painted(_two_structures(truth), SLICES)
    _paint_structures(logic, node, painted, direction)
    logic.annotate(node, "right atrium, left atrium")
    entry = logic.entry(node)
    segments = logic._annotationNode(entry).GetSegmentation()
    assert segments.GetNumberOfSegments() == 2, "no segment is added for a reorder"
    assert segments.GetSegment(entry.segmentIDs[1]).GetName() == "right atrium"
    logic.propagate(wait=True)
    cohort = load_cohort(_argument(logic.started[0].args, "--cohort"))
    assert cohort.classes == {1: "right atrium", 2: "left atrium"}
    case = cohort.labeled[0]
    exported = read_label_for(read_volume(case.image, "image"), case.sparse_label).array
    np.testing.assert_array_equal(exported, np.choose(painted, [0, 2, 1]).astype(painted.dtype))


def test_segmenting_numbers_the_painted_structures_as_the_model_does(make_logic, tmp_path):
    seen = {}

    def predict(args):
        image = read_volume(args[args.index("--image") + 1], "image")
        seen["sparse"] = read_label_for(image, args[args.index("--sparse-label") + 1]).array
        fake_predict(args)

    logic = make_logic(work=predict)
    node, truth, _, direction = _volume("patient 6")
    painted = _painted(_two_structures(truth), SLICES)
    _paint_structures(logic, node, painted, direction)
    model = tmp_path / "models" / "atria"
    model.mkdir(parents=True)
    classes = {"1": {"name": "right atrium"}, "2": {"name": "left atrium"}}
    (model / "manifest.json").write_text(
        json.dumps({"format": "rada-bundle", "format_version": 1, "classes": classes})
    )
    logic.segment(node, str(model), wait=True)
    np.testing.assert_array_equal(
        seen["sparse"], np.choose(painted, [0, 2, 1]).astype(painted.dtype)
    )


def test_one_structure_name_twice_is_refused():
    from RADASegmentLib.parameters import RADASegmentSettings

    assert RADASegmentSettings(structureName=" liver ").structureNames() == ["liver"]
    assert RADASegmentSettings(structureName=STRUCTURES).validate().structureNames() == [
        "left atrium",
        "right atrium",
    ]
    with pytest.raises(ValueError, match="structure 'Liver' is named twice"):
        RADASegmentSettings(structureName="liver, Liver").validate()
    with pytest.raises(ValueError, match="hold an empty name"):
        RADASegmentSettings(structureName="liver,, kidney").validate()


# ---------------------------------------------------------------- the panel


@pytest.fixture
def panel(make_logic):
    fakeslicer.install_qt()
    logic = make_logic(work=fake_propagate)
    widget = importlib.import_module("RADASegmentLib.widget").RADASegmentWidget(logic=logic)
    widget.setup()
    yield widget
    widget.cleanup()
    fakeslicer.uninstall_qt()


def test_the_panel_says_which_structure_each_plane_misses(panel):
    volume, truth, _, direction = _volume("patient 7")
    panel.ui.volumeSelector.setCurrentNode(volume)
    panel.ui.structureNameLineEdit.setText(STRUCTURES)
    panel.ui.annotateButton.click()
    assert "each structure (left atrium, right atrium)" in panel.ui.statusLabel.text
    painted = _painted(_two_structures(truth), SLICES, keep={"sagittal": {1}})
    _paint_structures(panel.logic, volume, painted, direction)
    fakeslicer.process_timers()  # the delayed plane refresh after painting
    assert all(text.startswith("✓") for text in panel.ui.cohortTable.rowTexts(0)[1:4])
    tip = panel.ui.cohortTable.item(0, 1).toolTip()
    assert "missing: right atrium" in tip
    assert "not on the sagittal slice: right atrium" in panel.ui.planeStatusLabel.text


def test_the_train_button_refuses_a_volume_where_a_structure_is_on_no_painted_slice(panel):
    volume, truth, _, direction = _volume("patient 8")
    panel.ui.volumeSelector.setCurrentNode(volume)
    panel.ui.structureNameLineEdit.setText(STRUCTURES)
    panel.ui.annotateButton.click()
    painted = _painted(_two_structures(truth), SLICES, keep={p: {1} for p in SLICES})
    _paint_structures(panel.logic, volume, painted, direction)
    fakeslicer.process_timers()
    assert "on no painted slice: right atrium" in panel.ui.planeStatusLabel.text
    panel.ui.trainButton.click()
    assert not panel.logic.started and panel.ui.trainButton.text == "Train"
    assert panel.ui.statusLabel.text.startswith(
        "Training could not start: volume 'patient 8': structure 2 (right atrium) is on none"
    )
