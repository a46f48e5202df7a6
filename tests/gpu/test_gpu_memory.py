"""GPU memory objectives against real vLLM on a real GPU (skipped where no GPU is visible)."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.gpu

SPEC = """
servers:
  vllm:
    backend: vllm
    model: builtin:tiny
    args: {dtype: bfloat16, gpu_memory_utilization: 0.2, enforce_eager: true, max_model_len: 4096}
datasets:
  rand: {format: random, input_tokens: 64, count: 20}
scenarios:
  small:
    dataset: rand
    load: {parallel: 4, requests: 20, max_tokens: 32, ignore_eos: true}
    slo:
      failure_rate: "<= 0%"
      gpu_memory_peak: "<= 80 GiB"
      gpu_memory_load_peak: ">= 1 MiB"
      kv_cache_usage_max: "<= 100%"
"""


def test_vllm_gpu_memory_is_measured_on_its_engine_process(pytester: pytest.Pytester) -> None:
    spec = pytester.makefile(".yaml", gpu=SPEC)
    # where the package is not installed (PYTHONPATH only), load the plugin by module name
    installed = entry_points(group="pytest11", name="llmslo")
    load = [] if installed else ["-p", "pytest_llmslo.plugin"]
    result = pytester.runpytest_subprocess(*load, "--slo", str(spec), timeout=600)
    result.assert_outcomes(passed=4)
    data = json.loads((pytester.path / "llmslo-results" / "results.json").read_text())
    telemetry = data["scenarios"][0]["telemetry"]
    assert telemetry["gpu_source"] in ("nvml", "nvidia-smi")
    gpu = telemetry["gpu"][0]
    # vLLM's engine child holds the memory: a tree-wide reading sees it, the API server alone not
    assert gpu["peak"] > 2**20 and gpu["total_bytes"] > gpu["peak"]
    assert "GPU" in (pytester.path / "llmslo-results" / "report.md").read_text()


def test_report_header_names_the_gpu() -> None:
    from pytest_llmslo.environment import gpu_names

    names = gpu_names()
    assert names and all("GiB" in n for n in names)
