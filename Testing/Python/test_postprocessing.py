"""Keeping the largest connected component of each class."""

from __future__ import annotations

import numpy as np
import pytest

from RADALib.postprocessing import keep_largest_component, recommend_largest_component


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
    assert (keep_largest_component(label) == 1).sum() == 8, (
        "6-connectivity (the default) keeps corners apart"
    )
    assert (keep_largest_component(label, connectivity=3) == 1).sum() == 10, (
        "26-connectivity joins them"
    )


def test_a_single_region_or_an_empty_map_is_returned_unchanged():
    one = np.zeros((5, 5, 5), np.uint8)
    one[1:4, 1:4, 1:4] = 1
    np.testing.assert_array_equal(keep_largest_component(one), one)
    empty = np.zeros((5, 5, 5), np.uint8)
    np.testing.assert_array_equal(keep_largest_component(empty), empty)


@pytest.mark.parametrize(
    "label, kwargs, message",
    [
        (np.zeros((4, 4), np.uint8), {}, "3D label map"),
        (np.zeros((4, 4, 4), np.uint8), {"connectivity": 4}, "connectivity"),
    ],
)
def test_bad_arguments_are_refused(label, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keep_largest_component(label, **kwargs)


def test_the_share_in_the_largest_region_is_counted_per_class():
    record = recommend_largest_component([_blocks()], classes=[1, 2, 3])
    assert record["fractions"] == {"1": round(216 / 225, 4), "2": round(128 / 140, 4)}, (
        "class 3 is absent"
    )
    assert record["classes"] == [1], "0.96 is one region with specks, 0.91 is not"
    one = np.zeros((5, 5, 5), np.uint8)
    one[1:4, 1:4, 1:4] = 1
    assert recommend_largest_component([one], classes=[1])["fractions"] == {"1": 1.0}


def _organ(shape=(20, 16, 12), fragment: bool = False, second_part: bool = False) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[2:12, 2:12, 2:10] = 1  # 800 voxels
    if fragment:
        label[16, 14, 1] = 1  # a registration speck: 1 voxel
    if second_part:
        label[14:19, 2:12, 2:10] = 1  # a second part of 400 voxels (the other kidney)
    return label


def test_a_structure_that_is_one_region_in_every_pseudo_label_is_recommended_despite_specks():
    record = recommend_largest_component([_organ(), _organ(fragment=True)], classes=[1])
    assert record["classes"] == [1]
    assert record["fractions"] == {"1": round(1600 / 1601, 4)}, "pooled over the maps"
    assert record["worst_case"] == {"1": round(800 / 801, 4)}
    assert record["cases"] == 2 and record["connectivity"] == 1


def test_a_structure_in_two_parts_is_not_recommended():
    record = recommend_largest_component([_organ(second_part=True)] * 2, classes=[1])
    assert record["classes"] == []
    assert record["fractions"] == {"1": round(800 / 1200, 4)}


def test_one_fragmented_pseudo_label_does_not_decide_alone_but_the_pooled_share_does():
    fragmented = _organ()
    fragmented[14:18, 2:12, 2:6] = 1  # 160 voxels apart: 800 of 960 in the largest region (0.83)
    many = recommend_largest_component([_organ()] * 9 + [fragmented], classes=[1])
    assert many["classes"] == [1] and many["worst_case"] == {"1": round(800 / 960, 4)}
    assert many["fractions"] == {"1": round(8000 / 8160, 4)}
    assert recommend_largest_component([_organ(), fragmented], classes=[1])["classes"] == [], (
        "1600/1760 < 0.95"
    )


def test_each_class_is_judged_on_its_own_and_absent_classes_or_no_labels_recommend_nothing():
    label = _organ()
    label[14:19, 2:6, 2:4] = 2
    label[14:19, 12:16, 8:12] = 2  # class 2 in two equal parts
    record = recommend_largest_component([label], classes=[0, 1, 2, 3])
    assert record["classes"] == [1]
    assert set(record["fractions"]) == {"1", "2"}, "background is skipped, class 3 never appears"
    assert recommend_largest_component(iter([]), classes=[1])["classes"] == []
