"""Tests of RADALib.metrics on small hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from RADALib.errors import InputError
from RADALib.metrics import (
    STATUSES,
    SegmentationMetrics,
    asd,
    assd,
    dice,
    evaluate_case,
    hd95,
    jaccard,
    metrics_for_masks,
    summarize,
    surface_distances,
)

NAN = math.nan


def cube(shape, start, size):
    """Boolean array with an axis-aligned box of ``size`` voxels starting at ``start``."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return mask


def ball(shape, centre, radius):
    grid = np.indices(shape, dtype=np.float64)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def metrics(dice_, hd):
    """An "ok" SegmentationMetrics with easy numbers (jaccard = dice / 2, asd = hd / 2, mm = 2 · vox)."""
    return SegmentationMetrics(dice_, dice_ / 2, hd, hd / 2, 2 * hd, hd, "ok")


def empty_case(status):
    """A SegmentationMetrics of an empty-mask case, with the values the rule prescribes."""
    overlap = NAN if status == "both_empty" else 0.0
    return SegmentationMetrics(overlap, overlap, NAN, NAN, NAN, NAN, status)


# 26 surface voxels of a 3x3x3 cube measured to its corner voxel (0, 0, 0): the distances
# sqrt(i² + j² + k²) for i, j, k in {0, 1, 2}, without the centre (1, 1, 1) (not a surface voxel).
CORNER_DISTANCES = sorted(
    [0.0]
    + [1.0] * 3  # (1,0,0)
    + [2.0] * 3  # (2,0,0)
    + [math.sqrt(2)] * 3  # (1,1,0)
    + [math.sqrt(5)] * 6  # (2,1,0)
    + [math.sqrt(8)] * 3  # (2,2,0)
    + [math.sqrt(6)] * 3  # (2,1,1)
    + [3.0] * 3  # (2,2,1)
    + [math.sqrt(12)]  # (2,2,2)
)


# --- overlap -----------------------------------------------------------------------------------


def test_identical_masks_score_perfectly():
    mask = cube((20, 20, 20), (5, 6, 7), (6, 5, 4))
    m = metrics_for_masks(mask, mask.copy(), spacing=(0.7, 1.3, 2.0))
    assert m.status == "ok"
    assert (m.dice, m.jaccard) == (1.0, 1.0)
    assert (m.hd95_vox, m.asd_vox, m.hd95_mm, m.asd_mm) == (0.0, 0.0, 0.0, 0.0)


def test_dice_and_jaccard_count_voxels():
    pred = np.zeros((4, 4, 4), dtype=bool)
    truth = np.zeros((4, 4, 4), dtype=bool)
    pred[0, 0, :3] = True  # 3 voxels
    truth[0, 0, 1:] = True  # 3 voxels, 2 shared
    assert dice(pred, truth) == pytest.approx(2 * 2 / 6)
    assert jaccard(pred, truth) == pytest.approx(2 / 4)


def test_dice_treats_any_nonzero_label_as_foreground():
    pred = np.array([[[0, 2, 2, 0]]])
    truth = np.array([[[0, 0, 7, 7]]])
    assert dice(pred, truth) == pytest.approx(0.5)


def test_overlap_of_empty_masks_follows_the_rule():
    empty = np.zeros((3, 3, 3), dtype=bool)
    full = np.ones((3, 3, 3), dtype=bool)
    assert dice(empty, full) == 0.0 and jaccard(empty, full) == 0.0
    assert dice(full, empty) == 0.0 and jaccard(full, empty) == 0.0
    assert math.isnan(dice(empty, empty)) and math.isnan(jaccard(empty, empty))


# --- surface distances -------------------------------------------------------------------------


def test_surface_distances_include_border_voxels_and_skip_the_interior():
    # The whole 3x3x3 array is foreground: all 26 voxels on the array border are surface, the
    # centre is not.
    whole = np.ones((3, 3, 3), dtype=bool)
    corner = np.zeros((3, 3, 3), dtype=bool)
    corner[0, 0, 0] = True
    d = surface_distances(whole, corner)
    assert d.shape == (26,)
    assert np.sort(d) == pytest.approx(CORNER_DISTANCES)


