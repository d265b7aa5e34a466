"""Losses of RADA (eqs. 7-11) and the uncertainty mask of the cross-view supervision.

Shapes: logits (B, C, *S), integer targets (B, *S), per-voxel weights or masks (B, *S), where
*S are the spatial dimensions (X, Y, Z in training). Sums run over every voxel of the whole
batch (one ratio per batch, not a mean of per-volume ratios), in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DICE_EPS = 1e-5
"""Smoothing added to the numerator and denominator of the Dice ratio."""


def _check(logits: Tensor, target: Tensor, weight: Tensor | None, name: str = "weight") -> None:
    if logits.dim() < 2:
        raise ValueError(f"logits must be (B, C, ...), got shape {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )
    if weight is not None and tuple(weight.shape) != expected:
        raise ValueError(
            f"{name} shape {tuple(weight.shape)} does not match logits {tuple(logits.shape)}"
        )


def _weighted_nll(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """−Σ w log p_{y} / Σ w over the batch; 0 (with a zero gradient) when Σ w = 0."""
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
    w = weight.to(nll.dtype)
    total = w.sum()
    # Σw = 0 makes the numerator 0 too, so clamping the denominator yields exactly 0.
    return (w * nll).sum() / total.clamp_min(torch.finfo(total.dtype).tiny)


def weighted_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted CE, eq. (7): −Σ_i w_i log p_{i, y_i} / Σ_i w_i (0 when all weights are 0)."""
    _check(logits, target, weight)
    return _weighted_nll(logits, target, weight)


def weighted_dice_loss(
    logits: Tensor,
    target: Tensor,
    weight: Tensor,
    include_background: bool = False,
    eps: float = DICE_EPS,
) -> Tensor:
    """Weighted soft Dice loss, eq. (8), on softmax probabilities.

    For each scored class c (foreground classes 1..C-1, plus 0 when ``include_background``):
    ``L_c = 1 − (2 Σ w p_c y_c + eps) / (Σ w (p_c² + y_c²) + eps)`` with y_c the one-hot target;
    the loss is the unweighted mean of L_c. For two classes this is eq. (8) on the foreground.
    A class absent from target and prediction (or all weights 0) scores ~0.
    """
    _check(logits, target, weight)
    n_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), n_classes).movedim(-1, 1).to(probs.dtype)
    w = weight.to(probs.dtype).unsqueeze(1)
    dims = [0, *range(2, probs.dim())]
    intersect = (w * probs * onehot).sum(dims)
    denom = (w * (probs * probs + onehot * onehot)).sum(dims)
    per_class = 1.0 - (2.0 * intersect + eps) / (denom + eps)  # eq. (8), per class
    if not include_background:
        if n_classes < 2:
            raise ValueError("weighted_dice_loss needs at least 2 classes without the background")
        per_class = per_class[1:]
    return per_class.mean()


def supervised_loss(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """L_sup = ½ L_WCE + ½ L_Dice, eq. (9)."""
    return 0.5 * weighted_cross_entropy(logits, target, weight) + 0.5 * weighted_dice_loss(
        logits, target, weight
    )


def predictive_entropy(prob_mean: Tensor) -> Tensor:
    """Per-voxel entropy −Σ_c p_c ln p_c (nats) of probabilities (B, C, *S) -> (B, *S)."""
    p = prob_mean.float()
    return -torch.special.xlogy(p, p).sum(dim=1)


def mean_probability(probs: Tensor | Sequence[Tensor]) -> Tensor:
    """Mean of a sequence of softmax maps (T noisy passes); a single tensor is returned as is."""
    if isinstance(probs, Tensor):
        return probs
    probs = list(probs)
    if not probs:
        raise ValueError("mean_probability needs at least one probability map")
    return torch.stack(probs, dim=0).mean(dim=0)


def uncertainty_mask(probs: Tensor | Sequence[Tensor], threshold: float) -> Tensor:
    """m_i of eq. (10): 1.0 where the entropy of the mean softmax is below ``threshold``, else 0.0.

    ``probs`` is the mean softmax (B, C, *S) or a sequence of T such maps, which are averaged
    first. Returns a float tensor (B, *S) of 0/1, detached.
    """
    with torch.no_grad():
        entropy = predictive_entropy(mean_probability(probs))
        return (entropy < threshold).to(torch.float32)


def masked_cross_entropy(logits: Tensor, pseudo_target: Tensor, mask: Tensor) -> Tensor:
    """Masked CE, eq. (10): −Σ m log p_{ŷ} / Σ m (0 when the mask is empty)."""
    _check(logits, pseudo_target, mask, "mask")
    return _weighted_nll(logits, pseudo_target, mask.detach())


def combined_loss(sup: Tensor | float, unsup: Tensor | float, beta: float) -> Tensor | float:
    """L_total = (1 − β) L_sup + β L_unsup, eq. (11)."""
    if not 0.0 <= beta <= 1.0:  # also refuses NaN
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    return (1.0 - beta) * sup + beta * unsup
