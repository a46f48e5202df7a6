"""Telemetry figures from plain data: phase peaks, window reports, /metrics gauges and deltas.

Everything here is a pure function of what the sampler collected (``Samples``): no threads,
clocks or I/O, so each figure can be checked on synthetic series. ``sampler.py`` owns the
threads that collect the data and calls these to report it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pytest_llmslo.telemetry import prometheus as prom
from pytest_llmslo.telemetry.gpu import GpuDevice

Series = tuple[tuple[float, int], ...]  # (time.monotonic(), bytes), in time order

NOT_SERVED = "not served: the server has no /metrics endpoint (e.g. transformers serve)"
# A max or mean of a /metrics gauge read from fewer in-window scrapes than this describes a
# moment, not the load: such objectives are "not measurable" (docs/spec-reference.md says so).
MIN_GAUGE_SCRAPES = 3


@dataclass(frozen=True)
class GpuMemory:
    """Bytes held by the server's process tree on one GPU, by phase.

    ``startup_peak`` and ``load_peak`` are None when no sample fell in that phase; ``steady`` is the
    last sample after the load ended (None until one is taken).
    """

    index: int
    name: str
    total_bytes: int
    startup_peak: int | None
    load_peak: int | None
    steady: int | None
    peak: int


@dataclass(frozen=True)
class ServerMetrics:
    """What the server's own /metrics said during the measured part of a load.

    Gauges (KV-cache usage as a fraction 0..1, requests running/waiting) come from ``scrapes``
    taken inside the measured window (warmup excluded), the last one when the window closed;
    counters are deltas between the snapshots taken when the measured requests started (after
    warmup) and when the load ended. ``gauge_reason`` is set when there were fewer than
    ``MIN_GAUGE_SCRAPES`` scrapes: the gauges' max and mean are then not measurable.
    """

    kv_cache_usage_max: float | None
    kv_cache_usage_mean: float | None
    requests_running_max: float | None
    requests_waiting_max: float | None
    preemptions: float | None
    prompt_tokens: float | None
    generation_tokens: float | None
    raw_first: dict[str, float] = field(repr=False)  # every series of the first snapshot
    raw_last: dict[str, float] = field(repr=False)
    scrapes: int = 0
    scrape_errors: int = 0
    gauge_reason: str | None = None
    # the waiting-requests gauge of every in-window scrape, in order: whether the queue grew
    requests_waiting_series: tuple[float, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class TelemetryReport:
    """Memory and server statistics of a server lifetime, or of one load window on it."""

    gpu: tuple[GpuMemory, ...]
    gpu_unavailable_reason: str | None
    gpu_source: str | None  # "nvml" | "nvidia-smi"
    host_rss_peak: int | None
    host_rss_startup_peak: int | None
    host_rss_load_peak: int | None
    server_metrics: ServerMetrics | None
    server_metrics_reason: str | None
    samples: int
    interval_s: float
    host_rss_steady: int | None = None
    host_rss_reason: str | None = None
    window: tuple[float, float | None] | None = None  # the load window covered; None: all of them

    @property
    def gpu_peak_total(self) -> int | None:
        """Sum over GPUs of each one's peak; None when no GPU was measured."""
        return sum(g.peak for g in self.gpu) if self.gpu else None

    @property
    def gpu_peak_largest(self) -> int | None:
        """The most-loaded GPU's peak; None when no GPU was measured."""
        return max(g.peak for g in self.gpu) if self.gpu else None


@dataclass(frozen=True)
class LoadWindow:
    """One stretch of load on the server, with its /metrics snapshots ({} when not scraped).

    ``measured_start`` is when the measured requests began (after warmup; None until then, or
    when the load engine does not say): /metrics gauges and counters cover only
    [measured_start, end], memory covers the whole window.
    """

    index: int
    start: float
    end: float | None
    counters_start: dict[str, float] = field(default_factory=dict)
    counters_end: dict[str, float] = field(default_factory=dict)
    measured_start: float | None = None

    @property
    def metrics_start(self) -> float:
        return self.measured_start if self.measured_start is not None else self.start


@dataclass(frozen=True)
class PhaseFigures:
    startup_peak: int | None
    load_peak: int | None
    steady: int | None
    peak: int | None


@dataclass(frozen=True)
class Scrape:
    """One read of /metrics: every series summed over its labels, at a monotonic time."""

    at: float
    values: dict[str, float]
    kv_cache_usage: float | None  # largest over engines: a sum of ratios means nothing


def scrape_of(samples: Sequence[prom.Sample], at: float) -> Scrape:
    """A scrape from parsed /metrics samples; KV-cache usage is the largest engine's."""
    values: dict[str, float] = {}
    for sample in samples:
        values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return Scrape(at, values, prom.max_over_labels(samples, prom.KV_CACHE_USAGE))


