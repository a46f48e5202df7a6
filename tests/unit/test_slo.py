"""Objective parsing, the metric catalogue, evaluation and verdict text."""

from __future__ import annotations

import math

import pytest

from pytest_llmslo.slo import (
    DISTRIBUTIONS,
    REQUEST_METRICS,
    SCALARS,
    Measurement,
    Objective,
    ObjectiveError,
    Verdict,
    catalogue,
    derive_request_objectives,
    evaluate,
    format_value,
    metric_info,
    parse_objective,
    parse_request_objective,
)
from pytest_llmslo.units import UnitError, UnitKind, parse_duration, parse_quantity


@pytest.mark.parametrize(
    ("metric", "text", "op", "threshold", "unit"),
    [
        ("ttft_p95", "<= 500 ms", "<=", 0.5, "ms"),
        ("ttft_p95", "<=500ms", "<=", 0.5, "ms"),
        ("tpot_p99", "< 50 ms", "<", 0.05, "ms"),
        ("itl_max", "<= 250 us", "<=", 250e-6, "us"),
        ("itl_p50", "<= 250 µs", "<=", 250e-6, "µs"),
        ("e2e_p95", "<= 10 s", "<=", 10.0, "s"),
        ("e2e_mean", "<= 1.5 min", "<=", 90.0, "min"),
        ("startup_time", "<= 2 min", "<=", 120.0, "min"),
        ("output_throughput", ">= 1000 tok/s", ">=", 1000.0, "tok/s"),
        ("total_token_throughput", "> 1e3 tokens/s", ">", 1000.0, "tokens/s"),
        ("output_throughput", ">= 1000", ">=", 1000.0, ""),
        ("request_throughput", ">= 5 req/s", ">=", 5.0, "req/s"),
        ("goodput", "> 2.5 requests/s", ">", 2.5, "requests/s"),
        ("goodput", ">= 2", ">=", 2.0, ""),
        ("failure_rate", "<= 1%", "<=", 0.01, "%"),
        ("goodput_ratio", ">= 0.95", ">=", 0.95, ""),
        ("kv_cache_usage_max", "< 90 %", "<", 0.9, "%"),
        ("gpu_memory_peak", "<= 24 GiB", "<=", 24 * 2**30, "GiB"),
        ("gpu_memory_steady", "<= 24 GB", "<=", 24e9, "GB"),
        ("host_memory_peak", "<= 512 MiB", "<=", 512 * 2**20, "MiB"),
        ("gpu_memory_load_peak", "<= 1 TiB", "<=", 2.0**40, "TiB"),
        ("gpu_memory_startup_peak", "<= 100 KB", "<=", 1e5, "KB"),
        ("failures", "<= 0", "<=", 0.0, ""),
        ("preemptions", "< 3", "<", 3.0, ""),
        ("output_tokens_mean", ">= 99.5", ">=", 99.5, ""),
        ("input_tokens_max", "<= 8192", "<=", 8192.0, ""),
    ],
)
def test_parse_objective_units_and_operators(
    metric: str, text: str, op: str, threshold: float, unit: str
) -> None:
    objective = parse_objective(metric, text, line=7)
    assert objective.metric == metric
    assert objective.op == op
    assert objective.threshold == pytest.approx(threshold)
    assert objective.unit == unit
    assert objective.text == text
    assert objective.line == 7


@pytest.mark.parametrize(
    ("metric", "text", "fragments"),
    [
        ("ttft_p95", "<= 500", ["ttft_p95", "'<= 500'", "no unit", "ms"]),
        ("gpu_memory_peak", "<= 24", ["no unit", "GiB"]),
        (
            "ttft_p95",
            ">= 5 tok/s",
            ["ttft_p95", "'>= 5 tok/s'", "token rate", "us, µs, ms, s or min"],
        ),
        ("output_throughput", ">= 5 req/s", ["request rate", "tok/s, tokens/s"]),
        ("gpu_memory_peak", "<= 24 gib", ["unknown unit 'gib'", "Did you mean 'GiB'?"]),
        ("failure_rate", "<= 5", ["not a fraction", "'5%'"]),
        ("failure_rate", "<= 150%", ["more than 100%"]),
        ("failures", "<= 1.5", ["not a whole number"]),
        ("ttft_p95", "500 ms", ["does not start with an operator", "<=, <, >=, >"]),
        ("ttft_p95", "=< 500 ms", ["'=<'", "Write <= instead"]),
        ("ttft_p95", "== 500 ms", ["'=='"]),
        ("ttft_p95", "<= fast", ["not a number with a unit"]),
        ("ttft_p95", "<= -1 ms", ["negative"]),
    ],
)
def test_parse_objective_errors_name_metric_text_and_fix(
    metric: str, text: str, fragments: list[str]
) -> None:
    with pytest.raises(ObjectiveError) as excinfo:
        parse_objective(metric, text)
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(excinfo.value, ValueError)


