"""The telemetry lines of a scenario's report section, rendered from the numbers telemetry gives."""

from __future__ import annotations

import dataclasses
from typing import Any

from pytest_llmslo.report_telemetry import telemetry_lines
from pytest_llmslo.telemetry.analysis import GpuMemory, ServerMetrics, TelemetryReport

GIB = 2**30


def report(**changes: Any) -> TelemetryReport:
    base = TelemetryReport(
        gpu=(GpuMemory(0, "H200", 141 * GIB, 10 * GIB, 12 * GIB, 11 * GIB, 12 * GIB),),
        gpu_unavailable_reason=None,
        gpu_source="nvml",
        host_rss_peak=2 * GIB,
        host_rss_startup_peak=GIB,
        host_rss_load_peak=2 * GIB,
        server_metrics=ServerMetrics(
            kv_cache_usage_max=0.5,
            kv_cache_usage_mean=0.25,
            requests_running_max=4.0,
            requests_waiting_max=None,
            preemptions=0.0,
            prompt_tokens=32.0,
            generation_tokens=20.0,
            raw_first={},
            raw_last={},
            scrapes=5,
        ),
        server_metrics_reason=None,
        samples=40,
        interval_s=0.1,
    )
    return dataclasses.replace(base, **changes)


def test_memory_and_server_metrics_are_shown_with_their_units() -> None:
    lines = telemetry_lines(report())
    assert lines[:3] == [
        "| GPU | total | start-up peak | load peak | steady | peak |",
        "|---|---|---|---|---|---|",
        "| 0: H200 | 141.00 GiB | 10.00 GiB | 12.00 GiB | 11.00 GiB | 12.00 GiB |",
    ]
    assert "GPU memory of the server's process tree, via nvml." in lines
    assert (
        "- host memory (RSS of the server's process tree): peak 2.00 GiB, start-up 1.00 GiB, "
        "load 2.00 GiB" in lines
    )
    assert lines[-1] == (
        "- server /metrics (5 in-window scrapes): KV-cache usage max 50.0% (mean 25.0%), "
        "running max 4, waiting max –, preemptions 0, prompt tokens 32, generation tokens 20"
    )


def test_what_was_not_measured_says_why_and_an_external_server_is_not_applicable() -> None:
    lines = telemetry_lines(
        report(
            gpu=(),
            gpu_unavailable_reason="no NVIDIA GPU",
            gpu_source=None,
            host_rss_peak=None,
            host_rss_reason="not applicable: external server, not started by this run",
            server_metrics=None,
            server_metrics_reason="not served (HTTP 404)",
        )
    )
    assert lines == [
        "- GPU memory: not measurable (no NVIDIA GPU)",
        "- host memory: not applicable: external server, not started by this run",
        "- server /metrics: not served (HTTP 404)",
    ]


def test_too_few_scrapes_for_a_gauge_are_named_in_the_metrics_line() -> None:
    base = report()
    assert base.server_metrics is not None
    few = dataclasses.replace(base.server_metrics, scrapes=2, gauge_reason="2 scrapes")
    line = telemetry_lines(report(server_metrics=few))[-1]
    assert line.startswith("- server /metrics (2 in-window scrapes; 2 scrapes): KV-cache")


def test_a_server_on_several_gpus_shows_a_row_per_gpu_and_the_total() -> None:
    tensor_parallel = (
        GpuMemory(0, "H200", 141 * GIB, 10 * GIB, 30 * GIB, 20 * GIB, 30 * GIB),
        GpuMemory(1, "H200", 141 * GIB, 8 * GIB, 28 * GIB, None, 29 * GIB),
    )
    lines = telemetry_lines(report(gpu=tensor_parallel))
    assert lines[2:6] == [
        "| 0: H200 | 141.00 GiB | 10.00 GiB | 30.00 GiB | 20.00 GiB | 30.00 GiB |",
        "| 1: H200 | 141.00 GiB | 8.00 GiB | 28.00 GiB | – | 29.00 GiB |",
        # a phase one GPU has no sample of has no total, as its objective is not measurable
        "| total (2 GPUs) | 282.00 GiB | 18.00 GiB | 58.00 GiB | – | 59.00 GiB |",
        "GPU memory of the server's process tree, via nvml; "
        "its most-loaded GPU peaked at 30.00 GiB.",
    ]
