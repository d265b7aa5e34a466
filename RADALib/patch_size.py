"""The training window fitted to the labeled structures (docs/method.md, "Training window").

A preset's ``patch`` is the largest window it may afford. With ``TrainConfig.fit_patch`` the
window shrinks, axis by axis and at the training spacing, to what the cohort needs:

- the **structure's extent**: the bounding box of the labeled voxels of every labeled case
  (its three annotated slices: the sagittal slice spans y and z, the coronal x and z, the axial
  x and y, so together they bound the structure on every axis; a dense label bounds it exactly),
  the largest over the cases, times :data:`CONTEXT` so the network also sees what surrounds it;
- never more than the **largest volume** needs (a window past the volume only sees padding);
- rounded up to a multiple of the VNet's downsampling (16), at least 16, at most the preset's.

So a CPU preset spends its voxels on the structure: the demo's small volumes get a small
window, a cohort of large volumes with a small organ is not padded with empty context.

With ``TrainConfig.fit_spacing`` the training spacing is fitted first, the same way: the
cohort's median spacing is coarsened by the smallest factor, between 1 and the preset's
``spacing_factor``, at which what the window should hold (the structure's extent times
:data:`CONTEXT`, no more than its volume) fits the preset's largest window on every axis
(:func:`fitted_spacing_factor`). A large organ in large volumes (the left atrium) gets the
preset's full factor; small volumes that already fit (the hippocampus) keep their own voxels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .networks import DOWNSAMPLING

CONTEXT = 1.5
"""The window covers the structure's extent times this (a quarter of it on each side)."""


def structure_extent(labels: Sequence[np.ndarray]) -> tuple[int, int, int] | None:
    """The largest bounding-box size (voxels per axis) of the nonzero voxels over ``labels``;
    ``None`` when none holds a labeled voxel."""
    sizes = []
    for label in labels:
        nonzero = np.nonzero(label)
        if nonzero[0].size:
            sizes.append([int(a.max() - a.min() + 1) for a in nonzero])
    if not sizes:
        return None
    return tuple(int(v) for v in np.max(sizes, axis=0))  # type: ignore[return-value]


def fitted_patch(
    cap: Sequence[int],
    extent: Sequence[int] | None,
    largest_volume: Sequence[int],
    context: float = CONTEXT,
) -> tuple[int, int, int]:
    """The window per axis (module docstring): ``extent · context``, no larger than
    ``largest_volume``, rounded up to a multiple of 16, within [16, ``cap``]. Without an
    ``extent`` only the volume bounds it."""
    patch = []
    for i, (limit, size) in enumerate(zip(cap, largest_volume)):
        need = int(size) if extent is None else min(math.ceil(extent[i] * context), int(size))
        rounded = DOWNSAMPLING * math.ceil(max(need, 1) / DOWNSAMPLING)
        patch.append(int(min(int(limit), max(DOWNSAMPLING, rounded))))
    return tuple(patch)  # type: ignore[return-value]


def window_need_mm(
    structure_mm: Sequence[float], volume_mm: Sequence[float], context: float = CONTEXT
) -> tuple[float, float, float]:
    """What a window should hold around one labeled case's structure, in mm per axis: its
    extent times ``context``, no more than its volume."""
    return tuple(min(float(e) * context, float(v)) for e, v in zip(structure_mm, volume_mm))  # type: ignore[return-value]


def fitted_spacing_factor(
    cap: Sequence[int],
    needs_mm: Sequence[Sequence[float]],
    median_spacing: Sequence[float],
    max_factor: float,
) -> float:
    """The smallest factor in [1, ``max_factor``] by which ``median_spacing`` is coarsened so
    that every case's need (:func:`window_need_mm`) fits ``cap`` voxels on every axis:
    ``max over cases and axes of need / (spacing · cap)``, clamped. Without needs,
    ``max_factor``."""
    if not needs_mm:
        return float(max_factor)
    ratio = max(
        float(need[i]) / (float(median_spacing[i]) * int(cap[i]))
        for need in needs_mm
        for i in range(3)
    )
    return float(min(max(ratio, 1.0), float(max_factor)))