@dataclass(frozen=True)
class Samples:
    """Everything the sampler collected so far, copied out of its threads' reach.

    ``gpu_reason`` says why no GPU can be read (None once a probe opened), ``gpu_error`` the last
    failed read, ``not_ours`` why memory is not sampled at all (a server run elsewhere);
    ``metrics_reason`` is why /metrics is not scraped when ``metrics_url`` is None.
    """

    interval_s: float
    ticks: tuple[float, ...] = ()
    rss: Series = ()
    rss_reason: str | None = None
    gpu: Mapping[int, Series] = field(default_factory=dict)
    gpu_devices: tuple[GpuDevice, ...] = ()
    gpu_source: str | None = None
    gpu_reason: str | None = None
    gpu_error: str | None = None
    not_ours: str | None = None
    windows: tuple[LoadWindow, ...] = ()
    metrics_url: str | None = None
    metrics_reason: str = NOT_SERVED
    scrapes: tuple[Scrape, ...] = ()
    scrape_errors: int = 0
    scrape_error: str | None = None


def peak_between(series: Series, start: float, end: float) -> int | None:
    """Largest value sampled in [start, end], or None when no sample fell there."""
    values = [v for t, v in series if start <= t <= end]
    return max(values) if values else None


def phase_figures(
    series: Series,
    *,
    startup_end: float | None,
    load: Sequence[tuple[float, float]],
    steady: tuple[float, float] | None,
    until: float,
) -> PhaseFigures:
    """Peaks of ``series`` by phase: start-up (before ``startup_end``), load spans, steady.

    ``steady`` is the last value sampled in the (start, end] span after load, the level the
    server settled at; ``peak`` covers every sample up to ``until``.
    """
    startup = [v for t, v in series if (startup_end is None or t < startup_end) and t <= until]
    loaded = [p for s, e in load if (p := peak_between(series, s, e)) is not None]
    settled = [v for t, v in series if steady is not None and steady[0] < t <= steady[1]]
    everything = [v for t, v in series if t <= until]
    return PhaseFigures(
        startup_peak=max(startup) if startup else None,
        load_peak=max(loaded) if loaded else None,
        steady=settled[-1] if settled else None,
        peak=max(everything) if everything else None,
    )


def lifetime_report(samples: Samples, now: float) -> TelemetryReport:
    """The whole lifetime up to ``now``: start-up, every load window, steady after the last."""
    windows = samples.windows
    load = [(w.start, w.end if w.end is not None else now) for w in windows]
    last_end = windows[-1].end if windows else None
    steady = (last_end, now) if last_end is not None else None
    return _report(samples, windows, load, steady, now, window=None)


def window_report(samples: Samples, index: int, now: float) -> TelemetryReport:
    """Load window ``index``: its load peak, and the steady level after it (the last sample
    before the next window, or before ``now`` when none followed)."""
    windows = samples.windows
    current = windows[index]
    end = current.end if current.end is not None else now
    following = windows[index + 1].start if index + 1 < len(windows) else now
    steady = (end, following) if current.end is not None else None
    until = following if current.end is not None else now
    return _report(
        samples,
        (current,),
        [(current.start, end)],
        steady,
        until,
        window=(current.start, current.end),
    )


def failed_report(reason: str, *, samples: int, interval_s: float) -> TelemetryReport:
    """The report of a telemetry that broke: every figure not measurable, saying why."""
    return TelemetryReport(
        gpu=(),
        gpu_unavailable_reason=reason,
        gpu_source=None,
        host_rss_peak=None,
        host_rss_startup_peak=None,
        host_rss_load_peak=None,
        server_metrics=None,
        server_metrics_reason=reason,
        samples=samples,
        interval_s=interval_s,
        host_rss_reason=reason,
    )


