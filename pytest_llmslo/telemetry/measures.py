"""Telemetry reports -> objective values and report lines (memory and server-metric objectives)."""

from __future__ import annotations

import math
from collections.abc import Callable

from pytest_llmslo.telemetry.sampler import GpuMemory, TelemetryReport

NAN = float("nan")
Value = tuple[float, int | None, str]  # value (NaN: not measurable), sample size, reason

_GPU: dict[str, Callable[[GpuMemory], int | None]] = {
    "gpu_memory_peak": lambda g: g.peak,
    "gpu_memory_startup_peak": lambda g: g.startup_peak,
    "gpu_memory_load_peak": lambda g: g.load_peak,
    "gpu_memory_steady": lambda g: g.steady,
}
# gauges: a max or mean over in-window scrapes; counters: a delta over the measured window
_GAUGES = (
    "kv_cache_usage_max",
    "kv_cache_usage_mean",
    "requests_running_max",
    "requests_waiting_max",
)
_SERVER = (*_GAUGES, "preemptions")
TELEMETRY_METRICS = (*_GPU, "host_memory_peak", *_SERVER)


def measure(report: TelemetryReport, metric: str) -> Value | None:
    """The value of a memory or server metric, or None when `metric` is not one of those."""
    if metric in _GPU:
        if not report.gpu:
            return NAN, None, f"not measurable: {report.gpu_unavailable_reason}"
        # the server's whole tree over every GPU it used (tensor parallelism spreads it)
        parts = [_GPU[metric](g) for g in report.gpu]
        if any(p is None for p in parts):
            return NAN, report.samples, f"no GPU sample fell in that phase ({metric})"
        return float(sum(p for p in parts if p is not None)), report.samples, ""
    if metric == "host_memory_peak":
        if report.host_rss_peak is None:
            return NAN, None, f"not measurable: {report.host_rss_reason}"
        return float(report.host_rss_peak), report.samples, ""
    if metric in _SERVER:
        sm = report.server_metrics
        if sm is None:
            return NAN, None, f"not measurable: /metrics {report.server_metrics_reason}"
        if metric in _GAUGES and sm.gauge_reason is not None:
            return NAN, sm.scrapes, f"not measurable: {sm.gauge_reason}"
        value = getattr(sm, metric)
        if value is None:
            return NAN, sm.scrapes, f"the server's /metrics has no series for {metric}"
        return float(value), sm.scrapes, ""
    return None


def _unavailable(reason: str | None) -> str:
    # "not applicable" (an external server's processes are not ours) is not a failed measurement
    if reason and reason.startswith("not applicable"):
        return reason
    return f"not measurable ({reason})"


def _gib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**30:.2f} GiB"


def markdown_lines(report: TelemetryReport) -> list[str]:
    """Memory and server-metric lines for a scenario's section of the report."""
    out: list[str] = []
    if report.gpu:
        out += [
            "| GPU | total | start-up peak | load peak | steady | peak |",
            "|---|---|---|---|---|---|",
        ]
        for g in report.gpu:
            out.append(
                f"| {g.index}: {g.name} | {_gib(g.total_bytes)} | {_gib(g.startup_peak)} | "
                f"{_gib(g.load_peak)} | {_gib(g.steady)} | {_gib(g.peak)} |"
            )
        out.append(f"GPU memory of the server's process tree, via {report.gpu_source}.")
    else:
        out.append(f"- GPU memory: {_unavailable(report.gpu_unavailable_reason)}")
    if report.host_rss_peak is not None:
        out.append(
            f"- host memory (RSS of the server's process tree): peak {_gib(report.host_rss_peak)}, "
            f"start-up {_gib(report.host_rss_startup_peak)}, load {_gib(report.host_rss_load_peak)}"
        )
    else:
        out.append(f"- host memory: {_unavailable(report.host_rss_reason)}")
    sm = report.server_metrics
    if sm is None:
        out.append(f"- server /metrics: {report.server_metrics_reason}")
    else:

        def num(v: float | None, pct: bool = False) -> str:
            if v is None or math.isnan(v):
                return "–"
            return f"{v:.1%}" if pct else f"{v:g}"

        out.append(
            f"- server /metrics ({sm.scrapes} in-window scrapes"
            + (f"; {sm.gauge_reason}" if sm.gauge_reason else "")
            + "): KV-cache usage max "
            f"{num(sm.kv_cache_usage_max, True)} (mean {num(sm.kv_cache_usage_mean, True)}), "
            f"running max {num(sm.requests_running_max)}, waiting max "
            f"{num(sm.requests_waiting_max)}, preemptions {num(sm.preemptions)}, "
            f"prompt tokens {num(sm.prompt_tokens)}, generation tokens {num(sm.generation_tokens)}"
        )
    return out