def test_surface_distances_use_the_spacing_of_each_axis():
    a = np.zeros((10, 10, 10), dtype=bool)
    b = np.zeros((10, 10, 10), dtype=bool)
    a[2, 2, 2] = True
    b[5, 6, 2] = True  # offset (3, 4, 0) voxels
    assert surface_distances(a, b) == pytest.approx([5.0])
    assert surface_distances(a, b, spacing=(2.0, 1.0, 9.0)) == pytest.approx(
        [math.sqrt(6.0**2 + 4.0**2)]
    )
    assert surface_distances(a, b, spacing=(1.0, 0.5, 9.0)) == pytest.approx(
        [math.sqrt(3.0**2 + 2.0**2)]
    )


def test_surface_distances_do_not_depend_on_where_the_objects_sit_in_the_array():
    # Same pair of objects in a tight array and far from the border of a big one (exercises the crop).
    small_a = cube((12, 12, 12), (0, 0, 0), (12, 4, 4))
    small_b = ball((12, 12, 12), (6, 6, 6), 5)
    big_a = np.zeros((60, 50, 40), dtype=bool)
    big_b = np.zeros((60, 50, 40), dtype=bool)
    big_a[30:42, 20:32, 10:22] = small_a
    big_b[30:42, 20:32, 10:22] = small_b
    # In the big array, small_a's faces on the small array's border stay surface voxels only
    # because the neighbours outside are background, so both must agree.
    spacing = (0.8, 1.1, 2.5)
    assert np.sort(surface_distances(big_a, big_b, spacing)) == pytest.approx(
        np.sort(surface_distances(small_a, small_b, spacing))
    )


def test_surface_distances_from_empty_mask_are_empty_and_to_empty_mask_raise():
    empty = np.zeros((4, 4, 4), dtype=bool)
    some = cube((4, 4, 4), (1, 1, 1), (2, 2, 2))
    assert surface_distances(empty, some).size == 0
    with pytest.raises(ValueError, match="empty"):
        surface_distances(some, empty)


# --- HD95 / ASD --------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_cubes_shifted_along_one_axis(axis):
    # Two 10³ cubes, the prediction shifted by 3 voxels along `axis`.
    # Dice = (10 - 3) / 10, Jaccard = 7 / 13. Every surface voxel is at most 3 voxels from the
    # other surface and the 100 voxels of the trailing face (20 % of the 488) are exactly 3 away,
    # so both directed 95th percentiles are 3 voxels = 3 · spacing[axis] mm.
    shape = (30, 30, 30)
    shift = [0, 0, 0]
    shift[axis] = 3
    truth = cube(shape, (10, 10, 10), (10, 10, 10))
    pred = cube(shape, tuple(10 + s for s in shift), (10, 10, 10))
    spacing = (2.0, 0.5, 1.25)
    assert dice(pred, truth) == pytest.approx(0.7)
    assert jaccard(pred, truth) == pytest.approx(7 / 13)
    assert hd95(pred, truth) == pytest.approx(3.0)
    assert hd95(pred, truth, spacing) == pytest.approx(3.0 * spacing[axis])
    m = evaluate_case(pred.astype(np.uint8), truth.astype(np.uint8), spacing)[1]
    assert m.status == "ok"
    assert m.dice == pytest.approx(0.7)
    assert m.hd95_vox == pytest.approx(3.0)
    assert m.hd95_mm == pytest.approx(3.0 * spacing[axis])


def test_hd95_is_a_percentile_not_the_maximum():
    # Truth: a 3x3x3 cube; prediction: its corner voxel. d(pred -> truth) = [0];
    # d(truth -> pred) = CORNER_DISTANCES, whose 95th percentile (position 0.95 · 25 = 23.75
    # between sorted entries 23 and 24, both 3) is 3, while the maximum is sqrt(12).
    truth = cube((9, 9, 9), (3, 3, 3), (3, 3, 3))
    pred = np.zeros_like(truth)
    pred[3, 3, 3] = True
    assert hd95(pred, truth) == pytest.approx(3.0)
    assert hd95(truth, pred) == pytest.approx(3.0)


