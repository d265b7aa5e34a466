"""Cohorts on disk: manifests, `rada propagate`-style runs that resume, cache and never half-write."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import disk_stack

from RADALib.annotation import simulate_sparse_annotation
from RADALib.cache import ArrayCache
from RADALib.cohort import cohort_from_folders, cohort_from_la_folder, load_cohort, save_cohort
from RADALib.errors import InputError
from RADALib.events import Progress
from RADALib.metrics import dice
from RADALib.propagation import PropagationConfig
from RADALib.pseudo_labels import load_case_result, propagate_cohort
from RADALib.volume import read_volume

DIRECTION = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]], float)  # stored y-x-(-z)


def save(path, array_xyz, spacing=(0.8, 0.8, 1.5)):
    image = sitk.GetImageFromArray(np.transpose(array_xyz, (2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin((5.0, -2.0, 30.0))
    image.SetDirection(DIRECTION.ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def cohort_folder(tmp_path):
    for i in range(3):
        image, label = disk_stack(shape=(40, 36, 24), radius=7, shift_per_slice=(1.0, 0.0), seed=i)
        save(tmp_path / "images" / f"case{i}.nrrd", image)
        save(tmp_path / "labels" / f"case{i}_seg.nrrd", label)
    # case2 carries a user's sparse annotation (three painted slices) instead of simulation
    _, label = disk_stack(shape=(40, 36, 24), radius=7, shift_per_slice=(1.0, 0.0), seed=2)
    save(tmp_path / "sparse" / "case2.nrrd", simulate_sparse_annotation(label).label)
    return tmp_path


def test_cohort_from_folders_matches_files_by_case_id_and_round_trips(cohort_folder):
    cohort = cohort_from_folders(
        cohort_folder / "images", cohort_folder / "labels", cohort_folder / "sparse", labeled=1
    )
    assert [c.id for c in cohort.cases] == ["case0", "case1", "case2"]
    assert [c.id for c in cohort.labeled] == ["case0", "case2"] and [
        c.id for c in cohort.unlabeled
    ] == ["case1"]
    path = save_cohort(cohort, cohort_folder / "cohort.json")
    assert json.loads(path.read_text())["cases"][0]["image"] == "images/case0.nrrd"
    again = load_cohort(path)
    assert [(c.id, c.image, c.labeled) for c in again.cases] == [
        (c.id, c.image, c.labeled) for c in cohort.cases
    ]


def test_cohort_that_names_a_missing_file_is_refused(cohort_folder):
    cohort = cohort_from_folders(cohort_folder / "images", cohort_folder / "labels", labeled=1)
    path = save_cohort(cohort, cohort_folder / "cohort.json")
    (cohort_folder / "images" / "case1.nrrd").unlink()
    with pytest.raises(
        InputError, match=r"cohort\.json: case case1: image file .*case1\.nrrd not found"
    ):
        load_cohort(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match=r"cohort\.json: not valid JSON \(line 1"):
        load_cohort(path)


def test_la_style_folder_labels_the_first_ids_and_holds_out_the_last(tmp_path):
    import h5py

    ids = [f"ID{i}" for i in range(5)]
    for case_id in ids:
        (tmp_path / case_id).mkdir()
        with h5py.File(tmp_path / case_id / "mri_norm2.h5", "w") as handle:
            handle["image"] = np.zeros((8, 8, 8), np.float32)
            handle["label"] = np.zeros((8, 8, 8), np.uint8)
    (tmp_path / "train.list").write_text("\n".join(ids) + "\n")
    cohort = cohort_from_la_folder(tmp_path, labeled=2, validation=1)
    assert [c.id for c in cohort.labeled] == ["ID0", "ID1"]
    assert [c.id for c in cohort.unlabeled] == ["ID2", "ID3"] and [
        c.id for c in cohort.validation
    ] == ["ID4"]


def test_propagating_a_cohort_writes_reviewable_labels_with_the_image_header(
    cohort_folder, translation_registrar
):
    cohort = cohort_from_folders(
        cohort_folder / "images", cohort_folder / "labels", cohort_folder / "sparse", labeled=1
    )
    out = cohort_folder / "out"
    reports = propagate_cohort(
        cohort, out, translation_registrar, PropagationConfig(crop_margin=30)
    )
    assert [r.status for r in reports] == ["propagated", "propagated"]
    for case_id in ("case0", "case2"):
        folder = out / "cases" / case_id
        fused = sitk.ReadImage(str(folder / "fused.nrrd"))
        image = sitk.ReadImage(str(cohort_folder / "images" / f"{case_id}.nrrd"))
        np.testing.assert_allclose(fused.GetDirection(), image.GetDirection())
        np.testing.assert_allclose(fused.GetOrigin(), image.GetOrigin())
        truth = read_volume(cohort_folder / "labels" / f"{case_id}_seg.nrrd", "label").array
        assert dice(read_volume(folder / "fused.nrrd", "label").array, truth) > 0.9
        result = load_case_result(folder)
        assert set(result.labels) == {0, 1, 2} and result.annotation.slices[2]
    summary = json.loads((out / "propagation.json").read_text())
    assert [c["id"] for c in summary["cases"]] == ["case0", "case2"]


def test_a_rerun_resumes_and_a_new_folder_reuses_the_cache(
    cohort_folder, translation_registrar, tmp_path
):
    cohort = cohort_from_folders(cohort_folder / "images", cohort_folder / "labels", labeled=2)
    cache = ArrayCache(tmp_path / "cache")
    config = PropagationConfig(crop_margin=30)
    propagate_cohort(cohort, cohort_folder / "out", translation_registrar, config, cache)
    first = translation_registrar.calls
    assert first > 0
    reports = propagate_cohort(cohort, cohort_folder / "out", translation_registrar, config, cache)
    assert [r.status for r in reports] == [
        "resumed",
        "resumed",
    ] and translation_registrar.calls == first
    reports = propagate_cohort(
        cohort, cohort_folder / "elsewhere", translation_registrar, config, cache
    )
    assert [r.status for r in reports] == [
        "cached",
        "cached",
    ] and translation_registrar.calls == first
    reports = propagate_cohort(
        cohort,
        cohort_folder / "out",
        translation_registrar,
        PropagationConfig(crop_margin=31),
        cache,
    )
    assert [r.status for r in reports] == [
        "propagated",
        "propagated",
    ] and translation_registrar.calls > first


def test_an_interrupted_run_keeps_finished_cases_and_leaves_no_partial_case(
    cohort_folder, translation_registrar
):
    cohort = cohort_from_folders(cohort_folder / "images", cohort_folder / "labels", labeled=2)
    original = translation_registrar.register

    def interrupt_on_second_case(pairs, spacing):
        if (cohort_folder / "out" / "cases" / "case0" / "case.json").exists():
            raise KeyboardInterrupt  # the first case is finished: interrupt the second
        return original(pairs, spacing)

    translation_registrar.register = interrupt_on_second_case
    with pytest.raises(KeyboardInterrupt):
        propagate_cohort(
            cohort, cohort_folder / "out", translation_registrar, PropagationConfig(crop_margin=30)
        )
    assert (cohort_folder / "out" / "cases" / "case0" / "case.json").exists()
    assert not (cohort_folder / "out" / "cases" / "case1").exists()
    translation_registrar.register = original
    events = []
    reports = propagate_cohort(
        cohort,
        cohort_folder / "out",
        translation_registrar,
        PropagationConfig(crop_margin=30),
        progress=Progress(events.append),
    )
    assert [r.status for r in reports] == ["resumed", "propagated"]
    # the resumed run counts only the case left to do, and says the other one was kept
    counted = [(e["step"], e["total"]) for e in events if e.get("total") is not None]
    assert (
        counted == [(0, 1), (1, 1)]
        and "1 of 2" in events[0]["message"]
        and events[-1]["case"] == "case1"
    )


def test_a_cohort_without_labeled_cases_is_refused(cohort_folder, translation_registrar):
    cohort = cohort_from_folders(cohort_folder / "images")
    with pytest.raises(InputError, match="no labeled case"):
        propagate_cohort(cohort, cohort_folder / "out", translation_registrar)


def test_an_empty_dense_label_names_the_file(cohort_folder, translation_registrar):
    save(cohort_folder / "labels" / "case0_seg.nrrd", np.zeros((40, 36, 24), np.uint8))
    cohort = cohort_from_folders(cohort_folder / "images", cohort_folder / "labels", labeled=1)
    with pytest.raises(InputError, match=r"case0_seg\.nrrd: the label map is empty"):
        propagate_cohort(cohort, cohort_folder / "out", translation_registrar)


def test_the_case_record_says_each_views_bound_and_the_slices_it_cut(
    cohort_folder, translation_registrar
):
    cohort = cohort_from_folders(cohort_folder / "images", cohort_folder / "labels", labeled=1)
    out = cohort_folder / "out"
    propagate_cohort(cohort, out, translation_registrar, PropagationConfig(crop_margin=30))
    record = json.loads((out / "cases" / "case0" / "case.json").read_text())
    result = load_case_result(out / "cases" / "case0")
    shape = result.annotation.label.shape
    assert set(record["bounds"]) == {"sagittal", "coronal", "axial"}
    for axis, plane in enumerate(("sagittal", "coronal", "axial")):
        low, high = record["bounds"][plane]["bound"]
        assert record["bounds"][plane]["cut_slices"] == shape[axis] - (high - low + 1)
        labels = np.moveaxis(result.labels[axis], axis, 0)
        assert not labels[:low].any() and not labels[high + 1 :].any()
    assert record["bounds"]["sagittal"]["cut_slices"] > 0  # the disk drifts over part of x only

    unbounded = PropagationConfig(crop_margin=30, bound_margin=None)
    propagate_cohort(cohort, cohort_folder / "off", translation_registrar, unbounded)
    record = json.loads((cohort_folder / "off" / "cases" / "case0" / "case.json").read_text())
    assert all(v == {"bound": None, "cut_slices": 0} for v in record["bounds"].values())
