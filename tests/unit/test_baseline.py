"""Baselines: relative objectives parsed, decided with both runs' intervals, matched to the
baseline's entry, refused across other hardware or models, and read back from results.json."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from pytest_llmslo.baseline import (
    RECORDING,
    Baseline,
    BaselineEntry,
    BaselineError,
    Comparison,
    compare,
    load_baseline,
    run_fingerprint,
)
from pytest_llmslo.config import LoadConfig, ServerConfig
from pytest_llmslo.environment import RunInfo
from pytest_llmslo.fingerprint import Fingerprint
from pytest_llmslo.intervals import Interval
from pytest_llmslo.metrics import summarize
from pytest_llmslo.records import Endpoint, RequestRecord
from pytest_llmslo.report import failure_text, results_json, scenario_section
from pytest_llmslo.result import ScenarioResult
from pytest_llmslo.slo import (
    NO_BASELINE,
    Measurement,
    ObjectiveError,
    evaluate,
    judge_against,
    parse_objective,
)
from pytest_llmslo.spec import Scenario

INFO = RunInfo("0.0.0", "2026-12-02T00:00:00+00:00", "test box", "3.11", "linux")


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "text", "amount", "relative"),
    [
        ("ttft_p95", "<= baseline + 10%", 0.10, True),
        ("ttft_p95", "<=baseline+10%", 0.10, True),
        ("output_throughput", ">= baseline - 5%", -0.05, True),
        ("ttft_p95", "<= baseline", 0.0, True),
        ("ttft_p95", "<= baseline + 20 ms", 0.020, False),
        ("output_throughput", ">= baseline - 50 tok/s", -50.0, False),
        ("failure_rate", "<= baseline + 0.01", 0.01, False),
        ("failures", "<= baseline + 2", 2.0, False),
    ],
)
def test_relative_objectives_parse_to_an_offset_from_the_baseline(
    metric: str, text: str, amount: float, relative: bool
) -> None:
    objective = parse_objective(metric, text, line=3)
    assert objective.relative and objective.baseline is not None
    assert objective.baseline.amount == pytest.approx(amount)
    assert objective.baseline.relative is relative
    assert math.isnan(objective.threshold) and objective.text == text and objective.line == 3


def test_the_threshold_follows_the_baseline_value() -> None:
    assert parse_objective("ttft_p95", "<= baseline + 10%").against(0.2).threshold == (
        pytest.approx(0.22)
    )
    assert parse_objective("ttft_p95", "<= baseline + 20 ms").against(0.2).threshold == (
        pytest.approx(0.22)
    )
    assert parse_objective("output_throughput", ">= baseline - 5%").against(100).threshold == (
        pytest.approx(95.0)
    )


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("<= baseline * 2", ["'<= baseline * 2'", "'*'", "baseline + 10%"]),
        ("<= base + 10%", ["'base'", "Did you mean 'baseline'?"]),
        ("<= baseline 10%", ["no + or -"]),
        ("<= baseline +", ["no offset"]),
        ("<= baseline + 10", ["offset '10'", "no unit", "baseline + 10%"]),
        ("<= baseline + 5 tok/s", ["token rate", "a percentage of the baseline"]),
        ("<= baseline - 100%", ["zero or less"]),
    ],
)
def test_malformed_relative_objectives_say_what_and_how_to_fix(
    text: str, fragments: list[str]
) -> None:
    with pytest.raises(ObjectiveError) as excinfo:
        parse_objective("ttft_p95", text)
    for fragment in fragments:
        assert fragment in str(excinfo.value)


def test_absolute_objectives_are_unchanged() -> None:
    objective = parse_objective("ttft_p95", "<= 500 ms")
    assert not objective.relative and objective.threshold == pytest.approx(0.5)


# --- the two-interval decision --------------------------------------------------------------


def measured(value: float, low: float, high: float) -> Measurement:
    return Measurement(value, 100, "", Interval(low, high, 0.95, "order statistic", 100))


TTFT = parse_objective("ttft_p95", "<= baseline + 10%")
THROUGHPUT = parse_objective("output_throughput", ">= baseline - 5%")


def test_pass_needs_the_worst_end_to_meet_the_threshold_of_the_baselines_strict_end() -> None:
    baseline = measured(0.200, 0.190, 0.210)  # strict threshold 0.209, lenient 0.231
    assert judge_against(TTFT, measured(0.180, 0.170, 0.205), baseline) == "pass"
    # the value meets even the strict threshold, but its interval reaches past it
    assert judge_against(TTFT, measured(0.200, 0.190, 0.215), baseline) == "inconclusive"


def test_fail_needs_the_best_end_to_miss_the_threshold_of_the_baselines_lenient_end() -> None:
    baseline = measured(0.200, 0.190, 0.210)
    assert judge_against(TTFT, measured(0.300, 0.240, 0.350), baseline) == "fail"
    assert judge_against(TTFT, measured(0.300, 0.225, 0.350), baseline) == "inconclusive"


def test_higher_is_better_takes_the_other_ends() -> None:
    baseline = measured(100.0, 95.0, 105.0)  # strict threshold 99.75, lenient 90.25
    assert judge_against(THROUGHPUT, measured(110.0, 100.0, 120.0), baseline) == "pass"
    assert judge_against(THROUGHPUT, measured(99.0, 98.0, 101.0), baseline) == "inconclusive"
    assert judge_against(THROUGHPUT, measured(80.0, 75.0, 90.0), baseline) == "fail"


def test_values_judged_as_measured_are_points() -> None:
    objective = parse_objective("failures", "<= baseline + 1")
    assert judge_against(objective, Measurement(3.0), Measurement(2.0)) == "pass"
    assert judge_against(objective, Measurement(4.0), Measurement(2.0)) == "fail"


def test_a_relative_verdict_says_value_against_baseline_and_follows_the_policy() -> None:
    baseline = measured(0.200, 0.190, 0.210)
    current = measured(0.200, 0.190, 0.215)
    [strict] = evaluate([TTFT], lambda m: current, baseline=lambda m: baseline)
    [lenient] = evaluate(
        [TTFT], lambda m: current, baseline=lambda m: baseline, inconclusive="pass"
    )
    assert strict.inconclusive and not strict.passed
    assert lenient.inconclusive and lenient.passed
    text = strict.describe()
    assert "ttft_p95 = 200.0 ms [190.0, 215.0] vs baseline 200.0 ms [190.0, 210.0] (+0.0%)" in (
        text
    )
    assert "objective <= baseline + 10% (= 220.0 ms)" in text and "INCONCLUSIVE" in text


def test_without_a_baseline_a_relative_objective_fails_or_is_skipped_when_recording() -> None:
    [failed] = evaluate([TTFT], lambda m: Measurement(0.2))
    assert not failed.passed and failed.outcome == "fail"
    assert NO_BASELINE in failed.describe() and "--slo-baseline PATH" in failed.describe()
    [skipped] = evaluate([TTFT], lambda m: Measurement(0.2), skip_relative=RECORDING)
    assert skipped.outcome == "skipped" and skipped.skipped == RECORDING and skipped.passed


# --- matching, fingerprints, results.json ---------------------------------------------------


def records(n: int, ttft: float) -> list[RequestRecord]:
    # TTFT spread by up to 10% around `ttft`, one request every 100 ms
    return [
        RequestRecord(
            i,
            i,
            False,
            i * 0.1,
            i * 0.1 + ttft * 2,
            first_content_at=i * 0.1 + ttft * (0.95 + 0.01 * (i % 11)),
            output_tokens=10,
            input_tokens=5,
        )
        for i in range(n)
    ]


def run(ttft: float, objectives: dict[str, str], *, model: str = "m") -> ScenarioResult:
    parsed = tuple(parse_objective(k, v) for k, v in objectives.items())
    scenario = Scenario("chat", ("svc",), "lines", LoadConfig(), parsed, (), (50.0, 95.0), 0)
    server = ServerConfig(name="svc", backend="vllm", model=model, args={"api_key": "k"})
    result = ScenarioResult(
        spec_path="specs/regression.yaml",
        scenario=scenario,
        server=server,
        endpoint=Endpoint("http://h:1", model, "vllm", version="0.24.0"),
        summary=summarize(records(200, ttft)),
    )
    return dataclasses.replace(result, fingerprint=run_fingerprint(result)).judged(parsed)


def saved(tmp_path: Path, *results: ScenarioResult) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results_json(list(results), INFO, "run-1"), allow_nan=False))
    return path


def compared(result: ScenarioResult, baseline: Baseline | None, **kw: bool) -> ScenarioResult:
    comparison = compare(baseline, result, **kw)
    return dataclasses.replace(result, comparison=comparison).judged(result.scenario.objectives)


def test_results_json_round_trips_every_named_metric_with_its_interval(tmp_path: Path) -> None:
    before = run(0.2, {"ttft_p95": "<= 1 s", "output_throughput": ">= baseline - 5%"})
    baseline = load_baseline(saved(tmp_path, before))
    [entry] = baseline.entries
    assert (entry.scenario, entry.server, entry.spec) == ("chat", "svc", "specs/regression.yaml")
    assert entry.fingerprint == before.fingerprint
    for metric in ("ttft_p95", "output_throughput"):
        original = before.measure(metric)
        again = entry.measurements[metric]
        assert again.value == pytest.approx(original.value)
        assert again.sample_size == original.sample_size
        assert original.interval is not None and again.interval is not None
        assert (again.interval.low, again.interval.high) == pytest.approx(
            (original.interval.low, original.interval.high)
        )
        assert again.interval.method == original.interval.method


def test_a_run_folder_is_read_for_its_results_json(tmp_path: Path) -> None:
    saved(tmp_path, run(0.2, {"ttft_p95": "<= 1 s"}))
    assert load_baseline(tmp_path).path == tmp_path / "results.json"


def test_a_slower_run_fails_as_a_regression_and_an_equal_one_does_not(tmp_path: Path) -> None:
    objectives = {"ttft_p95": "<= baseline + 10%"}
    baseline = load_baseline(saved(tmp_path, run(0.2, objectives)))
    slower = compared(run(0.3, objectives), baseline)
    [verdict] = slower.verdicts
    assert verdict.outcome == "fail" and not slower.passed("ttft_p95")
    assert verdict.baseline is not None and verdict.baseline.value == pytest.approx(0.2 * 1.05)
    text = failure_text(slower, verdict)
    assert "vs baseline" in text and f"baseline: {tmp_path / 'results.json'}" in text
    same = compared(run(0.2, objectives), baseline)
    assert same.verdicts[0].outcome in ("pass", "inconclusive")
    section = scenario_section(slower)
    assert "| metric | value [interval] | baseline [interval] | change |" in section
    assert "| ttft_p95 |" in section and "+50.0%" in section


def test_the_entry_of_the_same_spec_file_wins_and_a_missing_entry_names_what_exists() -> None:
    entry = BaselineEntry("chat", "svc", "other/a.yaml", None, {})
    own = BaselineEntry("chat", "svc", "ci/regression.yaml", None, {})
    baseline = Baseline(Path("b.json"), None, (entry, own))
    assert baseline.match("specs/regression.yaml", "chat", "svc") is own
    assert baseline.match("specs/unknown.yaml", "chat", "svc") is entry
    assert baseline.match("specs/regression.yaml", "chat", "hf") is None
    result = compared(run(0.2, {"ttft_p95": "<= baseline"}), baseline)
    [verdict] = result.verdicts
    # matched with the same spec file's entry, which measured nothing this objective names
    assert not verdict.passed
    assert "has no ttft_p95 for chat[svc] of ci/regression.yaml" in verdict.describe()
    other = dataclasses.replace(result, server=dataclasses.replace(result.server, name="hf"))
    missing = compared(other, baseline)
    reason = missing.verdicts[0].describe()
    assert "the baseline b.json has no run of scenario 'chat' on server 'hf'" in reason
    assert "chat[svc] of other/a.yaml, chat[svc] of ci/regression.yaml" in reason


def test_another_model_refuses_the_comparison_unless_mismatch_is_allowed(tmp_path: Path) -> None:
    objectives = {"ttft_p95": "<= baseline + 10%"}
    baseline = load_baseline(saved(tmp_path, run(0.2, objectives, model="m-7b")))
    refused = compared(run(0.2, objectives, model="m-70b"), baseline)
    [verdict] = refused.verdicts
    assert not verdict.passed
    assert "the baseline ran on different model" in verdict.describe()
    assert "--slo-baseline-allow-mismatch" in verdict.describe()
    allowed = compared(run(0.2, objectives, model="m-70b"), baseline, allow_mismatch=True)
    assert allowed.verdicts[0].outcome in ("pass", "inconclusive")
    section = scenario_section(allowed)
    assert "model: 'm-7b' (baseline) vs 'm-70b' (this run)" in section


def test_the_fingerprint_names_the_stack_and_hides_credentials() -> None:
    result = run(0.2, {"ttft_p95": "<= 1 s"})
    fingerprint = result.fingerprint
    assert isinstance(fingerprint, Fingerprint)
    assert (fingerprint.backend, fingerprint.backend_version, fingerprint.model) == (
        "vllm",
        "0.24.0",
        "m",
    )
    assert fingerprint.server_args == ("--api-key", "***")
    assert len(fingerprint.spec_hash) == 64
    changed = run(0.2, {"ttft_p95": "<= 2 s"})
    assert changed.fingerprint is not None and changed.fingerprint.spec_hash != (
        fingerprint.spec_hash
    )


def test_recording_without_a_baseline_skips_relative_objectives() -> None:
    result = compared(run(0.2, {"ttft_p95": "<= baseline"}), None, recording=True)
    assert result.verdicts[0].outcome == "skipped" and result.status.value == "PASS"
    missing = compared(run(0.2, {"ttft_p95": "<= baseline"}), None)
    assert NO_BASELINE in missing.verdicts[0].describe()
    assert Comparison().measure("ttft_p95").reason == NO_BASELINE


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("{", ["not a results.json", "not readable JSON"]),
        ('{"schema": "pytest-llmslo/results/v3"}', ["results/v3", "re-record the baseline"]),
        ('{"schema": "something/else"}', ["not a results.json of pytest-llmslo"]),
        ('{"schema": "pytest-llmslo/results/v4", "scenarios": [{}]}', ["re-record"]),
    ],
)
def test_an_unusable_baseline_says_why(tmp_path: Path, content: str, fragments: list[str]) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(BaselineError) as excinfo:
        load_baseline(path)
    for fragment in fragments:
        assert fragment in str(excinfo.value)


def test_a_missing_baseline_path_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="does not exist"):
        load_baseline(tmp_path / "nope.json")
    with pytest.raises(BaselineError, match=r"holds no results\.json"):
        load_baseline(tmp_path)
