"""Client capacity: the most streamed chunks per second a client ingests on one CPU core.

Starts the timing instrument with zero delay pinned to one core, then runs our load engine and
vLLM's benchmark client (``vllm.benchmarks.serve``) in turn, each in a subprocess pinned to
another core, against the same server with the same streams, and prints them side by side.

    python bench/client_capacity.py [--streams 64] [--tokens 1000] [--requests 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pytest_llmslo.config import LoadConfig  # noqa: E402
from pytest_llmslo.load import run_load  # noqa: E402
from pytest_llmslo.records import Endpoint, Prompt  # noqa: E402
from pytest_llmslo.testing.timing_server import (  # noqa: E402
    TimingServerProcess,
    serve_timing_server,
)

MODEL = "timing-model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams")
    parser.add_argument("--tokens", type=int, default=1000, help="chunks per response")
    parser.add_argument("--requests", type=int, default=256, help="measured requests")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each client; best kept")
    parser.add_argument("--worker", choices=("ours", "vllm"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        os.sched_setaffinity(0, {args.cpu})
        result = _ours(args) if args.worker == "ours" else _vllm(args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    return _compare(args)


def _compare(args: argparse.Namespace) -> int:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print("needs two CPU cores: one for the client, one for the server", file=sys.stderr)
        return 2
    client_cpu, server_cpu = cores[0], cores[1]
    from pytest_llmslo.testing.tiny_model import build_tiny_model

    tokenizer = build_tiny_model()  # vLLM's random dataset needs a tokenizer to make prompts
    results: dict[str, list[dict[str, Any]]] = {"ours": [], "vllm": []}
    with serve_timing_server(ttft_ms=0, gap_ms=0, tokens=args.tokens, cpu=server_cpu) as server:
        for _ in range(args.rounds):
            for name in ("ours", "vllm"):
                result = _run_worker(name, args, server, client_cpu, str(tokenizer))
                results[name].append(result)
    best = {name: max(runs, key=lambda r: r["chunks_per_s"]) for name, runs in results.items()}
    print()
    print(
        f"{args.streams} streams x {args.tokens} chunks, {args.requests} requests; "
        f"client on core {client_cpu}, zero-delay server on core {server_cpu}; "
        f"best of {args.rounds} by chunks/s"
    )
    header = (
        f"{'client':<28}{'chunks/s':>10}{'client core':>13}{'chunks/CPU-s':>14}{'server core':>13}"
    )
    print(header)
    print("-" * len(header))
    labels = {"ours": "pytest-llmslo load engine", "vllm": "vllm.benchmarks.serve"}
    for name, label in labels.items():
        r = best[name]
        print(
            f"{label:<28}{r['chunks_per_s']:>10,.0f}{r['cpu_seconds'] / r['seconds']:>13.0%}"
            f"{r['chunks_per_cpu_s']:>14,.0f}{r['server_cpu_seconds'] / r['seconds']:>13.0%}"
        )
    wall_ratio = best["ours"]["chunks_per_s"] / best["vllm"]["chunks_per_s"]
    cpu_ratio = best["ours"]["chunks_per_cpu_s"] / best["vllm"]["chunks_per_cpu_s"]
    print(
        f"ratio (ours / vLLM's): {wall_ratio:.2f}x in chunks/s, {cpu_ratio:.2f}x in chunks per "
        "CPU-second (goal: >= 2x)"
    )
    print("all runs: " + json.dumps(results))
    return 0


def _run_worker(
    name: str, args: argparse.Namespace, server: TimingServerProcess, cpu: int, tokenizer: str
) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--base-url",
        server.base_url,
        "--server-pid",
        str(server.pid),
        "--cpu",
        str(cpu),
        "--streams",
        str(args.streams),
        "--tokens",
        str(args.tokens),
        "--requests",
        str(args.requests),
        "--tokenizer",
        tokenizer,
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    wall = time.monotonic() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{name} client failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    result["wall_seconds"] = wall
    print(
        f"{name}: {result['chunks_per_s']:,.0f} chunks/s, "
        f"{result['chunks_per_cpu_s']:,.0f} chunks per CPU-second",
        flush=True,
    )
    return result


def _ours(args: argparse.Namespace) -> dict[str, Any]:
    endpoint = Endpoint(base_url=args.base_url, model=MODEL, backend="external")
    prompts = [Prompt(index=i, text=f"question {i}") for i in range(args.streams)]
    config = LoadConfig(
        parallel=args.streams, requests=args.requests, max_tokens=args.tokens, read_timeout=120
    )
    # a warmup run first, as vLLM's client sends a test request; the measured run is timed
    # from its call to its return, so it includes opening connections and the parsing that
    # the engine leaves until each response has ended
    run_load(endpoint, prompts, replace(config, requests=args.streams))
    cpu_before = time.process_time()
    server_before = _cpu_seconds(args.server_pid)
    wall_before = time.monotonic()
    result = run_load(endpoint, prompts, config)
    seconds = time.monotonic() - wall_before
    cpu = time.process_time() - cpu_before
    server_cpu = _cpu_seconds(args.server_pid) - server_before
    failed = [r for r in result.records if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, first: {failed[0].error_message}")
    chunks = sum(len(r.content_times) for r in result.records)
    return _result(chunks, seconds, cpu, server_cpu)


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
    return _result(chunks, float(saved["duration"]), cpu, server_cpu)


def _result(chunks: int, seconds: float, cpu_seconds: float, server_cpu: float) -> dict[str, Any]:
    return {
        "server_cpu_seconds": server_cpu,
        "chunks": chunks,
        "seconds": seconds,
        "chunks_per_s": chunks / seconds,
        "cpu_seconds": cpu_seconds,
        "chunks_per_cpu_s": chunks / cpu_seconds,
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
