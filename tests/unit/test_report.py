"""Reports: the load that ran, strict JSON whatever the values, safe table cells, no credentials,
one guarded write per file, and a folder per run so nothing is overwritten unseen."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_llmslo import report_writer
from pytest_llmslo.config import LoadConfig, ServerConfig
from pytest_llmslo.environment import RunInfo
from pytest_llmslo.metrics import summarize
from pytest_llmslo.records import Endpoint, ErrorCategory, RequestRecord
from pytest_llmslo.report import (
    failure_text,
    jsonable,
    render_markdown,
    request_lines,
    results_json,
    scenario_section,
)
from pytest_llmslo.report_writer import RunFolder, write_reports
from pytest_llmslo.result import ScenarioResult
from pytest_llmslo.session import SloSession, effective_load
from pytest_llmslo.slo import Measurement, evaluate, parse_objective
from pytest_llmslo.spec import Scenario

CANARY = "CANARY-7f3a9c"
INFO = RunInfo("0.0.0", "2026-12-02T00:00:00+00:00", "test box", "3.11", "linux")


def record(i: int, *, error: ErrorCategory | None = None, message: str = "") -> RequestRecord:
    return RequestRecord(
        index=i,
        prompt_index=i,
        warmup=False,
        sent_at=float(i),
        end_at=i + 0.5,
        first_chunk_at=i + 0.05,
        first_content_at=None if error else i + 0.1,
        content_times=() if error else (i + 0.1, i + 0.3, i + 0.5),
        input_tokens=8,
        output_tokens=None if error else 3,
        token_source=None if error else "usage",
        error=error,
        error_message=message,
    )


def scenario(
    load: LoadConfig,
    objectives: dict[str, str],
    server_loads: dict[str, LoadConfig] | None = None,
) -> Scenario:
    return Scenario(
        name="chat",
        servers=("svc",),
        dataset="lines",
        load=load,
        objectives=tuple(parse_objective(m, t) for m, t in objectives.items()),
        request_slo=(),
        percentiles=(50.0, 95.0),
        line=1,
        server_loads=server_loads or {},
    )


def result(
    sc: Scenario,
    records: list[RequestRecord],
    *,
    server: ServerConfig | None = None,
    endpoint: Endpoint | None = None,
    error: str | None = None,
    measure: dict[str, Measurement] | None = None,
    **more: Any,
) -> ScenarioResult:
    summary = (
        summarize(records, window=(0.0, len(records) + 0.5), percentiles=(50, 95))
        if records
        else None
    )

    def value(metric: str) -> Measurement:
        if measure and metric in measure:
            return measure[metric]
        assert summary is not None
        return Measurement(*summary.value(metric))

    return ScenarioResult(
        spec_path="spec.yaml",
        scenario=sc,
        server=server or ServerConfig(name="svc", backend="external", base_url="http://h:1"),
        endpoint=endpoint,
        summary=summary,
        verdicts=tuple(evaluate(sc.objectives, value)),
        records=tuple(records),
        error=error,
        **more,
    )


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def cells(row: str) -> list[str]:
    return re.split(r"(?<!\\)\|", row)[1:-1]


# --- JSON that every parser reads ---------------------------------------------------------------


def test_an_unbounded_margin_is_null_with_its_reason_not_infinity() -> None:
    # failure_rate "<= 0%" with a failure: the margin relative to 0 is -inf
    records = [record(0), record(1, error=ErrorCategory.HTTP_5XX, message="boom")]
    res = result(scenario(LoadConfig(requests=2), {"failure_rate": "<= 0%"}), records)
    assert res.verdicts[0].margin == -math.inf
    text = json.dumps(results_json([res], INFO), allow_nan=False)
    [verdict] = strict_json(text)["scenarios"][0]["verdicts"]
    assert verdict["margin"] is None
    assert "threshold is 0" in verdict["margin_reason"]
    assert verdict["measured"] == 0.5 and verdict["passed"] is False
    assert "| failure_rate | 50.00% | <= 0% | −∞ |" in render_markdown([res], INFO)


def test_values_json_cannot_hold_become_strings_instead_of_losing_the_file() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "Opaque()"

    load = LoadConfig(
        requests=1,
        extra_body={"not_before": dt.date(2024, 1, 1), "odd": Opaque(), "ratio": math.nan},
    )
    res = result(scenario(load, {"ttft_p95": "<= 1 s"}), [record(0)])
    data = strict_json(json.dumps(results_json([res], INFO), allow_nan=False))
    body = data["scenarios"][0]["load"]["extra_body"]
    assert body == {"not_before": "2024-01-01", "odd": "<not JSON: Opaque Opaque()>", "ratio": None}


def test_jsonable_handles_what_reports_meet() -> None:
    assert jsonable(
        {1: (math.inf, -math.inf, 2.5), "p": Path("/x"), "e": ErrorCategory.TIMEOUT}
    ) == {
        "1": [None, None, 2.5],
        "p": "/x",
        "e": "timeout",
    }
    assert jsonable({"b": b"\xff", "s": {3, 1}}) == {"b": "\ufffd", "s": [1, 3]}


def test_requests_jsonl_is_strict_json_one_request_a_line() -> None:
    res = result(scenario(LoadConfig(requests=2), {}), [record(0), record(1)])
    lines = request_lines([res])
    assert [strict_json(line)["index"] for line in lines] == [0, 1]


# --- markdown tables ----------------------------------------------------------------------------


def test_multi_line_reasons_and_pipes_stay_inside_their_table_cell() -> None:
    reason = "server 'svc' did not start: exited\ncommand: a | b\nlast lines:\nTraceback"
    sc = scenario(LoadConfig(requests=1), {"ttft_p95": "<= 1 s", "failure_rate": "<= 1%"})
    nan = Measurement(math.nan, None, reason)
    res = result(sc, [], error=reason, measure={"ttft_p95": nan, "failure_rate": nan})
    markdown = render_markdown([res], INFO)
    objective_rows = [r for r in table_rows(markdown) if r.startswith(("| ttft_p95", "| failure"))]
    assert len(objective_rows) == 2
    assert all(len(cells(row)) == 6 for row in objective_rows)
    assert "not measurable: server 'svc' did not start: exited" in objective_rows[0]
    # the whole error is still in the section, once, below the first line
    assert "<summary>error details</summary>" in markdown and "command: a | b" in markdown


def test_error_examples_with_pipes_and_newlines_keep_the_error_table_whole() -> None:
    records = [record(0, error=ErrorCategory.HTTP_4XX, message="HTTP 422 | bad\nfield")]
    markdown = scenario_section(result(scenario(LoadConfig(requests=1), {}), records))
    [row] = [r for r in table_rows(markdown) if r.startswith("| http_4xx")]
    assert len(cells(row)) == 3 and "HTTP 422 \\| bad field" in row


# --- the load that ran --------------------------------------------------------------------------


def test_report_and_json_state_the_load_that_ran_and_why_it_differs() -> None:
    sc = scenario(
        LoadConfig(parallel=10, requests=100, warmup=2),
        {"ttft_p95": "<= 1 s"},
        server_loads={"svc": LoadConfig(parallel=10, requests=20, warmup=2)},
    )
    load, notes = effective_load(sc, "svc", request_cap=5, prompt_count=3)
    res = result(sc, [record(i) for i in range(5)], load=load, load_notes=notes)
    markdown = scenario_section(res)
    assert "load: parallel 10, 5 requests, 2 warmup" in markdown
    assert "server_load.svc: requests 20" in markdown
    assert "capped at 5 by --slo-max-requests (from 20)" in markdown
    assert "100 requests" not in markdown
    data = results_json([res], INFO)["scenarios"][0]
    assert data["load"]["requests"] == 5 and data["spec_load"]["requests"] == 100
    assert data["load_notes"] == list(res.load_notes)


def test_request_cap_also_bounds_a_duration_only_load() -> None:
    sc = scenario(LoadConfig(parallel=4, duration=30.0), {})
    load, notes = effective_load(sc, "svc", request_cap=10, prompt_count=50)
    assert (load.requests, load.duration) == (10, 30.0)
    assert notes == (
        "requests capped at 10 by --slo-max-requests (the 30 s duration still applies)",
    )


def test_a_load_without_requests_or_duration_sends_one_per_prompt_then_the_cap() -> None:
    sc = scenario(LoadConfig(parallel=1), {})
    assert effective_load(sc, "svc", None, 7)[0].requests == 7
    load, notes = effective_load(sc, "svc", 3, 7)
    assert load.requests == 3 and len(notes) == 2


def test_an_unchanged_load_has_no_notes() -> None:
    sc = scenario(LoadConfig(parallel=2, requests=6), {})
    assert effective_load(sc, "svc", 10, 3) == (LoadConfig(parallel=2, requests=6), ())


# --- credentials --------------------------------------------------------------------------------


def test_no_credential_reaches_any_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVC_KEY", f"{CANARY}-apikey")
    server = ServerConfig(
        name="svc",
        backend="vllm",
        model="m",
        args={"api_key": f"{CANARY}-args"},
        extra_args=("--hf-token", f"{CANARY}-extra"),
        env={"HF_TOKEN": f"{CANARY}-env"},
        api_key_env="SVC_KEY",
    )
    load = LoadConfig(
        requests=1,
        headers={"X-Gateway-Key": f"{CANARY}-header", "Cookie": f"sid={CANARY}-cookie"},
        extra_body={"password": f"{CANARY}-body"},
    )
    endpoint = Endpoint(
        f"http://u:{CANARY}-url@127.0.0.1:9", "m", "vllm", api_key=f"{CANARY}-apikey"
    )
    echoed = (
        f"HTTP 401: bad key {CANARY}-apikey for http://u:{CANARY}-url@127.0.0.1:9 "
        f"(--hf-token {CANARY}-extra, cookie {CANARY}-cookie, body {CANARY}-body)"
    )
    records = [record(0, error=ErrorCategory.HTTP_4XX, message=echoed)]
    res = result(
        scenario(load, {"failure_rate": "<= 0%"}),
        records,
        server=server,
        endpoint=endpoint,
        error=f"server 'svc' did not start: {echoed}",
        server_log_tail=f"non-default args: {{'api_key': '{CANARY}-args', 'env': '{CANARY}-env'}}",
    )
    outputs = [
        render_markdown([res], INFO),
        scenario_section(res),
        failure_text(res, res.verdicts[0]),
        json.dumps(results_json([res], INFO), allow_nan=False),
        *request_lines([res]),
    ]
    for text in outputs:
        assert CANARY not in text
    data = results_json([res], INFO)["scenarios"][0]
    assert data["endpoint"]["api_key"] == "***"
    assert data["server_config"]["extra_args"] == ["--hf-token", "***"]
    assert data["server_config"]["env"] == {"HF_TOKEN": "***"}
    assert data["load"]["headers"] == {"X-Gateway-Key": "***", "Cookie": "***"}
    assert data["server_config"]["api_key_env"] == "SVC_KEY"  # a name, kept: it says where from


# --- writing ------------------------------------------------------------------------------------


def passing() -> ScenarioResult:
    return result(scenario(LoadConfig(requests=2), {"ttft_p95": "<= 1 s"}), [record(0), record(1)])


def test_each_run_gets_its_own_folder_and_the_latest_sits_at_the_report_path(
    tmp_path: Path,
) -> None:
    report = tmp_path / "out" / "report.md"
    run = RunFolder.start(report)
    written = write_reports([passing()], report, None, run=run)
    assert written.warnings == []
    [run_dir] = list((tmp_path / "out" / "runs").iterdir())
    for name in ("report.md", "results.json", "requests.jsonl"):
        assert (run_dir / name).read_text() == (report.parent / name).read_text()
    assert strict_json((report.parent / "results.json").read_text())["run"]["id"] == run_dir.name


def test_two_sessions_into_one_folder_lose_nothing_and_the_later_one_warns(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.md"
    first, second = RunFolder.start(report), RunFolder.start(report)  # both running at once
    one = write_reports([passing()], report, None, run=first)
    two = write_reports([passing()], report, None, run=second)
    assert one.warnings == []
    [warning] = two.warnings
    assert "another session" in warning and str(tmp_path / "runs") in warning
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2
    for name in runs:
        assert (tmp_path / "runs" / name / "results.json").exists()


def test_a_session_after_another_replaces_the_latest_without_a_warning(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    write_reports([passing()], report, None, run=RunFolder.start(report))
    later = write_reports([passing()], report, None, run=RunFolder.start(report))
    assert later.warnings == []


def test_an_unwritable_folder_is_a_warning_per_file_never_an_exception() -> None:
    report = Path("/proc/llmslo-no-such-dir/report.md")
    written = write_reports([passing()], report, None, run=RunFolder.start(report))
    assert "# LLM SLO report" in written.markdown  # the terminal still shows every verdict
    lost = [w for w in written.warnings if "could not write" in w]
    assert any("/proc/llmslo-no-such-dir/results.json" in w for w in lost)
    assert any("/proc/llmslo-no-such-dir/report.md" in w for w in lost)


def test_a_file_that_cannot_be_rendered_loses_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(results: Any) -> list[str]:
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(report_writer, "request_lines", broken)
    report = tmp_path / "report.md"
    written = write_reports([passing()], report, None, run=RunFolder.start(report))
    assert written.warnings == [
        "llmslo: could not render requests.jsonl: RuntimeError: renderer bug"
    ]
    assert report.exists() and strict_json(report.with_name("results.json").read_text())
    assert not report.with_name("requests.jsonl").exists()


def test_a_markdown_renderer_failure_still_writes_the_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> str:
        raise ValueError("bad cell")

    monkeypatch.setattr(report_writer, "render_markdown", broken)
    report = tmp_path / "report.md"
    written = write_reports([passing()], report, None, run=RunFolder.start(report))
    assert "could not be rendered: ValueError: bad cell" in written.markdown
    verdicts = strict_json(report.with_name("results.json").read_text())["scenarios"][0]["verdicts"]
    assert [v["passed"] for v in verdicts] == [True]


def test_the_step_summary_gets_the_report_and_notices_reach_the_header(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    report = tmp_path / "r" / "report.md"
    notice = "server logs go to /tmp/x: /proc/y cannot be written"
    written = write_reports(
        [passing()], report, str(summary), run=RunFolder.start(report), notices=[notice]
    )
    assert f"- note: {notice}" in summary.read_text()
    assert written.warnings == [f"llmslo: {notice}"]


def test_a_log_folder_that_cannot_be_written_falls_back_to_a_temporary_one(tmp_path: Path) -> None:
    wanted = Path("/proc/llmslo-no-such-dir/logs")
    session = SloSession(wanted.parent)
    got = session.log_dir
    assert got != wanted and got.is_dir()
    (got / "probe.log").write_text("ok")
    [notice] = session.notices
    assert f"server logs go to {got}" in notice and str(wanted) in notice
    assert SloSession(tmp_path).log_dir == tmp_path / "logs"
