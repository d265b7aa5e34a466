"""Keeping the largest connected component of each class."""

from __future__ import annotations

import numpy as np
import pytest

from RADALib.postprocessing import keep_largest_component


def _blocks() -> np.ndarray:
    label = np.zeros((20, 16, 12), np.uint8)
    label[2:8, 2:8, 2:8] = 1  # class 1: 216 voxels
    label[12:14, 12:14, 2:4] = 1  # class 1: an island of 8
    label[15, 2, 10] = 1  # class 1: a single voxel
    label[10:18, 2:6, 6:10] = 2  # class 2: 128 voxels
    label[2:4, 12:15, 9:11] = 2  # class 2: an island of 12
    return label


def test_only_the_largest_region_of_each_class_is_kept_and_islands_become_background():
    label = _blocks()
    kept = keep_largest_component(label)
    expected = np.zeros_like(label)
    expected[2:8, 2:8, 2:8] = 1
    expected[10:18, 2:6, 6:10] = 2
    np.testing.assert_array_equal(kept, expected)
    assert kept.dtype == label.dtype
    assert (label == _blocks()).all(), "the input is untouched"


def test_only_the_named_classes_are_filtered():
    label = _blocks()
    kept = keep_largest_component(label, classes=[2])
    np.testing.assert_array_equal(kept == 1, label == 1)
    assert (kept == 2).sum() == 128


def test_connectivity_decides_whether_a_diagonal_neighbour_belongs_to_the_region():
    label = np.zeros((6, 6, 6), np.uint8)
    label[1:3, 1:3, 1:3] = 1  # 8 voxels
    label[3, 3, 3] = 1  # touches the block by a corner only
    label[4, 4, 4] = 1  # and the next one by a corner again
    assert (keep_largest_component(label) == 1).sum() == 8, "6-connectivity (the default) keeps corners apart"
    assert (keep_largest_component(label, connectivity=3) == 1).sum() == 10, "26-connectivity joins them"


def test_a_single_region_or_an_empty_map_is_returned_unchanged():
    one = np.zeros((5, 5, 5), np.uint8)
    one[1:4, 1:4, 1:4] = 1
    np.testing.assert_array_equal(keep_largest_component(one), one)
    empty = np.zeros((5, 5, 5), np.uint8)
    np.testing.assert_array_equal(keep_largest_component(empty), empty)


@pytest.mark.parametrize("label, kwargs, message", [
    (np.zeros((4, 4), np.uint8), {}, "3D label map"),
    (np.zeros((4, 4, 4), np.uint8), {"connectivity": 4}, "connectivity"),
])
def test_bad_arguments_are_refused(label, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keep_largest_component(label, **kwargs)
