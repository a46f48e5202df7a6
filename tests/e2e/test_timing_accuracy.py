"""The engine's timestamps against the instrument's send times, at 64 concurrent streams.

No model is involved, but the test is sensitive to CPU contention: the server gets a core of
its own where there are two, and a second attempt is allowed because a burst from another
process on a shared machine can add milliseconds that are not the engine's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from pytest_llmslo.config import LoadConfig
from pytest_llmslo.load import LoadResult, run_load
from pytest_llmslo.records import Prompt
from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server

STREAMS = 64
TTFT_MS = 200.0
GAP_MS = 20.0
TOKENS = 20
SCHEDULE_E2E_MS = TTFT_MS + GAP_MS * (TOKENS - 1)

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Accuracy:
    lag_p50_ms: float
    lag_p99_ms: float
    ttft_mean_ms: float
    first_chunk_mean_ms: float
    e2e_mean_ms: float
    chunks: int


@pytest.fixture(scope="module")
def pinned_instrument() -> Iterator[TimingServerProcess]:
    cores = sorted(os.sched_getaffinity(0))
    server_core = cores[-1] if len(cores) > 1 else None
    with serve_timing_server(
        ttft_ms=TTFT_MS, gap_ms=GAP_MS, tokens=TOKENS, cpu=server_core
    ) as server:
        if server_core is None:
            yield server
            return
        os.sched_setaffinity(0, set(cores[:-1]))
        try:
            yield server
        finally:
            os.sched_setaffinity(0, set(cores))


def measure(server: TimingServerProcess) -> Accuracy:
    prompts = [Prompt(index=i, text=f"stream {i}") for i in range(STREAMS)]
    config = LoadConfig(parallel=STREAMS, requests=2 * STREAMS, warmup=STREAMS, max_tokens=TOKENS)
    result: LoadResult = run_load(server.endpoint(), prompts, config)
    log = {entry["id"]: entry for entry in server.fetch_log(clear=True)}
    lags: list[float] = []
    ttfts: list[float] = []
    firsts: list[float] = []
    e2es: list[float] = []
    for record in result.measured:
        assert record.ok, record.error_message
        assert len(record.content_times) == TOKENS
        assert record.first_content_at is not None and record.first_chunk_at is not None
        sent = log[record.extra["response_id"]]["content_ns"]
        assert len(sent) == TOKENS
        # the i-th content chunk the engine saw is the i-th one the server wrote
        lags.extend(
            seen - sent_ns / 1e9 for seen, sent_ns in zip(record.content_times, sent, strict=True)
        )
        ttfts.append(record.first_content_at - record.sent_at)
        firsts.append(record.first_chunk_at - record.sent_at)
        e2es.append(record.end_at - record.sent_at)
    lag = np.array(lags) * 1e3
    assert lag.min() >= 0, "a chunk was stamped before the server wrote it: clocks differ"
    return Accuracy(
        float(np.percentile(lag, 50)),
        float(np.percentile(lag, 99)),
        float(np.mean(ttfts) * 1e3),
        float(np.mean(firsts) * 1e3),
        float(np.mean(e2es) * 1e3),
        len(lag),
    )


def test_chunk_timestamps_lag_the_server_by_milliseconds_at_64_streams(
    pinned_instrument: TimingServerProcess,
) -> None:
    attempts = [measure(pinned_instrument)]
    if attempts[0].lag_p50_ms >= 2 or attempts[0].lag_p99_ms >= 5:
        attempts.append(measure(pinned_instrument))
    best = min(attempts, key=lambda a: a.lag_p99_ms)
    print(f"timing accuracy at {STREAMS} streams: {attempts}")
    assert best.chunks == 2 * STREAMS * TOKENS
    assert best.lag_p50_ms < 2, attempts
    assert best.lag_p99_ms < 5, attempts
    # TTFT is the first content, about 200 ms, not the role chunk that comes at once
    assert TTFT_MS <= best.ttft_mean_ms < TTFT_MS + 15, attempts
    assert best.first_chunk_mean_ms < 50, attempts
    assert SCHEDULE_E2E_MS <= best.e2e_mean_ms < SCHEDULE_E2E_MS + 20, attempts
