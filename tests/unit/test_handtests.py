"""Hand-written runs go through the spec runner: telemetry on servers the run started, the same
frozen result, and one decision about pass or fail for the items, assert_slo and the reports."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmslo.config import LoadConfig, ServerConfig
from pytest_llmslo.environment import RunInfo
from pytest_llmslo.handtests import (
    LoadRun,
    ServerFactory,
    assert_slo,
    check_slo,
    parse_objectives,
    run_workload,
    workload_result,
)
from pytest_llmslo.metrics import summarize
from pytest_llmslo.records import Endpoint, RequestRecord
from pytest_llmslo.report import render_markdown, results_json
from pytest_llmslo.result import NOT_STARTED, ScenarioResult, Status
from pytest_llmslo.spec import Scenario
from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server

INFO = RunInfo("0.0.0", "2026-12-02T00:00:00+00:00", "test box", "3.11", "linux")
LOAD = {"parallel": 2, "requests": 4, "max_tokens": 4}
MEMORY = {"host_memory_peak": "<= 64 GiB", "gpu_memory_peak": "<= 64 GiB"}


@pytest.fixture(scope="module")
def instrument() -> Iterator[TimingServerProcess]:
    with serve_timing_server(ttft_ms=5, gap_ms=2, tokens=4) as server:
        yield server


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerFactory]:
    """A ServerFactory whose `vllm` servers are the timing instrument, started as vLLM would be
    (own process group, log file, readiness check, watchdog)."""
    from pytest_llmslo.servers import process
    from pytest_llmslo.servers.vllm import VLLMServer

    def command(self: VLLMServer, port: int) -> list[str]:
        code = (
            "from pytest_llmslo.testing.timing_server import main; "
            f"main(['--port', '{port}', '--ttft-ms', '5', '--gap-ms', '2', '--tokens', '4'])"
        )
        return [sys.executable, "-c", code]

    monkeypatch.setattr(VLLMServer, "command", command)
    monkeypatch.setattr(process, "missing_modules", lambda modules: [])
    made = ServerFactory(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_a_server_the_factory_started_has_its_memory_and_start_up_measured(
    factory: ServerFactory,
) -> None:
    endpoint = factory(backend="vllm", model="timing-model")
    assert factory(backend="vllm", model="timing-model") == endpoint  # reused, not restarted
    # telemetry looks up the server's process tree once a second: a load that long sees it
    load = {"parallel": 2, "duration": 1.5, "max_tokens": 4}
    run = run_workload(endpoint, ["hi", "there"], load, objectives=MEMORY, servers=factory)
    assert run.summary.succeeded > 0
    host = run.measure("host_memory_peak")
    assert host.value > 0 and host.sample_size, host  # the server's process tree, sampled
    assert run.measure("startup_time").value > 0
    gpu = run.measure("gpu_memory_peak")
    # measured where there is a GPU; here the reason is the missing GPU, not whose server it is
    assert not math.isnan(gpu.value) or "not started by this run" not in gpu.reason
    assert run.result.telemetry is not None
    assert run.result.server.name == "vllm-0" and run.result.server.backend == "vllm"
    assert [v.objective.metric for v in run.verdicts] == list(MEMORY)
    assert check_slo(run, {"host_memory_peak": "<= 1 B"})[0].passed is False


def test_an_endpoint_the_run_did_not_start_has_no_memory_to_measure(
    instrument: TimingServerProcess,
) -> None:
    endpoint = Endpoint(instrument.base_url, "timing-model", "vllm")
    run = run_workload(endpoint, ["hi"], LOAD)
    assert run.summary.succeeded == 4
    for metric in ("host_memory_peak", "gpu_memory_peak", "startup_time"):
        measured = run.measure(metric)
        assert math.isnan(measured.value)
        assert measured.reason == NOT_STARTED
    with pytest.raises(AssertionError, match="host_memory_peak = not measurable: the server was "):
        assert_slo(run, {"host_memory_peak": "<= 64 GiB"})
    assert run.result.server.backend == "external"


def test_a_hand_written_run_renders_like_a_spec_scenario(
    instrument: TimingServerProcess,
) -> None:
    endpoint = Endpoint(instrument.base_url, "timing-model", "vllm")
    result = workload_result(
        endpoint,
        ["hi", "there"],
        LOAD,
        objectives={"ttft_max": "<= 10 s"},
        name="test_chat",
        source="tests/test_chat.py::test_chat",
    )
    assert result.status is Status.PASS and result.id == "test_chat[vllm]"
    markdown = render_markdown([result], INFO)
    assert "### test_chat[vllm] — PASS" in markdown
    assert "- dataset: `2 prompts given by the test`" in markdown
    [data] = results_json([result], INFO)["scenarios"]
    assert data["spec"] == "tests/test_chat.py::test_chat"
    assert data["status"] == "PASS" and data["verdicts"][0]["metric"] == "ttft_max"
    assert data["summary"]["succeeded"] == 4


def test_the_runs_objectives_are_what_assert_slo_checks_by_default(
    instrument: TimingServerProcess,
) -> None:
    endpoint = Endpoint(instrument.base_url, "timing-model", "vllm")
    run = run_workload(endpoint, ["hi"], LOAD, objectives={"ttft_p95": "<= 0.001 ms"})
    with pytest.raises(AssertionError, match=r"ttft_p95 = .* ms \[.*\], objective <= 0.001 ms"):
        assert_slo(run)
    assert_slo(run, {"ttft_max": "<= 10 s"})  # other objectives judge the same numbers


STOP = "failure budget of 0 requests spent"


def stopped_early(
    *,
    interrupted: str | None = STOP,
    error: str = f"load stopped early: {STOP}",
    summary: bool = True,
) -> ScenarioResult:
    """A run whose numbers meet its objective but that did not complete."""
    records = [
        RequestRecord(i, i, False, float(i), i + 0.5, first_content_at=i + 0.1, output_tokens=3)
        for i in range(3)
    ]
    return ScenarioResult(
        spec_path="t.py::test_x",
        scenario=Scenario("test_x", ("svc",), "lines", LoadConfig(), (), (), (50.0,), 0),
        server=ServerConfig(name="svc", backend="external", base_url="http://h:1"),
        summary=summarize(records, window=(0.0, 2.5), percentiles=(50,)) if summary else None,
        records=tuple(records),
        interrupted=interrupted,
        error=error,
    ).judged(parse_objectives({"ttft_max": "<= 1 s"}))


@pytest.mark.parametrize("interrupted", [STOP, None], ids=["stopped early", "a fault after it"])
def test_a_run_that_did_not_complete_fails_everywhere_even_when_its_numbers_pass(
    interrupted: str | None,
) -> None:
    result = stopped_early(interrupted=interrupted)
    [verdict] = result.verdicts
    assert verdict.passed  # the numbers alone would pass ...
    assert not result.passed("ttft_max")  # ... the objective does not: the items ask this
    assert result.status is Status.FAIL
    assert "### test_x[svc] — FAIL" in render_markdown([result], INFO)
    assert results_json([result], INFO)["scenarios"][0]["status"] == "FAIL"
    with pytest.raises(AssertionError, match="the run did not complete: load stopped early"):
        assert_slo(LoadRun.of(result))


def test_a_run_without_a_summary_cannot_become_a_load_run() -> None:
    with pytest.raises(RuntimeError, match="the run has no summary: load stopped early"):
        LoadRun.of(stopped_early(summary=False))


def test_a_hand_written_run_reruns_until_decisive_when_its_verdicts_say_so(
    instrument: TimingServerProcess,
) -> None:
    endpoint = Endpoint(instrument.base_url, "timing-model", "vllm")
    # a p90 needs 36 requests for an upper bound: the third round of 12 decides it
    run = run_workload(
        endpoint,
        ["hi", "there"],
        {"parallel": 2, "requests": 12},
        objectives={"ttft_p90": "<= 5 s"},
        verdicts={"inconclusive": "rerun", "rounds": {"min": 1, "max": 6}},
    )
    assert [t.number for t in run.result.rounds] == [1, 2, 3]
    assert [v.outcome for t in run.result.rounds for v in t.verdicts] == [
        "inconclusive",
        "inconclusive",
        "pass",
    ]
    assert len(run.records) == 36 and run.verdicts[0].passed


def test_bad_verdicts_for_a_hand_written_run_name_the_key() -> None:
    endpoint = Endpoint("http://127.0.0.1:9", "timing-model", "vllm")
    with pytest.raises(
        ValueError, match=r"run_workload\(verdicts=...\).*rounds.*max \(1\) is below"
    ):
        run_workload(endpoint, ["hi"], verdicts={"rounds": {"min": 2, "max": 1}})