def test_unknown_metric_lists_closest_first() -> None:
    with pytest.raises(ObjectiveError) as excinfo:
        parse_objective("ttft_95", "<= 1 s")
    error = excinfo.value
    assert error.choices[0] == "ttft_p95"
    assert "failure_rate" in error.choices
    assert "Did you mean 'ttft_p95'?" in str(error)
    assert "unknown metric 'ttft_95'" in str(error)

    with pytest.raises(ObjectiveError) as excinfo:
        metric_info("failure_ratio")
    assert excinfo.value.choices[0] == "failure_rate"


def test_distribution_without_stat_and_bad_percentiles() -> None:
    with pytest.raises(ObjectiveError, match=r"needs a statistic.*ttft_p95"):
        metric_info("ttft")
    for bad in ("ttft_p0", "ttft_p100.5", "ttft_p101"):
        with pytest.raises(ObjectiveError, match="out of range"):
            metric_info(bad)
    with pytest.raises(ObjectiveError, match="unknown metric"):
        metric_info("ttft_p")


@pytest.mark.parametrize(
    ("metric", "percentile"),
    [("ttft_p99.9", 99.9), ("e2e_p0.5", 0.5), ("tpot_p100", 100.0), ("itl_median", 50.0)],
)
def test_percentiles_with_decimals(metric: str, percentile: float) -> None:
    info = metric_info(metric)
    assert info.percentile == percentile
    assert info.kind is UnitKind.TIME
    assert info.unit == "s"


def test_metric_info_parts() -> None:
    info = metric_info("dispatch_lag_p99")
    assert (info.base, info.stat, info.percentile) == ("dispatch_lag", "p99", 99.0)
    assert "99th percentile" in info.description
    tokens = metric_info("output_tokens_std")
    assert (tokens.base, tokens.stat, tokens.kind, tokens.unit) == (
        "output_tokens",
        "std",
        UnitKind.COUNT,
        "",
    )
    scalar = metric_info("gpu_memory_peak")
    assert (scalar.base, scalar.stat, scalar.kind, scalar.unit) == (
        "gpu_memory_peak",
        None,
        UnitKind.MEMORY,
        "B",
    )


def test_catalogue_is_complete_and_described() -> None:
    names = {info.name for info in catalogue()}
    assert names == set(SCALARS) | set(DISTRIBUTIONS)
    assert all(info.description for info in catalogue())
    expected = {
        "ttft",
        "ttfat",
        "ttfc",
        "tpot",
        "itl",
        "e2e",
        "dispatch_lag",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "answer_tokens",
    }
    assert set(DISTRIBUTIONS) == expected
    assert {"goodput", "goodput_ratio", "failure_rate", "kv_cache_usage_mean"} <= set(SCALARS)
    for stat in ("mean", "std", "min", "max", "median", "p90"):
        for base in DISTRIBUTIONS:
            assert metric_info(f"{base}_{stat}").base == base


def test_request_objectives() -> None:
    objective = parse_request_objective("itl", "<= 200 ms", line=3)
    assert (objective.metric, objective.threshold, objective.line) == ("itl", 0.2, 3)
    assert set(REQUEST_METRICS) == {"ttft", "ttfat", "tpot", "e2e", "itl"}
    with pytest.raises(ObjectiveError, match="no statistic: write 'ttft'"):
        parse_request_objective("ttft_p95", "<= 1 s")
    with pytest.raises(ObjectiveError, match="Did you mean 'tpot'"):
        parse_request_objective("tpott", "<= 1 s")
    with pytest.raises(ObjectiveError, match="no unit"):
        parse_request_objective("e2e", "<= 1")


def test_derive_request_objectives_takes_the_tightest_upper_bound() -> None:
    objectives = [
        parse_objective("ttft_p95", "<= 2 s"),
        parse_objective("ttft_p99", "<= 1500 ms"),
        parse_objective("e2e_max", "< 10 s"),
        parse_objective("tpot_mean", "<= 50 ms"),  # a mean does not bound each request
        parse_objective("itl_p99", ">= 1 ms"),  # a lower bound does not either
        parse_objective("output_throughput", ">= 10 tok/s"),
    ]
    derived = derive_request_objectives(objectives)
    assert [(o.metric, o.op, o.threshold) for o in derived] == [
        ("ttft", "<=", 1.5),
        ("e2e", "<", 10.0),
    ]