def test_hd95_is_the_larger_directed_percentile_not_the_pooled_one():
    # Truth: a 3x3x3 cube (26 surface voxels). Prediction: the same cube plus a 3-voxel rod 8
    # voxels beyond its face. d(pred -> truth) = 26 zeros + three 8s: the 95th percentile
    # (position 0.95 · 28 = 26.6, between two 8s) is 8. d(truth -> pred) = 26 zeros.
    # Pooling all 55 distances would give position 0.95 · 54 = 51.3, between two zeros: 0.
    truth = cube((30, 20, 20), (10, 10, 10), (3, 3, 3))
    pred = truth.copy()
    pred[20, 11, 10:13] = True
    assert np.count_nonzero(surface_distances(pred, truth) == 8.0) == 3
    assert hd95(pred, truth) == pytest.approx(8.0)
    assert hd95(truth, pred) == pytest.approx(8.0)


def test_asd_is_one_way_and_assd_averages_both_ways():
    truth = cube((9, 9, 9), (3, 3, 3), (3, 3, 3))
    pred = np.zeros_like(truth)
    pred[3, 3, 3] = True  # a corner of truth, so d(pred -> truth) = [0]
    mean_to_corner = sum(CORNER_DISTANCES) / 26
    assert asd(pred, truth) == pytest.approx(0.0)
    assert asd(truth, pred) == pytest.approx(mean_to_corner)
    assert assd(pred, truth) == pytest.approx(mean_to_corner / 2)
    assert assd(truth, pred) == pytest.approx(mean_to_corner / 2)
    m = metrics_for_masks(pred, truth, spacing=(2.0, 2.0, 2.0))
    assert m.asd_vox == pytest.approx(0.0)
    m = metrics_for_masks(truth, pred, spacing=(2.0, 2.0, 2.0))
    assert m.asd_vox == pytest.approx(mean_to_corner)
    assert m.asd_mm == pytest.approx(2.0 * mean_to_corner)


def test_single_voxels_apart_with_anisotropic_spacing():
    pred = np.zeros((10, 10, 10), dtype=bool)
    truth = np.zeros((10, 10, 10), dtype=bool)
    pred[1, 1, 1] = True
    truth[4, 1, 5] = True  # offset (3, 0, 4)
    m = metrics_for_masks(pred, truth, spacing=(2.0, 7.0, 0.5))
    assert m.status == "ok"
    assert m.dice == 0.0
    assert (m.hd95_vox, m.asd_vox) == pytest.approx((5.0, 5.0))
    assert (m.hd95_mm, m.asd_mm) == pytest.approx((math.sqrt(40.0), math.sqrt(40.0)))  # 6² + 2²


def test_sphere_against_sphere_two_voxels_larger():
    shape = (48, 48, 48)
    small = ball(shape, (24, 24, 24), 10)
    large = ball(shape, (24, 24, 24), 12)
    # Digitised spheres: the surfaces are 2 voxels apart up to sub-voxel jitter.
    assert hd95(small, large) == pytest.approx(2.0, abs=0.5)
    assert hd95(small, large, spacing=(0.5, 0.5, 0.5)) == pytest.approx(1.0, abs=0.25)
    assert asd(large, small) == pytest.approx(2.0, abs=0.3)


def test_distances_of_empty_masks_are_nan():
    empty = np.zeros((5, 5, 5), dtype=bool)
    some = cube((5, 5, 5), (1, 1, 1), (2, 2, 2))
    for f in (hd95, asd, assd):
        assert math.isnan(f(empty, some))
        assert math.isnan(f(some, empty))
        assert math.isnan(f(empty, empty))


# --- empty-mask rule ---------------------------------------------------------------------------


def test_empty_prediction_is_a_failure_not_a_zero_distance():
    truth = cube((10, 10, 10), (2, 2, 2), (4, 4, 4))
    m = metrics_for_masks(np.zeros_like(truth), truth, spacing=(1.0, 1.0, 1.0))
    assert m.status == "empty_prediction"
    assert (m.dice, m.jaccard) == (0.0, 0.0)
    assert all(math.isnan(v) for v in (m.hd95_vox, m.asd_vox, m.hd95_mm, m.asd_mm))


