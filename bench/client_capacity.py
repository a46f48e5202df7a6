"""Client capacity and timestamp lag: this engine against general HTTP clients, one core each.

Two measurements per client, each in its own subprocess pinned to one core, against the timing
instrument pinned to another:

- capacity: the instrument streams ``--tokens`` one-token chunks per answer with no delay, and
  the client ingests as many as it can (chunks per second, and per CPU-second of the client);
- lag: the instrument streams 20 tokens, the first 200 ms after the request and then 20 ms
  apart; lag is the client's stamp of each content chunk minus the instrument's
  ``monotonic_ns()`` just before it wrote that chunk (same clock), so it is the client's own
  delay in seeing bytes that have reached the machine.

Clients: ``ours`` (``run_load``), ``aiohttp`` and ``httpx`` (each a minimal read loop with this
engine's design: stamp every read with ``monotonic()`` as it arrives, decode after the answer
ended, with this engine's general SSE decoder, yielding to the loop as it does), and ``vllm``
(``vllm.benchmarks.serve``, capacity only; used when vLLM and ``tokenizers`` are installed).
Needs numpy, httpx and aiohttp besides the package itself:

    PYTHONPATH=. python bench/client_capacity.py [--streams 64 256] [--repeat 3]
        [--clients ours aiohttp httpx vllm] [--tokens 1000] [--modes capacity lag]

With ``--repeat N`` every cell shows the median of N runs and, in brackets, their range.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pytest_llmslo.config import LoadConfig  # noqa: E402
from pytest_llmslo.decode import Decoded, decode_stream  # noqa: E402
from pytest_llmslo.http_client import Exchange  # noqa: E402
from pytest_llmslo.load import request_body, run_load  # noqa: E402
from pytest_llmslo.records import Endpoint, Prompt  # noqa: E402
from pytest_llmslo.testing.timing_server import (  # noqa: E402
    DEFAULT_MODEL,
    TimingServerProcess,
    serve_timing_server,
)

MODEL = DEFAULT_MODEL  # the name the instrument serves
CLIENTS = ("ours", "aiohttp", "httpx", "vllm")
LABELS = {
    "ours": "pytest-llmslo engine",
    "aiohttp": "aiohttp, stamp-and-defer",
    "httpx": "httpx, stamp-and-defer",
    "vllm": "vllm.benchmarks.serve",
}
LAG_TTFT_MS, LAG_GAP_MS, LAG_TOKENS = 200.0, 20.0, 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, nargs="+", default=[64], help="concurrent streams")
    parser.add_argument("--tokens", type=int, default=1000, help="capacity: chunks per answer")
    parser.add_argument(
        "--requests", type=int, help="capacity: measured requests (default: 4 x streams)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each client and mode")
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, help="default: all installed")
    parser.add_argument(
        "--modes", nargs="+", choices=("capacity", "lag"), default=["capacity", "lag"]
    )
    parser.add_argument("--json", help="also write every run to this file")
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("capacity", "lag"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        os.sched_setaffinity(0, {args.cpu})
        (args.streams,) = args.streams  # a worker runs one stream count
        result = WORKERS[args.worker](args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    return _compare(args)


# -- the parent: servers, workers, the table -------------------------------------------------


@dataclass(frozen=True)
class Run:
    client: str
    streams: int
    mode: str
    values: dict[str, float]


def _compare(args: argparse.Namespace) -> int:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print("needs two CPU cores: one for the client, one for the server", file=sys.stderr)
        return 2
    client_cpu, server_cpu = cores[-2], cores[-1]  # the last ones: core 0 takes most interrupts
    clients = list(args.clients or _installed())
    print(
        f"clients on core {client_cpu}, the instrument on core {server_cpu} "
        f"({len(cores)} cores usable); {args.repeat} run(s) each; Python "
        f"{sys.version.split()[0]}, " + ", ".join(_versions(clients)),
        flush=True,
    )
    tokenizer = ""
    if "vllm" in clients:
        from pytest_llmslo.testing.tiny_model import build_tiny_model

        tokenizer = str(build_tiny_model())  # vLLM's random dataset makes prompts with it
    runs: list[Run] = []
    for streams in args.streams:
        requests = args.requests or 4 * streams
        if "capacity" in args.modes:
            with serve_timing_server(
                ttft_ms=0, gap_ms=0, tokens=args.tokens, cpu=server_cpu
            ) as server:
                for _ in range(args.repeat):
                    for client in clients:
                        worker = _Worker(client, "capacity", server, client_cpu, streams)
                        extra = ["--tokens", str(args.tokens), "--requests", str(requests)]
                        if client == "vllm":
                            extra += ["--tokenizer", tokenizer]
                        result = worker.run(extra)
                        server.fetch_log(clear=True)
                        runs.append(Run(client, streams, "capacity", result))
        if "lag" in args.modes:
            with serve_timing_server(
                ttft_ms=LAG_TTFT_MS, gap_ms=LAG_GAP_MS, tokens=LAG_TOKENS, cpu=server_cpu
            ) as server:
                for _ in range(args.repeat):
                    for client in clients:
                        if client == "vllm":
                            continue  # its records hold no per-chunk arrival times
                        server.fetch_log(clear=True)
                        result = _Worker(client, "lag", server, client_cpu, streams).run([])
                        runs.append(Run(client, streams, "lag", _lag(result, server)))
    print()
    print(_table(runs, clients, args))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    return 0


def _versions(clients: Sequence[str]) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in clients:
        package = {"ours": "pytest-llmslo", "vllm": "vllm"}.get(name, name)
        try:
            out.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            out.append(f"{package} (from the source tree)" if name == "ours" else package)
    return out


def _installed() -> list[str]:
    clients = ["ours"]
    clients += [name for name in ("aiohttp", "httpx") if importlib.util.find_spec(name)]
    if importlib.util.find_spec("vllm") and importlib.util.find_spec("tokenizers"):
        clients.append("vllm")
    return clients


@dataclass(frozen=True)
class _Worker:
    client: str
    mode: str
    server: TimingServerProcess
    cpu: int
    streams: int

    def run(self, extra: list[str]) -> dict[str, Any]:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            self.client,
            "--mode",
            self.mode,
            "--base-url",
            self.server.base_url,
            "--server-pid",
            str(self.server.pid),
            "--cpu",
            str(self.cpu),
            "--streams",
            str(self.streams),
            *extra,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(
                f"{self.client} ({self.mode}) failed (exit {done.returncode}):\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
        shown = (
            f"{result['chunks_per_s']:,.0f} chunks/s"
            if self.mode == "capacity"
            else f"{len(result['requests'])} requests"
        )
        print(f"{self.client} {self.mode} at {self.streams} streams: {shown}", flush=True)
        return result


def _lag(result: dict[str, Any], server: TimingServerProcess) -> dict[str, float]:
    import numpy as np

    log = {entry["id"]: entry for entry in server.fetch_log(clear=True)}
    lags: list[float] = []
    ttfts: list[float] = []
    arrivals: list[float] = []
    for request in result["requests"]:
        entry = log[request["id"]]
        sent_ns = entry["content_ns"]
        arrivals.append(entry["received_ns"] / 1e9 - request["sent"])
        if len(request["times"]) != len(sent_ns):
            raise RuntimeError(f"{len(request['times'])} chunks seen, {len(sent_ns)} written")
        lags.extend(seen - ns / 1e9 for seen, ns in zip(request["times"], sent_ns, strict=True))
        ttfts.append(request["times"][0] - request["sent"])
    lag_ms = np.array(lags) * 1e3
    if lag_ms.min() < 0:
        raise RuntimeError("a chunk was stamped before the server wrote it: clocks differ")
    return {
        "lag_p50_ms": float(np.percentile(lag_ms, 50)),
        "lag_p99_ms": float(np.percentile(lag_ms, 99)),
        "ttft_mean_ms": float(np.mean(ttfts) * 1e3),
        "to_server_mean_ms": float(np.mean(arrivals) * 1e3),
    }


_COLUMNS = (
    ("chunks/s", "capacity", "chunks_per_s", "{:,.0f}"),
    ("client core", "capacity", "client_busy", "{:.0%}"),
    ("chunks/CPU-s", "capacity", "chunks_per_cpu_s", "{:,.0f}"),
    ("server core", "capacity", "server_busy", "{:.0%}"),
    ("lag p50 ms", "lag", "lag_p50_ms", "{:.2f}"),
    ("lag p99 ms", "lag", "lag_p99_ms", "{:.2f}"),
    ("TTFT mean ms", "lag", "ttft_mean_ms", "{:.1f}"),
    # sent -> the instrument has read the request: a wave of requests sent together queues in
    # the single-threaded instrument, and TTFT includes that wait; lag does not
    ("to server ms", "lag", "to_server_mean_ms", "{:.1f}"),
)


def _table(runs: Sequence[Run], clients: Sequence[str], args: argparse.Namespace) -> str:
    lines = [
        f"capacity: {args.tokens} zero-delay chunks per answer; lag: {LAG_TOKENS} tokens, "
        f"first after {LAG_TTFT_MS:g} ms, then every {LAG_GAP_MS:g} ms"
        + (f"; median [range] of {args.repeat} runs" if args.repeat > 1 else ""),
        "",
        "| client | streams | " + " | ".join(c[0] for c in _COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(_COLUMNS),
    ]
    for streams in args.streams:
        for client in clients:
            cells = []
            for _, mode, key, fmt in _COLUMNS:
                values = [
                    r.values[key]
                    for r in runs
                    if (r.client, r.streams, r.mode) == (client, streams, mode)
                ]
                cells.append(_cell(values, fmt))
            lines.append(f"| {LABELS[client]} | {streams} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    middle = fmt.format(statistics.median(values))
    if len(values) == 1:
        return middle
    return f"{middle} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


# -- the workers: one client each, on one core -----------------------------------------------


def _capacity_result(
    chunks: int, seconds: float, cpu_seconds: float, server_cpu: float
) -> dict[str, Any]:
    return {
        "chunks": chunks,
        "seconds": seconds,
        "chunks_per_s": chunks / seconds,
        "cpu_seconds": cpu_seconds,
        "chunks_per_cpu_s": chunks / cpu_seconds,
        "client_busy": cpu_seconds / seconds,
        "server_busy": server_cpu / seconds,
    }


def _config(args: argparse.Namespace) -> LoadConfig:
    if args.mode == "capacity":
        return LoadConfig(
            parallel=args.streams,
            requests=args.requests,
            warmup=args.streams,
            max_tokens=args.tokens,
            read_timeout=120,
        )
    return LoadConfig(
        parallel=args.streams,
        requests=2 * args.streams,
        warmup=args.streams,
        max_tokens=LAG_TOKENS,
        read_timeout=120,
    )


def _prompts(streams: int) -> list[Prompt]:
    return [Prompt(index=i, text=f"stream {i}") for i in range(streams)]


def _ours(args: argparse.Namespace) -> dict[str, Any]:
    endpoint = Endpoint(base_url=args.base_url, model=MODEL, backend="external")
    prompts = _prompts(args.streams)
    config = _config(args)
    # warmup in a run of its own (as vLLM's client sends a test request); the measured run is
    # timed from its call to its return, so it includes opening connections and the decoding
    # the engine leaves until each answer has ended
    run_load(endpoint, prompts, replace(config, requests=args.streams, warmup=0))
    cpu_before = time.process_time()
    server_before = _cpu_seconds(args.server_pid)
    wall_before = time.monotonic()
    result = run_load(endpoint, prompts, replace(config, warmup=0))
    seconds = time.monotonic() - wall_before
    cpu = time.process_time() - cpu_before
    server_cpu = _cpu_seconds(args.server_pid) - server_before
    failed = [r for r in result.records if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, first: {failed[0].error_message}")
    if args.mode == "lag":
        return {
            "requests": [
                {"id": r.extra["response_id"], "sent": r.sent_at, "times": r.content_times}
                for r in result.records
            ]
        }
    if result.decoded_by != {"bulk": len(result.records)}:
        raise RuntimeError(f"the bulk decoder was not taken for every answer: {result.decoded_by}")
    chunks = sum(len(r.content_times) for r in result.records)
    return _capacity_result(chunks, seconds, cpu, server_cpu)


async def _decode_later(sent_at: float, pieces: list[bytes], times: list[float]) -> Decoded:
    """This engine's decoding of a finished answer, yielding to the loop as its parser does."""
    exchange = Exchange(asyncio.get_running_loop().create_future(), sent_at)
    exchange.feed(sent_at, b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
    for at, piece in zip(times, pieces, strict=True):
        exchange.feed(at, piece)
    steps = decode_stream(exchange, chat=True)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(Decoded, done.value)
        await asyncio.sleep(0)


async def _closed_loop(
    streams: int, count: int, one: Callable[[int], Awaitable[dict[str, Any]]]
) -> list[dict[str, Any]]:
    positions = iter(range(count))
    out: list[dict[str, Any]] = []

    async def user() -> None:
        for position in positions:
            out.append(await one(position))

    await asyncio.gather(*(user() for _ in range(streams)))
    return out


def _general(args: argparse.Namespace, client: str) -> dict[str, Any]:
    return asyncio.run(_general_async(args, client))


async def _general_async(args: argparse.Namespace, client: str) -> dict[str, Any]:
    endpoint = Endpoint(base_url=args.base_url, model=MODEL, backend="external")
    config = _config(args)
    prompts = _prompts(args.streams)
    bodies = [request_body(endpoint, p, config) for p in prompts]
    url = f"{args.base_url}/v1/chat/completions"
    headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
    expected = args.tokens if args.mode == "capacity" else LAG_TOKENS
    async with _Session(client, args.streams) as stream:

        async def one(position: int) -> dict[str, Any]:
            body = bodies[position % len(bodies)]
            pieces: list[bytes] = []
            times: list[float] = []
            sent = time.monotonic()
            await stream(url, body, headers, pieces, times)
            decoded = await _decode_later(sent, pieces, times)
            content = decoded.fields["content_times"]
            if decoded.error or len(content) != expected:
                raise RuntimeError(f"{len(content)} chunks of {expected}: {decoded.error}")
            return {"id": decoded.response_id, "sent": sent, "times": content}

        await _closed_loop(args.streams, args.streams, one)  # warmup, opens the connections
        measured = args.requests if args.mode == "capacity" else 2 * args.streams
        cpu_before = time.process_time()
        server_before = _cpu_seconds(args.server_pid)
        wall_before = time.monotonic()
        requests = await _closed_loop(args.streams, measured, one)
        seconds = time.monotonic() - wall_before
        cpu = time.process_time() - cpu_before
        server_cpu = _cpu_seconds(args.server_pid) - server_before
    if args.mode == "lag":
        return {"requests": requests}
    chunks = sum(len(r["times"]) for r in requests)
    return _capacity_result(chunks, seconds, cpu, server_cpu)


# sends one request and appends each read of its answer and the time it arrived
Stream = Callable[[str, dict[str, Any], dict[str, str], list[bytes], list[float]], Awaitable[None]]


class _Session:
    """One pooled client sized to the streams; calling it streams one answer, stamping reads."""

    def __init__(self, client: str, streams: int) -> None:
        self.client = client
        self.streams = streams
        self._close: Callable[[], Awaitable[None]] | None = None

    async def __aenter__(self) -> Stream:
        from time import monotonic

        if self.client == "aiohttp":
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.streams)
            timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
            session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False
            )
            self._close = session.close

            async def aiohttp_stream(
                url: str,
                body: dict[str, Any],
                headers: dict[str, str],
                pieces: list[bytes],
                times: list[float],
            ) -> None:
                async with session.post(url, json=body, headers=headers) as answer:
                    answer.raise_for_status()
                    async for data in answer.content.iter_any():
                        times.append(monotonic())
                        pieces.append(data)

            return aiohttp_stream

        import httpx

        limits = httpx.Limits(max_connections=self.streams, max_keepalive_connections=self.streams)
        client = httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(120.0, connect=30.0), trust_env=False
        )
        self._close = client.aclose

        async def httpx_stream(
            url: str,
            body: dict[str, Any],
            headers: dict[str, str],
            pieces: list[bytes],
            times: list[float],
        ) -> None:
            async with client.stream("POST", url, json=body, headers=headers) as answer:
                answer.raise_for_status()
                async for data in answer.aiter_raw():
                    times.append(monotonic())
                    pieces.append(data)

        return httpx_stream

    async def __aexit__(self, *exc: object) -> None:
        if self._close is not None:
            await self._close()


