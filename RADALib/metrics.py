"""Segmentation metrics: Dice, Jaccard, HD95 and average surface distance.

Masks are numpy arrays in (x, y, z) index order; any nonzero value is foreground. ``spacing`` is
the voxel size in mm along each axis, in the same order. Distances are reported both in voxels
(spacing 1 along every axis) and in mm.

Definitions
-----------
- Dice ``2|P ∩ T| / (|P| + |T|)``; Jaccard ``|P ∩ T| / |P ∪ T|``.
- Surface of a mask: its foreground voxels that have at least one background voxel among their
  6 face neighbours, or that lie on the array border (outside the array counts as background).
- ``surface_distances(a, b)``: for every surface voxel of ``a``, the Euclidean distance (in
  ``spacing`` units) from its centre to the nearest surface-voxel centre of ``b``.
- HD95 (medpy's ``hd95`` convention): the larger of the two directed 95th percentiles,
  ``max(P95(d(pred → truth)), P95(d(truth → pred)))``, where ``P95`` is ``numpy.percentile(·, 95)``
  with linear interpolation. It is *not* the 95th percentile of the pooled distances.
- ASD (medpy's ``asd`` convention): one-way mean ``mean(d(pred → truth))``.
- ASSD (medpy's ``assd`` convention): ``(mean(d(pred → truth)) + mean(d(truth → pred))) / 2``.

Empty masks (per case and per class)
------------------------------------
The literature often scores an empty prediction as HD95 = 0, which makes a complete failure look
perfect. RADALib never does that:

- truth non-empty, prediction empty → status ``"empty_prediction"``: Dice = Jaccard = 0, every
  distance NaN; it is a failure (``summarize`` counts it and its Dice 0 enters the Dice mean).
- truth empty, prediction non-empty → status ``"empty_truth"`` (a false positive): Dice =
  Jaccard = 0, every distance NaN.
- both empty → status ``"both_empty"``: Dice = Jaccard = NaN, every distance NaN; the case is not
  scored, and never scored as perfect.
- otherwise → status ``"ok"``, every metric finite.

The same rule holds for the stand-alone functions: ``dice``/``jaccard`` return 0 when exactly one
mask is empty and NaN when both are; ``hd95``/``asd``/``assd`` return NaN when either mask is
empty.

Summaries (``summarize``)
-------------------------
- Dice and Jaccard: mean and standard deviation over the cases whose truth is non-empty (status
  ``"ok"`` or ``"empty_prediction"``), so empty predictions count as 0.
- HD95 and ASD (voxels and mm): mean and standard deviation over the ``"ok"`` cases only.
- Standard deviations are population ones (``ddof=0``); a statistic over no case is NaN.
- Counts of every status; ``n_failures`` is the number of ``"empty_prediction"`` cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import InputError

STATUSES: tuple[str, ...] = ("ok", "empty_prediction", "empty_truth", "both_empty")
"""Every status a :class:`SegmentationMetrics` can have."""

_DISTANCE_FIELDS = ("hd95_vox", "asd_vox", "hd95_mm", "asd_mm")
_OVERLAP_FIELDS = ("dice", "jaccard")


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _as_mask(array: np.ndarray) -> np.ndarray:
    """Boolean view of a mask: nonzero is foreground."""
    array = np.asarray(array)
    return array if array.dtype == bool else array != 0


def _check_same_shape(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError("spacing", f"must be {ndim} numbers in mm, got {spacing!r}") from None
    if len(values) != ndim:
        raise InputError(
            "spacing", f"must have {ndim} values (one per axis), got {len(values)}: {values}"
        )
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(
            "spacing", f"every voxel size must be a positive finite number of mm, got {values}"
        )
    return values


def _masks(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = _as_mask(pred), _as_mask(truth)
    _check_same_shape(pred, truth)
    return pred, truth


# ---------------------------------------------------------------------------------------------
# Overlap
# ---------------------------------------------------------------------------------------------


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice ``2|P ∩ T| / (|P| + |T|)`` of two masks; 0 if exactly one is empty, NaN if both are."""
    pred, truth = _masks(pred, truth)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(pred & truth)) / total


def jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    """Jaccard ``|P ∩ T| / |P ∪ T|`` of two masks; 0 if exactly one is empty, NaN if both are."""
    pred, truth = _masks(pred, truth)
    union = int(np.count_nonzero(pred | truth))
    if union == 0:
        return math.nan
    return int(np.count_nonzero(pred & truth)) / union