def test_empty_truth_with_a_prediction_is_a_false_positive():
    pred = cube((10, 10, 10), (2, 2, 2), (4, 4, 4))
    m = metrics_for_masks(pred, np.zeros_like(pred), spacing=(1.0, 1.0, 1.0))
    assert m.status == "empty_truth"
    assert (m.dice, m.jaccard) == (0.0, 0.0)
    assert all(math.isnan(v) for v in (m.hd95_vox, m.asd_vox, m.hd95_mm, m.asd_mm))


def test_both_empty_is_not_scored():
    empty = np.zeros((6, 6, 6), dtype=bool)
    m = metrics_for_masks(empty, empty, spacing=(1.0, 1.0, 1.0))
    assert m.status == "both_empty"
    values = (m.dice, m.jaccard, m.hd95_vox, m.asd_vox, m.hd95_mm, m.asd_mm)
    assert all(math.isnan(v) for v in values)


# --- evaluate_case -----------------------------------------------------------------------------


def test_multiclass_labels_give_one_result_per_class():
    shape = (30, 30, 30)
    truth = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros(shape, dtype=np.uint8)
    truth[cube(shape, (2, 2, 2), (10, 10, 10))] = 1
    pred[cube(shape, (2, 2, 2), (10, 10, 10))] = 1  # class 1: exact
    truth[cube(shape, (15, 15, 15), (10, 10, 10))] = 2
    pred[cube(shape, (15, 15, 17), (10, 10, 10))] = 2  # class 2: shifted 2 along z
    pred[0, 29, 0] = 3  # class 3: only predicted
    result = evaluate_case(pred, truth, spacing=(1.0, 1.0, 0.5))
    assert sorted(result) == [1, 2, 3]
    assert result[1].status == "ok" and result[1].dice == 1.0 and result[1].hd95_mm == 0.0
    assert result[2].status == "ok"
    assert result[2].dice == pytest.approx(0.8)
    assert result[2].hd95_vox == pytest.approx(2.0)
    assert result[2].hd95_mm == pytest.approx(1.0)
    assert result[3].status == "empty_truth" and result[3].dice == 0.0


def test_explicit_classes_include_absent_ones_as_both_empty():
    truth = np.zeros((8, 8, 8), dtype=np.int16)
    truth[2:5, 2:5, 2:5] = 1
    pred = truth.copy()
    result = evaluate_case(pred, truth, spacing=(1.0, 1.0, 1.0), classes=[4, 1])
    assert list(result) == [4, 1]
    assert result[4].status == "both_empty"
    assert result[1].status == "ok" and result[1].dice == 1.0


def test_missing_class_in_prediction_is_an_empty_prediction():
    truth = np.zeros((8, 8, 8), dtype=np.uint8)
    truth[1:3, 1:3, 1:3] = 1
    truth[5:7, 5:7, 5:7] = 2
    pred = np.where(truth == 1, 1, 0)
    result = evaluate_case(pred, truth, spacing=(1.0, 1.0, 1.0))
    assert result[1].status == "ok"
    assert result[2].status == "empty_prediction" and result[2].dice == 0.0
    assert math.isnan(result[2].hd95_mm)


