"""Tests of sizing a training run to a time budget (RADALib.time_budget and its use in training)."""

from __future__ import annotations

import json

import pytest
from test_training import Events, embeddings, memory_cases, states_equal, tiny

import RADALib.training as training
from RADALib.checkpoint import check_compatible
from RADALib.demo import demo_training
from RADALib.events import Progress
from RADALib.time_budget import (
    MAX_ITERATIONS,
    MIN_ITERATIONS,
    SAFETY,
    StepTiming,
    iterations_for_budget,
    measure_step,
)
from RADALib.train_config import CPU_TIME_BUDGET, preset, scale_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_iterations_fill_what_the_measurement_left_of_the_budget():
    timing = StepTiming(seconds_per_iteration=0.6, seconds_per_validation=12.0, probe_seconds=20.0)
    n = iterations_for_budget(1800, timing, validate_every=100)
    per_iteration = 0.6 + 12.0 / 100
    fitting = (1800 - 20) * SAFETY / per_iteration  # 2225
    assert n == 2200  # rounded down to two significant figures
    assert n * per_iteration <= (1800 - 20) * SAFETY and n > fitting - 100
    # without validation more fit; a slower step or a smaller budget fit fewer
    assert iterations_for_budget(1800, timing, validate_every=0) == 2600  # 2670
    assert iterations_for_budget(1800, StepTiming(1.2, 12.0, 20.0), 100) < n
    assert iterations_for_budget(900, timing, 100) < n
    # below two significant figures nothing is rounded; bounds hold at both ends
    assert iterations_for_budget(50, StepTiming(1.0, 0.0, 0.0), 0) == int(50 * SAFETY)
    assert iterations_for_budget(5, StepTiming(1.0, 0.0, 0.0), 0) == MIN_ITERATIONS
    assert iterations_for_budget(10**6, StepTiming(0.01, 0.0, 1.0), 0) == MAX_ITERATIONS
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="time budget"):
            iterations_for_budget(bad, timing, 100)
    with pytest.raises(ValueError, match="per iteration"):
        iterations_for_budget(100, StepTiming(0.0, 0.0, 0.0), 0)


def test_measure_step_times_the_iterations_after_the_warmup_and_one_validation():
    now, calls, steps = [0.0], [], [0]

    def clock():
        return now[0]

    def step():
        calls.append("step")
        steps[0] += 1
        now[0] += 5.0 if steps[0] == 1 else 1.0  # the very first iteration is slow (warm-up)

    def validation():
        calls.append("validation")
        now[0] += 7.0

    timing = measure_step(step, validation, warmup=2, timed=4, clock=clock)
    assert calls == ["step"] * 6 + ["validation"]
    assert timing == StepTiming(1.0, 7.0, 5.0 + 1.0 + 4 * 1.0 + 7.0)
    assert measure_step(step, None, warmup=0, timed=1, clock=clock).seconds_per_validation == 0.0
    # short iterations are timed for min_seconds, up to max_timed of them
    calls.clear()
    measure_step(step, warmup=0, timed=4, min_seconds=9.5, clock=clock)
    assert len(calls) == 10
    calls.clear()
    measure_step(step, warmup=0, timed=4, min_seconds=100.0, max_timed=12, clock=clock)
    assert len(calls) == 12
    with pytest.raises(ValueError):
        measure_step(step, timed=0)


def test_the_cpu_preset_sizes_its_run_unless_a_count_is_given():
    cpu = preset("cpu")
    assert cpu.time_budget == CPU_TIME_BUDGET and cpu.iterations == 1500
    assert preset("cpu", iterations=2500).time_budget == 0  # an explicit count fixes the run
    assert cpu.replace(iterations=700).time_budget == 0
    assert cpu.replace(iterations=700, time_budget=60).time_budget == 60
    assert scale_schedule(cpu, 300).time_budget == 0
    assert demo_training().replace(iterations=50).time_budget == 0
    assert preset("paper").time_budget == 0 and preset("small").time_budget == 0
    with pytest.raises(ValueError, match="time_budget"):
        cpu.replace(time_budget=-5)
    check_compatible(cpu.to_dict(), cpu.replace(time_budget=600), None)  # runtime only


