"""Verdicts from intervals: three outcomes, the inconclusive policy, the interval of each metric,
and where the policy is set and shown."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest

from pytest_llmslo.config import LoadConfig, ServerConfig, VerdictsConfig
from pytest_llmslo.environment import RunInfo
from pytest_llmslo.intervals import Interval, exact
from pytest_llmslo.metrics import RequestObjective, summarize
from pytest_llmslo.records import ErrorCategory, RequestRecord
from pytest_llmslo.report import failure_text, render_markdown, results_json
from pytest_llmslo.result import ScenarioResult
from pytest_llmslo.slo import Measurement, evaluate, judge, parse_objective
from pytest_llmslo.spec import Scenario, SpecError, load_spec

INFO = RunInfo("0.0.0", "2026-12-02T00:00:00+00:00", "test box", "3.11", "linux")
P95 = parse_objective("ttft_p95", "<= 100 ms")


def measured(value: float, low: float, high: float) -> Measurement:
    return Measurement(value, 50, "", Interval(low, high, 0.95, "order statistic", 50))


def test_an_objective_passes_only_when_its_whole_interval_meets_it() -> None:
    assert judge(P95, measured(0.05, 0.04, 0.09)) == "pass"
    assert judge(P95, measured(0.15, 0.12, 0.2)) == "fail"
    assert judge(P95, measured(0.09, 0.08, 0.12)) == "inconclusive"
    assert judge(P95, measured(0.09, 0.08, math.inf)) == "inconclusive"


def test_a_value_without_an_interval_is_judged_as_measured_and_nan_fails() -> None:
    assert judge(P95, Measurement(0.09)) == "pass"
    assert judge(P95, Measurement(0.11, interval=exact(0.11))) == "fail"
    assert judge(P95, Measurement(math.nan, reason="no data")) == "fail"


def test_the_interval_judged_spans_the_value_shown_beside_it() -> None:
    # an interval that lies wholly under the threshold while the value is over it
    assert judge(P95, measured(0.11, 0.05, 0.09)) == "inconclusive"


def test_the_policy_decides_what_an_inconclusive_objective_counts_as() -> None:
    def measure(metric: str) -> Measurement:
        return measured(0.09, 0.08, 0.12)

    [strict] = evaluate([P95], measure)
    [lenient] = evaluate([P95], measure, inconclusive="pass")
    assert strict.outcome == lenient.outcome == "inconclusive"
    assert not strict.passed and lenient.passed
    assert "INCONCLUSIVE" in strict.describe()
    assert "90.0 ms [80.0, 120.0]" in strict.describe()


def test_a_verdict_built_without_an_outcome_takes_it_from_passed() -> None:
    [verdict] = evaluate([P95], lambda metric: Measurement(0.5))
    assert verdict.outcome == "fail" and not verdict.inconclusive


def records(n: int, *, failed: int = 0) -> list[RequestRecord]:
    out = []
    for i in range(n):
        ok = i >= failed
        out.append(
            RequestRecord(
                i,
                i,
                False,
                i * 0.1,
                i * 0.1 + 0.5 + (i % 7) * 0.01,
                first_content_at=i * 0.1 + 0.01 * (1 + i % 10),
                output_tokens=10 if ok else None,
                input_tokens=5 if ok else None,
                error=None if ok else ErrorCategory.HTTP_5XX,
            )
        )
    return out


def test_each_metric_gets_the_interval_its_catalogue_entry_names() -> None:
    s = summarize(records(100, failed=3), request_objectives=[RequestObjective("ttft", "<=", 1.0)])
    p95 = s.interval("ttft_p95", 0.95)
    assert p95 is not None and p95.method == "order statistic" and p95.bounded
    assert p95.low <= s.value("ttft_p95")[0] <= p95.high
    median = s.interval("ttft_median", 0.95)
    assert median is not None and median.method == "order statistic"
    mean = s.interval("ttft_mean", 0.95)
    assert mean is not None and mean.method == "t" and mean.low < mean.high
    for stat in ("max", "min", "std"):
        got = s.interval(f"ttft_{stat}", 0.95)
        assert got is not None and got.method == "as measured"
    rate = s.interval("failure_rate", 0.95)
    assert rate is not None and rate.method == "wilson" and rate.low < 0.03 < rate.high
    ratio = s.interval("goodput_ratio", 0.95)
    assert ratio is not None and ratio.method == "wilson"
    for window in ("output_throughput", "request_throughput", "goodput"):
        got = s.interval(window, 0.95)
        assert got is not None and got.method == "batch means" and got.n == 10
    failures = s.interval("failures", 0.95)
    assert failures is not None and failures.method == "as measured"


def test_batch_means_average_to_the_window_rate() -> None:
    s = summarize(records(100), window=(0.0, 11.0))
    assert sum(s.batches["request_throughput"]) / 10 == pytest.approx(s.request_throughput)
    assert sum(s.batches["output_throughput"]) / 10 == pytest.approx(s.output_throughput)


def test_a_higher_confidence_gives_a_wider_interval() -> None:
    s = summarize(records(200))
    narrow, wide = s.interval("ttft_p90", 0.8), s.interval("ttft_p90", 0.99)
    assert narrow is not None and wide is not None
    assert wide.low <= narrow.low and narrow.high <= wide.high


def result(objective: str, text: str, n: int, policy: str = "fail") -> ScenarioResult:
    scenario = Scenario(
        "s",
        ("svc",),
        "lines",
        LoadConfig(),
        (),
        (),
        (50.0, 95.0),
        0,
        verdicts=VerdictsConfig(inconclusive=policy),  # type: ignore[arg-type]
    )
    return ScenarioResult(
        spec_path="spec.yaml",
        scenario=scenario,
        server=ServerConfig(name="svc", backend="external", base_url="http://h:1"),
        summary=summarize(records(n)),
    ).judged([parse_objective(objective, text)])


def test_a_small_sample_makes_a_p95_inconclusive_and_the_failure_says_so_first() -> None:
    res = result("ttft_p95", "<= 10 s", 20)
    [verdict] = res.verdicts
    assert verdict.outcome == "inconclusive" and not res.passed("ttft_p95")
    text = failure_text(res, verdict)
    assert text.startswith("INCONCLUSIVE (inconclusive: fail)")
    assert "[" in text and ", inf]" in text


def test_results_json_gives_outcome_and_interval_with_null_for_an_unbounded_side() -> None:
    res = result("ttft_p95", "<= 10 s", 20, policy="pass")
    data = results_json([res], INFO)
    [verdict] = data["scenarios"][0]["verdicts"]
    assert data["schema"] == "pytest-llmslo/results/v4"
    assert verdict["outcome"] == "inconclusive" and verdict["passed"] is True
    assert verdict["interval"]["high"] is None and verdict["interval"]["low"] > 0
    assert verdict["interval"]["method"] == "order statistic"
    assert verdict["interval"]["confidence"] == 0.95 and verdict["interval"]["n"] == 20
    json.dumps(data, allow_nan=False)  # no Infinity or NaN anywhere


def test_the_report_shows_the_interval_beside_the_value_and_the_outcome() -> None:
    markdown = render_markdown([result("ttft_p50", "<= 10 s", 100)], INFO)
    row = next(line for line in markdown.splitlines() if line.startswith("| ttft_p50 |"))
    assert " ms [" in row and row.endswith("✅ |")
    markdown = render_markdown([result("ttft_p95", "<= 10 s", 20, policy="pass")], INFO)
    assert "✅ inconclusive" in markdown


SPEC = """\
servers:
  svc: {backend: external, base_url: "http://h:1"}
