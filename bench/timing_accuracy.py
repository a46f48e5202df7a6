"""Timing accuracy: the engine's stamps, schedules and deadlines against the instrument's clock.

The tests check what happened (every chunk stamped after the server wrote it, a timeout fires
and is recorded as one, a stubborn server tree is killed); how close to schedule it happened
depends on the machine, so it is measured here and printed, not asserted. Each row gives what
the schedule or setting asks for, what was measured and their ratio (1.00 is exact).

- Stamps: the timing instrument streams 20 content chunks per request (first 200 ms after the
  request arrived, then 20 ms apart) to 64 closed-loop users; lag is the engine's stamp of the
  i-th content chunk minus the server's monotonic clock just before writing it. The server gets
  a core of its own where there are two or more.
- Dispatch: open-loop sends at a constant 40 requests/s; lag is sent minus scheduled.
- Deadlines: read_timeout against a server that falls silent, total_timeout against one that
  streams slowly, `duration`, and a `should_stop` that asks for a stop.
- Servers: a server process that exits during start, a tree that ignores SIGTERM, a busy port.

    python bench/timing_accuracy.py [--streams 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pytest_llmslo.config import LoadConfig  # noqa: E402
from pytest_llmslo.load import LoadResult, run_load  # noqa: E402
from pytest_llmslo.records import Prompt  # noqa: E402
from pytest_llmslo.servers import ManagedServer, PortInUseError, ServerStartError  # noqa: E402
from pytest_llmslo.testing.timing_server import (  # noqa: E402
    TimingServerProcess,
    serve_timing_server,
)
from tests.unit.test_servers import TREE_SCRIPT, ScriptServer, dummy_config  # noqa: E402

TTFT_MS = 200.0
GAP_MS = 20.0
TOKENS = 20
SCHEDULE_E2E_MS = TTFT_MS + GAP_MS * (TOKENS - 1)


@dataclass(frozen=True)
class Row:
    """One measured quantity; `target` None where the ideal is zero (a lag)."""

    what: str
    target_ms: float | None
    measured_ms: float

    def render(self) -> str:
        target = "-" if self.target_ms is None else f"{self.target_ms:,.1f}"
        ratio = "-" if not self.target_ms else f"{self.measured_ms / self.target_ms:.3f}"
        return f"{self.what:<58}{target:>10}{self.measured_ms:>12,.2f}{ratio:>8}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams for stamps")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each measurement")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    with pinned_instrument() as server:
        for round_ in range(1, args.rounds + 1):
            suffix = f" (round {round_})"
            rows += [
                Row(r.what + suffix, r.target_ms, r.measured_ms)
                for r in stamps(server, args.streams)
            ]
        rows += dispatch(server)
        rows += deadlines(server)
    rows += servers()
    header = f"{'what':<58}{'target ms':>10}{'measured ms':>12}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(row.render())
    return 0


@contextmanager
def pinned_instrument() -> Iterator[TimingServerProcess]:
    """The instrument on the last core and this process on the others, where there are two."""
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


def stamps(server: TimingServerProcess, streams: int) -> list[Row]:
    prompts = [Prompt(index=i, text=f"stream {i}") for i in range(streams)]
    config = LoadConfig(parallel=streams, requests=2 * streams, warmup=streams, max_tokens=TOKENS)
    result = run_load(server.endpoint(), prompts, config)
    log = {entry["id"]: entry for entry in server.fetch_log(clear=True)}
    lags: list[float] = []
    ttfts: list[float] = []
    firsts: list[float] = []
    e2es: list[float] = []
    for record in result.measured:
        if not record.ok or record.first_content_at is None or record.first_chunk_at is None:
            raise RuntimeError(f"request {record.index} failed: {record.error_message}")
        sent = log[record.extra["response_id"]]["content_ns"]
        lags.extend(seen - ns / 1e9 for seen, ns in zip(record.content_times, sent, strict=True))
        ttfts.append(record.first_content_at - record.sent_at)
        firsts.append(record.first_chunk_at - record.sent_at)
        e2es.append(record.end_at - record.sent_at)
    lag = np.array(lags) * 1e3
    return [
        Row(f"chunk stamp lag p50, {streams} streams", None, float(np.percentile(lag, 50))),
        Row(f"chunk stamp lag p99, {streams} streams", None, float(np.percentile(lag, 99))),
        Row("TTFT mean (first content)", TTFT_MS, float(np.mean(ttfts)) * 1e3),
        Row("first chunk mean (role chunk, sent at once)", None, float(np.mean(firsts)) * 1e3),
        Row("E2E mean", SCHEDULE_E2E_MS, float(np.mean(e2es)) * 1e3),
    ]


def dispatch(server: TimingServerProcess) -> list[Row]:
    config = LoadConfig(
        rate=40.0, arrival="constant", requests=40, max_tokens=None, extra_body=_quick()
    )
    result = run_load(server.endpoint(), _prompts(), config)
    server.fetch_log(clear=True)
    lags = np.array([r.dispatch_lag or 0.0 for r in result.records]) * 1e3
    return [
        Row("open-loop dispatch lag p50, 40 req/s", None, float(np.percentile(lags, 50))),
        Row("open-loop dispatch lag max, 40 req/s", None, float(lags.max())),
    ]


def deadlines(server: TimingServerProcess) -> list[Row]:
    rows: list[Row] = []
    silent = LoadConfig(
        parallel=2, requests=2, max_tokens=None, read_timeout=0.3, extra_body={"x_fault": "stall"}
    )
    rows.append(Row("read_timeout 0.3 s: request ended after", 300, _longest(server, silent)))
    slow = LoadConfig(
        parallel=2,
        requests=2,
        max_tokens=None,
        total_timeout=0.4,
        extra_body={"x_gap_ms": 100, "x_tokens": 50},
    )
    rows.append(Row("total_timeout 0.4 s: request ended after", 400, _longest(server, slow)))
    timed = LoadConfig(
        parallel=2, duration=0.5, max_tokens=None, extra_body={"x_ttft_ms": 100, "x_tokens": 5}
    )
    started = time.monotonic()
    result = run_load(server.endpoint(), _prompts(), timed)
    returned = time.monotonic() - started
    last_send = max(r.sent_at for r in result.measured) - result.window_start
    # each request takes about 180 ms: the run ends with the ones in flight at the deadline
    rows.append(Row("duration 0.5 s: last send after", 500, last_send * 1e3))
    rows.append(
        Row("duration 0.5 s: run returned after (+ requests in flight)", 500, returned * 1e3)
    )
    started = time.monotonic()

    def stop_after(seconds: float) -> Callable[[], str | None]:
        return lambda: "asked" if time.monotonic() - started > seconds else None

    busy = LoadConfig(parallel=3, requests=1000, max_tokens=None, extra_body={"x_ttft_ms": 150})
    run_load(server.endpoint(), _prompts(), busy, should_stop=stop_after(0.4))
    rows.append(Row("should_stop at 0.4 s: run returned after", 400, _since(started)))
    server.fetch_log(clear=True)
    return rows


def _longest(server: TimingServerProcess, config: LoadConfig) -> float:
    result: LoadResult = run_load(server.endpoint(), _prompts(), config)
    server.fetch_log(clear=True)
    return max(r.end_at - r.sent_at for r in result.records) * 1e3


def servers() -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        crashy = ScriptServer(
            dummy_config(startup_timeout=60), log_dir=log_dir, script="import sys; sys.exit(3)"
        )
        started = time.monotonic()
        _expect_refusal(ServerStartError, crashy)
        # the ideal is the interpreter's start-up, not the 60 s startup_timeout
        rows.append(Row("a server exiting during start: noticed after", None, _since(started)))
        # the tree of the unit tests, its root and one child ignoring SIGTERM: only the SIGKILL
        # after stop_timeout stops them
        stubborn = ScriptServer(
            dummy_config(stop_timeout=0.5), log_dir=log_dir, script=TREE_SCRIPT, argv=("stubborn",)
        )
        stubborn.start()
        started = time.monotonic()
        stubborn.stop()
        rows.append(Row("stop_timeout 0.5 s, SIGTERM ignored: stop took", 500, _since(started)))
        with _listening() as port:
            busy = ScriptServer(dummy_config(port=port), log_dir=log_dir, script="")
            started = time.monotonic()
            _expect_refusal(PortInUseError, busy)
            rows.append(Row("a busy port: refused after", None, _since(started)))
    return rows


def _expect_refusal(error: type[ServerStartError], server: ManagedServer) -> None:
    try:
        server.start()
    except error:
        return
    server.stop()
    raise RuntimeError(f"{server.config.name} started; it should have failed with {error.__name__}")


@contextmanager
def _listening() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _prompts() -> list[Prompt]:
    return [Prompt(index=i, text=f"question {i}") for i in range(3)]


def _quick() -> dict[str, object]:
    return {"x_ttft_ms": 5, "x_gap_ms": 1, "x_tokens": 3}


def _since(started: float) -> float:
    return (time.monotonic() - started) * 1e3


if __name__ == "__main__":
    sys.exit(main())