def test_evaluate_pass_fail_nan_and_margins() -> None:
    objectives = [
        parse_objective("ttft_p95", "<= 500 ms"),
        parse_objective("ttft_p99", "<= 500 ms"),
        parse_objective("output_throughput", ">= 1000 tok/s"),
        parse_objective("output_throughput", "> 2000 tok/s"),
        parse_objective("tpot_p95", "<= 50 ms"),
        parse_objective("failures", "<= 0"),
        parse_objective("e2e_p95", "< 1 s"),
    ]
    values = {
        "ttft_p95": Measurement(0.4, sample_size=100),
        "ttft_p99": Measurement(0.6123, sample_size=100),
        "output_throughput": Measurement(1500.0),
        "tpot_p95": Measurement(math.nan, reason="no request produced two tokens"),
        "failures": Measurement(0.0),
        "e2e_p95": Measurement(1.0),
    }
    verdicts = evaluate(objectives, values.__getitem__)
    assert [v.passed for v in verdicts] == [True, False, True, False, False, True, False]
    assert verdicts[0].margin == pytest.approx(0.2)
    assert verdicts[1].margin == pytest.approx(-0.2246)
    assert verdicts[2].margin == pytest.approx(0.5)
    assert verdicts[3].margin == pytest.approx(-0.25)
    assert verdicts[4].margin is None
    assert verdicts[5].margin == 0.0
    assert verdicts[6].margin == 0.0  # equal is not below: fails without headroom
    assert all(isinstance(v, Verdict) for v in verdicts)


def test_evaluate_zero_threshold_and_measure_errors() -> None:
    objectives = [parse_objective("failures", "<= 0"), parse_objective("preemptions", "<= 0")]

    def measure(metric: str) -> Measurement:
        if metric == "preemptions":
            raise KeyError("no /metrics")
        return Measurement(2.0)

    failures, preemptions = evaluate(objectives, measure)
    assert not failures.passed
    assert failures.margin == -math.inf
    assert not preemptions.passed
    assert math.isnan(preemptions.measured.value)
    assert "KeyError" in preemptions.measured.reason
    assert "not measurable" in preemptions.describe()


def test_describe() -> None:
    miss = Verdict(
        parse_objective("ttft_p95", "<= 500 ms"),
        Measurement(0.6123, sample_size=100),
        passed=False,
        margin=-0.2246,
    )
    assert miss.describe() == (
        "ttft_p95 = 612.3 ms, objective <= 500 ms: missed by 112.3 ms (22.5%), n=100"
    )
    (met,) = evaluate(
        [parse_objective("output_throughput", ">=1000 tok/s")],
        {"output_throughput": Measurement(1250.0)}.__getitem__,
    )
    assert met.describe() == (
        "output_throughput = 1250.0 tok/s, objective >= 1000 tok/s: "
        "met with 250.0 tok/s to spare (25.0%)"
    )
    (rate,) = evaluate(
        [parse_objective("failure_rate", "<= 1%")],
        {"failure_rate": Measurement(0.03, sample_size=200)}.__getitem__,
    )
    assert rate.describe() == (
        "failure_rate = 3.00%, objective <= 1%: missed by 2.00 pp (200.0%), n=200"
    )
    (nan,) = evaluate(
        [parse_objective("tpot_p95", "<= 50 ms")],
        {"tpot_p95": Measurement(math.nan, reason="no successful request")}.__getitem__,
    )
    assert nan.describe() == (
        "tpot_p95 = not measurable: no successful request (objective <= 50 ms)"
    )
    (zero,) = evaluate(
        [parse_objective("failures", "<= 0")], {"failures": Measurement(3.0)}.__getitem__
    )
    assert zero.describe() == "failures = 3, objective <= 0: missed by 3"


@pytest.mark.parametrize(
    ("metric", "value", "text"),
    [
        ("ttft_p95", 0.6123, "612.3 ms"),
        ("ttft_p95", 9.5, "9500.0 ms"),
        ("e2e_max", 12.345, "12.35 s"),
        ("itl_min", 0.0000523, "0.0523 ms"),
        ("gpu_memory_peak", 24 * 2**30, "24.00 GiB"),
        ("host_memory_peak", 300 * 2**20, "300.0 MiB"),
        ("failure_rate", 0.0123, "1.23%"),
        ("output_throughput", 1234.56, "1234.6 tok/s"),
        ("request_throughput", 5.0, "5.00 req/s"),
        ("failures", 3.0, "3"),
        ("output_tokens_mean", 99.25, "99.2"),
        ("ttft_p95", math.nan, "n/a"),
        ("itl", 0.25, "250.0 ms"),
    ],
)
def test_format_value(metric: str, value: float, text: str) -> None:
    assert format_value(metric, value) == text


def test_objective_holds() -> None:
    objective = Objective("ttft_p95", "<", 1.0, "s", "< 1 s")
    assert objective.holds(0.5)
    assert not objective.holds(1.0)
    assert not objective.holds(math.nan)
    assert Objective("goodput", ">", 1.0, "", "> 1").holds(1.5)


def test_units_directly() -> None:
    assert parse_quantity("1.5 min", UnitKind.TIME).value == 90.0
    assert parse_quantity("100%", UnitKind.RATIO).value == 1.0
    assert parse_duration(30) == 30.0
    assert parse_duration("30s") == 30.0
    assert parse_duration("10 min") == 600.0
    assert parse_duration("45") == 45.0
    for bad in ("ten", True, "5 GiB", -1):
        with pytest.raises(UnitError):
            parse_duration(bad)
