"""Capacity search: the highest load at which a scenario's objectives hold, probed, then bisected.

A scenario with `capacity:` runs its load again and again on the same server, with `parallel`
(or `rate`) replaced: upward from `start` by `growth` until a step does not pass or `max` passed,
then bisecting between the highest passing and the lowest non-passing load down to
`resolution`. A step passes only when every objective of the scenario passed decisively: an
inconclusive step was not proven and counts as not passing, so noise cannot place the knee by
luck. The search never starts a step past its `budget`, and cuts each step's measured load to
what is left of it.

The search itself (`run_search`) is pure over a step function, so it is tested against
synthetic servers; `search_capacity` runs it with real steps and builds the one result the
reports and the pytest items read: the highest passing step's run, with every step kept and
`max_parallel` / `max_rate` measured from the search.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from pytest_llmslo import interrupts
from pytest_llmslo.catalogue import Producer, names
from pytest_llmslo.config import CapacityConfig, LoadConfig, Vary
from pytest_llmslo.slo import Measurement, Objective, Verdict, format_measured

if TYPE_CHECKING:
    from pytest_llmslo.result import ScenarioResult, Started
    from pytest_llmslo.spec import Scenario

Phase = Literal["probe", "bisect"]
StepOutcome = Literal["pass", "fail", "inconclusive", "error"]
# why a search ended: bisection narrowed to `resolution`; `max` passed; the first load did not
# pass; the budget was spent; a step did not complete; a signal arrived between steps
Stop = Literal["resolution", "max", "start", "budget", "error", "interrupted"]

# the metrics a search answers, one per load it can vary
CAPACITY_METRICS: tuple[str, ...] = names(producer=Producer.CAPACITY)
METRIC_OF: dict[Vary, str] = {"parallel": "max_parallel", "rate": "max_rate"}
if set(METRIC_OF.values()) != set(CAPACITY_METRICS):  # the catalogue and this table must agree
    raise ValueError(
        f"capacity metrics {CAPACITY_METRICS} differ from {sorted(METRIC_OF.values())}"
    )


@dataclass(frozen=True)
class StepRun:
    """What one step's run says: its outcome, why, and the run (None for a synthetic step)."""

    outcome: StepOutcome
    why: str
    result: ScenarioResult | None = None


@dataclass(frozen=True)
class Step:
    """One load the search tried, and what its objectives said there."""

    number: int  # 1 for the first step
    level: float  # the `parallel` or `rate` it ran at
    phase: Phase
    outcome: StepOutcome
    why: str
    seconds: float  # wall time of the step
    result: ScenarioResult | None = None


@dataclass(frozen=True)
class CapacitySearch:
    """A finished search: every step in the order run, and why it stopped."""

    config: CapacityConfig
    steps: tuple[Step, ...]
    stopped: Stop
    reason: str  # the stop, for people

    @property
    def metric(self) -> str:
        """The capacity metric this search answers: `max_parallel` or `max_rate`."""
        return METRIC_OF[self.config.vary]

    @property
    def best(self) -> Step | None:
        """The highest load that passed; None when none did."""
        passed = [s for s in self.steps if s.outcome == "pass"]
        return max(passed, key=lambda s: s.level) if passed else None

    @property
    def answer(self) -> float | None:
        best = self.best
        return best.level if best is not None else None

    @property
    def budget_limited(self) -> bool:
        """The budget ended the search: the answer is a lower bound, not the knee."""
        return self.stopped == "budget"


def format_level(config: CapacityConfig, level: float) -> str:
    """``parallel 8`` or ``rate 2.5 req/s``."""
    if config.vary == "parallel":
        return f"parallel {level:.0f}"
    return f"rate {level:g} req/s"


def next_level(config: CapacityConfig, level: float) -> float:
    """The probe's next load: `growth` times this one (a whole user more at least), at most
    `max`."""
    if config.vary == "parallel":
        grown = float(max(level + 1, math.ceil(level * config.growth)))
    else:
        grown = level * config.growth
    return min(grown, config.max)


def close_enough(config: CapacityConfig, passing: float, failing: float) -> bool:
    """Whether bisection between `passing` and `failing` has reached `resolution`."""
    if config.vary == "parallel":
        return failing - passing <= config.step
    return failing <= passing * (1 + config.step)