def test_shape_mismatch_raises_value_error_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5, 6\).*\(4, 5, 7\)"):
        evaluate_case(np.zeros((4, 5, 6)), np.zeros((4, 5, 7)), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(3, 3, 3\).*\(3, 3, 4\)"):
        hd95(np.ones((3, 3, 3)), np.ones((3, 3, 4)))


@pytest.mark.parametrize(
    "spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -2.0, 1.0), (1.0, math.nan, 1.0), "abc"]
)
def test_bad_spacing_raises_input_error(spacing):
    mask = np.ones((3, 3, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="^spacing: "):
        evaluate_case(mask, mask, spacing=spacing)


@pytest.mark.parametrize("classes", [[0, 1], [1.5], ["liver"]])
def test_background_or_non_integer_class_is_rejected(classes):
    mask = np.ones((3, 3, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="^classes: "):
        evaluate_case(mask, mask, spacing=(1.0, 1.0, 1.0), classes=classes)


# --- SegmentationMetrics / summarize -----------------------------------------------------------


def test_as_dict_has_every_field_and_can_drop_nan():
    m = SegmentationMetrics(0.0, 0.0, NAN, NAN, NAN, NAN, "empty_prediction")
    d = m.as_dict()
    assert list(d) == ["dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm", "status"]
    assert d["status"] == "empty_prediction" and math.isnan(d["hd95_mm"])
    assert m.as_dict(nan_to_none=True)["hd95_mm"] is None
    assert m.as_dict(nan_to_none=True)["dice"] == 0.0


def test_unknown_status_is_rejected():
    with pytest.raises(ValueError, match="status"):
        SegmentationMetrics(1.0, 1.0, 0.0, 0.0, 0.0, 0.0, "perfect")


def test_summarize_counts_empty_prediction_as_failure_with_dice_zero():
    cases = [
        metrics(0.8, 2.0),
        metrics(0.6, 4.0),
        empty_case("empty_prediction"),
        empty_case("empty_truth"),
        empty_case("both_empty"),
    ]
    s = summarize(cases)
    assert s["n_cases"] == 5
    assert s["status_counts"] == {"ok": 2, "empty_prediction": 1, "empty_truth": 1, "both_empty": 1}
    assert s["n_failures"] == 1
    # Dice over the 3 cases with a truth: (0.8 + 0.6 + 0) / 3; population std by hand.
    mean = 1.4 / 3
    std = math.sqrt(((0.8 - mean) ** 2 + (0.6 - mean) ** 2 + mean**2) / 3)
    assert s["dice"] == pytest.approx({"mean": mean, "std": std, "n": 3})
    assert s["jaccard"]["mean"] == pytest.approx(0.7 / 3)
    # Distances over the 2 "ok" cases only.
    assert s["hd95_vox"] == pytest.approx({"mean": 3.0, "std": 1.0, "n": 2})
    assert s["asd_vox"] == pytest.approx({"mean": 1.5, "std": 0.5, "n": 2})
    assert s["hd95_mm"] == pytest.approx({"mean": 6.0, "std": 2.0, "n": 2})
    assert s["asd_mm"]["mean"] == pytest.approx(3.0)


def test_summarize_never_scores_both_empty_cases_as_perfect():
    only_empty = summarize([empty_case("both_empty")] * 3)
    assert only_empty["status_counts"]["both_empty"] == 3
    for name in ("dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm"):
        assert only_empty[name]["n"] == 0
        assert math.isnan(only_empty[name]["mean"])
    # Adding both-empty cases to a real one changes nothing but the counts.
    real = metrics(0.5, 4.0)
    alone = summarize([real])
    mixed = summarize([real] + [empty_case("both_empty")] * 2)
    for name in ("dice", "hd95_mm"):
        assert mixed[name] == alone[name]
    assert mixed["dice"]["mean"] == 0.5


def test_summarize_of_real_cases_end_to_end():
    truth = cube((20, 20, 20), (5, 5, 5), (10, 10, 10))
    shifted = cube((20, 20, 20), (5, 5, 6), (10, 10, 10))  # Dice 0.9, HD95 1
    per_case = [
        metrics_for_masks(truth, truth, (1.0, 1.0, 1.0)),
        metrics_for_masks(shifted, truth, (1.0, 1.0, 1.0)),
        metrics_for_masks(np.zeros_like(truth), truth, (1.0, 1.0, 1.0)),
    ]
    s = summarize(per_case)
    assert s["dice"]["mean"] == pytest.approx((1.0 + 0.9 + 0.0) / 3)
    assert s["hd95_vox"]["mean"] == pytest.approx(0.5)
    assert s["n_failures"] == 1


def test_statuses_are_the_documented_four():
    assert STATUSES == ("ok", "empty_prediction", "empty_truth", "both_empty")
