"""Worker processes: one load divided among client processes, merged into one record set."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator

import pytest

from pytest_llmslo.config import LoadConfig
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
    assert [r.index for r in result.records] == list(range(42))
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
    instrument: TimingServerProcess,
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
    assert multiprocessing.active_children() == []  # every worker joined


def test_a_workers_prompt_positions_map_back_to_the_datasets() -> None:
    from pytest_llmslo.workers import _rotated

    dataset = prompts()
    for worker in range(3):
        own, offset = _rotated(dataset, worker, 3)
        # what _merge does to a record's prompt_index: the prompt it names is the one sent
        assert all(own[p].index == (p + offset) % len(dataset) for p in range(len(own)))
    assert [_rotated(dataset, w, 3)[1] for w in range(3)] == [0, 1, 3]
