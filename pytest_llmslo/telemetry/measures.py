"""Telemetry reports -> objective values: the memory and server-metric metrics of the catalogue.

Numbers only: the report renders telemetry (`report_telemetry.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pytest_llmslo.catalogue import BY_NAME, Producer, names
from pytest_llmslo.telemetry.analysis import GpuMemory, TelemetryReport

NAN = float("nan")
Value = tuple[float, int | None, str]  # value (NaN: not measurable), sample size, reason

# How one figure per GPU becomes the metric: the server's whole tree over every GPU it used
# (tensor parallelism spreads it, one worker per GPU), or its most-loaded GPU (what must fit on
# one device).
TOTAL: Callable[[Iterable[int]], int] = sum
LARGEST: Callable[[Iterable[int]], int] = max

# One function per telemetry metric of the catalogue (a test holds the two in step): the figure
# read from each GPU, and how the GPUs combine.
GPU: dict[str, tuple[Callable[[GpuMemory], int | None], Callable[[Iterable[int]], int]]] = {
    "gpu_memory_peak": (lambda g: g.peak, TOTAL),
    "gpu_memory_startup_peak": (lambda g: g.startup_peak, TOTAL),
    "gpu_memory_load_peak": (lambda g: g.load_peak, TOTAL),
    "gpu_memory_steady": (lambda g: g.steady, TOTAL),
    "gpu_memory_peak_per_gpu": (lambda g: g.peak, LARGEST),
}
HOST: dict[str, Callable[[TelemetryReport], int | None]] = {
    "host_memory_peak": lambda t: t.host_rss_peak,
}
# /metrics series are fields of ServerMetrics named as the metric: gauges are a max or mean over
# in-window scrapes, counters a delta over the measured window
SERVER = names(producer=Producer.SERVER_METRICS)
TELEMETRY_METRICS = (*names(producer=Producer.TELEMETRY), *SERVER)


def measure(report: TelemetryReport, metric: str) -> Value | None:
    """The value of a memory or server metric, or None when `metric` is not one of those."""
    if metric in GPU:
        if not report.gpu:
            return NAN, None, f"{report.gpu_unavailable_reason}"
        figure, combine = GPU[metric]
        parts = [figure(g) for g in report.gpu]
        if any(p is None for p in parts):
            return NAN, report.samples, f"no GPU sample fell in that phase ({metric})"
        return float(combine(p for p in parts if p is not None)), report.samples, ""
    if metric in HOST:
        value = HOST[metric](report)
        if value is None:
            return NAN, None, f"{report.host_rss_reason}"
        return float(value), report.samples, ""
    if metric in SERVER:
        sm = report.server_metrics
        if sm is None:
            return NAN, None, f"/metrics {report.server_metrics_reason}"
        if BY_NAME[metric].gauge and sm.gauge_reason is not None:
            return NAN, sm.scrapes, f"{sm.gauge_reason}"
        value = getattr(sm, metric)
        if value is None:
            return NAN, sm.scrapes, f"the server's /metrics has no series for {metric}"
        return float(value), sm.scrapes, ""
    return None
