"""The metric registry: every metric declared once, measured by its producer, documented from it."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest

from pytest_llmslo import capacity, catalogue, catalogue_docs, metrics, report, slo
from pytest_llmslo.catalogue import (
    BY_NAME,
    METRICS,
    DocGroup,
    Metric,
    MetricKind,
    Producer,
    names,
)
from pytest_llmslo.client_health import ClientHealth
from pytest_llmslo.config import VARIES, CapacityConfig, LoadConfig, ServerConfig
from pytest_llmslo.environment import RunInfo
from pytest_llmslo.records import Endpoint, ErrorCategory, RequestRecord
from pytest_llmslo.result import SERVER_PROCESS_METRICS, ScenarioResult
from pytest_llmslo.spec import Scenario
from pytest_llmslo.telemetry.analysis import GpuMemory, ServerMetrics, TelemetryReport
from pytest_llmslo.telemetry.measures import GPU, HOST, SERVER, TELEMETRY_METRICS, measure
from pytest_llmslo.units import UnitKind

ROOT = Path(__file__).resolve().parents[2]
FALLBACK = "is not measured by this run"  # what a metric without a producer would say


def record(i: int, *, reasoning: int = 2) -> RequestRecord:
    return RequestRecord(
        index=i,
        prompt_index=i,
        warmup=False,
        sent_at=float(i),
        end_at=i + 0.5,
        scheduled_at=i - 0.001,
        first_chunk_at=i + 0.05,
        first_content_at=i + 0.1,
        first_answer_at=i + 0.2,
        content_times=(i + 0.1, i + 0.2, i + 0.5),
        input_tokens=8,
        output_tokens=5,
        reasoning_tokens=reasoning,
        token_source="usage",
    )


def telemetry(*, served: bool = True) -> TelemetryReport:
    gib = 2**30
    server_metrics = ServerMetrics(
        kv_cache_usage_max=0.5,
        kv_cache_usage_mean=0.25,
        requests_running_max=4.0,
        requests_waiting_max=1.0,
        preemptions=0.0,
        prompt_tokens=32.0,
        generation_tokens=20.0,
        raw_first={},
        raw_last={},
        scrapes=5,
    )
    return TelemetryReport(
        gpu=(GpuMemory(0, "H200", 141 * gib, 10 * gib, 12 * gib, 11 * gib, 12 * gib),)
        if served
        else (),
        gpu_unavailable_reason=None if served else "no NVIDIA GPU",
        gpu_source="nvml" if served else None,
        host_rss_peak=gib if served else None,
        host_rss_startup_peak=gib // 2 if served else None,
        host_rss_load_peak=gib if served else None,
        server_metrics=server_metrics if served else None,
        server_metrics_reason=None if served else "not served",
        samples=40,
        interval_s=0.1,
        host_rss_reason=None if served else "no such process",
    )


def scenario() -> Scenario:
    return Scenario(
        name="chat",
        servers=("svc",),
        dataset="lines",
        load=LoadConfig(parallel=2, requests=4),
        objectives=(),
        request_slo=(),
        percentiles=(50.0, 95.0),
        line=1,
    )


def run_result(records: list[RequestRecord], report: TelemetryReport) -> ScenarioResult:
    summary = metrics.summarize(
        records,
        window=(0.0, len(records) + 0.5),
        request_objectives=[metrics.RequestObjective("ttft", "<=", 1.0)],
    )
    return ScenarioResult(
        spec_path="spec.yaml",
        scenario=scenario(),
        server=ServerConfig(name="svc", backend="vllm", model="m"),
        endpoint=Endpoint("http://127.0.0.1:1", "m", "vllm", pid=1, startup_seconds=42.0),
        summary=summary,
        telemetry=report,
        records=tuple(records),
        load=LoadConfig(parallel=1),
        client=ClientHealth((0.001,) * 10, 0.1, 1.0),
    )


def objective_names() -> list[str]:
    """Every name an objective can use, a distribution with each kind of statistic."""
    out: list[str] = []
    for metric in METRICS:
        if metric.kind is MetricKind.DISTRIBUTION:
            out += [f"{metric.name}_{stat}" for stat in ("mean", "std", "max", "median", "p99.9")]
        else:
            out.append(metric.name)
    return out


# --- the registry itself --------------------------------------------------------------------


def test_every_metric_has_a_name_kind_unit_definition_and_producer() -> None:
    assert len(BY_NAME) == len(METRICS)
    for metric in METRICS:
        assert metric.name.isidentifier() and metric.name == metric.name.lower()
        assert isinstance(metric.kind, MetricKind)
        assert isinstance(metric.unit, UnitKind)
        assert isinstance(metric.producer, Producer)
        assert metric.definition.strip() and "\n" not in metric.definition
    # the metrics added for reasoning models are part of it
    assert {"ttfat", "reasoning_tokens", "answer_tokens"} <= set(BY_NAME)


def test_objective_validation_derives_from_the_registry() -> None:
    assert set(slo.DISTRIBUTIONS) == set(names(kind=MetricKind.DISTRIBUTION))
    assert set(slo.SCALARS) == set(names(kind=MetricKind.SCALAR))
    for metric in METRICS:
        name = metric.name if metric.kind is MetricKind.SCALAR else f"{metric.name}_p95"
        info = slo.metric_info(name)
        assert (info.base, info.kind, info.unit) == (
            metric.name,
            metric.unit,
            metric.canonical_unit,
        )
        assert metric.definition in info.description
    assert {m.name: m.per_request for m in METRICS if m.per_request} == slo.REQUEST_METRICS


def test_server_process_metrics_are_those_of_the_servers_processes_and_start() -> None:
    assert {
        "startup_time",
        "gpu_memory_peak",
        "gpu_memory_startup_peak",
        "gpu_memory_load_peak",
        "gpu_memory_steady",
        "gpu_memory_peak_per_gpu",
        "host_memory_peak",
    } == SERVER_PROCESS_METRICS
    # /metrics are the server's own answer: an external server has them too
    assert not SERVER_PROCESS_METRICS & set(names(producer=Producer.SERVER_METRICS))


def test_a_bad_declaration_fails_on_import_with_the_metric_named() -> None:
    ttft = BY_NAME["ttft"]
    group = DocGroup("shared")
    bad: list[tuple[tuple[Metric, ...], str]] = [
        ((ttft, ttft), "'ttft' is declared twice"),
        (
            (dataclasses.replace(BY_NAME["failures"], per_request="one request"),),
            "'failures': only a distribution has a per-request form",
        ),
        (
            (dataclasses.replace(BY_NAME["host_memory_peak"], gauge=True),),
            "'host_memory_peak': only a /metrics series is a gauge",
        ),
        (
            (dataclasses.replace(BY_NAME["input_tokens"], report_label="tokens"),),
            "'input_tokens': the report's latency table holds times",
        ),
        (
            (
                dataclasses.replace(ttft, group=group),
                BY_NAME["ttfc"],
                dataclasses.replace(BY_NAME["e2e"], group=group),
            ),
            "'e2e': a README group's metrics are neighbours",
        ),
    ]
    for declared, message in bad:
        with pytest.raises(ValueError, match=message):
            catalogue._check(declared)


# --- every declared metric has a producer ---------------------------------------------------


def test_the_load_summary_has_a_function_for_each_load_metric() -> None:
    assert set(metrics.PER_REQUEST) == set(
        names(kind=MetricKind.DISTRIBUTION, producer=Producer.LOAD)
    )
    assert set(metrics.PER_RUN) == set(names(kind=MetricKind.SCALAR, producer=Producer.LOAD))
    assert names(kind=MetricKind.DISTRIBUTION, producer=Producer.LOAD) == metrics.DISTRIBUTIONS


def test_telemetry_has_a_lookup_for_each_telemetry_and_server_metric() -> None:
    assert set(GPU) | set(HOST) == set(names(producer=Producer.TELEMETRY))
    assert set(SERVER) == set(names(producer=Producer.SERVER_METRICS))
    assert set(TELEMETRY_METRICS) == set(GPU) | set(HOST) | set(SERVER)
    fields = {f.name for f in dataclasses.fields(ServerMetrics)}
    assert set(SERVER) <= fields  # read by name from the /metrics summary


def searched(res: ScenarioResult, metric: str) -> ScenarioResult:
    """`res` as the answer of a capacity search whose one step, at 4, passed."""
    vary = next(v for v, m in capacity.METRIC_OF.items() if m == metric)
    config = CapacityConfig(vary=vary, start=1, max=4, budget=60)
    step = capacity.Step(1, 4.0, "probe", "pass", "every objective passed", 1.0, res)
    search = capacity.CapacitySearch(config, (step,), "max", "max reached: 4 passed")
    return dataclasses.replace(res, capacity=search)


def test_the_capacity_search_answers_each_capacity_metric() -> None:
    assert set(capacity.METRIC_OF.values()) == set(names(producer=Producer.CAPACITY))
    assert set(capacity.METRIC_OF) == set(VARIES)


def test_every_declared_metric_resolves_to_a_value_on_a_complete_run() -> None:
    # 12 requests: thirds of 4 give ttft_growth a trend to read
    res = run_result([record(i) for i in range(12)], telemetry())
    for name in objective_names():
        # a capacity metric is the answer of a search, which this run is the step of
        got = (searched(res, name) if name in capacity.CAPACITY_METRICS else res).measure(name)
        assert math.isfinite(got.value), (name, got)
        assert got.reason == "", (name, got)


def test_every_declared_metric_not_measured_says_why() -> None:
    # no successful request, no GPU, no host process, no /metrics, no start: every producer
    # comes back empty, and each metric says so in its own words instead of failing to resolve
    failed = dataclasses.replace(
        record(0),
        first_content_at=None,
        content_times=(),
        output_tokens=None,
        error=ErrorCategory.TIMEOUT,
    )
    res = dataclasses.replace(
        run_result([failed], telemetry(served=False)),
        endpoint=Endpoint("http://127.0.0.1:1", "m", "vllm", pid=1, startup_seconds=None),
        load=None,
        client=None,
    )
    unmeasured = set()
    for name in objective_names():
        got = res.measure(name)
        if math.isnan(got.value):
            assert got.reason and FALLBACK not in got.reason, (name, got)
            unmeasured.add(name)
        else:
            assert math.isfinite(got.value), (name, got)  # a failure rate is measured, say
    assert {m.name for m in METRICS if m.producer is not Producer.LOAD} <= unmeasured
    assert {"ttft_p99.9", "output_tokens_mean", "output_throughput"} <= unmeasured


def test_telemetry_lookups_answer_only_for_their_own_metrics() -> None:
    report = telemetry()
    for metric in METRICS:
        got = measure(report, metric.name)
        if metric.producer in (Producer.TELEMETRY, Producer.SERVER_METRICS):
            assert got is not None and math.isfinite(got[0]), metric.name
        else:
            assert got is None, metric.name


# --- the docs -------------------------------------------------------------------------------


def test_the_docs_metric_tables_match_the_registry() -> None:
    diffs = catalogue_docs.drift(ROOT)
    assert not diffs, "run python -m pytest_llmslo.catalogue_docs --write\n" + "\n".join(diffs)


def test_every_declared_metric_is_in_the_readme_and_the_spec_reference() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    reference = (ROOT / "docs" / "spec-reference.md").read_text(encoding="utf-8")
    for metric in METRICS:
        assert f"| `{metric.name}` |" in reference, metric.name
        assert f"`{metric.name}`" in readme, metric.name


def test_the_results_schema_names_every_distribution_a_summary_carries() -> None:
    schema = (ROOT / "docs" / "results-schema.md").read_text(encoding="utf-8")
    row = next(line for line in schema.splitlines() if line.startswith("| `distributions` |"))
    for name in metrics.DISTRIBUTIONS:
        assert f"`{name}`" in row, name


def copy_docs(tmp_path: Path) -> Path:
    for path in catalogue_docs.DOCS:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    return tmp_path


def test_check_shows_a_drifted_table_and_write_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_docs(tmp_path)
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    readme.write_text(text.replace("| `ttft` | time |", "| `ttft` | length |"), encoding="utf-8")

    assert catalogue_docs.main(["--check", "--root", str(root)]) == 1
    out, err = capsys.readouterr()
    assert "-| `ttft` | length |" in out and "+| `ttft` | time |" in out
    assert "run python -m pytest_llmslo.catalogue_docs --write" in err

    assert catalogue_docs.main(["--write", "--root", str(root)]) == 0
    assert readme.read_text(encoding="utf-8") == text
    assert catalogue_docs.main(["--check", "--root", str(root)]) == 0


def test_a_table_without_its_markers_is_an_error_naming_file_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_docs(tmp_path)
    reference = root / "docs" / "spec-reference.md"
    text = reference.read_text(encoding="utf-8")
    reference.write_text(text.replace(catalogue_docs.end_marker("scalars"), ""), encoding="utf-8")

    assert catalogue_docs.main(["--check", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "docs/spec-reference.md: needs exactly one pair of lines" in err
    assert "(found 1 and 0)" in err and "put them back around the table" in err


# --- the report -----------------------------------------------------------------------------


def test_the_report_has_a_latency_row_for_each_labelled_metric() -> None:
    labelled = [m for m in METRICS if m.report_label]
    assert [m.name for m in labelled] == ["ttft", "ttfat", "ttfc", "tpot", "itl", "e2e"]
    section = report.scenario_section(run_result([record(i) for i in range(4)], telemetry()))
    rows = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| ")]
    at = rows.index("| TTFT")
    assert rows[at : at + len(labelled)] == [f"| {m.report_label}" for m in labelled]
    # a stream without reasoning has no answer-time row
    plain = report.scenario_section(
        run_result([record(i, reasoning=0) for i in range(4)], telemetry())
    )
    assert "| time to first answer token |" not in plain and "| TTFT |" in plain


def test_the_report_defines_its_rows_in_the_registry_words() -> None:
    info = RunInfo("0.0.0", "2026-12-02T00:00:00+00:00", "test box", "3.11", "linux")
    text = report.render_markdown([run_result([record(0, reasoning=0)], telemetry())], info)
    for name in ("ttft", "tpot", "itl", "e2e", "ttfc"):
        metric = BY_NAME[name]
        assert f"- `{name}`: {metric.definition}" in text
    assert "`ttfat`" not in text  # no stream reasoned
