"""Several touching structures (background + 2 classes) end to end, and small real-like volumes.

Synthetic data: two touching boxes labelled 1 and 2 in small volumes (the Decathlon Hippocampus's
shape); the real Hippocampus files are read when they are beside the checkout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TranslationRegistrar, hippocampus_folder
from scipy import ndimage

from RADALib.annotation import (
    check_structures,
    detect_sparse_annotation,
    missing_structures,
    simulate_sparse_annotation,
    slice_structures,
)
from RADALib.cli import main as rada
from RADALib.cohort import Case, Cohort
from RADALib.data import crop_window, extract, normalize_intensity
from RADALib.errors import InputError
from RADALib.evaluation import evaluate_files
from RADALib.inference import predict_files, sliding_window_inference
from RADALib.networks import VNet
from RADALib.postprocessing import keep_largest_component, recommend_largest_component
from RADALib.propagation import PropagationConfig, propagate, smooth_slice, vote
from RADALib.pseudo_labels import propagate_cohort
from RADALib.terminology import class_entry
from RADALib.train_config import preset
from RADALib.volume import read_volume, volume_from_array, write_like

HIPPOCAMPUS = hippocampus_folder()
SHAPE = (35, 50, 24)  # a Hippocampus-sized volume: its axial axis is not a multiple of 16
NAMES = {1: "anterior hippocampus", 2: "posterior hippocampus"}


def two_structures(shape=SHAPE, seed=0, shift=0):
    """Image and label of two boxes touching along y: 1 (anterior) before 2 (posterior)."""
    label = np.zeros(shape, np.uint8)
    x0 = 10 + shift
    label[x0 : x0 + 12, 12:24, 6:18] = 1
    label[x0 - 2 : x0 + 14, 24:40, 4:20] = 2
    rng = np.random.default_rng(seed)
    image = (label * 60.0 + 40.0 + rng.normal(0, 3, shape)).astype(np.float32)
    return image, label


def offset_structures():
    """Class 2 is thick where class 1 is absent, thin where both are: the largest sagittal
    slice holds class 2 only, while some sagittal slices hold both."""
    label = np.zeros((30, 40, 26), np.uint8)
    label[2:10, 20:36, 2:22] = 2
    label[10:12, 20:36, 8:14] = 2
    label[10:20, 10:20, 8:14] = 1
    return label


# ---------------------------------------------------------------- 1. sparse annotation


def test_simulated_slices_carry_every_structure_a_plane_can_show():
    label = offset_structures()
    annotation = simulate_sparse_annotation(label)
    carried = slice_structures(annotation)
    assert carried[0] == {1, 2}  # sagittal: a slice through both, not the largest (class 2 only)
    assert carried[2] == {1, 2}
    assert carried[1] == {2}  # no coronal slice holds both (they touch along y)
    assert missing_structures(annotation) == {"coronal": [1]}


def test_simulated_slices_cover_a_structure_no_slice_shares_with_another():
    label = np.zeros((40, 40, 40), np.uint8)
    label[2:8, 2:8, 2:8] = 1  # small, and apart from class 2 along every axis
    label[12:36, 12:36, 12:36] = 2
    annotation = simulate_sparse_annotation(label)
    assert missing_structures(annotation) == {"sagittal": [1], "coronal": [2], "axial": [1]}
    assert check_structures(annotation, {1: "a", 2: "b"}) == missing_structures(annotation)


def test_a_structure_on_no_annotated_slice_is_refused_in_one_line_naming_file_and_structure():
    _, dense = two_structures()
    sparse = simulate_sparse_annotation(dense, slices={0: [16], 1: [30], 2: [12]}).label
    sparse[sparse == 1] = 0  # the anterior part painted nowhere
    annotation = detect_sparse_annotation(sparse, "case7_sparse.nrrd")
    with pytest.raises(InputError) as error:
        check_structures(annotation, NAMES, "case7_sparse.nrrd")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("case7_sparse.nrrd: ") and "anterior hippocampus" in message


def test_a_painted_label_missing_a_structure_is_refused_by_propagation(tmp_path):
    image, dense = two_structures()
    reference = volume_from_array(image)
    sparse = simulate_sparse_annotation(dense, slices={0: [16], 1: [30], 2: [12]}).label
    sparse[sparse == 1] = 0  # every plane still painted, the anterior part nowhere
    image_path = write_like(reference, image, tmp_path / "c0.nrrd")
    sparse_path = write_like(reference, sparse, tmp_path / "c0_sparse.nrrd")
    cohort = Cohort("two", [Case("c0", image_path, sparse_path)], dict(NAMES))
    with pytest.raises(InputError, match=r"c0_sparse\.nrrd: structure 1 \(anterior hippocampus\)"):
        propagate_cohort(cohort, tmp_path / "out", TranslationRegistrar())


def test_the_case_record_says_which_structure_is_missing_from_which_plane(tmp_path):
    label = offset_structures()
    image = (label * 50.0 + 10.0).astype(np.float32)
    reference = volume_from_array(image)
    image_path = write_like(reference, image, tmp_path / "c0.nrrd")
    label_path = write_like(reference, label, tmp_path / "c0_label.nrrd")
    cohort = Cohort("two", [Case("c0", image_path, None, label_path, True)], dict(NAMES))
    [report] = propagate_cohort(cohort, tmp_path / "out", TranslationRegistrar())
    assert report.missing == {"coronal": [1]}
    record = json.loads((report.folder / "case.json").read_text())
    assert record["missing_structures"] == {"coronal": [1]}


# ---------------------------------------------------------------- 2. propagation


def test_propagation_carries_every_class_and_gives_each_voxel_one_class():
    image, dense = two_structures()
    annotation = simulate_sparse_annotation(dense)
    result = propagate(
        image, annotation, (1.0, 1.0, 1.0), TranslationRegistrar(), PropagationConfig()
    )
    for axis in range(3):
        pseudo = result.labels[axis]
        assert set(np.unique(pseudo)) <= {0, 1, 2}
        source = annotation.source_slice(axis)
        # away from the source slice, both structures that crossed it are still there
        other = source + 3 if source + 3 < pseudo.shape[axis] else source - 3
        assert set(np.unique(np.take(pseudo, other, axis=axis))) >= set(
            np.unique(np.take(annotation.label, source, axis=axis))
        ) - {0}
    fused = result.fused()
    assert set(np.unique(fused)) == {0, 1, 2}


def test_smoothing_gives_each_voxel_one_class_that_its_smoothed_class_claims():
    disk = np.add.outer(np.arange(-2, 3) ** 2, np.arange(-2, 3) ** 2) <= 4
    for seed in range(10):
        rng = np.random.default_rng(seed)
        label = ndimage.zoom(rng.integers(0, 3, (8, 8)), 4, order=0).astype(np.uint8)
        out = smooth_slice(label, 2)
        assert set(np.unique(out)) <= {0, 1, 2}
        for value in (1, 2):
            claim = ndimage.binary_closing(ndimage.binary_opening(label == value, disk), disk)
            assert np.all(claim[out == value])
            lower = [
                ndimage.binary_closing(ndimage.binary_opening(label == v, disk), disk)
                for v in range(1, value)
            ]
            taken = np.logical_or.reduce(lower) if lower else np.zeros_like(claim)
            assert np.all(out[claim & ~taken] == value)


def test_the_fused_vote_takes_the_class_of_larger_weight_and_ties_to_the_lower_class():
    ones, twos = np.ones((2, 2, 2), np.uint8), np.full((2, 2, 2), 2, np.uint8)
    w = np.ones((2, 2, 2), np.float32)
    assert np.all(vote([ones, twos], [w, w]) == 1)
    assert np.all(vote([ones, twos], [w, 2 * w]) == 2)


# ---------------------------------------------------------------- 3. components per structure


def test_largest_component_is_judged_and_kept_per_structure():
    label = np.zeros((20, 20, 20), np.uint8)
    label[2:10, 2:10, 2:10] = 1
    label[10:14, 2:10, 2:10] = 2  # touches class 1: one region of its own
    label[15:19, 15:19, 15:19] = 2  # a second region of class 2 of comparable size
    record = recommend_largest_component([label], [1, 2])
    assert record["classes"] == [1]
    kept = keep_largest_component(label, [1, 2])
    assert (kept == 1).sum() == (label == 1).sum()
    assert (kept == 2).sum() == 256 and kept[16, 16, 16] == 0


# ---------------------------------------------------------------- 5. robustness


def test_intensity_normalisation_handles_uint8_and_floats_in_the_millions():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, SHAPE).astype(np.uint8)
    z = normalize_intensity(small)
    reference = (small.astype(np.float64) - small.mean()) / small.std()
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, reference, atol=1e-5)
    huge = (rng.random(SHAPE) * 1.7e6).astype(np.float32)
    z = normalize_intensity(huge)
    assert np.isfinite(z).all()
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1.0) < 1e-4
    # the scale does not matter: the same image stored ×1e4 gives the same z-scores
    np.testing.assert_allclose(
        normalize_intensity(small.astype(np.float32) * 1e4), normalize_intensity(small), atol=1e-4
    )


def test_a_volume_smaller_than_the_patch_is_padded_for_the_vnet_and_cropped_back():
    patch = (48, 64, 32)  # larger than (35, 50, 24) on every axis
    window = crop_window(SHAPE, patch, np.random.default_rng(0))
    image = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    crop = extract(image, window, patch, fill=-1.0)
    assert crop.shape == patch
    assert (crop != -1.0).sum() == image.size  # the whole volume, centred, the rest padding
    net = VNet(n_classes=3, base_filters=2).eval()

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(net(batch), dim=1)

    with torch.no_grad():
        probabilities = sliding_window_inference(
            torch.from_numpy(normalize_intensity(image))[None, None], predictor, patch, "dense"
        )
    assert tuple(probabilities.shape) == (3, *SHAPE)
    np.testing.assert_allclose(probabilities.sum(0).numpy(), 1.0, atol=1e-5)


# ---------------------------------------------------------------- 6. terminology


def test_hippocampus_parts_share_the_snomed_type_and_differ_by_name_and_colour():
    anterior, posterior = class_entry(NAMES[1], 1), class_entry(NAMES[2], 2)
    for entry in (anterior, posterior, class_entry("Hippocampus")):
        assert entry["terminology"]["type"] == {
            "scheme": "SCT",
            "code": "5366007",
            "meaning": "Hippocampus",
        }
    assert anterior["name"] != posterior["name"] and anterior["color"] != posterior["color"]


# ---------------------------------------------------------------- 3, 4. end to end


def test_two_structures_end_to_end_propagate_train_predict_evaluate(
    tmp_path, monkeypatch, capsys, one_torch_thread
):
    from RADALib.workflow import train_model

    monkeypatch.setenv("RADA_CACHE_DIR", str(tmp_path / "no-weights"))
    cases = []
    for i in range(3):
        image, label = two_structures(seed=i, shift=i)
        stored = (
            (image * 2e4).astype(np.float32) if i == 1 else np.clip(image, 0, 255).astype(np.uint8)
        )
        reference = volume_from_array(stored)
        image_path = write_like(reference, stored, tmp_path / "images" / f"c{i}.nrrd")
        label_path = write_like(reference, label, tmp_path / "labels" / f"c{i}.nrrd")
        cases.append(Case(f"c{i}", image_path, None, label_path, simulate_from_dense=i < 2))
    cohort = Cohort("two", cases, dict(NAMES))
    experiment = tmp_path / "experiment"
    propagate_cohort(cohort, experiment / "propagation", TranslationRegistrar())
    config = preset(
        "small",
        iterations=2,
        patch=(48, 64, 32),  # larger than the volumes: padded in training and inference
        network={"base_filters": 2},
        uncertainty_passes=1,
        device="cpu",
        checkpoint_every=2,
        validate_every=0,
        prefetch=0,
    )
    run = train_model(
        cohort,
        experiment,
        config,
        propagation_dir=experiment / "propagation",
        cache_dir=tmp_path / "cache",
    )
    manifest = json.loads((run.model / "manifest.json").read_text())
    assert {k: v["name"] for k, v in manifest["classes"].items()} == {"1": NAMES[1], "2": NAMES[2]}
    assert manifest["classes"]["1"]["terminology"]["type"]["code"] == "5366007"
    assert manifest["network"]["n_classes"] == 3  # set from the cohort (the preset says 2)

    [output] = predict_files(run.model, [cases[2].image], tmp_path / "predictions")
    predicted = read_volume(output).array
    assert predicted.shape == SHAPE and set(np.unique(predicted)) <= {0, 1, 2}

    # evaluation: per structure and their mean (a perfect and a half-right structure)
    truth = read_volume(cases[2].dense_label).array
    guess = truth.copy()
    guess[(truth == 2) & (np.indices(SHAPE)[1] >= 32)] = 0
    reference = read_volume(cases[2].image)
    guess_path = write_like(reference, guess, tmp_path / "guess" / "c2.nrrd")
    evaluation = evaluate_files([("c2", guess_path, cases[2].dense_label)])
    summary = evaluation.summary()
    assert summary[1]["dice"]["mean"] == pytest.approx(1.0)
    assert summary[2]["dice"]["mean"] == pytest.approx(2 / 3)
    assert evaluation.structure_mean()["dice"] == pytest.approx((1 + 2 / 3) / 2)
    capsys.readouterr()
    assert (
        rada(
            [
                "evaluate",
                "--pred",
                str(guess_path),
                "--truth",
                str(cases[2].dense_label),
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "mean of structures" in table
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["mean_over_structures"]["dice"] == pytest.approx((1 + 2 / 3) / 2)
    assert set(written["summary"]) == {"1", "2"}


# ---------------------------------------------------------------- the real files


def _hippocampus_cases(n: int) -> list[tuple[Path, Path]]:
    if HIPPOCAMPUS is None:
        pytest.skip(
            "the Hippocampus data set is not in shared/data/ above the checkout "
            "(or $RADA_HIPPOCAMPUS_DIR)"
        )
    labels = sorted((HIPPOCAMPUS / "labelsTr").glob("*.nii.gz"))[:n]
    return [(HIPPOCAMPUS / "imagesTr" / p.name, p) for p in labels]


def test_real_hippocampus_annotations_carry_both_structures_and_normalise():
    for image_path, label_path in _hippocampus_cases(12):
        image = read_volume(image_path, "image")
        label = read_volume(label_path, "label").array.astype(np.uint8)
        annotation = simulate_sparse_annotation(label, source=str(label_path))
        check_structures(annotation, {1: "Anterior", 2: "Posterior"}, str(label_path))
        carried = slice_structures(annotation)
        assert carried[0] == {1, 2} and carried[2] == {1, 2}, label_path.name
        z = normalize_intensity(image.array)
        assert np.isfinite(z).all() and abs(float(z.mean())) < 1e-3
