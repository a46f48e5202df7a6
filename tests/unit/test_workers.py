"""Worker processes: one load divided among client processes, merged into one record set."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from pytest_llmslo import child_process, interrupts, workers
from pytest_llmslo.child_process import Child
from pytest_llmslo.config import LoadConfig
from pytest_llmslo.progress import LoadProgress
from pytest_llmslo.records import Endpoint, ErrorCategory, Prompt, RequestRecord
from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server
from pytest_llmslo.workers import (
    decode,
    encode,
    run_load_any,
    run_load_spread,
    shares,
    worker_count,
)


def test_auto_takes_one_worker_per_256_streams_or_200_req_s_within_the_cores() -> None:
    assert worker_count(LoadConfig(parallel=1000, workers=0), cores=16) == 4
    assert worker_count(LoadConfig(parallel=10_000, workers=0), cores=16) == 15
    assert worker_count(LoadConfig(rate=450.0, workers=0), cores=16) == 3
    assert worker_count(LoadConfig(parallel=10, workers=0), cores=2) == 1
    # never more workers than users or requests to share
    assert worker_count(LoadConfig(parallel=3, workers=8)) == 3
    assert worker_count(LoadConfig(rate=5.0, requests=2, workers=8)) == 2


def test_shares_divide_users_rate_requests_and_warmup() -> None:
    config = LoadConfig(parallel=10, requests=101, warmup=3, duration=60.0, seed=7)
    parts = shares(config, 3)
    assert [p.parallel for p in parts] == [4, 3, 3]
    assert [p.requests for p in parts] == [34, 34, 33]
    assert [p.warmup for p in parts] == [1, 1, 1]
    assert {p.duration for p in parts} == {60.0} and {p.workers for p in parts} == {1}
    assert [p.seed for p in parts] == [7, 8, 9]  # each its own arrival schedule
    assert [p.rate for p in shares(LoadConfig(rate=9.0, requests=9), 3)] == [3.0, 3.0, 3.0]


def test_records_cross_the_process_boundary_unchanged() -> None:
    records = [
        RequestRecord(
            0,
            1,
            False,
            1.0,
            2.0,
            first_content_at=1.1,
            content_times=(1.1, 1.2, 1.5),
            output_tokens=3,
            token_source="usage",
            extra={"reasoning_text": "hm"},
            round=2,
        ),
        RequestRecord(
            1, 0, True, 1.5, 1.6, error=ErrorCategory.TIMEOUT, error_message="read timeout"
        ),
    ]
    assert decode(encode(records)) == records


@pytest.fixture(scope="module")
def instrument() -> Iterator[TimingServerProcess]:
    with serve_timing_server(ttft_ms=20, gap_ms=5, tokens=4) as server:
        yield server


def prompts() -> list[Prompt]:
    return [Prompt(index=i, text=f"prompt {i}") for i in range(5)]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Child]:
    """Every worker process the test starts (the real ones, seen on their way out of
    start_child), to check afterwards that none is left."""
    children: list[Child] = []

    def start_and_note(module: str) -> tuple[Child, Connection]:
        child, conn = child_process.start_child(module)
        children.append(child)
        return child, conn

    monkeypatch.setattr(workers, "start_child", start_and_note)
    return children


def assert_all_reaped(children: list[Child]) -> None:
    assert children, "no worker was started"
    for child in children:
        assert child.exitcode is not None  # reaped: Popen collected its status
        with pytest.raises(ProcessLookupError):
            os.kill(child.pid, 0)


@pytest.fixture
def clean_interrupts() -> Iterator[None]:
    """Signals a test sends itself are forgotten after it (the count decides what a second does)."""
    interrupts.reset()
    yield
    interrupts.reset()


def test_a_spread_load_merges_into_one_record_set_with_one_window(
    instrument: TimingServerProcess,
) -> None:
    endpoint = Endpoint(instrument.base_url, "timing-model", "vllm")
    config = LoadConfig(parallel=4, requests=40, warmup=2, max_tokens=4, workers=2)
    started: list[float] = []
    result = run_load_any(
        endpoint, prompts(), config, on_measured_start=lambda: started.append(time.monotonic())
    )
    assert result.interrupted is None and len(result.records) == 42
    # in order of sending; indexed in the order the parent received them
    assert [r.sent_at for r in result.records] == sorted(r.sent_at for r in result.records)
    assert sorted(r.index for r in result.records) == list(range(42))
    assert sum(r.warmup for r in result.records) == 2
    assert all(r.ok for r in result.records)
    # prompt indices are the dataset's, each worker starting its own way into the list
    assert {r.prompt_index for r in result.records} == set(range(5))
    measured = [r for r in result.records if not r.warmup]
    assert result.window_start == min(r.sent_at for r in measured)
    assert result.window_end == max(r.end_at for r in measured)
    # the measured start was called once, after every worker's warmup and before its sends
    assert len(started) == 1
    assert started[0] <= result.window_start
    assert max(r.end_at for r in result.records if r.warmup) <= result.window_start
    assert result.client is not None and len(result.client.loop_lags) > 0


def test_a_stop_reaches_every_worker_and_their_records_are_kept(
    instrument: TimingServerProcess, started: list[Child]
) -> None:
    endpoint = Endpoint(instrument.base_url, "timing-model", "vllm")
    # a long load (200 tokens of 5 ms a request) stopped after a second
    config = LoadConfig(parallel=4, requests=400, max_tokens=200)
    deadline = time.monotonic() + 1.0
    result = run_load_spread(
        endpoint,
        prompts(),
        config,
        2,
        should_stop=lambda: "the server process exited" if time.monotonic() > deadline else None,
    )
    assert result.interrupted == "the server process exited"
    assert 0 < len(result.records) < 400
    assert time.monotonic() - deadline < 10
    assert_all_reaped(started)


def test_a_workers_prompt_positions_map_back_to_the_datasets() -> None:
    from pytest_llmslo.workers import _rotated

    dataset = prompts()
    for worker in range(3):
        own, offset = _rotated(dataset, worker, 3)
        # what the parent does to a record's prompt_index: the prompt it names is the one sent
        assert all(own[p].index == (p + offset) % len(dataset) for p in range(len(own)))
    assert [_rotated(dataset, w, 3)[1] for w in range(3)] == [0, 1, 3]


def test_records_stream_in_while_the_workers_run_and_keep_stores_what_it_returns(
    instrument: TimingServerProcess,
) -> None:
    endpoint = Endpoint(instrument.base_url, "timing-model", "vllm")
    # about 2 s of load: 4 users, 40 requests of 20 ms + 40 x 5 ms
    config = LoadConfig(parallel=4, requests=40, warmup=2, max_tokens=40, workers=2)
    progress = LoadProgress("spread")
    seen: list[tuple[float, int, int]] = []  # (when, index, measured requests counted by then)

    def keep(record: RequestRecord) -> RequestRecord:
        seen.append((time.monotonic(), record.index, progress.done))
        return record.slim()

    result = run_load_any(endpoint, prompts(), config, progress=progress, keep=keep)
    assert result.interrupted is None and len(result.records) == 42
    # keep saw every record once, in the order of arrival, counted before it was kept
    assert [index for _, index, _ in seen] == list(range(42))
    assert sorted(r.index for r in result.records) == list(range(42))
    # the first batch arrived while the load had a good part still to run
    last_end = max(r.end_at for r in result.records)
    assert seen[0][0] < last_end - 0.3
    assert any(counted > 0 for when, _, counted in seen if when < last_end - 0.3)
    # what the run stores is what keep returned
    assert all(r.slimmed and r.content_times == () for r in result.records)
    assert all(r.itl_max is not None for r in result.records if not r.warmup)
    assert (progress.done, progress.warmup_done, progress.total) == (40, 2, 40)
    assert progress.phase == "measured"


@pytest.mark.usefixtures("clean_interrupts")
def test_a_signal_stops_every_worker_keeps_the_records_and_leaves_no_process(
    instrument: TimingServerProcess, started: list[Child]
) -> None:
    endpoint = Endpoint(instrument.base_url, "timing-model", "vllm")
    config = LoadConfig(parallel=4, requests=400, max_tokens=200)
    signalled: list[int] = []

    def terminate_once_answered(record: RequestRecord) -> RequestRecord:
        # once a request came back (however slowly the workers started on a busy host)
        if record.ok and not signalled:
            signalled.append(record.index)
            os.kill(os.getpid(), signal.SIGTERM)
        return record

    result = run_load_spread(endpoint, prompts(), config, 2, keep=terminate_once_answered)
    assert result.interrupted == "SIGTERM"
    assert signalled and signalled[0] in {r.index for r in result.records}
    assert 0 < len(result.records) < 400
    assert len(started) == 2
    assert_all_reaped(started)


def test_a_worker_killed_mid_run_is_the_reason_and_the_others_records_are_kept(
    instrument: TimingServerProcess, started: list[Child]
) -> None:
    endpoint = Endpoint(instrument.base_url, "timing-model", "vllm")
    config = LoadConfig(parallel=4, requests=400, max_tokens=50)

    def kill_worker_1(record: RequestRecord) -> RequestRecord:
        if record.index == 0:  # the first batch is in: the load runs
            os.kill(started[1].pid, signal.SIGKILL)
        return record

    result = run_load_spread(endpoint, prompts(), config, 2, keep=kill_worker_1)
    assert result.interrupted == "client worker 1 exited before it finished (killed by SIGKILL)"
    assert 0 < len(result.records) < 400
    assert_all_reaped(started)
