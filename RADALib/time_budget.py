"""Sizing a training run to a time budget: as many iterations as the machine fits in it.

The ``cpu`` preset trains for about half an hour on whatever CPU it gets, and CPUs differ by
more than a factor of two in what one iteration costs (bf16 where the CPU computes it natively,
fp32 elsewhere; cores; memory). So when ``TrainConfig.time_budget`` is set, training first
*measures* (:func:`measure_step`): the run's own step (its model size, data, threads,
precision, batches prepared in the background) on a throwaway model, after a warm-up, for a
hundredth of the budget (at least ten iterations), and one validation pass when the run
validates. :func:`iterations_for_budget` then gives the
largest count whose iterations and validations fit what the measurement left of the budget,
and the run's schedule is scaled to it (:func:`RADALib.train_config.scale_schedule`), so the
learning-rate steps and the ramps of α and β keep their places relative to the run's length.

The count is rounded down to two significant figures (2487 → 2400), so a remeasurement on the
same machine usually gives the same run; a given ``iterations`` (``rada train --iterations``)
turns sizing off and fixes the count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

WARMUP_ITERATIONS = 3
"""Untimed iterations first: kernel selection, memory pools and the batch queue settle."""
TIMED_ITERATIONS = 10
"""At least this many iterations are timed; their mean time is the step's cost."""
MAX_TIMED_ITERATIONS = 100
"""At most this many are timed, however short they are."""
PROBE_SHARE = 0.01
"""The timed iterations run until they have taken at least this share of the budget too:
iterations vary in cost (random zoom, random crops), so ten of them can miss the mean by a tenth."""
SAFETY = 0.9
"""The share of the budget planned for: the measurement is short, and a shared machine's speed
drifts by a tenth over a run (a 5 % margin still overran)."""
MIN_ITERATIONS = 10
"""Fewer iterations than this would not train anything; a budget that fits fewer still gets them."""
MAX_ITERATIONS = 6000
"""The paper's count: a fast machine trains the paper's length, not more."""


@dataclass(frozen=True)
class StepTiming:
    """What one measurement found: seconds per training iteration, per validation pass (0 when
    the run does not validate), and the measurement's own seconds (spent from the budget)."""

    seconds_per_iteration: float
    seconds_per_validation: float
    probe_seconds: float

    def cost_per_iteration(self, validate_every: int) -> float:
        """Seconds per iteration with its share of a validation every ``validate_every`` (0: none)."""
        share = self.seconds_per_validation / validate_every if validate_every > 0 else 0.0
        return self.seconds_per_iteration + share


def measure_step(
    step: Callable[[], None],
    validation: Callable[[], None] | None = None,
    *,
    warmup: int = WARMUP_ITERATIONS,
    timed: int = TIMED_ITERATIONS,
    min_seconds: float = 0.0,
    max_timed: int = MAX_TIMED_ITERATIONS,
    clock: Callable[[], float] = time.perf_counter,
) -> StepTiming:
    """Time ``step`` (one whole training iteration, returning once its result is computed)
    after ``warmup`` untimed calls: at least ``timed`` times and until ``min_seconds`` have
    passed, at most ``max_timed`` times; then ``validation`` once."""
    if timed < 1 or warmup < 0 or max_timed < timed:
        raise ValueError(
            f"measure_step needs 1 <= timed <= max_timed and warmup >= 0, got {timed}, "
            f"{max_timed}, {warmup}"
        )
    began = clock()
    for _ in range(warmup):
        step()
    start = clock()
    count = 0
    while count < timed or (clock() - start < min_seconds and count < max_timed):
        step()
        count += 1
    per_iteration = (clock() - start) / count
    per_validation = 0.0
    if validation is not None:
        start = clock()
        validation()
        per_validation = clock() - start
    return StepTiming(per_iteration, per_validation, clock() - began)


def _two_significant_figures(n: int) -> int:
    """``n`` rounded down to two significant figures (2487 → 2400, 96 → 96)."""
    if n < 100:
        return n
    unit = 10 ** (len(str(n)) - 2)
    return n // unit * unit


def iterations_for_budget(budget_s: float, timing: StepTiming, validate_every: int) -> int:
    """The iterations that fit ``budget_s`` seconds: the budget less the measurement, times
    :data:`SAFETY`, over the cost of one iteration plus its share of a validation every
    ``validate_every`` iterations (0: no validation); rounded down to two significant figures
    and kept within [:data:`MIN_ITERATIONS`, :data:`MAX_ITERATIONS`]."""
    if not (math.isfinite(budget_s) and budget_s > 0):
        raise ValueError(f"the time budget must be a positive number of seconds, got {budget_s!r}")
    per_iteration = timing.cost_per_iteration(validate_every)
    if not (math.isfinite(per_iteration) and per_iteration > 0):
        raise ValueError(f"measured {per_iteration!r} s per iteration: cannot size the run")
    left = max(0.0, budget_s - timing.probe_seconds) * SAFETY
    fitting = int(left / per_iteration)
    return min(MAX_ITERATIONS, max(MIN_ITERATIONS, _two_significant_figures(fitting)))


def describe_sizing(budget_s: float, timing: StepTiming, validate_every: int, n: int) -> str:
    """The log line of a sized run: the budget, what was measured, the count it gives."""
    validation = (
        f" and {timing.seconds_per_validation:.1f} s per validation (every {validate_every})"
        if validate_every > 0 and timing.seconds_per_validation > 0
        else ""
    )
    return (
        f"time budget {budget_s / 60:.0f} min: {timing.seconds_per_iteration:.2f} s per iteration "
        f"measured on this machine{validation}, so {n} iterations, the schedule scaled to them "
        "(rada train --iterations N, or Iterations in Slicer, fixes the count)"
    )
