"""Scale augmentation: each training patch zoomed in or out by a random factor.

Not in the paper (its LA recipe augments by rotation and flips only). With a handful of
labeled volumes the networks see a handful of structure sizes: on LA2018 the largest atria of
the held-out volumes are larger than every labeled one, and a model trained on the labeled
sizes only under-segments them. nnU-Net draws a scale for its patches for the same reason.
Per patch, with probability ``probability``, a factor

    s = exp(u),   u ~ U(−ln(1 + range), ln(1 + range))

(log-uniform, so zooming in and out are equally likely) is drawn; the patch is cut from a
window of ``round(patch / s)`` voxels per axis and resized to ``patch``: the image by linear
interpolation, labels and weights by nearest neighbour (a label stays one class per voxel, and
padding keeps its weight 0). s > 1 shows the structure larger, s < 1 smaller. Labeled and
unlabeled patches are drawn independently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class ScaleAugmentation:
    """How often (``probability`` per patch) and how far (``range``) patches are zoomed."""

    probability: float = 0.0
    range: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(
                f"scale augmentation probability must be in [0, 1], got {self.probability!r}"
            )
        if not 0.0 <= self.range <= 1.0:
            raise ValueError(f"scale range must be in [0, 1], got {self.range!r}")

    @property
    def enabled(self) -> bool:
        return self.probability > 0.0 and self.range > 0.0

    def draw(self, rng: np.random.Generator) -> float | None:
        """The zoom factor s of one patch, or None when this patch keeps its scale.

        Draws nothing from ``rng`` when the augmentation is off, so turning it off leaves every
        other random choice of a seeded run as it was.
        """
        if not self.enabled:
            return None
        if rng.random() >= self.probability:
            return None
        bound = math.log1p(self.range)
        return float(math.exp(rng.uniform(-bound, bound)))


def source_window(patch: Sequence[int], scale: float) -> tuple[int, int, int]:
    """The window, in voxels, that a ``patch`` zoomed by ``scale`` is cut from (at least 1)."""
    return tuple(max(1, round(int(p) / scale)) for p in patch)  # type: ignore[return-value]


def resize_patch(array: np.ndarray, shape: Sequence[int], linear: bool) -> np.ndarray:
    """``array`` (x, y, z) resized to ``shape``: linear for images, nearest for labels/weights.

    Voxels are mapped as areas (``grid_mode``), so a zoom keeps the patch's centre and edges
    where they were. SciPy, not torch: the sampler runs in a background thread beside the
    training step, and a torch call there would start a second pool of compute threads.
    """
    shape = tuple(int(s) for s in shape)
    if tuple(array.shape) == shape:
        return array
    factors = [t / n for t, n in zip(shape, array.shape)]
    return ndimage.zoom(
        array, factors, output=array.dtype, order=1 if linear else 0, mode="nearest", grid_mode=True
    )
