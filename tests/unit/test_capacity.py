"""Capacity search: probe upward, bisect to the knee, stop on the budget or a broken step; the
spec keys and their errors; the result, report and results.json of a search."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_llmslo import capacity
from pytest_llmslo.capacity import (
    CapacitySearch,
    StepOutcome,
    StepRun,
    capacity_result,
    judge_step,
    run_search,
    step_load,
)
from pytest_llmslo.config import CapacityConfig, LoadConfig, ServerConfig, VerdictsConfig
from pytest_llmslo.environment import RunInfo
from pytest_llmslo.metrics import summarize
from pytest_llmslo.records import Endpoint, RequestRecord
from pytest_llmslo.report import render_markdown, request_lines, results_json
from pytest_llmslo.result import ScenarioResult, Started
from pytest_llmslo.slo import Measurement, Verdict, evaluate, parse_objective
from pytest_llmslo.spec import Scenario, SpecError, load_spec


def parallel(start: float = 1, top: float = 64, budget: float = 600, **kw: float) -> CapacityConfig:
    return CapacityConfig(vary="parallel", start=start, max=top, budget=budget, **kw)


def rate(start: float = 1, top: float = 20, budget: float = 600, **kw: float) -> CapacityConfig:
    return CapacityConfig(vary="rate", start=start, max=top, budget=budget, **kw)


def knee_at(knee: float, *, unsure: tuple[float, float] | None = None) -> Callable[..., StepRun]:
    """A synthetic server: its objectives pass up to `knee` and fail above it; within `unsure`
    (inclusive), the intervals straddle the thresholds."""

    def step(level: float, seconds_left: float) -> StepRun:
        outcome: StepOutcome
        if unsure is not None and unsure[0] <= level <= unsure[1]:
            outcome = "inconclusive"
        else:
            outcome = "pass" if level <= knee else "fail"
        return StepRun(outcome, f"synthetic {outcome} at {level:g}")

    return step


def levels(search: CapacitySearch) -> list[tuple[float, str, str]]:
    return [(s.level, s.phase, s.outcome) for s in search.steps]


# --- the search ---------------------------------------------------------------------------------


def test_a_parallel_search_probes_by_doubling_then_bisects_to_the_knee() -> None:
    search = run_search(parallel(), knee_at(5))
    assert levels(search) == [
        (1, "probe", "pass"),
        (2, "probe", "pass"),
        (4, "probe", "pass"),
        (8, "probe", "fail"),
        (6, "bisect", "fail"),
        (5, "bisect", "pass"),
    ]
    assert search.answer == 5 and search.stopped == "resolution"
    assert search.reason == "resolution 1 reached: parallel 5 passed, parallel 6 did not"
    assert [s.number for s in search.steps] == [1, 2, 3, 4, 5, 6]
    assert capacity.measure(search, "max_parallel") == Measurement(5)


def test_a_coarser_resolution_stops_the_bisection_sooner() -> None:
    search = run_search(parallel(resolution=4), knee_at(5))
    assert [s.level for s in search.steps] == [1, 2, 4, 8]
    assert search.answer == 4 and search.stopped == "resolution"


def test_growth_rounds_up_to_whole_users_and_the_probe_ends_at_max() -> None:
    search = run_search(parallel(top=10, growth=1.5), knee_at(100))
    assert [s.level for s in search.steps] == [1, 2, 3, 5, 8, 10]
    assert search.answer == 10 and search.stopped == "max"
    assert search.reason == "max reached: parallel 10 passed"


def test_a_rate_search_bisects_until_the_failing_rate_is_within_the_resolution() -> None:
    search = run_search(rate(), knee_at(3.3))
    assert [s.level for s in search.steps] == [1, 2, 4, 3, 3.5, 3.25]
    answer = search.answer
    assert answer == 3.25 and answer <= 3.3
    failing = min(s.level for s in search.steps if s.outcome != "pass")
    assert failing <= answer * 1.10
    assert capacity.measure(search, "max_rate") == Measurement(3.25)


def test_an_inconclusive_step_is_not_a_pass_so_noise_cannot_raise_the_answer() -> None:
    # the server holds up to 6, but at 5 and 6 the intervals are too wide to prove it
    search = run_search(parallel(), knee_at(6, unsure=(5, 6)))
    assert levels(search)[3:] == [
        (8, "probe", "fail"),
        (6, "bisect", "inconclusive"),
        (5, "bisect", "inconclusive"),
    ]
    assert search.answer == 4
    assert "parallel 5 did not" in search.reason


def test_a_first_step_that_does_not_pass_answers_nothing_and_says_why() -> None:
    search = run_search(parallel(start=8), knee_at(5))
    assert levels(search) == [(8, "probe", "fail")]
    assert search.answer is None and search.stopped == "start"
    assert "the first load, parallel 8, did not pass (fail" in search.reason
    assert "lower `start`" in search.reason
    missing = capacity.measure(search, "max_parallel")
    assert math.isnan(missing.value)
    assert missing.reason.startswith("no load passed: the first load, parallel 8")


class FakeClock:
    """Each step takes `per_step` seconds."""

    def __init__(self, per_step: float) -> None:
        self.now = 0.0
        self.per_step = per_step

    def __call__(self) -> float:
        return self.now


def test_the_budget_ends_the_search_with_the_best_load_proven_labelled_as_such() -> None:
    clock = FakeClock(10.0)
    given: list[float] = []

    def slow_step(level: float, seconds_left: float) -> StepRun:
        given.append(seconds_left)
        clock.now += clock.per_step
        return knee_at(100)(level, seconds_left)

    search = run_search(parallel(budget=35), slow_step, clock=clock)
    assert [s.level for s in search.steps] == [1, 2, 4, 8]
    assert given == [35, 25, 15, 5]  # each step is told what is left of the budget
    assert all(s.seconds == 10 for s in search.steps)
    assert search.stopped == "budget" and search.budget_limited
    assert search.answer == 8
    assert search.reason == (
        "budget-limited: the 35 s budget was spent; the answer is the highest load proven so "
        "far, parallel 8"
    )


def test_a_step_that_did_not_complete_stops_the_search_keeping_the_steps_so_far() -> None:
    def breaks_at_8(level: float, seconds_left: float) -> StepRun:
        if level >= 8:
            return StepRun("error", "load stopped early: the server process exited")
        return StepRun("pass", "every objective passed")

    search = run_search(parallel(), breaks_at_8)
    assert levels(search)[-1] == (8, "probe", "error")
    assert len(search.steps) == 4 and search.stopped == "error"
    assert search.reason == (
        "step 4 (parallel 8) did not complete: load stopped early: the server process exited"
    )


def test_a_signal_between_steps_stops_the_search() -> None:
    steps: list[float] = []

    def step(level: float, seconds_left: float) -> StepRun:
        steps.append(level)
        return StepRun("pass", "")

    search = run_search(parallel(), step, interrupted=lambda: "SIGINT" if len(steps) >= 2 else None)
    assert steps == [1, 2]
    assert search.stopped == "interrupted" and search.reason == "SIGINT arrived between steps"


# --- steps as scenario runs -------------------------------------------------------------------


SERVER = ServerConfig(name="svc", backend="external", base_url="http://127.0.0.1:9")


def scenario(*objectives: tuple[str, str], config: CapacityConfig | None = None) -> Scenario:
    return Scenario(
        name="knee",
        servers=("svc",),
        dataset="lines",
        load=LoadConfig(requests=20),
        objectives=tuple(parse_objective(m, t) for m, t in objectives),
        request_slo=(),
        percentiles=(50.0,),
        line=1,
        capacity=config,
        # the synthetic steps below send one request at a time whatever their level: the
        # client guard would rightly call that falling behind
        verdicts=VerdictsConfig(client_guard=False),
    )


def record(i: int, ttft: float) -> RequestRecord:
    return RequestRecord(
        index=i,
        prompt_index=0,
        warmup=False,
        sent_at=float(i),
        end_at=i + ttft + 0.1,
        first_chunk_at=i + ttft,
        first_content_at=i + ttft,
        content_times=(i + ttft, i + ttft + 0.1),
        input_tokens=4,
        output_tokens=2,
        token_source="usage",
    )


REQUESTS = 30  # per step: enough for a decisive p50 when every request takes the same time


def step_result(level: int, ttft: float, verdicts: tuple[Verdict, ...] = ()) -> ScenarioResult:
    records = [record(i, ttft) for i in range(REQUESTS)]
    return ScenarioResult(
        spec_path="spec.yaml",
        scenario=scenario(),
        server=SERVER,
        endpoint=Endpoint("http://127.0.0.1:9", "m", "external"),
        summary=summarize(records, window=(0.0, REQUESTS + 1.0), percentiles=(50.0,)),
        verdicts=verdicts,
        records=tuple(records),
        load=LoadConfig(parallel=level, requests=REQUESTS),
    )


def verdict(outcome: str, value: float = 0.1) -> Verdict:
    objective = parse_objective("ttft_p50", "<= 200 ms")
    (judged,) = evaluate([objective], lambda _: Measurement(value, 20))
    return replace(judged, outcome=outcome, passed=outcome == "pass")  # type: ignore[arg-type]


def test_a_step_passes_only_when_every_objective_passed_decisively() -> None:
    assert judge_step(step_result(1, 0.1, (verdict("pass"),))).outcome == "pass"
    unsure = judge_step(step_result(1, 0.1, (verdict("pass"), verdict("inconclusive"))))
    assert unsure.outcome == "inconclusive"
    assert unsure.why == "ttft_p50 100.0 ms inconclusive (<= 200 ms): not proven"
    failed = judge_step(step_result(1, 0.3, (verdict("inconclusive"), verdict("fail", 0.3))))
    assert failed.outcome == "fail" and failed.why == "ttft_p50 300.0 ms fail (<= 200 ms)"
    broken = replace(step_result(1, 0.1, (verdict("pass"),)), error="load stopped early: x")
    assert judge_step(broken) == StepRun("error", "load stopped early: x", broken)
    assert judge_step(step_result(1, 0.1)).why == "completed"  # no objective: it completed


def test_a_step_runs_the_scenario_load_at_its_level_within_the_budget_left() -> None:
    load = LoadConfig(parallel=2, requests=20, duration=30.0)
    stepped, notes = step_load(parallel(), load, 8, 12.46)
    assert (stepped.parallel, stepped.requests, stepped.duration) == (8, 20, 12.5)
    assert notes == (
        "capacity search step at parallel 8",
        "measured load bounded by the 12.5 s left of the budget",
    )
    roomy, notes = step_load(rate(), LoadConfig(rate=1.0, duration=30.0), 2.5, 100)
    assert (roomy.rate, roomy.duration) == (2.5, 30.0)
    assert notes == ("capacity search step at rate 2.5 req/s",)
    # a step that may rerun until decisive shares what is left among its rounds
    shared, notes = step_load(parallel(), load, 8, 12.0, rounds=4)
    assert shared.duration == 3.0
    assert notes[1] == (
        "measured load bounded by 3 s a round: the 12.0 s left of the budget over up to 4 rounds"
    )


def searched(config: CapacityConfig, outcomes: dict[int, str]) -> CapacitySearch:
    """A search whose steps are real results: ttft grows with the load, judged by ttft_p50."""
    objectives = (("ttft_p50", "<= 200 ms"), ("max_parallel", ">= 4"))
    steps = []
    for number, (level, outcome) in enumerate(outcomes.items(), start=1):
        result = step_result(level, 0.05 * level).judged(
            capacity.step_objectives(scenario(*objectives).objectives)
        )
        run = judge_step(result)
        assert run.outcome == outcome, (level, run)
        steps.append(
            capacity.Step(number, float(level), "probe", run.outcome, run.why, 1.0, result)
        )
    reason = "resolution 1 reached: parallel 4 passed, parallel 5 did not"
    return CapacitySearch(config, tuple(steps), "resolution", reason)


def test_the_result_is_the_highest_passing_step_judged_with_the_search_answer() -> None:
    config = parallel(top=8)
    search = searched(config, {1: "pass", 2: "pass", 4: "pass", 8: "fail", 5: "fail"})
    spec_scenario = scenario(("ttft_p50", "<= 200 ms"), ("max_parallel", ">= 4"), config=config)
    result = capacity_result(spec_scenario, search, Started.now())
    assert result.load is not None and result.load.parallel == 4  # the highest passing step
    assert result.capacity is search and result.completed
    ttft, answer = result.verdicts
    assert ttft.measured.value == pytest.approx(0.2) and ttft.passed
    assert (answer.objective.metric, answer.measured.value, answer.passed) == (
        "max_parallel",
        4,
        True,
    )
    tighter = replace(spec_scenario, objectives=(parse_objective("max_parallel", ">= 5"),))
    assert not capacity_result(tighter, search, Started.now()).passed("max_parallel")


def test_a_search_stopped_by_a_broken_step_fails_its_objectives_with_the_reason() -> None:
    config = parallel(top=8)
    search = searched(config, {1: "pass", 2: "pass"})
    search = replace(search, stopped="error", reason="step 3 (parallel 4) did not complete: x")
    spec_scenario = scenario(("max_parallel", ">= 1"), config=config)
    result = capacity_result(spec_scenario, search, Started.now())
    assert result.error == "capacity search stopped: step 3 (parallel 4) did not complete: x"
    assert not result.passed("max_parallel") and str(result.status) == "FAIL"


def test_the_report_shows_every_step_and_why_the_search_stopped() -> None:
    config = parallel(top=8)
    search = searched(config, {1: "pass", 2: "pass", 4: "pass", 8: "fail", 5: "fail"})
    spec_scenario = scenario(("ttft_p50", "<= 200 ms"), ("max_parallel", ">= 4"), config=config)
    result = capacity_result(spec_scenario, search, Started.now())
    info = RunInfo("0.0.0", "2026-12-02T00:00:00+00:00", "test box", "3.11", "linux")
    text = render_markdown([result], info)
    assert (
        "Capacity search over `parallel`, 1 to 8 (growth 2, resolution 1, budget 600 s): "
        "**max_parallel 4**." in text
    )
    assert "- stopped: resolution 1 reached: parallel 4 passed, parallel 5 did not" in text
    assert "the objectives above are those of the highest passing step, parallel 4" in text
    assert "| step | parallel | phase | ttft_p50 | step outcome | s |" in text
    assert "| 4 | 8 | probe | 400.0 ms [400.0, 400.0] fail | ❌ fail | 1.0 |" in text

    data = json.loads(json.dumps(results_json([result], info), allow_nan=False))
    block = data["scenarios"][0]["capacity"]
    assert (block["vary"], block["answer"], block["stopped"]) == ("parallel", 4, "resolution")
    assert block["budget_limited"] is False and block["resolution"] == 1
    assert [s["level"] for s in block["steps"]] == [1, 2, 4, 8, 5]
    fourth = block["steps"][3]
    assert fourth["outcome"] == "fail" and fourth["verdicts"][0]["value"] == pytest.approx(0.4)
    rows = [json.loads(line) for line in request_lines([result])]
    assert [r["capacity_step"] for r in rows] == [n for n in range(1, 6) for _ in range(REQUESTS)]


# --- the spec -----------------------------------------------------------------------------------

SPEC = """\
servers:
  svc: {backend: external, base_url: "http://127.0.0.1:9"}