datasets:
  rand: {format: random, input_tokens: 8}
"""


def load(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC + textwrap.dedent(text), encoding="utf-8")
    return load_spec(path, env={}).scenarios["s"]


def test_verdicts_are_set_at_the_top_level_or_in_defaults_and_a_scenario_overrides_them(
    tmp_path: Path,
) -> None:
    plain = "scenarios:\n  s: {dataset: rand, load: {parallel: 1, requests: 2}}\n"
    assert load(tmp_path, plain).verdicts == VerdictsConfig(0.95, "fail")
    top = load(tmp_path, "verdicts: {confidence: 0.9, inconclusive: pass}\n" + plain)
    assert top.verdicts == VerdictsConfig(0.9, "pass")
    defaults = load(tmp_path, "defaults: {verdicts: {inconclusive: pass}}\n" + plain)
    assert defaults.verdicts == VerdictsConfig(0.95, "pass")
    scenario = load(
        tmp_path,
        "defaults: {verdicts: {inconclusive: pass, confidence: 0.8}}\n"
        "scenarios:\n  s:\n    dataset: rand\n    load: {parallel: 1, requests: 2}\n"
        "    verdicts: {inconclusive: fail}\n",
    )
    assert scenario.verdicts == VerdictsConfig(0.8, "fail")


def test_bad_verdicts_name_the_key_and_the_choices(tmp_path: Path) -> None:
    plain = "scenarios:\n  s: {dataset: rand, load: {parallel: 1, requests: 2}}\n"
    with pytest.raises(SpecError, match=r"verdicts\.inconclusive.*maybe.*Valid"):
        load(tmp_path, "verdicts: {inconclusive: maybe}\n" + plain)
    with pytest.raises(SpecError, match=r"verdicts\.confidence.*at most 0\.999"):
        load(tmp_path, "defaults: {verdicts: {confidence: 95}}\n" + plain)
    with pytest.raises(SpecError, match="both at the top level and under defaults"):
        load(
            tmp_path,
            "verdicts: {confidence: 0.9}\ndefaults: {verdicts: {confidence: 0.8}}\n" + plain,
        )
