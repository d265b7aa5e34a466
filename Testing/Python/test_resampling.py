"""Resampling onto a training spacing and back: grid geometry, images, labels per class,
distances in original slice units, annotated slices, probabilities on the input's grid."""

from __future__ import annotations

import numpy as np
import pytest

from RADALib.data import TrainingCase
from RADALib.metrics import dice
from RADALib.resampling import (
    mapped_slices,
    plan_spacing,
    resample_array,
    resample_case,
    resample_distances,
    resample_labels,
    resample_probabilities,
    resample_volume,
    resampled_shape,
    same_spacing,
    sample_positions,
)
from RADALib.volume import volume_from_array

PERMUTED = np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], float)


def ball(shape, spacing, centre_mm=(-6.0, 4.0, 5.0), radius_mm=11.0) -> np.ndarray:
    """A ball of ``radius_mm`` at ``centre_mm`` from the grid's centre (the same physical object
    on every grid that shares that centre)."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s - c for n, s, c in zip(shape, spacing, centre_mm)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return (x**2 + y**2 + z**2 <= radius_mm**2).astype(np.uint8)


def centre(volume) -> np.ndarray:
    """The world position of the grid's centre."""
    half = [(n - 1) / 2.0 * s for n, s in zip(volume.shape, volume.spacing)]
    return np.asarray(volume.origin) + np.asarray(volume.direction) @ np.asarray(half)


# ----------------------------------------------------------------------------- the grid


def test_the_planned_spacing_is_the_median_per_axis():
    spacings = [(0.7, 0.7, 3.0), (1.0, 1.0, 1.0), (0.8, 0.9, 2.0)]
    assert plan_spacing(spacings) == (0.8, 0.9, 2.0)
    with pytest.raises(ValueError, match="positive"):
        plan_spacing([(1.0, 0.0, 1.0)])


def test_spacings_within_a_relative_tolerance_are_the_same():
    assert same_spacing((0.625, 0.625, 0.625), (0.6250001, 0.625, 0.625))
    assert not same_spacing((0.625, 0.625, 0.625), (0.7, 0.625, 0.625))


def test_a_resampled_grid_keeps_the_physical_extent_and_the_centre():
    volume = volume_from_array(
        np.zeros((57, 40, 13), np.float32), (0.7, 1.0, 3.0), (12.0, -40.0, 7.5), PERMUTED
    )
    resampled = resample_volume(volume, (1.0, 1.0, 1.0))
    assert resampled.shape == (40, 40, 39)  # round(57 x 0.7), 40, 13 x 3
    extent = np.asarray(volume.shape) * volume.spacing
    assert np.all(np.abs(np.asarray(resampled.shape) * resampled.spacing - extent) <= 0.5)
    np.testing.assert_allclose(centre(resampled), centre(volume), atol=1e-9)
    np.testing.assert_array_equal(resampled.direction, volume.direction)
    # the voxel centres lie where sample_positions says, in the old grid's index units
    positions = sample_positions(13, 3.0, 39, 1.0)
    assert positions[19] == 6.0 and positions[1] - positions[0] == pytest.approx(1 / 3)


def test_an_unchanged_spacing_returns_the_very_same_arrays():
    image = np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32)
    label = (image > 0).astype(np.uint8)
    spacing = (0.625, 0.625, 0.625)
    assert resample_array(image, spacing, (0.6250002, 0.625, 0.625)) is image
    assert resample_labels(label, spacing, spacing) is label
    assert resampled_shape(image.shape, spacing, spacing) == image.shape


# ----------------------------------------------------------------------------- arrays


def test_a_ball_resampled_coarse_and_back_keeps_its_shape():
    spacing, coarse = (1.0, 1.0, 1.0), (2.5, 2.5, 2.5)
    truth = ball((48, 48, 48), spacing)
    down = resample_labels(truth, spacing, coarse)
    assert down.shape == (19, 19, 19)
    assert dice(down, ball(down.shape, coarse)) > 0.9
    back = resample_labels(down, coarse, spacing, truth.shape)
    assert back.shape == truth.shape and dice(back, truth) > 0.93
    # the image path too: an anti-aliased, interpolated image thresholded at half
    image = resample_array(truth.astype(np.float32), spacing, coarse)
    again = resample_array(image, coarse, spacing, truth.shape)
    assert dice(again > 0.5, truth) > 0.93


def test_coarsening_smooths_before_sampling():
    stripes = np.zeros((60, 4, 4), np.float32)
    stripes[::2] = 1.0  # the finest pattern: aliasing would keep it at full contrast
    coarse = resample_array(stripes, (1.0, 1.0, 1.0), (3.0, 1.0, 1.0))
    assert coarse.shape == (20, 4, 4)
    assert np.ptp(coarse[2:-2]) < 0.3 and abs(float(coarse.mean()) - 0.5) < 0.05


