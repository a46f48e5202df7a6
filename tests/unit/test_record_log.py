"""requests.jsonl as requests finish: each line on disk as its request ends, the slim record in
memory, held records written once counted, a failed write keeping the record whole, and the
reports completing the file without writing a line twice."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_llmslo import record_log
from pytest_llmslo.config import LoadConfig, ServerConfig
from pytest_llmslo.record_log import RecordSink, RequestLog
from pytest_llmslo.records import ErrorCategory, RequestRecord
from pytest_llmslo.redact import Secrets
from pytest_llmslo.report import jsonable, request_line
from pytest_llmslo.report_writer import RunFolder, write_reports
from tests.unit.test_report import record, result, scenario

SECRET = "sk-CANARY-41d"


def sink_for(log: RequestLog, *, counting: bool = False, round_number: int = 1) -> RecordSink:
    return RecordSink(
        log,
        Secrets(frozenset({SECRET})),
        {"scenario": "chat", "server": "svc"},
        round_number=round_number,
        counting=counting,
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_each_request_is_on_disk_when_it_ends_and_only_its_slim_form_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record_log, "FLUSH_S", 0.0)  # every write flushed: read it back at once
    log = RequestLog(lambda: tmp_path)
    sink = sink_for(log, round_number=2)
    whole = replace(record(0), error_message=f"key {SECRET} leaked", output_text="hello")
    kept = sink.keep(whole)
    [row] = lines(tmp_path / "requests.jsonl")  # before the run ends, before close
    assert row["content_times"] == list(whole.content_times) and row["output_text"] == "hello"
    assert row["round"] == 2 and row["scenario"] == "chat" and "itl_max" not in row
    assert SECRET not in json.dumps(row)
    assert kept.slimmed and kept.content_times == () and kept.output_text == ""
    assert kept.itl_max == pytest.approx(0.2) and kept.round == 2
    assert sink.itl.n == 2 and log.lines == 1
    log.close()


def test_a_record_waiting_for_its_token_count_is_written_once_counted(tmp_path: Path) -> None:
    log = RequestLog(lambda: tmp_path)
    sink = sink_for(log, counting=True)
    uncounted = replace(record(1), output_tokens=None, token_source=None, output_text="hi")
    held = sink.keep(uncounted)
    assert held == uncounted and not held.slimmed  # its text is what the tokenizer counts
    counted = replace(held, output_tokens=2, token_source="tokenizer")
    [settled] = sink.settle([counted])
    assert settled.slimmed and settled.output_tokens == 2
    assert sink.settle([settled]) == [settled]  # written once
    log.close()
    [row] = lines(tmp_path / "requests.jsonl")
    assert row["output_tokens"] == 2 and row["token_source"] == "tokenizer"


def test_a_line_that_cannot_be_written_keeps_its_record_whole(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the run folder should be")
    log = RequestLog(lambda: blocked)
    kept = sink_for(log).keep(record(2))
    assert not kept.slimmed and kept.content_times == record(2).content_times
    assert log.error is not None and "not-a-folder" in log.error


def test_the_reports_complete_the_log_and_copy_it_beside_the_report(tmp_path: Path) -> None:
    report = tmp_path / "out" / "report.md"
    run = RunFolder.start(report)
    run_dir = tmp_path / "out" / "runs" / run.run_id

    def claim() -> Path:
        run_dir.mkdir(parents=True)
        return run_dir

    log = RequestLog(claim)
    sink = sink_for(log)
    streamed = [sink.keep(record(i)) for i in range(3)]  # a logged run: slim records
    sc = scenario(LoadConfig(requests=3), {"e2e_p50": "<= 1 s"})
    server = ServerConfig(name="svc", backend="external", base_url="http://h:1")
    whole = result(sc, [record(i) for i in range(3)], server=server)
    logged = replace(whole, records=tuple(streamed))
    by_hand = result(replace(sc, name="by-hand"), [record(7), record(8)], server=server)
    written = write_reports([logged, by_hand], report, None, run=run, request_log=log)
    assert written.warnings == []
    rows = lines(run_dir / "requests.jsonl")
    assert [(r["scenario"], r["index"]) for r in rows] == [
        ("chat", 0),
        ("chat", 1),
        ("chat", 2),
        ("by-hand", 7),
        ("by-hand", 8),
    ]
    assert (report.parent / "requests.jsonl").read_text() == (
        run_dir / "requests.jsonl"
    ).read_text()
    assert json.loads((report.parent / "results.json").read_text())["run"]["id"] == run_dir.name


def test_a_session_that_logged_nothing_writes_its_requests_with_the_reports(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.md"
    log = RequestLog(lambda: pytest.fail("no request was logged: no folder to claim"))
    sc = scenario(LoadConfig(requests=2), {"e2e_p50": "<= 1 s"})
    written = write_reports([result(sc, [record(0), record(1)])], report, None, request_log=log)
    assert written.warnings == []
    assert len(lines(report.parent / "requests.jsonl")) == 2


def test_a_slim_record_is_marked_as_such(tmp_path: Path) -> None:
    whole: RequestRecord = record(4)
    assert not whole.slimmed and whole.slim().slimmed


def test_a_line_is_what_the_generic_rendering_gives_and_survives_values_json_lacks() -> None:
    secrets = Secrets(frozenset({SECRET}))
    whole = replace(
        record(5, error=ErrorCategory.HTTP_5XX, message=f"upstream said {SECRET}"),
        extra={"response_id": "chatcmpl-1", "odd": float("nan")},
        output_text=f"echo {SECRET}",
    )
    row = json.loads(request_line(whole, secrets, {"scenario": "chat", "server": "svc"}))
    generic = jsonable(whole)
    del generic["itl_max"]
    generic.update(error="http_5xx", scenario="chat", server="svc")
    assert row == secrets.scrub_tree(generic)
    assert row["extra"]["odd"] is None and SECRET not in json.dumps(row)
