"""Intensity augmentation: a random contrast and brightness for each training patch.

Not in the paper (its LA recipe augments by rotation and flips only). Every volume is z-scored
as a whole, background included, so the same tissue lands at different z values in volumes
whose field of view, coil or contrast agent differ; a network trained on a handful of labeled
volumes then learns their intensities, and a volume shifted by a fraction of a standard
deviation is segmented far worse. Drawing, per patch and with probability ``probability``,

    x' = (x − m) · c + m + b,   c ~ U(1 − contrast, 1 + contrast),   b ~ U(−shift, shift)

(m: the patch mean; b in z-score units) shows the networks those shifts during training. The
labels and weights are unchanged; labeled and unlabeled patches are drawn independently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IntensityAugmentation:
    """How often (``probability`` per patch) and how far patches are re-contrasted and shifted."""

    probability: float = 0.0
    contrast: float = 0.25
    shift: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(
                f"intensity augmentation probability must be in [0, 1], got {self.probability!r}"
            )
        if not 0.0 <= self.contrast < 1.0:
            raise ValueError(f"intensity contrast range must be in [0, 1), got {self.contrast!r}")
        if not self.shift >= 0.0:
            raise ValueError(f"intensity shift range must be >= 0, got {self.shift!r}")

    @property
    def enabled(self) -> bool:
        return self.probability > 0.0

    def draw(self, rng: np.random.Generator) -> tuple[float, float] | None:
        """``(c, b)`` for one patch, or None when this patch keeps its intensities.

        Draws nothing from ``rng`` when the augmentation is off, so turning it off leaves every
        other random choice of a seeded run as it was.
        """
        if not self.enabled:
            return None
        if rng.random() >= self.probability:
            return None
        c = float(rng.uniform(1.0 - self.contrast, 1.0 + self.contrast))
        b = float(rng.uniform(-self.shift, self.shift))
        return c, b


def apply_contrast_shift(patch: np.ndarray, contrast: float, shift: float) -> np.ndarray:
    """``patch`` ← (patch − mean) · contrast + mean + shift, in place; returns ``patch``."""
    mean = np.float32(patch.mean(dtype=np.float64))
    patch -= mean
    patch *= np.float32(contrast)
    patch += mean + np.float32(shift)
    return patch