def _vllm(args: argparse.Namespace) -> dict[str, Any]:
    import vllm.benchmarks.serve as serve

    # CPU time is taken from the start of its first measured request to the end of its last,
    # leaving out the imports, the tokenizer, the prompt generation, its one test request
    # before the run and the statistics after it
    calls: list[tuple[float, float, float, float]] = []  # client and server CPU, start and end
    funcs = cast(Any, serve).ASYNC_REQUEST_FUNCS
    request = funcs["openai-chat"]

    async def timed_request(*a: Any, **kw: Any) -> Any:
        start = time.process_time()
        server_start = _cpu_seconds(args.server_pid)
        try:
            return await request(*a, **kw)
        finally:
            calls.append((start, time.process_time(), server_start, _cpu_seconds(args.server_pid)))

    funcs["openai-chat"] = timed_request
    with tempfile.TemporaryDirectory() as out:
        parser = argparse.ArgumentParser()
        cast(Any, serve).add_cli_args(parser)  # it wants its own parser subclass; any works
        vllm_args = parser.parse_args(
            [
                "--backend",
                "openai-chat",
                "--base-url",
                args.base_url,
                "--endpoint",
                "/v1/chat/completions",
                "--model",
                MODEL,
                "--tokenizer",
                args.tokenizer,
                "--dataset-name",
                "random",
                "--random-input-len",
                "16",
                "--random-output-len",
                str(args.tokens),
                "--num-prompts",
                str(args.requests),
                "--max-concurrency",
                str(args.streams),
                "--ignore-eos",
                "--disable-tqdm",
                "--save-result",
                "--result-dir",
                out,
                "--result-filename",
                "result.json",
            ]
        )
        serve.main(vllm_args)
        saved = json.loads((Path(out) / "result.json").read_text())
    completed = int(saved["completed"])
    if completed != args.requests:
        raise RuntimeError(f"vLLM's client completed {completed} of {args.requests} requests")
    chunks = int(saved["total_output_tokens"])  # the instrument sends one token per chunk
    measured = calls[1:]
    cpu = max(c[1] for c in measured) - min(c[0] for c in measured)
    server_cpu = max(c[3] for c in measured) - min(c[2] for c in measured)
    return _capacity_result(chunks, float(saved["duration"]), cpu, server_cpu)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "ours": _ours,
    "aiohttp": lambda args: _general(args, "aiohttp"),
    "httpx": lambda args: _general(args, "httpx"),
    "vllm": _vllm,
}


if __name__ == "__main__":
    sys.exit(main())
