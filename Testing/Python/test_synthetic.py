"""Tests of RADALib.synthetic: determinism, label geometry, image statistics and task difficulty."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from scipy import ndimage

from RADALib.errors import InputError
from RADALib.synthetic import (
    FRACTION_BOUNDS,
    SyntheticConfig,
    case_seed,
    synthetic_case,
    synthetic_cohort,
)

CONFIG = SyntheticConfig()
N_CASES = 6


@pytest.fixture(scope="module")
def cohort() -> list[tuple[str, np.ndarray, np.ndarray]]:
    return list(synthetic_cohort(N_CASES, seed=0))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def best_threshold_dice(image: np.ndarray, label: np.ndarray) -> float:
    """The highest Dice any global threshold ``image > t`` reaches against ``label`` (exact, all t)."""
    order = np.argsort(image.ravel(), kind="stable")[::-1]
    hits = np.cumsum(label.ravel()[order] > 0)
    predicted = np.arange(1, hits.size + 1)
    return float(np.max(2.0 * hits / (predicted + np.count_nonzero(label))))


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_arrays(cohort):
    _, image, label = cohort[3]
    for seed in (
        case_seed(0, 3),
        np.random.default_rng(case_seed(0, 3)),
    ):  # an integer or a Generator
        again_image, again_label = synthetic_case(seed)
        np.testing.assert_array_equal(again_image, image)
        np.testing.assert_array_equal(again_label, label)


def test_different_seeds_give_different_shapes(cohort):
    (_, image_a, label_a), (_, image_b, label_b) = cohort[0], cohort[1]
    assert not np.array_equal(label_a, label_b)
    assert not np.array_equal(image_a, image_b)
    assert dice(label_a, label_b) < 0.9


def test_cohort_ids(cohort):
    assert [case_id for case_id, _, _ in cohort] == [f"case_{i:03d}" for i in range(N_CASES)]
    # A cohort's first cases do not depend on how many cases are drawn.
    first = next(synthetic_cohort(2, seed=0))
    assert first[0] == "case_000"
    np.testing.assert_array_equal(first[2], cohort[0][2])


def test_case_seed_is_pure_and_distinct():
    assert case_seed(0, 1) == case_seed(0, 1)
    seeds = {case_seed(s, i) for s in range(3) for i in range(20)}
    assert len(seeds) == 60


def test_cohort_seed_changes_the_cases(cohort):
    other = next(synthetic_cohort(1, seed=1))
    assert other[0] == "case_000"
    assert not np.array_equal(other[2], cohort[0][2])


def test_empty_and_negative_cohorts():
    assert list(synthetic_cohort(0)) == []
    with pytest.raises(InputError):
        list(synthetic_cohort(-1))


# ----------------------------------------------------------------------------- label geometry


@pytest.mark.parametrize("index", range(N_CASES))
def test_label_is_one_component_inside_the_volume(cohort, index):
    _, _, label = cohort[index]
    assert label.dtype == np.uint8 and label.shape == CONFIG.shape
    assert set(np.unique(label)) == {0, 1}
    _, n_components = ndimage.label(label)
    assert n_components == 1
    np.testing.assert_array_equal(ndimage.binary_fill_holes(label), label > 0)  # no cavities
    fraction = label.mean()
    assert FRACTION_BOUNDS[0] <= fraction <= FRACTION_BOUNDS[1]
    # Clear of every face by the margin (less one voxel for rounding).
    for axis, spacing in enumerate(CONFIG.spacing):
        margin = max(1, int(CONFIG.margin_mm / spacing) - 1)
        moved = np.moveaxis(label, axis, 0)
        assert not moved[:margin].any() and not moved[-margin:].any(), (
            f"label within {margin} voxels of a face on axis {axis}"
        )


def test_shapes_vary_between_cases(cohort):
    labels = [label for _, _, label in cohort]
    for a, b in itertools.combinations(range(len(labels)), 2):
        assert dice(labels[a], labels[b]) < 0.9, (a, b)
    fractions = [label.mean() for label in labels]
    assert max(fractions) - min(fractions) > 0.01
    centroids = np.array([ndimage.center_of_mass(label) for label in labels])
    assert np.ptp(centroids, axis=0).max() > 3.0


@pytest.mark.parametrize("index", range(N_CASES))
def test_neighbouring_axial_slices_are_similar(cohort, index):
    _, image, label = cohort[index]
    areas = label.sum(axis=(0, 1))
    bulk = areas >= 0.1 * areas.max()
    slice_dice = [
        dice(label[:, :, z], label[:, :, z + 1])
        for z in range(label.shape[2] - 1)
        if bulk[z] and bulk[z + 1]
    ]
    assert len(slice_dice) >= 10
    assert np.mean(slice_dice) > 0.85
    assert np.min(slice_dice) > 0.4
    correlations = [
        np.corrcoef(image[:, :, z].ravel(), image[:, :, z + 1].ravel())[0, 1]
        for z in range(image.shape[2] - 1)
    ]
    assert np.mean(correlations) > 0.75


# ----------------------------------------------------------------------------- image


@pytest.mark.parametrize("index", range(N_CASES))
def test_image_is_z_scored_float32(cohort, index):
    _, image, _ = cohort[index]
    assert image.dtype == np.float32 and image.shape == CONFIG.shape
    assert np.isfinite(image).all()
    assert abs(float(image.mean(dtype=np.float64))) < 1e-3
    assert abs(float(image.std(dtype=np.float64)) - 1.0) < 1e-3


@pytest.mark.parametrize("index", range(N_CASES))
def test_organ_is_brighter_than_background(cohort, index):
    _, image, label = cohort[index]
    organ, background = image[label > 0], image[label == 0]
    assert organ.mean() > background.mean() + 0.5
    # Just outside the organ (the gap that separates it from the distractors) is darker than just inside.
    inner = (label > 0) & ~ndimage.binary_erosion(label, iterations=2)
    outer = ndimage.binary_dilation(label, iterations=1) & ~(label > 0)
    assert image[inner].mean() > image[outer].mean() + 0.5


@pytest.mark.parametrize("index", range(N_CASES))
def test_no_global_threshold_segments_the_organ(cohort, index):
    _, image, label = cohort[index]
    assert best_threshold_dice(image, label) < 0.9


def test_distractors_and_bias_are_what_defeat_a_threshold():
    # Same organ (the label depends only on the seed and geometry) without look-alikes and bias.
    easy = dataclasses.replace(
        CONFIG, vessel=False, n_bright=(0, 0), n_mid=(0, 0), bias_strength=0.0
    )
    for seed in (4,):
        hard_image, hard_label = synthetic_case(seed)
        easy_image, easy_label = synthetic_case(seed, easy)
        np.testing.assert_array_equal(hard_label, easy_label)
        assert best_threshold_dice(easy_image, easy_label) > 0.95
        assert best_threshold_dice(hard_image, hard_label) < 0.9


# ----------------------------------------------------------------------------- settings


def test_other_grid_sizes_work():
    config = SyntheticConfig(shape=(48, 40, 32), spacing=(2.0, 2.0, 3.0))
    image, label = synthetic_case(5, config)
    assert image.shape == label.shape == (48, 40, 32)
    assert ndimage.label(label)[1] == 1
    assert FRACTION_BOUNDS[0] <= label.mean() <= FRACTION_BOUNDS[1]
    assert (
        not label[0].any()
        and not label[-1].any()
        and not label[:, :, 0].any()
        and not label[:, :, -1].any()
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"shape": (8, 80, 64)},
        {"shape": (96, 80)},
        {"spacing": (1.0, 0.0, 1.5)},
        {"organ_fraction": (0.2, 0.1)},
        {"organ_fraction": (0.0, 0.1)},
        {"n_tubes": (3, 1)},
        {"noise_std": -0.1},
        {"appendage_probability": 1.5},
    ],
)
def test_invalid_settings_are_refused(settings):
    with pytest.raises(InputError):
        SyntheticConfig(**settings)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIG.noise_std = 0.0  # type: ignore[misc]