def _budget_run(monkeypatch, sized_to, seen):
    """Make training size every budgeted run to ``sized_to`` iterations (a machine of that speed),
    recording the measured timing in ``seen``."""

    def fake(budget, timing, every):
        seen.append((budget, timing, every))
        return sized_to

    monkeypatch.setattr(training, "iterations_for_budget", fake)


def test_a_budgeted_run_measures_then_trains_the_count_that_fits_as_if_unmeasured(
    tmp_path, monkeypatch
):
    labeled, unlabeled = memory_cases()
    text, regions = embeddings([c.id for c in labeled])
    calls = []

    def validate(model, text_input, region_input):
        calls.append(model.training)
        return {"dice": 0.5}

    seen = []
    _budget_run(monkeypatch, 5, seen)
    events = Events()
    cfg = tiny(iterations=4, validate_every=5, checkpoint_every=0).replace(time_budget=60.0)
    result = training.train_on_cases(
        cfg, labeled, unlabeled, text, regions, tmp_path / "a", Progress(events), validate
    )
    [(budget, timing, every)] = seen
    assert budget == 60.0 and every == 5
    assert timing.seconds_per_iteration > 0 and timing.seconds_per_validation > 0
    assert timing.probe_seconds >= 13 * timing.seconds_per_iteration * 0.5
    assert calls == [False, False]  # the measurement's validation, then the run's at 5
    assert result.iteration == 5 and [h["step"] for h in result.history][-1] == 5
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["iterations"] == saved["schedule"]["max_iterations"] == 5
    assert saved["time_budget"] == 60.0
    assert saved["schedule"] == scale_schedule(cfg, 5).schedule.to_dict()
    assert any("time budget 1 min" in e.get("message", "") for e in events.events)

    # the measurement leaves no trace: the same run with the count given is the same model
    plain = training.train_on_cases(
        scale_schedule(cfg, 5).replace(validate_every=0),
        labeled,
        unlabeled,
        text,
        regions,
        tmp_path / "b",
    )
    assert states_equal(result.model.state_dict(), plain.model.state_dict())


def test_a_resumed_budgeted_run_keeps_its_count_on_a_machine_of_another_speed(
    tmp_path, monkeypatch
):
    labeled, unlabeled = memory_cases(2, 1)
    text, regions = embeddings([c.id for c in labeled])
    cfg = tiny(iterations=4, checkpoint_every=1).replace(time_budget=60.0)
    seen = []
    _budget_run(monkeypatch, 6, seen)
    straight = training.train_on_cases(cfg, labeled, unlabeled, text, regions, tmp_path / "a")
    first = training.train_on_cases(
        cfg, labeled, unlabeled, text, regions, tmp_path / "b", stop_after=2
    )
    assert first.iteration == 2 and len(seen) == 2
    _budget_run(monkeypatch, 9, seen)  # now the machine would fit more
    events = Events()
    resumed = training.train_on_cases(
        cfg, labeled, unlabeled, text, regions, tmp_path / "b", Progress(events)
    )
    assert len(seen) == 2  # not measured again
    assert resumed.iteration == straight.iteration == 6
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert any("sized to 6 iterations" in e.get("message", "") for e in events.events)


def test_a_budget_that_fits_fewer_than_the_presets_count_warns(tmp_path, monkeypatch):
    labeled, unlabeled = memory_cases(1, 1)
    text, regions = embeddings([c.id for c in labeled])
    _budget_run(monkeypatch, 2, [])
    events = Events()
    result = training.train_on_cases(
        tiny(iterations=4).replace(time_budget=1.0),
        labeled,
        unlabeled,
        text,
        regions,
        tmp_path,
        Progress(events),
    )
    assert result.iteration == 2
    [warning] = [e["message"] for e in events.events if e.get("level") == "warning"]
    assert "only 2 iterations fit" in warning and "--iterations 4" in warning