def _report(
    samples: Samples,
    windows: Sequence[LoadWindow],
    load: Sequence[tuple[float, float]],
    steady: tuple[float, float] | None,
    until: float,
    *,
    window: tuple[float, float | None] | None,
) -> TelemetryReport:
    # start-up ends with the first load on the server, whichever window is reported
    startup_end = samples.windows[0].start if samples.windows else None

    def figures(series: Series) -> PhaseFigures:
        return phase_figures(series, startup_end=startup_end, load=load, steady=steady, until=until)

    host = figures(samples.rss)
    host_reason = samples.not_ours or samples.rss_reason
    if host_reason is None and host.peak is None:
        host_reason = "no host memory sample taken (no process of the server's tree was readable)"

    gpus = []
    for device in samples.gpu_devices:
        gpu = figures(samples.gpu.get(device.index, ()))
        if gpu.peak:  # a GPU the server never used is left out rather than shown as zeros
            gpus.append(
                GpuMemory(
                    index=device.index,
                    name=device.name,
                    total_bytes=device.total_bytes,
                    startup_peak=gpu.startup_peak,
                    load_peak=gpu.load_peak,
                    steady=gpu.steady,
                    peak=gpu.peak,
                )
            )
    gpu_reason = None if gpus else samples.not_ours or gpu_unavailable(samples)

    metrics, metrics_reason = server_metrics(samples, windows)
    return TelemetryReport(
        gpu=tuple(gpus),
        gpu_unavailable_reason=gpu_reason,
        gpu_source=samples.gpu_source,
        host_rss_peak=host.peak,
        host_rss_startup_peak=host.startup_peak,
        host_rss_load_peak=host.load_peak,
        host_rss_steady=host.steady,
        host_rss_reason=host_reason,
        server_metrics=metrics,
        server_metrics_reason=metrics_reason,
        samples=sum(1 for t in samples.ticks if t <= until),
        interval_s=samples.interval_s,
        window=window,
    )


def gpu_unavailable(samples: Samples) -> str:
    """Why no GPU figure exists: no GPU readable, none sampled yet, reads failed, none used."""
    if samples.gpu_reason is not None:
        return samples.gpu_reason
    if samples.gpu_source is None:
        return "GPU not sampled yet (telemetry stopped before its first sample)"
    if not any(samples.gpu.values()):
        return f"every GPU read failed ({samples.gpu_source}: {samples.gpu_error})"
    return (
        f"the server's processes held no memory on any of {len(samples.gpu_devices)} GPU(s) "
        f"({samples.gpu_source}; a server in a container with its own PID namespace "
        "is not matched)"
    )


def server_metrics(
    samples: Samples, windows: Sequence[LoadWindow]
) -> tuple[ServerMetrics | None, str | None]:
    """/metrics over the measured part of ``windows``: gauges from the scrapes inside them,
    counters as deltas between each window's snapshots; or None and the reason."""
    if samples.metrics_url is None:
        return None, samples.metrics_reason
    if not windows:
        return None, "no load window was marked, so /metrics was not scraped"
    scrapes = [
        s
        for s in samples.scrapes
        if any(w.metrics_start <= s.at <= (w.end if w.end is not None else s.at) for w in windows)
    ]
    if not scrapes and not any(w.counters_start or w.counters_end for w in windows):
        error = samples.scrape_error or "no scrape taken"
        return None, f"could not scrape {samples.metrics_url}: {error}"

    def gauge(names: Sequence[str]) -> list[float]:
        return [v for s in scrapes if (v := prom.lookup(s.values, names)) is not None]

    kv = [s.kv_cache_usage for s in scrapes if s.kv_cache_usage is not None]
    running = gauge(prom.REQUESTS_RUNNING)
    waiting = gauge(prom.REQUESTS_WAITING)

    def delta(names: Sequence[str]) -> float | None:
        total = None
        for w in windows:
            end = w.end if w.end is not None else float("inf")
            inside = [s.values for s in scrapes if w.metrics_start <= s.at <= end]
            first = w.counters_start or (inside[0] if inside else {})
            last = w.counters_end or (inside[-1] if inside else {})
            before, after = prom.lookup(first, names), prom.lookup(last, names)
            if before is not None and after is not None:
                total = (total or 0.0) + after - before
        return total

    raw_first = windows[0].counters_start or (scrapes[0].values if scrapes else {})
    raw_last = windows[-1].counters_end or (scrapes[-1].values if scrapes else {})
    gauge_reason = None
    if len(scrapes) < MIN_GAUGE_SCRAPES:
        gauge_reason = (
            f"only {len(scrapes)} scrape(s) of /metrics fell inside the measured window "
            f"(at least {MIN_GAUGE_SCRAPES} are needed for a max or mean): run the load "
            "longer (more requests or a duration)"
        )
    return (
        ServerMetrics(
            kv_cache_usage_max=max(kv) if kv else None,
            kv_cache_usage_mean=sum(kv) / len(kv) if kv else None,
            requests_running_max=max(running) if running else None,
            requests_waiting_max=max(waiting) if waiting else None,
            preemptions=delta(prom.PREEMPTIONS),
            prompt_tokens=delta(prom.PROMPT_TOKENS),
            generation_tokens=delta(prom.GENERATION_TOKENS),
            raw_first=dict(raw_first),
            raw_last=dict(raw_last),
            scrapes=len(scrapes),
            scrape_errors=samples.scrape_errors,
            gauge_reason=gauge_reason,
            requests_waiting_series=tuple(waiting),
        ),
        None,
    )
