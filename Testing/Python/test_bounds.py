"""Each view's propagation is bounded by the extent that the other planes' annotated slices show."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import disk_stack

from RADALib.annotation import SparseAnnotation, simulate_sparse_annotation
from RADALib.bounds import view_bound, view_bounds
from RADALib.propagation import PropagationConfig, propagate


def truth_cut(truth: np.ndarray, annotation: SparseAnnotation, margin: int) -> list[float]:
    """Per view, the fraction of the true foreground that the view's bound sets to background."""
    bounds = view_bounds(annotation, margin)
    fractions = []
    for axis in range(3):
        kept = np.moveaxis(truth, axis, 0).copy()
        bounds[axis].apply(kept)
        fractions.append(1 - np.count_nonzero(kept) / np.count_nonzero(truth))
    return fractions


def ball(shape=(40, 40, 40), center=(20, 20, 20), radius=10.0) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    inside = sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2
    return inside.astype(np.uint8)


def short_cylinder(z0=8, z1=24):
    """The conftest disk stack (axial disks, no drift) kept only on axial slices z0..z1-1."""
    image, label = disk_stack(shift_per_slice=(0.0, 0.0))
    label[:, :, :z0] = 0
    label[:, :, z1:] = 0
    return image, label


def test_the_bound_is_the_other_planes_extent_along_the_axis_plus_the_margin():
    _, label = short_cylinder(8, 24)
    annotation = simulate_sparse_annotation(label)
    bound = view_bound(annotation, 2, margin=2)
    assert bound.span == (6, 25)
    assert bound.cut_slices() == 30 - 20
    assert view_bound(annotation, 2, margin=10).span == (0, 29)  # clipped to the volume


def test_chains_do_not_register_beyond_the_bound_and_the_label_is_background_there(
    translation_registrar,
):
    image, label = short_cylinder(8, 24)
    annotation = simulate_sparse_annotation(label)
    off = propagate(
        image,
        annotation,
        (1, 1, 1),
        translation_registrar,
        PropagationConfig(slice_step=1, bound_margin=None),
    )
    unbounded_calls, translation_registrar.calls = translation_registrar.calls, 0
    on = propagate(
        image,
        annotation,
        (1, 1, 1),
        translation_registrar,
        PropagationConfig(slice_step=1, bound_margin=2),
    )
    assert translation_registrar.calls < unbounded_calls
    axial = on.labels[2]
    assert not axial[:, :, :6].any() and not axial[:, :, 26:].any()
    assert off.labels[2][:, :, 26:].any()  # without the bound the blob runs to the edge
    np.testing.assert_array_equal(axial[:, :, 6:26], off.labels[2][:, :, 6:26])
    np.testing.assert_array_equal(on.distances[2], off.distances[2])  # α^d weights beyond


def test_all_classes_share_the_structures_bound():
    label = np.zeros((30, 30, 30), np.uint8)
    label[5:15, 5:25, 4:12] = 1
    label[15:25, 5:25, 10:26] = 2
    annotation = simulate_sparse_annotation(label, slices={0: [10, 20], 1: [15], 2: [11]})
    bound = view_bounds(annotation, 1)[2]
    assert bound.span == (3, 26)  # class 1 spans z 4..11, class 2 z 10..25: both kept
    labels = np.moveaxis(np.ones_like(label) * 2, 2, 0)  # a view that put class 2 everywhere
    bound.apply(labels)
    assert set(np.unique(labels[3:27])) == {2} and not labels[:3].any() and not labels[27:].any()
    assert truth_cut(label, annotation, 0) == [0.0, 0.0, 0.0]


def test_a_view_with_no_other_annotated_plane_is_not_bounded():
    _, label = short_cylinder(8, 24)
    sparse = np.zeros_like(label)
    sparse[:, :, 15] = label[:, :, 15]
    bound = view_bound(SparseAnnotation(sparse, {2: (15,)}), 2, margin=0)
    assert bound.span is None and bound.cut_slices() == 0
    assert bound.record() == {"bound": None, "cut_slices": 0}


def test_the_bound_is_off_without_a_margin_and_refuses_a_negative_one():
    annotation = simulate_sparse_annotation(ball())
    assert view_bounds(annotation, None) == {}
    with pytest.raises(ValueError, match="margin"):
        view_bounds(annotation, -1)
    with pytest.raises(ValueError, match="bound_margin"):
        PropagationConfig(bound_margin=-1)


def test_a_slice_that_grazes_the_structure_cuts_no_true_foreground():
    truth = ball(radius=10.0)
    # the sagittal slice grazes the ball (a small disk); the other two cross its middle
    annotation = simulate_sparse_annotation(truth, slices={0: [29], 1: [20], 2: [20]})
    assert np.count_nonzero(truth[29]) < np.count_nonzero(truth[20]) / 4
    assert truth_cut(truth, annotation, margin=0) == [0.0, 0.0, 0.0]


def test_two_grazing_slices_cut_little_true_foreground_with_the_margin():
    truth = ball(radius=10.0)
    annotation = simulate_sparse_annotation(truth, slices={0: [27], 1: [27], 2: [20]})
    cut = truth_cut(truth, annotation, margin=2)
    assert cut[0] == cut[1] == 0.0  # the axial slice through the middle bounds these views
    assert 0.0 < cut[2] < 0.15  # both planes graze: the axial view loses the ball's two caps


def test_a_thread_no_other_slice_crosses_is_cut_beyond_the_margin():
    truth = ball(shape=(40, 40, 60), center=(20, 20, 20), radius=8.0)
    truth[30, 30, 20:55] = 1  # a one-voxel thread along z, beside the other planes' slices
    annotation = simulate_sparse_annotation(truth, slices={0: [20], 1: [20], 2: [20]})
    margin = 3
    bound = view_bound(annotation, 2, margin)
    assert bound.span == (12 - margin, 28 + margin)
    cut = truth_cut(truth, annotation, margin)
    assert cut[2] == pytest.approx((55 - (28 + margin + 1)) / np.count_nonzero(truth))
    assert cut[0] == cut[1] == 0.0  # the axial slice crosses the thread: the other views keep it