# ---------------------------------------------------------------------------------------------
# Surface distances
# ---------------------------------------------------------------------------------------------


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of ``a | b`` plus a 1-voxel margin (clipped to the array).

    Exact for the surfaces and the distances: outside the box both masks are background, surface
    extraction treats outside the array as background, and every surface voxel of either mask lies
    inside the box, so nearest surface voxels are never cut off.
    """
    union = a | b
    box = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        present = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(present[0]) - 1, 0), min(int(present[-1]) + 2, union.shape[axis])))
    box_t = tuple(box)
    return a[box_t], b[box_t]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background 6-neighbour or on the array border."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _directed(
    a_surface: np.ndarray, b_surface: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """Distances from each surface voxel of a to the nearest surface voxel of b (both non-empty).

    The Euclidean distance transform of ``~b_surface`` (``sampling=spacing``) is evaluated only at
    a's surface voxels: its feature transform gives each voxel's nearest b-surface voxel, and the
    distance is computed for the voxels we need instead of the whole volume.
    """
    nearest = ndimage.distance_transform_edt(
        ~b_surface, sampling=spacing, return_distances=False, return_indices=True
    )
    where = np.nonzero(a_surface)
    offset = nearest[(slice(None),) + where] - np.stack(where).astype(nearest.dtype)
    scaled = offset.astype(np.float64) * np.asarray(spacing, dtype=np.float64)[:, None]
    return np.sqrt(np.einsum("ij,ij->j", scaled, scaled))


def _surfaces(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a_crop, b_crop = _crop_to_union(a, b)
    return _surface(a_crop), _surface(b_crop)


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Distances (in ``spacing`` units) from every surface voxel of ``a`` to the surface of ``b``.

    Surface = foreground voxels with a background 6-neighbour or on the array border. Returns a
    1-D float64 array with one entry per surface voxel of ``a`` (empty if ``a`` is empty). Raises
    ``ValueError`` if the shapes differ or ``b`` is empty (no surface to measure to), and
    :class:`InputError` for a bad ``spacing``.
    """
    a, b = _masks(a, b)
    spacing_t = _check_spacing(spacing, a.ndim)
    if not b.any():
        raise ValueError("surface distances to an empty mask are undefined")
    if not a.any():
        return np.zeros(0, dtype=np.float64)
    a_surface, b_surface = _surfaces(a, b)
    return _directed(a_surface, b_surface, spacing_t)


