"""Tests of RADALib.schedules."""

from __future__ import annotations

import math

import pytest

from RADALib.schedules import (
    ScheduleConfig,
    alpha,
    beta,
    cosine_rampdown,
    learning_rate,
    sigmoid_rampup,
    uncertainty_threshold,
)

CFG = ScheduleConfig()


def test_paper_defaults():
    assert (CFG.max_iterations, CFG.base_lr, CFG.lr_step, CFG.lr_gamma) == (6000, 0.01, 2500, 0.1)
    assert (CFG.alpha0, CFG.alpha_step, CFG.beta0, CFG.beta_step) == (0.97, 1000, 0.1, 150)
    assert CFG.beta0 < CFG.beta_max <= 1.0


@pytest.mark.parametrize(
    "t, lr", [(0, 0.01), (2499, 0.01), (2500, 0.001), (4999, 0.001), (5000, 0.0001), (5999, 0.0001)]
)
def test_learning_rate_steps(t, lr):
    assert learning_rate(t, CFG) == pytest.approx(lr, rel=1e-12)


def test_alpha_at_each_thousand():
    # 0.97 * (1 + cos(pi * k / 6)) / 2, by hand
    expected = [
        0.97,
        0.97 * (1 + math.sqrt(3) / 2) / 2,
        0.97 * 0.75,
        0.485,
        0.97 * 0.25,
        0.97 * (1 - math.sqrt(3) / 2) / 2,
        0.0,
    ]
    got = [alpha(t, CFG) for t in range(0, 6001, 1000)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[1] == pytest.approx(0.9050, abs=1e-4)


def test_alpha_is_piecewise_constant():
    assert alpha(999, CFG) == alpha(0, CFG) == 0.97
    assert alpha(1999, CFG) == alpha(1000, CFG)
    assert alpha(2000, CFG) < alpha(1999, CFG)
    assert alpha(7000, CFG) == 0.0


def test_alpha_floor_ends_the_ramp_at_the_floor_and_zero_floor_is_the_paper():
    assert CFG.alpha_floor == 0.0
    floored = ScheduleConfig(alpha_floor=0.9)
    got = [alpha(t, floored) for t in range(0, 6001, 1000)]
    # 0.9 + (0.97 - 0.9) * (1 + cos(pi * k / 6)) / 2, by hand at k = 0, 3, 6
    assert (got[0], got[3], got[6]) == pytest.approx((0.97, 0.935, 0.9), abs=1e-12)
    assert all(a2 <= a1 for a1, a2 in zip(got, got[1:]))
    assert alpha(9000, floored) == pytest.approx(0.9)


@pytest.mark.parametrize("floor", [-0.1, 0.98])
def test_alpha_floor_outside_zero_to_alpha0_is_refused(floor):
    with pytest.raises(ValueError, match="alpha_floor"):
        ScheduleConfig(alpha_floor=floor)


def test_beta_monotone_from_beta0_to_beta_max():
    values = [beta(t, CFG) for t in range(0, 6001, 10)]
    assert all(b2 >= b1 for b1, b2 in zip(values, values[1:]))
    assert values[0] == pytest.approx(0.1 + (CFG.beta_max - 0.1) * math.exp(-5), rel=1e-12)
    assert values[0] == pytest.approx(0.1, abs=2e-3)
    assert beta(6000, CFG) == pytest.approx(CFG.beta_max)
    assert values[-1] > values[len(values) // 2] > values[0]


def test_beta_steps_every_150_iterations():
    assert beta(149, CFG) == beta(0, CFG)
    assert beta(150, CFG) > beta(149, CFG)
    assert beta(299, CFG) == beta(150, CFG)
    # value at a step is the ramp at that step
    s = 3000 / 6000
    assert beta(3100, CFG) == pytest.approx(
        0.1 + (CFG.beta_max - 0.1) * math.exp(-5 * (1 - s) ** 2)
    )


def test_uncertainty_threshold_ramp():
    ln2 = math.log(2)
    t0 = uncertainty_threshold(0, CFG)
    assert t0 == pytest.approx((0.75 + 0.25 * math.exp(-5)) * ln2)
    assert t0 == pytest.approx(0.75 * ln2, abs=2e-3)
    assert uncertainty_threshold(6000, CFG) == pytest.approx(ln2)
    values = [uncertainty_threshold(t, CFG) for t in range(0, 6001, 7)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    # continuous: changes between consecutive iterations
    assert uncertainty_threshold(3001, CFG) > uncertainty_threshold(3000, CFG)
    assert uncertainty_threshold(6000, CFG, n_classes=3) == pytest.approx(math.log(3))


def test_ramp_helpers():
    assert sigmoid_rampup(0, 40) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(40, 40) == 1.0 and sigmoid_rampup(80, 40) == 1.0
    assert sigmoid_rampup(20, 40) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(5, 0) == 1.0
    assert cosine_rampdown(0, 10) == 1.0
    assert cosine_rampdown(5, 10) == pytest.approx(0.5)
    assert cosine_rampdown(10, 10) == pytest.approx(0.0, abs=1e-15)


def test_config_round_trip_and_errors():
    cfg = ScheduleConfig(max_iterations=300, beta_max=0.5)
    assert ScheduleConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="nope"):
        ScheduleConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError):
        ScheduleConfig(beta0=0.6, beta_max=0.5)
    with pytest.raises(ValueError):
        learning_rate(-1, CFG)


def test_short_runs_scale_the_ramps():
    cfg = ScheduleConfig(max_iterations=300, alpha_step=100, beta_step=30)
    assert alpha(300, cfg) == 0.0
    assert alpha(150, cfg) == alpha(100, cfg) == pytest.approx(0.97 * 0.75)
    assert beta(300, cfg) == pytest.approx(cfg.beta_max)
