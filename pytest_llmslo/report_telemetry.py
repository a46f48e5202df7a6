"""The telemetry part of a scenario's report section: GPU and host memory, server /metrics."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_llmslo.telemetry.analysis import TelemetryReport


def _unavailable(reason: str | None) -> str:
    # "not applicable" (an external server's processes are not ours) is not a failed measurement
    if reason and reason.startswith("not applicable"):
        return reason
    return f"not measurable ({reason})"


def _gib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**30:.2f} GiB"


def _total(parts: list[int | None]) -> int | None:
    # as the objectives sum it: a phase no GPU sample fell in on some GPU has no total
    return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)


def _num(v: float | None, pct: bool = False) -> str:
    if v is None or math.isnan(v):
        return "–"
    return f"{v:.1%}" if pct else f"{v:g}"


def telemetry_lines(report: TelemetryReport) -> list[str]:
    """Memory and server-metric lines (markdown) for a scenario's section of the report."""
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
        if len(report.gpu) > 1:
            # a server spread over several GPUs (one worker per GPU): the objectives bound the
            # total, and gpu_memory_peak_per_gpu the most-loaded GPU
            gpu = report.gpu
            out.append(
                f"| total ({len(gpu)} GPUs) | {_gib(sum(g.total_bytes for g in gpu))} | "
                f"{_gib(_total([g.startup_peak for g in gpu]))} | "
                f"{_gib(_total([g.load_peak for g in gpu]))} | "
                f"{_gib(_total([g.steady for g in gpu]))} | {_gib(report.gpu_peak_total)} |"
            )
            out.append(
                f"GPU memory of the server's process tree, via {report.gpu_source}; "
                f"its most-loaded GPU peaked at {_gib(report.gpu_peak_largest)}."
            )
        else:
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
        out.append(
            f"- server /metrics ({sm.scrapes} in-window scrapes"
            + (f"; {sm.gauge_reason}" if sm.gauge_reason else "")
            + "): KV-cache usage max "
            f"{_num(sm.kv_cache_usage_max, True)} (mean {_num(sm.kv_cache_usage_mean, True)}), "
            f"running max {_num(sm.requests_running_max)}, waiting max "
            f"{_num(sm.requests_waiting_max)}, preemptions {_num(sm.preemptions)}, "
            f"prompt tokens {_num(sm.prompt_tokens)}, "
            f"generation tokens {_num(sm.generation_tokens)}"
        )
    return out