datasets:
  rand: {format: random, input_tokens: 8}
scenarios:
  knee:
    dataset: rand
    load: LOAD
    capacity: CAPACITY
    slo: {ttft_p50: "<= 1 s", OBJECTIVE}
"""


def spec(
    tmp_path: Path,
    capacity_text: str = "{vary: parallel, start: 1, max: 8, budget: 60 s}",
    *,
    load: str = "{requests: 20}",
    objective: str = 'max_parallel: ">= 4"',
) -> Scenario:
    text = SPEC.replace("LOAD", load).replace("CAPACITY", capacity_text)
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text.replace("OBJECTIVE", objective)), encoding="utf-8")
    return load_spec(path).scenarios["knee"]


def spec_error(tmp_path: Path, *args: str, **kw: str) -> str:
    with pytest.raises(SpecError) as caught:
        spec(tmp_path, *args, **kw)
    return str(caught.value)


def test_a_capacity_section_reads_with_its_defaults_per_vary(tmp_path: Path) -> None:
    knee = spec(tmp_path)
    assert knee.capacity == CapacityConfig("parallel", 1, 8, 60.0, growth=2.0, resolution=1.0)
    assert knee.load.parallel is None  # each step sets it
    by_rate = spec(
        tmp_path,
        '{vary: rate, start: "0.5 req/s", max: 8, budget: 2 min, growth: 1.5}',
        objective='max_rate: ">= 2 req/s"',
    ).capacity
    assert by_rate == CapacityConfig("rate", 0.5, 8, 120.0, growth=1.5, resolution=0.1)


@pytest.mark.parametrize(
    ("capacity_text", "load", "objective", "expected"),
    [
        (
            "{vary: parallel, start: 16, max: 8, budget: 60 s}",
            "{requests: 20}",
            'max_parallel: ">= 4"',
            "spec.yaml:9: scenarios.knee.capacity.start: start (16) is above max (8)",
        ),
        (
            "{vary: rate, start: 1, max: 8, budget: 60 s}",
            "{parallel: 4, requests: 20}",
            'max_rate: ">= 4"',
            "spec.yaml:9: scenarios.knee.capacity.vary: vary: rate needs an open-loop load, and "
            "this scenario's load is closed-loop (parallel 4, no rate)",
        ),
        (
            "{vary: parallel, start: 1, max: 8, budget: 60 s}",
            "{rate: 2, requests: 20}",
            'max_parallel: ">= 4"',
            "spec.yaml:9: scenarios.knee.capacity.vary: vary: parallel needs a closed-loop load",
        ),
        (
            "{vary: parallel, start: 1, max: 8, budget: 60 s}",
            "{requests: 20}",
            'max_rate: ">= 4 req/s"',
            "spec.yaml:10: scenarios.knee.slo.max_rate: this scenario's capacity search varies "
            "parallel, so it answers max_parallel, not max_rate",
        ),
        (
            "{vary: parallel, start: 1, max: 8}",
            "{requests: 20}",
            'max_parallel: ">= 4"',
            "spec.yaml:9: scenarios.knee.capacity: missing required key 'budget'",
        ),
        (
            "{vary: parallel, start: 1.5, max: 8, budget: 60 s}",
            "{requests: 20}",
            'max_parallel: ">= 4"',
            "spec.yaml:9: scenarios.knee.capacity.start: expected an integer",
        ),
        (
            "{vary: rate, start: 1, max: 8, budget: 60 s, resolution: 2}",
            "{requests: 20}",
            'max_rate: ">= 4"',
            "scenarios.knee.capacity.resolution: a rate search's resolution is a share of the "
            "load in (0, 1), got 2",
        ),
        (
            "{vary: parallel, start: 1, max: 8, budget: 60 s, growth: 1}",
            "{requests: 20}",
            'max_parallel: ">= 4"',
            "scenarios.knee.capacity.growth: growth must be above 1, got 1",
        ),
        (
            "{vary: users, start: 1, max: 8, budget: 60 s}",
            "{requests: 20}",
            'max_parallel: ">= 4"',
            "scenarios.knee.capacity.vary: unknown load to vary 'users'",
        ),
    ],
)
def test_bad_capacity_settings_are_spec_errors_with_their_line(
    tmp_path: Path, capacity_text: str, load: str, objective: str, expected: str
) -> None:
    assert expected in spec_error(tmp_path, capacity_text, load=load, objective=objective)


def test_a_capacity_objective_without_a_search_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    text = SPEC.replace("    capacity: CAPACITY\n", "").replace(
        "LOAD", "{parallel: 2, requests: 5}"
    )
    path.write_text(text.replace("OBJECTIVE", 'max_parallel: ">= 4"'), encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert (
        "spec.yaml:9: scenarios.knee.slo.max_parallel: max_parallel is the answer of a " in message
    )
    assert "Add capacity: {vary: parallel" in message
