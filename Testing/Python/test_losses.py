"""Tests of RADALib.losses on tiny hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from RADALib.losses import (
    combined_loss,
    masked_cross_entropy,
    predictive_entropy,
    supervised_loss,
    uncertainty_mask,
    weighted_cross_entropy,
    weighted_dice_loss,
)

LN3 = math.log(3.0)


def two_voxels():
    """Voxel 0: logits (0, ln3) -> p = (1/4, 3/4), label 1; voxel 1: logits (0, 0) -> p = (1/2, 1/2), label 0."""
    logits = torch.tensor([[0.0, 0.0], [LN3, 0.0]]).reshape(1, 2, 2, 1, 1)
    target = torch.tensor([1, 0]).reshape(1, 2, 1, 1)
    weight = torch.tensor([1.0, 0.5]).reshape(1, 2, 1, 1)
    return logits, target, weight


def test_two_voxel_setup_is_what_the_docstring_says():
    logits, _, _ = two_voxels()
    p = torch.softmax(logits, 1).reshape(2, 2)
    assert torch.allclose(p[1], torch.tensor([0.75, 0.5]))


def test_weighted_cross_entropy_by_hand():
    logits, target, weight = two_voxels()
    # (1 * -ln(3/4) + 0.5 * -ln(1/2)) / (1 + 0.5)
    expected = (-math.log(0.75) + 0.5 * math.log(2.0)) / 1.5
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(
        expected, rel=1e-6
    )


def test_uniform_weights_equal_plain_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 2)
    target = torch.randint(0, 3, (2, 4, 4, 2))
    ref = torch.nn.functional.cross_entropy(logits, target)
    got = weighted_cross_entropy(logits, target, torch.full((2, 4, 4, 2), 0.3))
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_weighted_dice_by_hand():
    logits, target, weight = two_voxels()
    # foreground p = (3/4, 1/2), y = (1, 0), w = (1, 1/2)
    # 1 - 2*(1*3/4*1) / (1*(9/16 + 1) + 1/2*(1/4 + 0)) = 1 - 1.5 / 1.6875 = 1/9
    got = weighted_dice_loss(logits, target, weight, eps=0.0)
    assert got.item() == pytest.approx(1.0 / 9.0, rel=1e-6)
    # with the default small epsilon the value barely moves
    assert weighted_dice_loss(logits, target, weight).item() == pytest.approx(1.0 / 9.0, abs=1e-4)


def test_supervised_loss_is_the_mean_of_the_two():
    logits, target, weight = two_voxels()
    wce = (-math.log(0.75) + 0.5 * math.log(2.0)) / 1.5
    dice = weighted_dice_loss(logits, target, weight).item()
    assert supervised_loss(logits, target, weight).item() == pytest.approx(
        0.5 * wce + 0.5 * dice, rel=1e-6
    )


@pytest.mark.parametrize("loss", [weighted_cross_entropy, weighted_dice_loss, supervised_loss])
def test_zero_weight_removes_a_voxels_influence(loss):
    logits, target, _ = two_voxels()
    weight = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    base = loss(logits, target, weight)
    other_logits = logits.clone()
    other_logits[0, :, 1] = torch.tensor([5.0, -5.0]).reshape(2, 1, 1)
    other_target = target.clone()
    other_target[0, 1] = 1
    assert loss(other_logits, other_target, weight).item() == pytest.approx(base.item(), abs=1e-7)
    # and its gradient is zero, the other voxel's is not
    logits = logits.clone().requires_grad_(True)
    loss(logits, target, weight).backward()
    assert torch.all(logits.grad[0, :, 1] == 0)
    assert torch.any(logits.grad[0, :, 0] != 0)


def test_weight_changes_the_value():
    logits, target, weight = two_voxels()
    a = weighted_cross_entropy(logits, target, weight)
    b = weighted_cross_entropy(logits, target, torch.ones_like(weight))
    assert a.item() != pytest.approx(b.item(), abs=1e-4)


@pytest.mark.parametrize("loss", [weighted_cross_entropy, weighted_dice_loss, supervised_loss])
def test_all_zero_weights_give_zero_loss_and_finite_gradient(loss):
    logits, target, _ = two_voxels()
    logits = logits.clone().requires_grad_(True)
    value = loss(logits, target, torch.zeros(1, 2, 1, 1))
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(logits.grad).all()


def perfect_logits(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(target, n_classes).movedim(-1, 1).float()
    return 40.0 * onehot - 20.0


@pytest.mark.parametrize("n_classes", [2, 3])
def test_perfect_prediction_gives_zero_dice_and_ce(n_classes):
    torch.manual_seed(0)
    target = torch.randint(0, n_classes, (2, 4, 4, 4))
    weight = torch.rand(2, 4, 4, 4)
    logits = perfect_logits(target, n_classes)
    assert weighted_dice_loss(logits, target, weight).item() < 1e-6
    assert weighted_cross_entropy(logits, target, weight).item() < 1e-6
    # and a wrong prediction is far from 0
    wrong = perfect_logits((target + 1) % n_classes, n_classes)
    assert weighted_dice_loss(wrong, target, weight).item() > 0.9


def test_multiclass_dice_is_the_mean_over_foreground_classes():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4, 2)
    target = torch.randint(0, 3, (1, 4, 4, 2))
    weight = torch.rand(1, 4, 4, 2)
    p = torch.softmax(logits, 1)

    def binary(c: int) -> float:
        y = (target == c).float()
        return (
            1
            - 2
            * (weight * p[:, c] * y).sum().item()
            / (weight * (p[:, c] ** 2 + y**2)).sum().item()
        )

    got = weighted_dice_loss(logits, target, weight, eps=0.0).item()
    assert got == pytest.approx((binary(1) + binary(2)) / 2, rel=1e-5)
    with_bg = weighted_dice_loss(logits, target, weight, include_background=True, eps=0.0).item()
    assert with_bg == pytest.approx((binary(0) + binary(1) + binary(2)) / 3, rel=1e-5)


def test_shape_mismatch_is_an_error():
    logits, target, weight = two_voxels()
    with pytest.raises(ValueError, match="target"):
        weighted_cross_entropy(logits, target[:, :1], weight)
    with pytest.raises(ValueError, match="weight"):
        weighted_dice_loss(logits, target, weight[:, :1])


def test_predictive_entropy_values():
    probs = torch.tensor([[0.5, 1.0, 0.25], [0.5, 0.0, 0.75]]).reshape(1, 2, 3, 1, 1)
    h = predictive_entropy(probs).reshape(-1)
    expected = [math.log(2), 0.0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    assert h.tolist() == pytest.approx(expected, abs=1e-6)
    three = torch.full((1, 3, 1, 1, 1), 1 / 3)
    assert predictive_entropy(three).item() == pytest.approx(math.log(3), rel=1e-6)


def test_uncertainty_mask_averages_passes_first():
    # each pass is confident, but they disagree: the mean is uniform (entropy ln 2)
    a = torch.tensor([[1.0, 0.9], [0.0, 0.1]]).reshape(1, 2, 2, 1, 1)
    b = torch.tensor([[0.0, 0.9], [1.0, 0.1]]).reshape(1, 2, 2, 1, 1)
    mask = uncertainty_mask([a, b], threshold=0.5)
    assert mask.reshape(-1).tolist() == [0.0, 1.0]
    assert mask.shape == (1, 2, 1, 1)
    # a single tensor is taken as the mean already
    assert uncertainty_mask(a, threshold=0.5).reshape(-1).tolist() == [1.0, 1.0]
    # a threshold just above ln 2 keeps the disagreeing voxel too
    assert uncertainty_mask([a, b], threshold=math.log(2) + 1e-4).reshape(-1).tolist() == [1.0, 1.0]
    # strict: a voxel whose entropy equals the threshold is not kept
    h = predictive_entropy(a).reshape(-1)[1].item()
    assert uncertainty_mask(a, threshold=h).reshape(-1).tolist() == [1.0, 0.0]


def test_masked_cross_entropy_ignores_masked_voxels():
    logits, target, _ = two_voxels()
    mask = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    got = masked_cross_entropy(logits, target, mask)
    assert got.item() == pytest.approx(-math.log(0.75), rel=1e-6)
    other = logits.clone()
    other[0, :, 1] = torch.tensor([-9.0, 9.0]).reshape(2, 1, 1)
    assert masked_cross_entropy(other, target, mask).item() == pytest.approx(got.item(), abs=1e-7)
    both = masked_cross_entropy(logits, target, torch.ones(1, 2, 1, 1))
    assert both.item() == pytest.approx((-math.log(0.75) + math.log(2)) / 2, rel=1e-6)
    assert masked_cross_entropy(logits, target, mask.bool()).item() == pytest.approx(got.item())


def test_masked_cross_entropy_empty_mask_is_zero():
    logits, target, _ = two_voxels()
    logits = logits.clone().requires_grad_(True)
    value = masked_cross_entropy(logits, target, torch.zeros(1, 2, 1, 1))
    value.backward()
    assert value.item() == 0.0
    assert torch.all(logits.grad == 0)


def test_combined_loss():
    assert combined_loss(2.0, 4.0, 0.25) == pytest.approx(0.75 * 2.0 + 0.25 * 4.0)
    assert combined_loss(torch.tensor(1.0), torch.tensor(3.0), 0.1).item() == pytest.approx(1.2)
    with pytest.raises(ValueError):
        combined_loss(1.0, 1.0, 1.5)
    with pytest.raises(ValueError):
        combined_loss(1.0, 1.0, float("nan"))
