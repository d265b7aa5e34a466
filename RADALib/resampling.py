"""Resampling onto a training spacing, and back onto an input's own grid (docs/method.md,
"Training spacing").

A grid of ``n`` voxels of size ``s`` along an axis covers ``n·s`` mm; a grid resampled to the
spacing ``s'`` keeps that physical extent with ``n' = round(n·s / s')`` voxels, centred on the
same point: voxel ``j`` of the new grid lies at the old continuous index
``(n − 1)/2 + (j − (n' − 1)/2)·s'/s`` (voxel centres, as :class:`~RADALib.volume.Volume`'s
origin is the centre of voxel 0). The same mapping, read the other way, takes results back.

- **Images** and **probabilities**: linear interpolation, one axis at a time (the scaling is
  separable); before coarsening an axis by a factor ``f = s'/s > 1`` a Gaussian of standard
  deviation ``(f − 1)/2`` voxels smooths it (the anti-aliasing filter of scikit-image's
  ``resize``). Positions past the border take the border's value.
- **Label maps**: per class, the class's indicator goes through the image resampling, and each
  voxel takes the class of largest value (ties to the smaller class), so touching classes keep
  their boundary and no class is invented between two others, as nearest-neighbour or
  interpolating the class numbers would.
- **Distances** d_v (one value per slice along axis v): interpolated linearly at the new
  slices' positions and kept in *original* slice units, so α^d of eq. (6) decays per slice of
  the acquired grid as before (``inf``, a view without propagation, stays ``inf``).
- **Annotated slices** (whole slices): each maps to its nearest new slice, which becomes an
  annotated slice holding the original slice's labels resampled in-plane; the mixed labels of
  every view take those labels there (weight 1, as on any annotated slice).

Where a volume already has the target spacing (within :data:`SPACING_TOLERANCE`, relative) an
axis is left untouched, so nothing changes where no resampling is needed. numpy and scipy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from .data import TrainingCase
    from .volume import Volume

RESAMPLING_VERSION = 1
"""Changes when resampled arrays would change: part of every cache key of resampled data."""

SPACING_TOLERANCE = 1e-3
"""Relative difference under which two voxel sizes count as equal (no resampling)."""

Spacing = tuple[float, float, float]


# ----------------------------------------------------------------------------- the grid


def check_spacing(spacing: Sequence[float], name: str = "spacing") -> tuple[float, ...]:
    """``spacing`` as floats; ``ValueError`` unless every size is positive and finite."""
    values = tuple(float(s) for s in spacing)
    if not values or any(not (math.isfinite(s) and s > 0) for s in values):
        raise ValueError(f"{name} must be positive, finite sizes in mm, got {tuple(spacing)}")
    return values


def same_spacing(
    a: Sequence[float], b: Sequence[float], tolerance: float = SPACING_TOLERANCE
) -> bool:
    """True when the two spacings agree on every axis within the relative ``tolerance``."""
    return len(a) == len(b) and all(
        abs(float(x) - float(y)) <= tolerance * max(abs(float(x)), abs(float(y)))
        for x, y in zip(a, b)
    )


def plan_spacing(spacings: Iterable[Sequence[float]]) -> Spacing:
    """The median voxel size per axis over ``spacings`` (as nnU-Net plans its target spacing)."""
    table = np.asarray([check_spacing(s) for s in spacings], dtype=np.float64)
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] != 3:
        raise ValueError("plan_spacing needs at least one (x, y, z) spacing")
    return tuple(float(v) for v in np.median(table, axis=0))  # type: ignore[return-value]


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]
) -> tuple[int, ...]:
    """``round(n·s / s')`` voxels per axis (at least 1): the same physical extent at ``s'``;
    an axis whose spacing is unchanged keeps its size."""
    return tuple(
        int(n) if same_spacing([s], [t]) else max(1, round(int(n) * float(s) / float(t)))
        for n, s, t in zip(shape, spacing, new_spacing)
    )


def sample_positions(n_from: int, s_from: float, n_to: int, s_to: float) -> np.ndarray:
    """The centres of the ``n_to`` voxels of size ``s_to`` in index units of the grid of
    ``n_from`` voxels of size ``s_from``, both grids centred on the same point."""
    j = np.arange(int(n_to), dtype=np.float64)
    return (int(n_from) - 1) / 2.0 + (j - (int(n_to) - 1) / 2.0) * float(s_to) / float(s_from)


def resampled_origin(
    volume: Volume, new_spacing: Sequence[float], shape: Sequence[int]
) -> tuple[float, float, float]:
    """The world position of voxel 0 of ``volume``'s grid resampled to ``new_spacing`` and
    ``shape``: the grid keeps ``volume``'s centre and direction."""
    direction = np.asarray(volume.direction, float).reshape(3, 3)
    offset = [
        (n - 1) / 2.0 * s - (m - 1) / 2.0 * t
        for n, s, m, t in zip(volume.shape, volume.spacing, shape, new_spacing)
    ]
    origin = np.asarray(volume.origin, float) + direction @ np.asarray(offset)
    return tuple(float(v) for v in origin)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- arrays


def _interpolate_axis(array: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``array`` at fractional indices ``positions`` along ``axis``
    (clamped to the border)."""
    n = array.shape[axis]
    where = np.clip(positions, 0.0, n - 1)
    low = np.minimum(np.floor(where).astype(np.intp), max(n - 2, 0))
    high = np.minimum(low + 1, n - 1)
    shape = [1] * array.ndim
    shape[axis] = -1
    weight = (where - low).astype(np.float32).reshape(shape)
    below, above = np.take(array, low, axis=axis), np.take(array, high, axis=axis)
    return below + (above - below) * weight


def resample_array(
    array: np.ndarray,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    shape: Sequence[int] | None = None,
) -> np.ndarray:
    """``array`` (float32, any number of axes) resampled from ``spacing`` to ``new_spacing``:
    anti-aliased linear interpolation, axis by axis (module docstring). ``shape``: the target
    grid's size (default :func:`resampled_shape`). Returns ``array`` itself when no axis
    changes."""
    shape = (
        tuple(shape) if shape is not None else resampled_shape(array.shape, spacing, new_spacing)
    )
    out = array
    for axis, (n, s, m, t) in enumerate(zip(array.shape, spacing, shape, new_spacing)):
        if int(n) == int(m) and same_spacing([s], [t]):
            continue
        out = np.asarray(out, np.float32)
        factor = float(t) / float(s)
        if factor > 1.0 + SPACING_TOLERANCE:
            out = ndimage.gaussian_filter1d(out, (factor - 1.0) / 2.0, axis=axis, mode="nearest")
        out = _interpolate_axis(out, sample_positions(n, s, m, t), axis)
    return out


def resample_labels(
    label: np.ndarray,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    shape: Sequence[int] | None = None,
) -> np.ndarray:
    """A class map resampled per class (indicator → :func:`resample_array` → largest value),
    in ``label``'s dtype. Returns ``label`` itself when no axis changes."""
    shape = (
        tuple(shape) if shape is not None else resampled_shape(label.shape, spacing, new_spacing)
    )
    if tuple(label.shape) == shape and same_spacing(spacing, new_spacing):
        return label
    best = out = None
    for value in np.unique(label):
        score = resample_array((label == value).astype(np.float32), spacing, new_spacing, shape)
        if best is None:
            best, out = score, np.full(shape, value, label.dtype)
            continue
        wins = score > best
        best = np.where(wins, score, best)
        out[wins] = value
    return out  # type: ignore[return-value]


def resample_probabilities(
    probabilities: np.ndarray,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    shape: Sequence[int],
) -> np.ndarray:
    """Class probabilities (K, X, Y, Z) onto the grid of ``shape`` voxels of ``new_spacing``,
    each class by :func:`resample_array` (take the argmax afterwards)."""
    return np.stack([resample_array(p, spacing, new_spacing, shape) for p in probabilities]).astype(
        np.float32, copy=False
    )


def resample_distances(
    distances: np.ndarray, n_from: int, s_from: float, n_to: int, s_to: float
) -> np.ndarray:
    """A per-slice distance vector at the ``n_to`` new slices' positions, in the original
    slices' units (linear; a slice next to an infinite value takes its nearest slice's value)."""
    d = np.asarray(distances, np.float32).reshape(-1)
    if int(n_from) == int(n_to) and same_spacing([s_from], [s_to]):
        return d
    positions = np.clip(sample_positions(n_from, s_from, n_to, s_to), 0.0, n_from - 1)
    finite = np.isfinite(d)
    filled = np.where(finite, d, 0.0).astype(np.float32)
    linear = _interpolate_axis(filled, positions, 0)
    low = np.floor(positions).astype(np.intp)
    high = np.minimum(low + 1, n_from - 1)
    nearest = d[np.rint(positions).astype(np.intp)]
    return np.where(finite[low] & finite[high], linear, nearest).astype(np.float32)


def mapped_slices(
    indices: Iterable[int], n_from: int, s_from: float, n_to: int, s_to: float
) -> list[int]:
    """The nearest new slice of each of the old slices ``indices``."""
    positions = sample_positions(n_to, s_to, n_from, s_from)  # old centres in new index units
    return [int(np.clip(np.rint(positions[int(i)]), 0, n_to - 1)) for i in indices]


def resample_volume(volume: Volume, new_spacing: Sequence[float], kind: str = "image") -> Volume:
    """``volume`` on the grid of ``new_spacing`` that keeps its extent, centre and direction
    (``kind="label"``: per class). Not tied to a file: its results are not written with
    :func:`~RADALib.volume.write_like`."""
    from .volume import volume_from_array

    new_spacing = check_spacing(new_spacing, "new_spacing")
    shape = resampled_shape(volume.shape, volume.spacing, new_spacing)
    resample = resample_labels if kind == "label" else resample_array
    array = resample(volume.array, volume.spacing, new_spacing, shape)
    origin = resampled_origin(volume, new_spacing, shape)
    return volume_from_array(array, new_spacing, origin, volume.direction, volume.source)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- training cases


def _annotation(
    case: TrainingCase, spacing: Sequence[float], new_spacing: Sequence[float], shape: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """The resampled case's annotated mask and sparse label (module docstring)."""
    if case.annotated_slabs is None:  # not whole slices: resampled as label maps
        annotated = resample_labels(case.annotated.astype(np.uint8), spacing, new_spacing, shape)
        return annotated > 0, resample_labels(case.sparse, spacing, new_spacing, shape)
    annotated = np.zeros(shape, bool)
    sparse = np.zeros(shape, case.sparse.dtype)
    for axis, indices in enumerate(case.annotated_slabs):
        plane = [a for a in range(3) if a != axis]
        old = [spacing[a] for a in plane]
        new = [new_spacing[a] for a in plane]
        targets = mapped_slices(
            indices, case.shape[axis], spacing[axis], shape[axis], new_spacing[axis]
        )
        for index, target in zip(indices, targets):
            source = np.take(case.sparse, int(index), axis=axis)
            key: list = [slice(None)] * 3
            key[axis] = target
            sparse[tuple(key)] = resample_labels(source, old, new, [shape[a] for a in plane])
            annotated[tuple(key)] = True
    return annotated, sparse


def resample_case(
    case: TrainingCase, spacing: Sequence[float], new_spacing: Sequence[float]
) -> TrainingCase:
    """A :class:`~RADALib.data.TrainingCase` of grid ``spacing`` resampled to ``new_spacing``:
    image, mixed labels (per class), distances (original slice units) and annotated slices as
    the module docstring says. Returns ``case`` itself when the spacings agree."""
    if same_spacing(spacing, new_spacing):
        return case
    shape = resampled_shape(case.shape, spacing, new_spacing)
    image = resample_array(case.image, spacing, new_spacing, shape)
    if not case.labeled:
        return dataclasses.replace(case, image=image)
    annotated, sparse = _annotation(case, spacing, new_spacing, shape)
    done: dict[int, np.ndarray] = {}  # the same array in several views is resampled once
    labels = []
    for view_label in case.labels:  # type: ignore[union-attr]
        if id(view_label) not in done:
            resampled = resample_labels(view_label, spacing, new_spacing, shape).copy()
            resampled[annotated] = sparse[annotated]  # the mixed label: true labels where known
            done[id(view_label)] = resampled
        labels.append(done[id(view_label)])
    distances = tuple(
        resample_distances(d, case.shape[v], spacing[v], shape[v], new_spacing[v])
        for v, d in enumerate(case.distances)  # type: ignore[arg-type]
    )
    return dataclasses.replace(
        case,
        image=image,
        labels=tuple(labels),
        distances=distances,
        annotated=annotated,
        sparse=sparse,
    )