def test_label_resampling_keeps_two_touching_classes_and_invents_none():
    label = np.zeros((30, 30, 10), np.uint8)
    label[5:25, 5:15] = 1
    label[5:25, 15:25] = 2  # touching class 1 along y = 15
    out = resample_labels(label, (1.0, 1.0, 3.0), (0.5, 0.5, 1.0))
    assert out.shape == (60, 60, 30) and set(np.unique(out)) == {0, 1, 2}
    # the boundary stays at 15 mm: new voxel centres at y < 15 mm are class 1, past it class 2
    y_mm = (np.arange(60) + 0.5) * 0.5  # centres of 0.5 mm voxels spanning 30 mm
    middle = out[30, :, 15]
    assert np.all(middle[(y_mm > 5.5) & (y_mm < 14.5)] == 1)
    assert np.all(middle[(y_mm > 15.5) & (y_mm < 24.5)] == 2)
    # a value between two classes (class 1.5 = "1 or 2") never turns into a third class
    three = np.zeros((20, 4, 4), np.uint8)
    three[:10], three[10:] = 1, 3
    assert set(np.unique(resample_labels(three, (1.0, 1.0, 1.0), (0.3, 1.0, 1.0)))) == {1, 3}


def test_probabilities_go_back_onto_the_input_grid():
    spacing, training = (0.7, 0.7, 3.0), (1.0, 1.0, 1.0)
    shape = (57, 57, 13)
    truth = ball(shape, spacing)
    at_training = ball(resampled_shape(shape, spacing, training), training).astype(np.float32)
    probabilities = np.stack([1.0 - at_training, at_training])
    back = resample_probabilities(probabilities, training, spacing, shape)
    assert back.shape == (2, *shape) and back.dtype == np.float32
    np.testing.assert_allclose(back.sum(axis=0), 1.0, atol=1e-5)
    assert dice(back.argmax(0), truth) > 0.93


# ----------------------------------------------------------------------------- training cases


def test_distances_keep_original_slice_units():
    d = np.abs(np.arange(30) - 10).astype(np.float32)
    out = resample_distances(d, 30, 3.0, 90, 1.0)
    positions = sample_positions(30, 3.0, 90, 1.0)
    np.testing.assert_allclose(out, np.abs(np.clip(positions, 0, 29) - 10), atol=1e-6)
    assert out[31] == 0.0 and out[32] == pytest.approx(1 / 3)  # a third of an original slice
    assert np.all(np.isinf(resample_distances(np.full(30, np.inf, np.float32), 30, 3.0, 90, 1.0)))


def test_annotated_slices_map_to_their_nearest_new_slice():
    assert mapped_slices([0, 10, 29], 30, 3.0, 90, 1.0) == [1, 31, 88]
    assert mapped_slices([3, 4], 10, 1.0, 4, 2.5) == [1, 1]  # coarsening: two slices, one


def annotated_case(shape=(24, 20, 10)) -> TrainingCase:
    """A labeled case with a box, annotated on sagittal slice 12 and axial slice 4."""
    dense = np.zeros(shape, np.uint8)
    dense[6:18, 5:15, 2:8] = 1
    annotated = np.zeros(shape, bool)
    annotated[12], annotated[:, :, 4] = True, True
    sparse = np.where(annotated, dense, 0).astype(np.uint8)
    distances = (
        np.abs(np.arange(shape[0]) - 12).astype(np.float32),
        np.full(shape[1], np.inf, np.float32),
        np.abs(np.arange(shape[2]) - 4).astype(np.float32),
    )
    image = dense.astype(np.float32) + np.random.default_rng(0).normal(0, 0.1, shape)
    return TrainingCase("c", image, (dense, sparse, dense), distances, annotated, sparse)


def test_a_resampled_case_keeps_annotated_slices_whole_with_their_labels():
    case = annotated_case()
    spacing, target = (1.0, 1.0, 3.0), (1.5, 1.0, 1.0)
    out = resample_case(case, spacing, target)
    assert out.shape == (16, 20, 30) and out.image.dtype == np.float32
    assert out.annotated_slabs is not None
    sagittal, coronal, axial = (list(map(int, s)) for s in out.annotated_slabs)
    assert sagittal == mapped_slices([12], 24, 1.0, 16, 1.5) == [8] and coronal == []
    assert axial == mapped_slices([4], 10, 3.0, 30, 1.0) == [13]
    # the annotated slice holds the original slice's labels, resampled in-plane
    np.testing.assert_array_equal(
        out.sparse[:, :, 13], resample_labels(case.sparse[:, :, 4], (1.0, 1.0), (1.5, 1.0))
    )
    np.testing.assert_array_equal(
        out.sparse[8], resample_labels(case.sparse[12], (1.0, 3.0), (1.0, 1.0))
    )
    assert not out.sparse[~out.annotated].any()
    for label in out.labels:  # every view's mixed label is the true label where it is known
        np.testing.assert_array_equal(label[out.annotated], out.sparse[out.annotated])
    # distances at the new slices, in original slice units; no propagation stays inf
    assert out.distances[0][8] == pytest.approx(0.0, abs=0.3)
    assert np.all(np.isinf(out.distances[1])) and out.distances[2][13] == pytest.approx(0.0)
    assert out.distances[2][16] == pytest.approx(1.0)
    # the box keeps its physical size (12 x 10 x 18 mm)
    assert abs(int(out.labels[0].sum()) * 1.5 - int(case.labels[0].sum()) * 3.0) < 0.1 * (
        int(case.labels[0].sum()) * 3.0
    )


def test_a_case_at_the_training_spacing_is_left_as_it_is():
    case = annotated_case()
    assert resample_case(case, (1.0, 1.0, 3.0), (1.0, 1.0, 3.0)) is case
    unlabeled = TrainingCase("u", case.image)
    out = resample_case(unlabeled, (1.0, 1.0, 3.0), (1.0, 1.0, 1.0))
    assert out.shape == (24, 20, 30) and not out.labeled