def midpoint(config: CapacityConfig, passing: float, failing: float) -> float:
    """Halfway between, as a whole number of users, or a rate of 3 significant digits where
    that stays strictly between the two."""
    if config.vary == "parallel":
        return float((int(passing) + int(failing)) // 2)
    middle = (passing + failing) / 2
    rounded = float(f"{middle:.3g}")
    return rounded if passing < rounded < failing else middle


def run_search(
    config: CapacityConfig,
    run_step: Callable[[float, float], StepRun],
    *,
    clock: Callable[[], float] = time.monotonic,
    interrupted: Callable[[], str | None] = lambda: None,
) -> CapacitySearch:
    """Search for the highest load that passes; ``run_step(level, seconds_left)`` runs one step.

    ``interrupted`` names a signal that arrived since the search began (checked between steps).
    """
    began = clock()
    steps: list[Step] = []
    passing: float | None = None
    failing: float | None = None

    def left() -> float:
        return config.budget - (clock() - began)

    def stop(stopped: Stop, reason: str) -> CapacitySearch:
        return CapacitySearch(config, tuple(steps), stopped, reason)

    def held() -> CapacitySearch | None:
        """The search ended before the next step: a signal, or no budget left."""
        signal = interrupted()
        if signal is not None:
            return stop("interrupted", f"{signal} arrived between steps")
        if left() <= 0:
            return stop("budget", _budget_reason(config, passing))
        return None

    def take(level: float, phase: Phase) -> Step:
        at = clock()
        run = run_step(level, left())
        step = Step(len(steps) + 1, level, phase, run.outcome, run.why, clock() - at, run.result)
        steps.append(step)
        return step

    level = config.start
    while True:  # probe upward
        ended = held()
        if ended is not None:
            return ended
        step = take(level, "probe")
        if step.outcome == "error":
            return stop("error", _error_reason(config, step))
        if step.outcome != "pass":
            failing = level
            break
        passing = level
        if level >= config.max:
            return stop("max", f"max reached: {format_level(config, level)} passed")
        level = next_level(config, level)
    if passing is None:
        return stop(
            "start",
            f"the first load, {format_level(config, level)}, did not pass ({step.outcome}: "
            f"{step.why}); lower `start` to search below it",
        )
    while not close_enough(config, passing, failing):  # bisect
        ended = held()
        if ended is not None:
            return ended
        level = midpoint(config, passing, failing)
        step = take(level, "bisect")
        if step.outcome == "error":
            return stop("error", _error_reason(config, step))
        if step.outcome == "pass":
            passing = level
        else:
            failing = level
    resolution = f"{config.step:.0f}" if config.vary == "parallel" else f"{config.step:.0%}"
    return stop(
        "resolution",
        f"resolution {resolution} reached: {format_level(config, passing)} passed, "
        f"{format_level(config, failing)} did not",
    )


def _budget_reason(config: CapacityConfig, passing: float | None) -> str:
    proven = (
        f"the answer is the highest load proven so far, {format_level(config, passing)}"
        if passing is not None
        else "no load was proven"
    )
    return f"budget-limited: the {config.budget:g} s budget was spent; {proven}"


def _error_reason(config: CapacityConfig, step: Step) -> str:
    return f"step {step.number} ({format_level(config, step.level)}) did not complete: {step.why}"


# --- steps as scenario runs -----------------------------------------------------------------------


def judge_step(result: ScenarioResult) -> StepRun:
    """A step's outcome from its run: pass only when every objective passed decisively."""
    if result.error is not None or result.interrupted is not None:
        return StepRun("error", result.error or f"interrupted: {result.interrupted}", result)
    failed = [v for v in result.verdicts if v.outcome == "fail"]
    if failed:
        return StepRun("fail", "; ".join(_shown(v) for v in failed), result)
    unsure = [v for v in result.verdicts if v.inconclusive]
    if unsure:
        # a client that fell behind makes every server objective inconclusive: say that once
        behind = next((v.guard for v in unsure if v.guard is not None), None)
        why = behind or "; ".join(_shown(v) for v in unsure) + ": not proven"
        return StepRun("inconclusive", why, result)
    return StepRun("pass", "every objective passed" if result.verdicts else "completed", result)


def _shown(v: Verdict) -> str:
    metric = v.objective.metric
    if math.isnan(v.measured.value):
        return f"{metric} not measurable ({v.measured.reason})"
    return f"{metric} {format_measured(metric, v.measured)} {v.outcome} ({v.objective.condition})"


def step_objectives(objectives: tuple[Objective, ...]) -> tuple[Objective, ...]:
    """The objectives each step is judged by: all but the search's own answer."""
    return tuple(o for o in objectives if o.metric not in CAPACITY_METRICS)


def step_load(
    config: CapacityConfig, load: LoadConfig, level: float, seconds_left: float, rounds: int = 1
) -> tuple[LoadConfig, tuple[str, ...]]:
    """The scenario's load at `level`, its measured part cut to the budget left (shared by the
    step's rounds, up to `rounds` of them), and notes."""
    if config.vary == "parallel":
        load = replace(load, parallel=int(level))
    else:
        load = replace(load, rate=level)
    notes = [f"capacity search step at {format_level(config, level)}"]
    share = seconds_left / rounds
    if load.duration is None or load.duration > share:
        bound = max(round(share, 1), 0.1)  # as the report shows it
        load = replace(load, duration=bound)
        left = f"the {seconds_left:.1f} s left of the budget"
        notes.append(
            f"measured load bounded by {left}"
            if rounds == 1
            else f"measured load bounded by {bound:g} s a round: {left} over up to {rounds} rounds"
        )
    return load, tuple(notes)


# runs a scenario's load once on the search's server (`runner.run_scenario`, bound to it):
# (scenario, load, load notes) -> its result
RunOnce = Callable[["Scenario", LoadConfig, tuple[str, ...]], "ScenarioResult"]


def search_capacity(
    scenario: Scenario,
    load: LoadConfig,
    notes: tuple[str, ...],
    run_once: RunOnce,
    *,
    started: Started,
) -> ScenarioResult:
    """Run the scenario's capacity search; the result is the highest passing step's run (the
    first step's when none passed) with every step kept and the capacity objectives judged."""
    config = scenario.capacity
    assert config is not None, "search_capacity needs a scenario with `capacity:`"
    step_scenario = replace(scenario, objectives=step_objectives(scenario.objectives))
    signals_before = interrupts.received()
    _, rounds = scenario.verdicts.round_limits()  # a step reruns until decisive, up to this

    def run_step(level: float, seconds_left: float) -> StepRun:
        step, step_notes = step_load(config, load, level, seconds_left, rounds)
        return judge_step(run_once(step_scenario, step, notes + step_notes))

    def interrupted() -> str | None:
        return (
            "a signal (SIGINT, SIGTERM or SIGHUP)"
            if interrupts.received() > signals_before
            else None
        )

    search = run_search(config, run_step, interrupted=interrupted)
    return capacity_result(scenario, search, started)


def capacity_result(scenario: Scenario, search: CapacitySearch, started: Started) -> ScenarioResult:
    """The search's one result: the highest passing step's run (else the first step's), its
    objectives judged again with the search's answer, and the search kept beside it."""
    chosen = search.best or search.steps[0]
    assert chosen.result is not None, "a search of scenario runs keeps each step's run"
    error, interrupted = chosen.result.error, chosen.result.interrupted
    last = search.steps[-1]
    if search.stopped == "error":
        error = f"capacity search stopped: {search.reason}"
        interrupted = last.result.interrupted if last.result is not None else None
    elif search.stopped == "interrupted":
        error = f"capacity search stopped: {search.reason}"
        interrupted = search.reason
    return replace(
        chosen.result,
        scenario=scenario,
        capacity=search,
        error=error,
        interrupted=interrupted,
        started=started.at,
        wall_seconds=started.seconds(),
    ).judged(scenario.objectives)


def measure(search: CapacitySearch | None, metric: str) -> Measurement:
    """`max_parallel` or `max_rate` from a search; NaN with the reason where it has no answer."""
    if search is None:
        return Measurement(
            math.nan,
            reason=f"{metric} is the answer of a capacity search, and this scenario has none "
            "(add `capacity:` to it)",
        )
    if metric != search.metric:
        return Measurement(
            math.nan,
            reason=f"this capacity search varies {search.config.vary}: it answers {search.metric}",
        )
    answer = search.answer
    if answer is None:
        return Measurement(math.nan, reason=f"no load passed: {search.reason}")
    return Measurement(float(answer))


def describe(search: CapacitySearch) -> str:
    """One line for a failure message: each step's load and outcome, and why the search
    stopped."""
    steps = ", ".join(f"{s.level:g} {s.outcome}" for s in search.steps)
    return f"capacity search over {search.config.vary}: {steps}; stopped: {search.reason}"
