"""Test-time mirroring: the ensemble's probabilities averaged over the mirror images of a volume.

Training shows each network a volume in one of the 8 symmetries of the (x, y) plane
(:func:`RADALib.data.draw_augmentation`), so a trained network should give the same answer to a
volume and to its mirror image, up to its errors; averaging its answers over mirror images
averages some of those errors away (nnU-Net's test-time mirroring, MONAI's flip-based
``TestTimeAugmentation``). The mirrors used are the four reflections of the (x, y) plane: none,
x, y, and both (the half turn). They keep the volume's shape, so any window or whole-volume pass
runs on them unchanged; z is never flipped (training never flips it). A model trained without
augmentation (``augment=False``) has never seen a mirror image: its bundles do not ask for this.

Each mirror costs one more pass, so inference takes four times as long.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["PLANE_MIRRORS", "mirror_averaged_probabilities"]

PLANE_MIRRORS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (0, 1))
"""The axes flipped by each mirror: identity, x, y, both (a half turn about z)."""


def mirror_averaged_probabilities(
    network: Callable[[np.ndarray], Tensor],
    image: np.ndarray,
    mirrors: Sequence[tuple[int, ...]] = PLANE_MIRRORS,
) -> Tensor:
    """Mean of ``network``'s probabilities (K, X, Y, Z) over ``mirrors`` of ``image`` (X, Y, Z).

    For each mirror, ``image`` flipped along its axes goes through ``network`` and the answer is
    flipped back before it is added, so every term lies on ``image``'s grid.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (X, Y, Z), got shape {image.shape}")
    if not mirrors:
        raise ValueError("mirrors must name at least one mirror (() is the identity)")
    total: Tensor | None = None
    for axes in mirrors:
        if any(a not in (0, 1, 2) for a in axes):
            raise ValueError(f"mirror axes must be among 0, 1, 2, got {axes}")
        flipped = np.ascontiguousarray(np.flip(image, axis=axes)) if axes else image
        probabilities = network(flipped)
        if axes:
            probabilities = torch.flip(probabilities, dims=[a + 1 for a in axes])  # (K, X, Y, Z)
        total = probabilities.float() if total is None else total + probabilities
    assert total is not None
    return total / len(mirrors)
