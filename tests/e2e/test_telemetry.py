"""Telemetry against a real vLLM-CPU server: /metrics deltas, KV-cache usage, process-tree RSS."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from pytest_llmslo.records import Endpoint
from pytest_llmslo.servers import Server
from pytest_llmslo.telemetry import Telemetry, TelemetryReport, tree_rss
from pytest_llmslo.telemetry.process import TelemetryProcess

REQUESTS = 6
MAX_TOKENS = 32


def stream_chat(endpoint: Endpoint, index: int) -> dict[str, int]:
    """One streaming chat completion; returns the server's usage block."""
    body = {
        "model": endpoint.model,
        "messages": [{"role": "user", "content": f"question {index}: what is a token?"}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage: dict[str, int] = {}
    with (
        httpx.Client(base_url=endpoint.base_url, timeout=60.0) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk: dict[str, Any] = json.loads(line[len("data: ") :])
                usage = chunk.get("usage") or usage
    return usage


def measure(
    endpoint: Endpoint,
    pids: Callable[[], list[int]],
    kind: type[Telemetry] | type[TelemetryProcess],
) -> tuple[TelemetryReport, int, int]:
    """Load the server under telemetry; returns the report and the usage totals it answered."""
    telemetry = kind(pids, metrics_url=f"{endpoint.base_url}/metrics", interval_s=0.1)
    telemetry.start()
    try:
        telemetry.mark_load_start()
        # warmup: in the window's memory figures, never in its /metrics counters
        stream_chat(endpoint, -1)
        telemetry.mark_measured_start()
        with ThreadPoolExecutor(max_workers=3) as pool:
            usages = list(pool.map(lambda i: stream_chat(endpoint, i), range(REQUESTS)))
        telemetry.mark_load_end()
        idle_until = telemetry.samples + 3  # a few idle samples for the steady level
        while telemetry.samples < idle_until:
            time.sleep(0.05)
    finally:
        report = telemetry.stop()
    prompt = sum(u["prompt_tokens"] for u in usages)
    generated = sum(u["completion_tokens"] for u in usages)
    return report, prompt, generated


@pytest.mark.e2e
@pytest.mark.parametrize("kind", [Telemetry, TelemetryProcess], ids=["in-process", "own-process"])
def test_metrics_and_memory_of_a_real_vllm_server(
    vllm_server: Server, kind: type[Telemetry] | type[TelemetryProcess]
) -> None:
    endpoint = vllm_server.endpoint
    assert endpoint is not None
    assert endpoint.has_metrics
    report, prompt_tokens, generated_tokens = measure(endpoint, vllm_server.pids, kind)

    metrics = report.server_metrics
    assert metrics is not None, report.server_metrics_reason
    assert report.server_metrics_reason is None
    assert metrics.scrape_errors == 0
    # counters moved by exactly what the server answered in `usage` to the measured requests
    assert metrics.generation_tokens == generated_tokens > 0
    assert metrics.prompt_tokens == prompt_tokens > 0
    assert metrics.preemptions == 0
    assert metrics.kv_cache_usage_max is not None
    assert 0.0 <= metrics.kv_cache_usage_max <= 1.0
    assert metrics.kv_cache_usage_mean is not None
    assert metrics.requests_running_max is not None and metrics.requests_running_max >= 0
    assert "vllm:kv_cache_usage_perc" in metrics.raw_last

    # vLLM's engine runs in a child process: the tree holds more than the API server alone
    assert endpoint.pid is not None
    root_rss = tree_rss([endpoint.pid])
    assert report.host_rss_peak is not None and root_rss is not None
    assert report.host_rss_peak > root_rss
    assert report.host_rss_load_peak is not None and report.host_rss_load_peak > 0
    assert report.host_rss_steady is not None and report.host_rss_steady > 0
    # no GPU on the CPU machines: a reason, never zeros
    if report.gpu_source is None:
        assert report.gpu == ()
        assert report.gpu_unavailable_reason
