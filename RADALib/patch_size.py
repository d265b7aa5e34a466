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