def _hd95_from(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile Hausdorff distance, medpy's ``hd95`` convention.

    ``max(P95(d(pred → truth)), P95(d(truth → pred)))`` with ``P95 = numpy.percentile(·, 95)``
    (linear interpolation): the larger of the two *directed* 95th percentiles, not the percentile
    of the pooled distances. In ``spacing`` units (mm); NaN if either mask is empty.
    """
    pred, truth = _masks(pred, truth)
    spacing_t = _check_spacing(spacing, pred.ndim)
    if not pred.any() or not truth.any():
        return math.nan
    p_surface, t_surface = _surfaces(pred, truth)
    return _hd95_from(
        _directed(p_surface, t_surface, spacing_t), _directed(t_surface, p_surface, spacing_t)
    )


def asd(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Average surface distance, medpy's ``asd`` convention: one-way ``mean(d(pred → truth))``.

    Not symmetric (see :func:`assd`). In ``spacing`` units (mm); NaN if either mask is empty.
    """
    pred, truth = _masks(pred, truth)
    spacing_t = _check_spacing(spacing, pred.ndim)
    if not pred.any() or not truth.any():
        return math.nan
    p_surface, t_surface = _surfaces(pred, truth)
    return float(np.mean(_directed(p_surface, t_surface, spacing_t)))


def assd(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Average symmetric surface distance, medpy's ``assd`` convention.

    ``(mean(d(pred → truth)) + mean(d(truth → pred))) / 2``, the mean of the two one-way ASDs
    (not the mean of the pooled distances). In ``spacing`` units (mm); NaN if either mask is empty.
    """
    pred, truth = _masks(pred, truth)
    spacing_t = _check_spacing(spacing, pred.ndim)
    if not pred.any() or not truth.any():
        return math.nan
    p_surface, t_surface = _surfaces(pred, truth)
    one_way = np.mean(_directed(p_surface, t_surface, spacing_t))
    other_way = np.mean(_directed(t_surface, p_surface, spacing_t))
    return float((one_way + other_way) / 2.0)


# ---------------------------------------------------------------------------------------------
# Per-case evaluation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentationMetrics:
    """Metrics of one structure (class) in one case.

    ``asd_*`` is the one-way ASD pred → truth (medpy's ``asd``); ``hd95_*`` follows medpy's
    ``hd95``. ``*_vox`` are in voxels (spacing 1), ``*_mm`` in mm. ``status`` is one of
    :data:`STATUSES`; see the module docstring for the empty-mask rule.
    """

    dice: float
    jaccard: float
    hd95_vox: float
    asd_vox: float
    hd95_mm: float
    asd_mm: float
    status: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")

    def as_dict(self, nan_to_none: bool = False) -> dict[str, Any]:
        """Plain dict of the fields; with ``nan_to_none`` NaN becomes ``None`` (strict JSON)."""
        out = asdict(self)
        if nan_to_none:
            out = {
                k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()
            }
        return out


def metrics_for_masks(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> SegmentationMetrics:
    """All metrics of one pair of binary masks, with the empty-mask rule applied."""
    pred, truth = _masks(pred, truth)
    spacing_t = _check_spacing(spacing, pred.ndim)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    nan = math.nan
    if not has_truth and not has_pred:
        return SegmentationMetrics(nan, nan, nan, nan, nan, nan, "both_empty")
    if not has_pred:
        return SegmentationMetrics(0.0, 0.0, nan, nan, nan, nan, "empty_prediction")
    if not has_truth:
        return SegmentationMetrics(0.0, 0.0, nan, nan, nan, nan, "empty_truth")

    p_surface, t_surface = _surfaces(pred, truth)
    unit = (1.0,) * pred.ndim
    d_pt_vox, d_tp_vox = (
        _directed(p_surface, t_surface, unit),
        _directed(t_surface, p_surface, unit),
    )
    if len(set(spacing_t)) == 1:
        # Isotropic voxels: the nearest surface voxel does not depend on the scale, so mm = vox · s.
        d_pt_mm, d_tp_mm = d_pt_vox * spacing_t[0], d_tp_vox * spacing_t[0]
    else:
        d_pt_mm, d_tp_mm = (
            _directed(p_surface, t_surface, spacing_t),
            _directed(t_surface, p_surface, spacing_t),
        )
    values = {
        "hd95_vox": _hd95_from(d_pt_vox, d_tp_vox),
        "asd_vox": float(np.mean(d_pt_vox)),
        "hd95_mm": _hd95_from(d_pt_mm, d_tp_mm),
        "asd_mm": float(np.mean(d_pt_mm)),
    }
    return SegmentationMetrics(
        dice=dice(pred, truth), jaccard=jaccard(pred, truth), status="ok", **values
    )


def evaluate_case(
    pred_label: np.ndarray,
    truth_label: np.ndarray,
    spacing: Sequence[float],
    classes: Sequence[int] | None = None,
) -> dict[int, SegmentationMetrics]:
    """Metrics of every foreground class of a label map pair, keyed by class value.

    ``classes`` defaults to every nonzero value present in ``truth_label`` or ``pred_label``
    (sorted). A class absent from both maps gets status ``"both_empty"``. Raises ``ValueError``
    naming both shapes if they differ, :class:`InputError` for a bad ``spacing`` or a class 0.
    """
    pred_label = np.asarray(pred_label)
    truth_label = np.asarray(truth_label)
    _check_same_shape(pred_label, truth_label)
    spacing_t = _check_spacing(spacing, pred_label.ndim)
    if classes is None:
        values = np.union1d(np.unique(truth_label), np.unique(pred_label))
        class_list = [int(v) for v in values if v != 0]
    else:
        class_list = []
        for c in classes:
            try:
                is_integer = int(c) == c
            except (TypeError, ValueError):
                is_integer = False
            if not is_integer:
                raise InputError("classes", f"class values must be integers, got {c!r}")
            if int(c) == 0:
                raise InputError("classes", "0 is the background label, not a class to evaluate")
            if int(c) not in class_list:
                class_list.append(int(c))
    return {c: metrics_for_masks(pred_label == c, truth_label == c, spacing_t) for c in class_list}


# ---------------------------------------------------------------------------------------------
# Summary over cases
# ---------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def summarize(per_case: Sequence[SegmentationMetrics]) -> dict[str, Any]:
    """Mean/std of each metric over cases of one structure, plus status counts.

    Returns ``{"n_cases", "status_counts": {status: n}, "n_failures", "dice", "jaccard",
    "hd95_vox", "asd_vox", "hd95_mm", "asd_mm"}`` where each metric entry is
    ``{"mean", "std", "n"}``. Dice/Jaccard use every case with a non-empty truth (status ``"ok"``
    or ``"empty_prediction"``, the latter as 0); distances use the ``"ok"`` cases only;
    ``n_failures`` counts ``"empty_prediction"`` cases. Std is ddof=0; over no case, NaN.
    """
    counts = {status: 0 for status in STATUSES}
    for m in per_case:
        if m.status not in counts:
            raise ValueError(f"unknown status {m.status!r}; expected one of {STATUSES}")
        counts[m.status] += 1
    truth_present = [m for m in per_case if m.status in ("ok", "empty_prediction")]
    ok = [m for m in per_case if m.status == "ok"]
    out: dict[str, Any] = {
        "n_cases": len(per_case),
        "status_counts": counts,
        "n_failures": counts["empty_prediction"],
    }
    for name in _OVERLAP_FIELDS:
        out[name] = _stats([float(getattr(m, name)) for m in truth_present])
    for name in _DISTANCE_FIELDS:
        out[name] = _stats([float(getattr(m, name)) for m in ok])
    return out
