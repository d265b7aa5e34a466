"""The module's logic against the real slicer-core scene, with a fake engine process.

The fake process plays the engine's part on the files the logic wrote (reads the exported
cohort, writes result label maps with the volume's header), so these tests check the plumbing
nodes -> files -> nodes and the job states fast; the self-test runs the real engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from RADALib.annotation import simulate_sparse_annotation
from RADALib.cohort import load_cohort
from RADALib.volume import read_label_for, read_volume, write_like


def _argument(args, name):
    return args[args.index(name) + 1]


class FakeProcess:
    """Stands in for RADALib.engine_process.EngineProcess: events, then an outcome."""

    def __init__(self, args, env, events=(), outcome="succeeded", message=None, work=None):
        self.args, self.env = list(args), env
        self.pending = list(events)
        self.outcome, self.message, self.work = outcome, message, work
        self.state = "running"
        self.cancelled = False

    def poll(self):
        if self.state != "running":
            return []
        events, self.pending = self.pending, []
        if self.work is not None and self.outcome == "succeeded":
            self.work(self.args)
        self.state = self.outcome
        return events

    def cancel(self):
        self.cancelled = True
        self.state = "cancelled"

    def failure_message(self):
        if self.state == "cancelled":
            return "cancelled by the user"
        return self.message if self.state == "failed" else None


def fake_propagate(args):
    """Writes fused.nrrd = the sparse label grown to every slice (any label with the header will do)."""
    cohort = load_cohort(_argument(args, "--cohort"))
    out = Path(_argument(args, "--out"))
    for case in cohort.labeled:
        image = read_volume(case.image, "image")
        sparse = read_label_for(image, case.sparse_label).array
        fused = np.zeros_like(sparse)
        fused[sparse.max(axis=(1, 2)) > 0, :, :] = 0  # keep it simple: the sparse label itself
        fused = np.maximum(fused, sparse)
        folder = out / "cases" / case.id
        folder.mkdir(parents=True, exist_ok=True)
        write_like(image, fused, folder / "fused.nrrd")
        for plane in ("sagittal", "coronal", "axial"):
            write_like(image, sparse, folder / f"pseudo_{plane}.nrrd")


def write_fake_bundle(
    folder: Path, class_name: str = "kidney", largest_component: list[int] | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": "rada-bundle",
        "format_version": 1,
        "created": "2026-11-27T00:00:00Z",
        "classes": {"1": {"name": class_name, "color": [0.7, 0.4, 0.3], "terminology": None}},
        "encoder": {"pretrained": {"vision": False, "text": False}},
    }
    if largest_component is not None:
        manifest["inference"] = {"largest_component": {"classes": largest_component}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "weights.safetensors").write_bytes(b"")
    return folder


def fake_train(args):
    write_fake_bundle(Path(_argument(args, "--out")) / "model")


def fake_predict(args):
    assert args.count("--sparse-label") == args.count("--image"), (
        "one --sparse-label (or -) per --image"
    )
    out = Path(_argument(args, "--out"))
    out.mkdir(parents=True, exist_ok=True)
    images = [args[i + 1] for i, a in enumerate(args) if a == "--image"]
    for path in images:
        image = read_volume(path, "image")
        label = (image.array > np.percentile(image.array, 70)).astype(np.uint8)
        write_like(image, label, out / (Path(path).name[: -len(".nrrd")] + "_rada.nrrd"))


@pytest.fixture
def make_logic(scene, tmp_path):
    from RADASegmentLib.logic import RADASegmentLogic

    started = []

    def make(work=None, events=(), outcome="succeeded", message=None):
        def factory(args, env):
            process = FakeProcess(args, env, events, outcome, message, work)
            started.append(process)
            return process

        logic = RADASegmentLogic(
            processFactory=factory, workFolder=tmp_path / "work", modelsFolder=tmp_path / "models"
        )
        logic.started = started
        return logic

    return make


def _volume(name="case", direction=None, seed=0):
    from RADASegmentLib.nodes import canonical_to_kji, volume_node_from_canonical

    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[0:24, 0:20, 0:16]
    truth = (((x - 12) / 7.0) ** 2 + ((y - 10) / 6.0) ** 2 + ((z - 8) / 5.0) ** 2 <= 1).astype(
        np.uint8
    )
    image = truth * 1.0 + rng.normal(0, 0.1, truth.shape)
    direction = np.diag([-1.0, -1.0, 1.0]) if direction is None else direction
    node = volume_node_from_canonical(image.astype(np.float32), (1.0, 1.2, 2.0), direction, name)
    return node, truth, canonical_to_kji(truth, direction).astype(np.uint8), direction


def _paint(
    logic, node, truth, direction, structure="kidney", planes=("sagittal", "coronal", "axial")
):
    import slicer

    from RADASegmentLib.nodes import canonical_to_kji

    segmentation = logic.annotate(node, structure)
    sparse = simulate_sparse_annotation(truth)
    keep = np.zeros_like(sparse.label)
    for axis, plane in enumerate(("sagittal", "coronal", "axial")):
        if plane in planes:
            index = [slice(None)] * 3
            index[axis] = sparse.slices[axis][0]
            keep[tuple(index)] = sparse.label[tuple(index)]
    slicer.util.updateSegmentBinaryLabelmapFromArray(
        canonical_to_kji(keep, direction).astype(np.uint8),
        segmentation,
        logic.entry(node).segmentID,
        node,
    )
    return segmentation


PERMUTED = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def test_sample_cohort_adds_synthetic_volumes_with_three_painted_planes_the_engine_reads_back(
    make_logic,
):
    from RADALib.synthetic import synthetic_cohort
    from RADASegmentLib.logic import RADASegmentError

    logic = make_logic(work=fake_propagate)
    volumes = logic.loadSampleCohort(count=3, painted=2, seed=5)
    assert [v.GetName() for v in volumes] == ["RADA sample 1", "RADA sample 2", "RADA sample 3"]
    assert [logic.entry(v) is not None for v in volumes] == [True] * 3
    assert [logic.entry(v).annotated for v in volumes] == [True, True, False]
    assert all(
        len(logic.entry(v).planes[p]) == 1
        for v in volumes[:2]
        for p in ("sagittal", "coronal", "axial")
    )
    assert logic.getSettings().structureName == "organ"
    logic.propagate(wait=True)
    cohort = load_cohort(_argument(logic.started[0].args, "--cohort"))
    assert cohort.classes == {1: "organ"} and len(cohort.labeled) == 2
    # the painted slices the engine reads are the synthetic truth's largest cross-sections, voxel for voxel
    for case, (_, _, truth) in zip(cohort.labeled, synthetic_cohort(2, seed=5)):
        image = read_volume(case.image, "image")
        assert image.array.shape == truth.shape and image.spacing == pytest.approx((1.0, 1.0, 1.5))
        np.testing.assert_array_equal(
            read_label_for(image, case.sparse_label).array, simulate_sparse_annotation(truth).label
        )
    with pytest.raises(RADASegmentError, match="3 volumes with 4 painted is not possible"):
        logic.loadSampleCohort(count=3, painted=4)


def test_adding_no_volume_says_to_choose_one(make_logic):
    from RADASegmentLib.logic import RADASegmentError

    with pytest.raises(RADASegmentError, match="no volume selected"):
        make_logic().addVolume(None)


def test_annotate_creates_one_segmentation_with_the_structure_segment_and_reuses_it(make_logic):
    logic = make_logic()
    node, _, _, _ = _volume()
    first = logic.annotate(node, "left atrium")
    second = logic.annotate(node, "left atrium")
    assert first is second
    segments = first.GetSegmentation()
    assert segments.GetNumberOfSegments() == 1
    assert segments.GetSegment(logic.entry(node).segmentID).GetName() == "left atrium"


def test_plane_status_follows_painting_on_a_permuted_volume(make_logic):
    logic = make_logic()
    node, truth, _, direction = _volume(direction=PERMUTED)
    _paint(logic, node, truth, direction, planes=("sagittal", "axial"))
    planes = logic.updatePlanes(node)
    assert planes["sagittal"] and planes["axial"] and not planes["coronal"]
    assert not logic.entry(node).annotated


def test_propagate_names_the_volume_and_the_missing_plane(make_logic):
    from RADASegmentLib.logic import RADASegmentError

    logic = make_logic(work=fake_propagate)
    node, truth, _, direction = _volume("patient 7")
    _paint(logic, node, truth, direction, planes=("sagittal", "axial"))
    with pytest.raises(RADASegmentError, match=r"volume 'patient 7': no painted coronal slice"):
        logic.propagate([node])
    assert not logic.started, "no engine process is started for a refused request"


def test_propagate_loads_pseudo_labels_aligned_and_leaves_the_users_segmentation_alone(make_logic):
    import slicer

    logic = make_logic(
        work=fake_propagate, events=[{"stage": "propagate", "step": 1, "total": 1, "message": ""}]
    )
    node, truth, _, direction = _volume(direction=PERMUTED)
    segmentation = _paint(logic, node, truth, direction)
    segmentId = logic.entry(node).segmentID
    painted = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, node).copy()
    seen = []
    job = logic.propagate(onEvent=seen.append)
    assert job.state == "running" and logic.entry(node).pseudoLabelStatus == "running"
    assert job.poll() is False
    assert job.state == "succeeded", job.message
    assert seen and seen[0]["stage"] == "propagate"
    pseudo = job.result[0]
    assert pseudo.GetName().startswith(node.GetName())
    pseudoId = pseudo.GetSegmentation().GetSegmentIdBySegmentName("kidney")
    loaded = slicer.util.arrayFromSegmentBinaryLabelmap(pseudo, pseudoId, node)
    np.testing.assert_array_equal(
        loaded > 0, painted > 0
    )  # the fake engine returns the painted slices
    assert logic.entry(node).pseudoLabelStatus == "done"
    np.testing.assert_array_equal(
        slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, node), painted
    )
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1


def test_a_failed_engine_run_reports_its_message_and_loads_nothing(make_logic):
    import slicer

    logic = make_logic(outcome="failed", message="rada: images/case.nrrd: cannot be read")
    node, truth, _, direction = _volume()
    _paint(logic, node, truth, direction)
    before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    finished = []
    job = logic.propagate(onFinished=finished.append)
    job.poll()
    assert job.state == "failed" and job.message == "rada: images/case.nrrd: cannot be read"
    assert finished == [job]
    assert logic.entry(node).pseudoLabelStatus == "failed"
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before


def test_wait_raises_the_engine_message_on_failure(make_logic):
    from RADASegmentLib.logic import RADASegmentError

    logic = make_logic(
        outcome="failed", message="rada: out of memory on cuda:0; try --preset small"
    )
    node, truth, _, direction = _volume()
    _paint(logic, node, truth, direction)
    with pytest.raises(RADASegmentError, match="out of memory"):
        logic.propagate(wait=True)


def test_cancel_ends_the_job_as_cancelled(make_logic):
    logic = make_logic(work=fake_propagate)
    node, truth, _, direction = _volume()
    _paint(logic, node, truth, direction)
    job = logic.propagate()
    logic.cancel()
    assert job.state == "cancelled" and job.message == "cancelled by the user"
    assert logic.started[0].cancelled
    assert logic.entry(node).pseudoLabelStatus == "cancelled"


def test_a_second_job_is_refused_while_one_runs(make_logic):
    from RADASegmentLib.logic import RADASegmentError

    logic = make_logic(work=fake_propagate)
    node, truth, _, direction = _volume()
    _paint(logic, node, truth, direction)
    logic.propagate()
    with pytest.raises(RADASegmentError, match="propagate job is running"):
        logic.propagate()


def test_train_exports_labeled_and_unlabeled_cases_and_keeps_the_model_in_the_models_folder(
    make_logic, tmp_path
):
    from RADASegmentLib.parameters import RADASegmentSettings

    events = [
        {"stage": "train", "step": 1, "total": 2, "loss": 0.9, "eta_s": 1.0, "message": ""},
        {
            "stage": "train",
            "step": 2,
            "total": 2,
            "loss": 0.7,
            "dice": 0.5,
            "eta_s": 0.0,
            "message": "",
        },
    ]
    logic = make_logic(work=fake_train, events=events)
    node, truth, _, direction = _volume("a")
    other, _, _, _ = _volume("b", seed=1)
    _paint(logic, node, truth, direction)
    logic.addVolume(other)
    settings = RADASegmentSettings(
        structureName="kidney", preset="small", iterations=2, device="cpu", modelName="m1"
    )
    model = logic.train(settings=settings, wait=True)
    assert Path(model) == tmp_path / "models" / "m1" and (Path(model) / "manifest.json").is_file()
    args = logic.started[0].args
    assert (
        args[args.index("--preset") + 1] == "small" and args[args.index("--iterations") + 1] == "2"
    )
    assert (
        "--set" not in args
    )  # the paper's supervision unless the user picks fused training labels
    cohort = load_cohort(_argument(args, "--cohort"))
    assert [c.labeled for c in cohort.cases] == [True, False]
    assert cohort.classes == {1: "kidney"}
    assert [row[1] for row in logic.trainingCurves()] == [0.9, 0.7]
    assert [m.name for m in logic.listModels()] == ["m1"]


def test_fused_training_labels_reach_rada_train_as_label_source(make_logic):
    from RADASegmentLib.parameters import RADASegmentSettings

    logic = make_logic(work=fake_train)
    node, truth, _, direction = _volume("a")
    _paint(logic, node, truth, direction)
    settings = RADASegmentSettings(
        preset="small", iterations=2, device="cpu", modelName="m2", trainingLabels="fused"
    )
    logic.train(settings=settings, wait=True)
    args = logic.started[0].args
    assert args[args.index("--set") + 1] == "label_source=fused"
    with pytest.raises(ValueError, match="training labels 'dense' is not one of views, fused"):
        RADASegmentSettings(trainingLabels="dense").validate()


def test_extra_settings_reach_rada_train_as_set_items_and_bad_ones_are_refused(make_logic):
    from RADASegmentLib.parameters import RADASegmentSettings

    logic = make_logic(work=fake_train)
    node, truth, _, direction = _volume("a")
    _paint(logic, node, truth, direction)
    settings = RADASegmentSettings(
        preset="small",
        iterations=2,
        device="cpu",
        modelName="m3",
        extraSettings="schedule.alpha_floor=0.9  patch=64,64,48",
    )
    logic.train(settings=settings, wait=True)
    args = logic.started[0].args
    items = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert items == ["schedule.alpha_floor=0.9", "patch=64,64,48"]
    for text, message in (
        ("alpha_floor", "'alpha_floor' is not KEY=VALUE"),
        ("=1", "'=1' is not KEY=VALUE"),
        ("iterations=5", "set iterations with the Iterations field instead"),
        ("label_source=fused", "with the Training labels field"),
    ):
        with pytest.raises(ValueError, match=message):
            RADASegmentSettings(extraSettings=text).validate()


def test_list_models_says_which_structures_each_model_keeps_one_region_of(make_logic, tmp_path):
    write_fake_bundle(tmp_path / "models" / "a-old")
    write_fake_bundle(tmp_path / "models" / "b-la", "left atrium", largest_component=[1])
    write_fake_bundle(tmp_path / "models" / "c-kidneys", "kidneys", largest_component=[])
    logic = make_logic()
    assert {m.name: m.largestComponent for m in logic.listModels()} == {
        "a-old": None,
        "b-la": ["left atrium"],
        "c-kidneys": [],
    }


def test_train_never_overwrites_an_existing_model(make_logic, tmp_path):
    from RADASegmentLib.logic import RADASegmentError
    from RADASegmentLib.parameters import RADASegmentSettings

    logic = make_logic(work=fake_train)
    write_fake_bundle(tmp_path / "models" / "m1")
    node, truth, _, direction = _volume()
    _paint(logic, node, truth, direction)
    with pytest.raises(RADASegmentError, match="a model named 'm1' already exists"):
        logic.train(settings=RADASegmentSettings(modelName="m1"))


def test_segment_loads_named_coloured_results_aligned_with_each_volume(make_logic, tmp_path):
    import slicer

    logic = make_logic(work=fake_predict)
    model = write_fake_bundle(tmp_path / "models" / "kid")
    node, _, _, _ = _volume("scan", direction=PERMUTED)
    result = logic.segment(node, str(model), wait=True)
    assert result.GetName().startswith("scan")
    segmentId = result.GetSegmentation().GetSegmentIdBySegmentName("kidney")
    assert segmentId
    loaded = slicer.util.arrayFromSegmentBinaryLabelmap(result, segmentId, node)
    voxels = slicer.util.arrayFromVolume(node)
    np.testing.assert_array_equal(loaded > 0, voxels > np.percentile(voxels, 70))
    assert logic.entry(node).predictionStatus == "done"


def _segment_arguments(make_logic, tmp_path, **settings) -> list[str]:
    """The engine arguments of one Segment of a scan with a fake kidney model and ``settings``."""
    from RADASegmentLib.parameters import RADASegmentSettings

    logic = make_logic(work=fake_predict)
    model = write_fake_bundle(tmp_path / "models" / "kid")
    node, _, _, _ = _volume("scan")
    logic.segment(
        node,
        str(model),
        settings=RADASegmentSettings(structureName="kidney", **settings),
        wait=True,
    )
    return list(logic.started[-1].args)


@pytest.mark.parametrize(
    "choice, flags",
    [("auto", []), ("on", ["--largest-component"]), ("off", ["--no-largest-component"])],
)
def test_segment_passes_the_largest_component_choice_and_leaves_auto_to_the_model(
    make_logic, tmp_path, choice, flags
):
    args = _segment_arguments(make_logic, tmp_path, largestComponent=choice)
    assert [a for a in args if "largest-component" in a] == flags


@pytest.mark.parametrize("choice, flags", [("model", []), ("dense", ["--stride", "dense"])])
def test_segment_leaves_the_stride_to_the_model_unless_one_is_chosen(
    make_logic, tmp_path, choice, flags
):
    from RADASegmentLib.parameters import RADASegmentSettings

    args = _segment_arguments(make_logic, tmp_path, stride=choice)
    shown = [a for i, a in enumerate(args) if a == "--stride" or args[i - 1] == "--stride"]
    assert shown == flags
    assert RADASegmentSettings().stride == "model"


def test_segment_refuses_a_model_trained_for_another_structure(make_logic, tmp_path):
    from RADASegmentLib.logic import RADASegmentError
    from RADASegmentLib.parameters import RADASegmentSettings

    logic = make_logic(work=fake_predict)
    model = write_fake_bundle(tmp_path / "models" / "la", class_name="left atrium")
    node, _, _, _ = _volume()
    with pytest.raises(RADASegmentError, match="trained for 'left atrium', not 'liver'"):
        logic.segment(node, str(model), settings=RADASegmentSettings(structureName="liver"))


def test_settings_round_trip_through_the_parameter_node_and_bad_values_are_refused(make_logic):
    from RADASegmentLib.parameters import RADASegmentSettings

    logic = make_logic()
    logic.setSettings(RADASegmentSettings(structureName="liver", preset="small", iterations=50))
    assert logic.getSettings() == RADASegmentSettings(
        structureName="liver", preset="small", iterations=50
    )
    with pytest.raises(ValueError, match="preset 'huge'"):
        logic.setSettings(RADASegmentSettings(preset="huge"))
    with pytest.raises(ValueError, match="model name"):
        logic.setSettings(RADASegmentSettings(modelName="../x"))
    with pytest.raises(ValueError, match="largest component 'yes' is not one of auto, on, off"):
        logic.setSettings(RADASegmentSettings(largestComponent="yes"))


@pytest.mark.parametrize("stored, read", [(True, "on"), (False, "auto"), ("off", "off")])
def test_a_scene_saved_with_the_largest_component_checkbox_reads_as_the_new_choice(stored, read):
    from RADASegmentLib.parameters import RADASegmentSettings

    settings = RADASegmentSettings.from_json(
        json.dumps({"largestComponent": stored, "stride": "dense"})
    )
    assert (settings.largestComponent, settings.stride) == (read, "dense")
    settings.validate()


def test_annotate_puts_the_three_slice_views_on_the_suggested_slices_of_the_volume(make_logic):
    import slicer

    from RADASegmentLib import nodes

    views = {}
    for layout in ("Red", "Yellow", "Green"):
        view = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
        view.SetLayoutName(layout)
        views[layout] = view
        composite = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(layout)
    logic = make_logic()
    node, _, _, _ = _volume("scan", direction=PERMUTED)
    logic.annotate(node, "kidney")
    expected = nodes.suggested_slices(node)
    for layout, plane in (("Red", "axial"), ("Yellow", "sagittal"), ("Green", "coronal")):
        assert views[layout].GetOrientation() == plane.capitalize()
        matrix = views[layout].GetSliceToRAS()
        axis = ("sagittal", "coronal", "axial").index(plane)
        normal = [matrix.GetElement(r, 2) for r in range(3)]
        assert abs(normal[axis]) == pytest.approx(1.0), layout
        assert matrix.GetElement(axis, 3) == pytest.approx(expected[plane], abs=1e-6), (
            layout
        )  # plane through it
    for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
        assert composite.GetBackgroundVolumeID() == node.GetID()


def test_segment_gives_a_painted_volume_its_own_region_prompt_and_others_the_stored_one(
    make_logic, tmp_path
):
    logic = make_logic(work=fake_predict)
    model = write_fake_bundle(tmp_path / "models" / "kid")
    painted, truth, _, direction = _volume("painted")
    plain, _, _, _ = _volume("plain", seed=1)
    _paint(logic, painted, truth, direction)
    logic.segment([painted, plain], str(model), wait=True)
    args = logic.started[0].args
    labels = [args[i + 1] for i, a in enumerate(args) if a == "--sparse-label"]
    assert labels[1] == "-"
    image = read_volume(_argument(args, "--image"), "image")
    exported = read_label_for(image, labels[0]).array
    assert exported.any() and not exported.all()


def test_close_scene_cancels_the_job_and_forgets_the_cohort_and_the_chart(make_logic, scene):
    """vtkMRMLScene::Clear restarts node IDs: nothing the logic kept may resolve to a new node."""
    import slicer

    logic = make_logic(work=fake_propagate)
    node, truth, _, direction = _volume()
    _paint(logic, node, truth, direction)
    chart = logic.trainingChartNode()
    chart_id, volume_id = chart.GetID(), node.GetID()
    job = logic.propagate()
    scene.Clear(0)  # what File > Close Scene does
    assert job.state == "cancelled" and logic.started[0].cancelled
    assert logic.cohort == []
    unrelated_volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other")
    unrelated_chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "other")
    assert (unrelated_volume.GetID(), unrelated_chart.GetID()) == (volume_id, chart_id)
    assert logic.entry(unrelated_volume) is None
    fresh = logic.trainingChartNode()
    assert fresh is not unrelated_chart and fresh.GetNumberOfPlotSeriesNodes() == 2
    assert logic.trainingCurves() == []
