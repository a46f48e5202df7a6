"""Telemetry placement: the engine's chunk stamps with a server's telemetry in the client process
and in a process of its own.

A server the run starts is watched by telemetry (host RSS and NVML every 0.1 s, its process tree
once a second, /metrics during the load). `runner.TELEMETRY_PROCESS` says where that runs:
`False` as threads in the client process, beside the event loop that stamps every chunk (where
they compete with it for the GIL); `True` in a spawned child process (where they compete for a
core only). This bench runs the same load in both placements, alternately, each on a fresh server:

- the server: the timing instrument started as the plugin starts vLLM (a `ServerFactory`, its
  own process group, log file, readiness check, telemetry from before its start), streaming
  20 content chunks per request, the first 200 ms after the request arrived, then 20 ms apart.
  With `--metrics-file` the instrument answers /metrics with the recorded vLLM page of the unit
  tests (27 KB), so every scrape is fetched and parsed as a vLLM one is;
- the load: `run_workload` with `--streams` closed-loop users (64), one warmup request each,
  then enough requests for about `--seconds` (10) of load;
- the measure: the chunk-stamp lag (the engine's stamp of each content chunk minus the
  instrument's `monotonic_ns()` just before it wrote it, from the instrument's `/log`), its
  p50 / p99 / p99.9, and the share of chunks stamped more than 5 ms late; the client's loop lag
  p99 and its CPU (`client_cpu`: the client process's CPU seconds per second of the measured
  phase, all its threads, so in-process telemetry counts there).

Nothing is pinned: the client, the instrument and the telemetry process share the cores as they
do under pytest. The table gives the median [min-max] over the repeats of each figure; the
load average before and after says how busy the machine was.

    python bench/telemetry_placement.py [--repeat 5] [--streams 64] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for folder in (ROOT, BENCH):  # the package, and the sibling bench it reuses
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from timing_accuracy import GAP_MS, SCHEDULE_E2E_MS, TOKENS, TTFT_MS  # noqa: E402

from pytest_llmslo import __version__, runner  # noqa: E402
from pytest_llmslo.environment import collect_run_info  # noqa: E402
from pytest_llmslo.handtests import LoadRun, ServerFactory, run_workload  # noqa: E402
from pytest_llmslo.records import Endpoint, Prompt  # noqa: E402
from pytest_llmslo.servers import process  # noqa: E402
from pytest_llmslo.servers.vllm import VLLMServer  # noqa: E402
from pytest_llmslo.telemetry.process import TelemetryProcess  # noqa: E402

# `runner.TELEMETRY_PROCESS` for each placement, in the table's order
PLACEMENTS = {"in-process": False, "own process": True}
LATE_S = 0.005  # a chunk stamped later than this after it was written is "late-delivered"
PERCENTILES = (50.0, 99.0, 99.9)
METRICS_PAGE = ROOT / "tests" / "unit" / "data" / "vllm_metrics.txt"
LOG_WAIT_S = 5.0  # a request is logged just after its last bytes: the last ones may lag a read


@dataclass(frozen=True)
class Figures:
    """One run's measures; times in ms, shares in percent."""

    lag_ms: tuple[float, ...]  # at PERCENTILES
    late_pct: float
    loop_lag_p99_ms: float
    client_cpu_pct: float
    chunks: int
    telemetry_samples: int
    metrics_scrapes: int


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each placement")
    parser.add_argument("--streams", type=int, default=64, help="closed-loop users")
    parser.add_argument("--seconds", type=float, default=10.0, help="about how long each load")
    args = parser.parse_args(argv)
    requests = round(args.seconds * args.streams / (SCHEDULE_E2E_MS / 1e3))
    print(f"{collect_run_info([], __version__).hardware}; {_load_average()}", flush=True)
    started = time.monotonic()
    runs: dict[str, list[Figures]] = {placement: [] for placement in PLACEMENTS}
    with managed_instrument(), tempfile.TemporaryDirectory(prefix="telemetry-placement-") as tmp:
        for repeat in range(args.repeat):
            # alternate which goes first, so that a drift of the machine falls on both alike
            order = list(PLACEMENTS) if repeat % 2 == 0 else list(PLACEMENTS)[::-1]
            for placement in order:
                log_dir = Path(tmp) / f"{repeat}-{placement.replace(' ', '-')}"
                figures = one_run(placement, args.streams, requests, log_dir)
                runs[placement].append(figures)
                print(f"  repeat {repeat + 1}, {placement}: {_brief(figures)}", flush=True)
    print()
    print(
        f"{args.streams} streams, {requests} measured requests x {TOKENS} chunks per run "
        f"(TTFT {TTFT_MS:g} ms, then {GAP_MS:g} ms apart); {args.repeat} runs of each "
        f"placement, alternating; median [min-max]"
    )
    print()
    print("\n".join(table(runs)))
    print(f"\ntotal time {time.monotonic() - started:.0f} s; at the end, {_load_average()}")
    return 0


# -- the server ------------------------------------------------------------------------------


def _instrument_command(self: VLLMServer, port: int) -> list[str]:
    """The instrument, answering /metrics with a recorded vLLM page as vLLM would."""
    return [
        sys.executable,
        "-m",
        "pytest_llmslo.testing.timing_server",
        "--port",
        str(port),
        "--ttft-ms",
        str(TTFT_MS),
        "--gap-ms",
        str(GAP_MS),
        "--tokens",
        str(TOKENS),
        "--metrics-file",
        str(METRICS_PAGE),
    ]


