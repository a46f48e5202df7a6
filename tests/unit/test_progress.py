"""Progress: the counters the engine bumps, the lines made of them, and the thread that draws."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from pytest_llmslo.config import LoadConfig
from pytest_llmslo.load import run_load
from pytest_llmslo.progress import (
    AnsiLine,
    LinesProgress,
    LiveProgress,
    LoadProgress,
    LoadSnapshot,
    RateWindow,
    format_load,
    format_server_start,
    last_log_line,
)
from pytest_llmslo.records import ErrorCategory, Prompt, RequestRecord
from pytest_llmslo.testing.timing_server import serve_timing_server


def snapshot(**changes: object) -> LoadSnapshot:
    fields: dict[str, object] = {
        "label": "chat::svc",
        "phase": "measured",
        "done": 40,
        "total": 100,
        "failed": 1,
        "output_tokens": 4000,
        "warmup_done": 2,
        "warmup_total": 2,
        "elapsed": 12.0,
        "until_deadline": None,
        "rate": 512.4,
        "runs": 1,
    }
    fields.update(changes)
    return LoadSnapshot(**fields)  # type: ignore[arg-type]


def record(
    *, warmup: bool = False, tokens: int | None = 10, failed: bool = False, end_at: float = 1.0
) -> RequestRecord:
    return RequestRecord(
        index=0,
        prompt_index=0,
        warmup=warmup,
        sent_at=0.0,
        end_at=end_at,
        content_times=(0.1, 0.2, 0.3),
        output_tokens=tokens,
        error=ErrorCategory.HTTP_5XX if failed else None,
    )


class Recorder:
    """A Line that keeps what it was asked to show, with the time of each drawing."""

    def __init__(self) -> None:
        self.shown: list[tuple[float, str]] = []
        self.clears = 0

    def show(self, text: str) -> None:
        self.shown.append((time.monotonic(), text))

    def clear(self) -> None:
        self.clears += 1


# --- formatting: pure functions of a snapshot ------------------------------------------------


def test_a_running_load_shows_requests_failures_rate_elapsed_and_time_left() -> None:
    # 40 of 100 in 12 s: 60 more at the same pace take 18 s
    assert format_load(snapshot()) == (
        "chat::svc: 40/100 requests, 1 failed, 512 tok/s, 12 s, ~18 s left"
    )


def test_a_duration_bound_load_shows_an_unknown_total_and_the_deadline_as_time_left() -> None:
    line = format_load(snapshot(total=None, until_deadline=30.0, elapsed=90.0))
    assert line == "chat::svc: 40/? requests, 1 failed, 512 tok/s, 90 s, ~30 s left"


def test_the_earlier_of_count_and_deadline_is_the_time_left() -> None:
    assert snapshot(until_deadline=5.0).seconds_left() == 5.0
    assert snapshot(until_deadline=60.0).seconds_left() == pytest.approx(18.0)


def test_nothing_done_yet_gives_no_estimate_and_no_rate_a_dash() -> None:
    line = format_load(snapshot(done=0, rate=None, elapsed=0.5))
    assert line == "chat::svc: 0/100 requests, 1 failed, - tok/s, 0.5 s"


def test_warmup_shows_its_own_count() -> None:
    assert format_load(snapshot(phase="warmup", warmup_done=1, warmup_total=3)) == (
        "chat::svc: warmup 1/3 requests"
    )


def test_the_final_line_has_no_estimate_and_counts_the_runs() -> None:
    line = format_load(snapshot(done=100, runs=3), final=True)
    assert line == "chat::svc (3 runs): 100/100 requests, 1 failed, 512 tok/s, 12 s"


def test_a_server_start_shows_its_elapsed_time_and_last_log_line() -> None:
    assert format_server_start("tiny", 3.25, "INFO loading weights") == (
        "starting tiny (3.2 s): INFO loading weights"
    )
    assert format_server_start("tiny", 75, "") == "starting tiny (75 s)"


def test_the_last_log_line_is_the_last_text_shown_without_colours(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_bytes(b"first\n\x1b[32mINFO\x1b[0m loading 10%\rloading 50%\n\n")
    assert last_log_line(log) == "loading 50%"
    assert last_log_line(tmp_path / "missing.log") == ""
    assert last_log_line(None) == ""


# --- counters ----------------------------------------------------------------------------------


def test_counters_add_up_measured_requests_tokens_and_failures_across_runs() -> None:
    counters = LoadProgress("chat::svc")
    counters.warming(2)
    counters.count(record(warmup=True))
    assert (counters.phase, counters.warmup_done, counters.done) == ("warmup", 1, 0)
    counters.measuring(3, None, now=100.0)
    counters.count(record(tokens=7))
    counters.count(record(tokens=None))  # no usage: its three content chunks count
    counters.count(record(failed=True, tokens=0))
    counters.measuring(3, None, now=110.0)  # a second round adds to the total
    taken = counters.snapshot(now=112.0)
    assert (taken.done, taken.total, taken.failed, taken.output_tokens) == (3, 6, 1, 10)
    assert (taken.elapsed, taken.runs) == (12.0, 2)


def test_a_duration_only_run_has_no_total_and_a_deadline() -> None:
    counters = LoadProgress("chat::svc")
    counters.measuring(None, 30.0, now=100.0)
    taken = counters.snapshot(now=110.0)
    assert taken.total is None and taken.until_deadline == 20.0


def test_the_rate_is_over_the_last_seconds_only() -> None:
    window = RateWindow(seconds=5.0)
    assert window.add(0.0, 0) is None
    assert window.add(1.0, 1000) == 1000.0
    for second in range(2, 11):  # then no more tokens
        rate = window.add(float(second), 1000)
    assert rate == 0.0


def test_the_engine_counts_every_request_of_a_real_run() -> None:
    counters = LoadProgress("chat::svc")
    with serve_timing_server(ttft_ms=5, gap_ms=1, tokens=4) as server:
        config = LoadConfig(parallel=2, requests=6, warmup=2, max_tokens=4)
        run_load(server.endpoint(), [Prompt(index=0, text="hi")], config, progress=counters)
    assert (counters.warmup_done, counters.done, counters.total, counters.failed) == (2, 6, 6, 0)
    assert counters.output_tokens == 24


# --- the lines mode and the live thread --------------------------------------------------------


def test_lines_mode_writes_one_line_per_server_start_and_per_load_when_it_ends() -> None:
    written: list[str] = []
    clock = iter([0.0, 2.5, 20.0]).__next__
    progress = LinesProgress(written.append, clock=clock)
    progress.server_starting("svc", lambda: None)
    progress.server_started("svc", None)
    counters = progress.load("chat::svc")
    counters.measuring(2, None, now=10.0)
    counters.count(record(tokens=20, end_at=13.0))
    counters.count(record(tokens=20, end_at=14.0))
    progress.load_ended(counters)  # at 20.0: the line ends with the last request, at 14.0
    assert written == [
        "llmslo: server svc ready after 2.5 s",
        "llmslo: chat::svc: 2/2 requests, 0 failed, 10 tok/s, 4.0 s",
    ]


def test_the_live_line_is_drawn_at_most_once_per_interval_and_cleared_when_the_load_ends() -> None:
    line = Recorder()
    progress = LiveProgress(line, interval=0.1)
    counters = progress.load("chat::svc")
    counters.measuring(10, None, now=time.monotonic())
    time.sleep(0.55)
    progress.load_ended(counters)
    progress.close()
    times = [at for at, _ in line.shown]
    assert 3 <= len(times) <= 6
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.09
    assert all(text.startswith("chat::svc: 0/10 requests") for _, text in line.shown)
    assert line.clears >= 1


def test_the_live_thread_is_gone_after_close_and_draws_nothing_after_it() -> None:
    line = Recorder()
    progress = LiveProgress(line, interval=0.05)
    progress.server_starting("svc", lambda: None)
    time.sleep(0.12)
    assert progress.running
    progress.close()
    assert not progress.running
    assert not any(t.name == "llmslo-progress" for t in threading.enumerate())
    drawn = len(line.shown)
    time.sleep(0.12)
    assert len(line.shown) == drawn >= 1
    progress.close()  # twice is fine


# --- the terminal line -------------------------------------------------------------------------


def test_the_ansi_line_draws_below_the_writers_line_and_goes_back_up_when_cleared() -> None:
    out: list[str] = []
    line = AnsiLine(out.append, lambda: 30, lambda: True)
    line.show("one")
    line.show("a text far longer than the terminal is wide")
    line.clear()
    line.clear()  # nothing shown: nothing written
    # cut to one column less than the width: a full line would wrap on some terminals
    assert out == ["\rone\x1b[K", "\ra text far longer than the t…\x1b[K", "\r\x1b[K\x1b[1A"]
    assert len("a text far longer than the t…") == 29


def test_the_ansi_line_drawn_again_goes_back_down_to_its_own_line() -> None:
    out: list[str] = []
    went_down = iter([True, False])
    line = AnsiLine(out.append, lambda: 80, lambda: next(went_down))
    line.show("starting svc")
    line.clear()
    line.show("chat::svc: 0/10")  # the writer wrote nothing meanwhile: down again
    line.clear()
    assert out == [
        "\rstarting svc\x1b[K",
        "\r\x1b[K\x1b[1A",
        "\n",
        "\rchat::svc: 0/10\x1b[K",
        "\r\x1b[K\x1b[1A",
    ]
