"""Training schedules of RADA: pure functions of the iteration number ``t`` (0-based).

- learning rate: step decay, ``base_lr · gamma^floor(t / lr_step)`` (0.01 → 0.001 at 2500 →
  0.0001 at 5000);
- α (eq. 6 decay rate of the propagated-label weights α^d): cosine ramp-down evaluated at
  multiples of ``alpha_step`` iterations, reaching 0 at ``max_iterations``:
  ``α(t) = α0 · ½(1 + cos(π · min(1, floor(t / 1000) · 1000 / max_iterations)))``;
  LA values at t = 0, 1000, ..., 6000: 0.97, 0.905, 0.7275, 0.485, 0.2425, 0.065, 0;
  with ``alpha_floor`` > 0 (not in the paper, off by default) the ramp ends at the floor instead
  of 0: ``α(t) = α_floor + (α0 − α_floor) · ½(1 + cos(...))``, for runs without unlabeled
  volumes, where nothing else replaces the propagated labels once α^d has decayed;
- β (eq. 11): ``β(t) = β0 + (β_max − β0) · r(floor(t / 150) · 150)`` with the sigmoid ramp-up
  ``r(t) = exp(−5 (1 − t / max_iterations)²)`` (Laine & Aila's form, as in UA-MT), so β steps
  every 150 iterations from β0 (+ (β_max − β0)·e⁻⁵ ≈ 0.1013 at t = 0) to β_max at the end;
- uncertainty threshold (eq. 10 mask): ``(0.75 + 0.25 · r(t)) · ln(n_classes)``, continuous in t.

``beta_max`` = 0.3: the paper only says β starts at 0.1 and increases; its fixed-β sweep
(0.05-0.3) trained stably up to 0.3 with 0.1 best, so the ramp stays inside the explored range
instead of letting the noisy cross-view pseudo-labels weigh as much as the real supervision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class ScheduleConfig:
    """Schedule settings (paper / LA defaults)."""

    max_iterations: int = 6000
    base_lr: float = 0.01
    lr_step: int = 2500
    lr_gamma: float = 0.1
    alpha0: float = 0.97
    alpha_step: int = 1000
    alpha_floor: float = 0.0
    """Where the α ramp-down ends (0 in the paper). Not a paper setting: a floor near α0 keeps
    the propagated labels trusted all run, which helps when there is no unlabeled stream."""
    beta0: float = 0.1
    beta_step: int = 150
    beta_max: float = 0.3
    threshold_start: float = 0.75
    """Uncertainty threshold at t = 0, as a fraction of ln(n_classes)."""

    def __post_init__(self) -> None:
        for name in ("max_iterations", "lr_step", "alpha_step", "beta_step"):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"ScheduleConfig.{name} must be positive, got {getattr(self, name)!r}"
                )
        if not 0.0 <= self.alpha0 < 1.0:
            raise ValueError(f"ScheduleConfig.alpha0 must be in [0, 1), got {self.alpha0!r}")
        if not 0.0 <= self.alpha_floor <= self.alpha0:
            raise ValueError(
                f"ScheduleConfig.alpha_floor must be in [0, alpha0 = {self.alpha0!r}], got {self.alpha_floor!r}"
            )
        if not 0.0 <= self.beta0 <= self.beta_max <= 1.0:
            raise ValueError(
                f"ScheduleConfig needs 0 <= beta0 <= beta_max <= 1, got {self.beta0!r}, {self.beta_max!r}"
            )
        if self.base_lr <= 0 or self.lr_gamma <= 0:
            raise ValueError("ScheduleConfig.base_lr and lr_gamma must be positive")
        if not 0.0 <= self.threshold_start <= 1.0:
            raise ValueError(
                f"ScheduleConfig.threshold_start must be in [0, 1], got {self.threshold_start!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScheduleConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown schedule setting(s): {', '.join(unknown)}")
        return cls(**dict(data))


def _check_t(t: int | float) -> None:
    if t < 0:
        raise ValueError(f"iteration must be >= 0, got {t!r}")


def sigmoid_rampup(t: float, length: float) -> float:
    """exp(−5 (1 − s)²) with s = clip(t / length, 0, 1); 1.0 when ``length`` is 0."""
    if length <= 0:
        return 1.0
    s = min(max(float(t), 0.0), float(length)) / float(length)
    return float(math.exp(-5.0 * (1.0 - s) ** 2))


def cosine_rampdown(t: float, length: float) -> float:
    """½ (1 + cos(π s)) with s = clip(t / length, 0, 1): 1 at t = 0, 0 from t = length on."""
    if length <= 0:
        return 0.0
    s = min(max(float(t), 0.0), float(length)) / float(length)
    return float(0.5 * (1.0 + math.cos(math.pi * s)))


def learning_rate(t: int, cfg: ScheduleConfig | None = None) -> float:
    """Step-decayed SGD learning rate at iteration ``t``."""
    cfg = cfg or ScheduleConfig()
    _check_t(t)
    return cfg.base_lr * cfg.lr_gamma ** (int(t) // cfg.lr_step)


def alpha(t: int, cfg: ScheduleConfig | None = None) -> float:
    """Decay rate α of eq. (6), updated every ``alpha_step`` iterations by a cosine ramp-down."""
    cfg = cfg or ScheduleConfig()
    _check_t(t)
    t_step = (int(t) // cfg.alpha_step) * cfg.alpha_step
    return cfg.alpha_floor + (cfg.alpha0 - cfg.alpha_floor) * cosine_rampdown(
        t_step, cfg.max_iterations
    )


def beta(t: int, cfg: ScheduleConfig | None = None) -> float:
    """β of eq. (11), raised every ``beta_step`` iterations along the sigmoid ramp-up."""
    cfg = cfg or ScheduleConfig()
    _check_t(t)
    t_step = (int(t) // cfg.beta_step) * cfg.beta_step
    return cfg.beta0 + (cfg.beta_max - cfg.beta0) * sigmoid_rampup(t_step, cfg.max_iterations)


def uncertainty_threshold(t: float, cfg: ScheduleConfig | None = None, n_classes: int = 2) -> float:
    """Entropy threshold (nats) of the eq. (10) mask: threshold_start·ln(C) → ln(C), continuous."""
    cfg = cfg or ScheduleConfig()
    _check_t(t)
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes!r}")
    ramp = sigmoid_rampup(t, cfg.max_iterations)
    return (cfg.threshold_start + (1.0 - cfg.threshold_start) * ramp) * math.log(n_classes)