@contextmanager
def managed_instrument() -> Iterator[None]:
    """`vllm` servers started by a ServerFactory are the instrument, started as vLLM would be
    (as tests/unit/test_handtests.py does), while inside."""
    saved_command = VLLMServer.command
    # the name servers/process.py imported from base.py and checks before a start
    saved_check = getattr(process, "missing_modules")  # noqa: B009
    VLLMServer.command = _instrument_command  # type: ignore[method-assign]
    setattr(process, "missing_modules", _nothing_missing)  # noqa: B010
    try:
        yield
    finally:
        VLLMServer.command = saved_command  # type: ignore[method-assign]
        setattr(process, "missing_modules", saved_check)  # noqa: B010


def _nothing_missing(modules: Any) -> list[str]:
    return []  # the instrument needs no vLLM


# -- one run ---------------------------------------------------------------------------------


def one_run(placement: str, streams: int, requests: int, log_dir: Path) -> Figures:
    """A fresh managed server with telemetry in `placement`, one load on it, measured."""
    own_process = PLACEMENTS[placement]
    saved = runner.TELEMETRY_PROCESS
    runner.TELEMETRY_PROCESS = own_process  # read when the factory makes the MonitoredServer
    factory = ServerFactory(log_dir)
    try:
        endpoint = factory(backend="vllm", model="timing-model")
        monitored = factory.monitored(endpoint)
        if monitored is None or isinstance(monitored.telemetry, TelemetryProcess) != own_process:
            raise RuntimeError(f"the server's telemetry is not in the placement asked: {placement}")
        prompts = [Prompt(index=i, text=f"stream {i}") for i in range(streams)]
        load = {"parallel": streams, "requests": requests, "warmup": streams, "max_tokens": TOKENS}
        run = run_workload(endpoint, prompts, load, servers=factory, name="telemetry-placement")
        return figures(run, _content_written(endpoint, run))
    finally:
        factory.close()
        runner.TELEMETRY_PROCESS = saved


def _content_written(endpoint: Endpoint, run: LoadRun) -> dict[str, list[int]]:
    """The instrument's `monotonic_ns()` before each content chunk, by response id, for every
    measured request."""
    wanted = {str(r.extra.get("response_id", "")) for r in run.records if not r.warmup}
    written: dict[str, list[int]] = {}
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        for entry in _request_log(endpoint.base_url):
            written[entry["id"]] = entry["content_ns"]
        missing = wanted - written.keys()
        if not missing:
            return written
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(missing)} measured requests are not in the instrument's log, "
                f"e.g. {sorted(missing)[:3]}"
            )
        time.sleep(0.2)


def _request_log(base_url: str) -> list[dict[str, Any]]:
    # directly, as the plugin connects: proxy variables are not used (pytest_llmslo.netpolicy)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{base_url}/log?clear=1", timeout=30) as answer:
        text = answer.read().decode()
    return [json.loads(line) for line in text.splitlines() if line]


def figures(run: LoadRun, written: dict[str, list[int]]) -> Figures:
    lags: list[float] = []
    for record in run.records:
        if record.warmup:
            continue
        if not record.ok:
            raise RuntimeError(f"request {record.index} failed: {record.error_message}")
        sent = written[str(record.extra["response_id"])]
        lags.extend(seen - ns / 1e9 for seen, ns in zip(record.content_times, sent, strict=True))
    lag = np.array(lags)
    client = run.result.client
    telemetry = run.result.telemetry
    metrics = telemetry.server_metrics if telemetry is not None else None
    return Figures(
        lag_ms=tuple(float(np.percentile(lag, p)) * 1e3 for p in PERCENTILES),
        late_pct=float(np.mean(lag > LATE_S)) * 100,
        loop_lag_p99_ms=client.loop_lag(99.0) * 1e3 if client is not None else float("nan"),
        client_cpu_pct=client.cpu_share * 100 if client is not None else float("nan"),
        chunks=len(lags),
        telemetry_samples=telemetry.samples if telemetry is not None else 0,
        metrics_scrapes=metrics.scrapes if metrics is not None else 0,
    )


# -- the table -------------------------------------------------------------------------------

ROWS: tuple[tuple[str, Callable[[Figures], float], str], ...] = (
    *(
        (f"chunk-stamp lag p{p:g} (ms)", (lambda f, i=i: f.lag_ms[i]), "{:.2f}")
        for i, p in enumerate(PERCENTILES)
    ),
    (f"chunks stamped > {LATE_S * 1e3:g} ms late (%)", lambda f: f.late_pct, "{:.2f}"),
    ("client loop lag p99 (ms)", lambda f: f.loop_lag_p99_ms, "{:.1f}"),
    ("client_cpu (% of a core)", lambda f: f.client_cpu_pct, "{:.0f}"),
    ("content chunks measured", lambda f: float(f.chunks), "{:,.0f}"),
    ("telemetry memory samples", lambda f: float(f.telemetry_samples), "{:,.0f}"),
    ("/metrics scrapes in the window", lambda f: float(f.metrics_scrapes), "{:,.0f}"),
)


def table(runs: dict[str, list[Figures]]) -> list[str]:
    """A markdown table: one row per measure, one column per placement."""
    lines = [
        "| measure | " + " | ".join(runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for label, value, fmt in ROWS:
        cells = [_cell([value(f) for f in figures], fmt) for figures in runs.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    middle = fmt.format(statistics.median(values))
    return f"{middle} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def _brief(f: Figures) -> str:
    return (
        f"lag p99 {f.lag_ms[1]:.2f} ms, late {f.late_pct:.2f}%, "
        f"loop lag p99 {f.loop_lag_p99_ms:.1f} ms, cpu {f.client_cpu_pct:.0f}%"
    )


def _load_average() -> str:
    # the cores are shared: how busy the machine was says how much of the noise is neighbours'
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min)"


if __name__ == "__main__":
    raise SystemExit(main())
