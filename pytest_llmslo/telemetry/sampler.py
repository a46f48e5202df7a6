"""Background sampling of one server's memory and /metrics, reported by phase and load window."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from pytest_llmslo.netpolicy import bounded_get, probe_client
from pytest_llmslo.telemetry import prometheus as prom
from pytest_llmslo.telemetry.gpu import GpuDevice, GpuProbe, open_gpu_probe
from pytest_llmslo.telemetry.host import rss_unavailable_reason, tree_rss

Series = tuple[tuple[float, int], ...]  # (time.monotonic(), bytes), in time order

NOT_SERVED = "not served: the server has no /metrics endpoint (e.g. transformers serve)"
# A max or mean of a /metrics gauge read from fewer in-window scrapes than this describes a
# moment, not the load: such objectives are "not measurable" (docs/spec-reference.md says so).
MIN_GAUGE_SCRAPES = 3
# The first in-window scrape waits this long after the measured window opens (requests must be
# in flight for a gauge to see them); later ones double the wait up to ``metrics_interval_s``,
# so a short load still gets several scrapes and a long one costs the server little.
FIRST_SCRAPE_DELAY_S = 0.25


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
class _Scrape:
    at: float
    values: dict[str, float]
    kv_cache_usage: float | None  # largest over engines: a sum of ratios means nothing


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


class Telemetry:
    """Samples one server's GPU memory and host RSS, and scrapes its /metrics during load.

    One instance per server lifetime: ``start()`` when the server process starts, then any number
    of ``mark_load_start()``/``mark_load_end()`` pairs (one per scenario on a shared server), then
    ``stop()``. ``mark_measured_start()`` inside a window says the warmup is over: /metrics
    figures then cover the measured requests only. ``window_report(window)`` gives one window's
    figures at any time; its steady level is the last sample before the next window (or now), so
    asking later gives a settled value.

    ``pids()`` returns the server's live process tree (vLLM's memory is held by its EngineCore
    child, not the API server); it is called about once a second. Memory is sampled every
    ``interval_s`` (nvidia-smi, a process spawn, every ``nvidia_smi_interval_s``); /metrics during
    load only: ``FIRST_SCRAPE_DELAY_S`` after the (measured) window opens, then at doubling
    intervals up to ``metrics_interval_s``, and once more when the window closes. Times are
    ``time.monotonic()``, as in records.
    """

    def __init__(
        self,
        pids: Callable[[], list[int]],
        *,
        metrics_url: str | None,
        interval_s: float = 0.1,
        nvml: Any | None = None,
        nvidia_smi: str | None = "nvidia-smi",
        metrics_interval_s: float = 2.0,
        nvidia_smi_interval_s: float = 1.0,
        scrape_timeout_s: float = 5.0,
        pids_refresh_s: float = 1.0,
        not_ours: str | None = None,
    ) -> None:
        self._pids = pids
        # the server runs elsewhere (external): memory is not sampled, and this says why
        self._not_ours = not_ours
        self._metrics_reason = NOT_SERVED
        self._metrics_headers: dict[str, str] = {}
        # Walking a process tree reads a /proc file per thread (vLLM runs dozens): doing it once a
        # second, not every tick, keeps the sampler cheap; processes that exit are skipped anyway.
        self._pids_refresh_s = pids_refresh_s
        self._metrics_url = metrics_url
        self._interval_s = interval_s
        self._nvml = nvml
        self._nvidia_smi = nvidia_smi
        # vLLM renders ~70 KB of /metrics per scrape; every 0.5 s that took enough of a small
        # machine's CPU to delay the load generator's sends by hundreds of milliseconds
        self._metrics_interval_s = metrics_interval_s
        self._nvidia_smi_interval_s = nvidia_smi_interval_s
        self._scrape_timeout_s = scrape_timeout_s

        self._lock = threading.Lock()
        self._scrape_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._load_open = threading.Event()
        self._threads: list[threading.Thread] = []
        self._client: httpx.Client | None = None

        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._report: TelemetryReport | None = None
        self._ticks: list[float] = []
        self._rss: list[tuple[float, int]] = []
        self._rss_reason = rss_unavailable_reason()
        self._gpu: dict[int, list[tuple[float, int]]] = {}
        self._gpu_devices: tuple[GpuDevice, ...] = ()
        self._gpu_source: str | None = None
        self._gpu_reason: str | None = None
        self._gpu_error: str | None = None
        self._windows: list[LoadWindow] = []
        self._scrapes: list[_Scrape] = []
        self._scrape_errors = 0
        # bumped when a window or its measured part opens: the scraper restarts its schedule
        self._scrape_epoch = 0
        self._scrape_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin sampling in daemon threads; the start-up phase lasts until the first load."""
        if self._started_at is not None:
            return
        self._started_at = time.monotonic()
        if self._not_ours is None:
            memory = threading.Thread(target=self._sample_loop, name="llmslo-memory", daemon=True)
            self._threads.append(memory)
            memory.start()
        if self._metrics_url is not None:
            self._start_scraper()

    def set_metrics_url(self, url: str | None, headers: dict[str, str] | None = None) -> None:
        """Where /metrics is, once known: a managed server's port is chosen while it starts,
        after sampling (of its start-up memory) has begun. `headers` go with every scrape (an
        external server's API key)."""
        if url is None or self._metrics_url is not None or self._stopped_at is not None:
            return
        self._metrics_url = url
        self._metrics_headers = dict(headers or {})
        if self._started_at is not None:
            self._start_scraper()

    def metrics_not_scraped(self, reason: str) -> None:
        """Why /metrics is not scraped, for the report (default: NOT_SERVED)."""
        self._metrics_reason = reason

    def _start_scraper(self) -> None:
        # the plugin's one connection policy: direct, no proxy variables (netpolicy)
        self._client = probe_client(self._scrape_timeout_s)
        scraper = threading.Thread(target=self._scrape_loop, name="llmslo-metrics", daemon=True)
        self._threads.append(scraper)
        scraper.start()

    def mark_load_start(self) -> LoadWindow:
        """Open a load window; snapshots /metrics counters first so the delta covers the load."""
        if self._started_at is None or self._stopped_at is not None:
            raise RuntimeError("Telemetry.mark_load_start() needs start() first and no stop()")
        with self._lock:
            if self._windows and self._windows[-1].end is None:
                raise RuntimeError(
                    "Telemetry.mark_load_start(): a load window is already open; "
                    "call mark_load_end() first"
                )
        snapshot = self._scrape()
        window = LoadWindow(
            index=len(self._windows),
            start=time.monotonic(),
            end=None,
            counters_start=snapshot.values if snapshot else {},
        )
        with self._lock:
            self._windows.append(window)
            self._scrape_epoch += 1
        self._load_open.set()
        return window

    def mark_measured_start(self) -> None:
        """The warmup of the open window is over: /metrics counters restart from a snapshot
        taken now, and only gauge scrapes from now on count. Without an open window, nothing."""
        snapshot = self._scrape()
        now = time.monotonic()
        with self._lock:
            if not self._windows or self._windows[-1].end is not None:
                return
            last = self._windows[-1]
            self._windows[-1] = replace(
                last,
                measured_start=now,
                counters_start=snapshot.values if snapshot else last.counters_start,
            )
            self._scrape_epoch += 1

    def mark_load_end(self) -> LoadWindow:
        """Close the open load window (idle after it is its steady phase) and return it."""
        end = time.monotonic()
        with self._lock:
            if not self._windows or self._windows[-1].end is not None:
                raise RuntimeError("Telemetry.mark_load_end() without mark_load_start()")
            self._load_open.clear()
        snapshot = self._scrape()
        with self._lock:
            window = replace(
                self._windows[-1], end=end, counters_end=snapshot.values if snapshot else {}
            )
            self._windows[-1] = window
            if snapshot is not None:
                # the closing scrape counts as the window's last gauge reading: a load shorter
                # than the scrape interval is still seen at its end, never only at its start
                self._scrapes.append(replace(snapshot, at=end))
        return window

    def stop(self) -> TelemetryReport:
        """Stop sampling and report the whole lifetime; idempotent, never raises."""
        if self._report is not None:
            return self._report
        try:
            if self._stopped_at is None:
                self._stopped_at = time.monotonic()
                with self._lock:
                    if self._windows and self._windows[-1].end is None:
                        self._windows[-1] = replace(self._windows[-1], end=self._stopped_at)
                self._load_open.clear()
                self._stop_event.set()
                for thread in self._threads:
                    thread.join(timeout=self._scrape_timeout_s + 5.0)
                if self._client is not None:
                    self._client.close()
            self._report = self.report()
        except Exception as exc:  # a broken telemetry must not fail the measured run
            reason = f"telemetry failed: {type(exc).__name__}: {exc}"
            self._report = TelemetryReport(
                gpu=(),
                gpu_unavailable_reason=reason,
                gpu_source=None,
                host_rss_peak=None,
                host_rss_startup_peak=None,
                host_rss_load_peak=None,
                server_metrics=None,
                server_metrics_reason=reason,
                samples=len(self._ticks),
                interval_s=self._interval_s,
                host_rss_reason=reason,
            )
        return self._report

    # -- reports and samples ---------------------------------------------------------------

    @property
    def samples(self) -> int:
        """How many sampling ticks ran so far."""
        with self._lock:
            return len(self._ticks)

    @property
    def windows(self) -> tuple[LoadWindow, ...]:
        with self._lock:
            return tuple(self._windows)

    def rss_samples(self) -> Series:
        """Host RSS of the process tree, as (monotonic time, bytes)."""
        with self._lock:
            return tuple(self._rss)

    def gpu_samples(self) -> dict[int, Series]:
        """Bytes held by the process tree per GPU index, as (monotonic time, bytes)."""
        with self._lock:
            return {index: tuple(series) for index, series in self._gpu.items()}

    def report(self) -> TelemetryReport:
        """The whole lifetime so far: start-up, every load window, steady after the last one."""
        now = self._now()
        windows = self.windows
        load = [(w.start, w.end if w.end is not None else now) for w in windows]
        last_end = windows[-1].end if windows else None
        steady = (last_end, now) if last_end is not None else None
        return self._build(windows, load, steady, now, window=None)

    def window_report(self, window: LoadWindow | None = None) -> TelemetryReport:
        """One load window (default: the latest): its load peak, the steady level after it."""
        windows = self.windows
        if not windows:
            raise RuntimeError("Telemetry.window_report(): no load window was marked")
        current = windows[-1] if window is None else windows[window.index]
        now = self._now()
        end = current.end if current.end is not None else now
        following = windows[current.index + 1].start if current.index + 1 < len(windows) else now
        steady = (end, following) if current.end is not None else None
        until = following if current.end is not None else now
        return self._build(
            (current,), [(current.start, end)], steady, until, window=(current.start, current.end)
        )

    # -- internals -------------------------------------------------------------------------

    def _now(self) -> float:
        return self._stopped_at if self._stopped_at is not None else time.monotonic()

    def _build(
        self,
        windows: Sequence[LoadWindow],
        load: Sequence[tuple[float, float]],
        steady: tuple[float, float] | None,
        until: float,
        *,
        window: tuple[float, float | None] | None,
    ) -> TelemetryReport:
        all_windows = self.windows
        startup_end = all_windows[0].start if all_windows else None
        with self._lock:
            rss = tuple(self._rss)
            gpu_series = {i: tuple(s) for i, s in self._gpu.items()}
            ticks = sum(1 for t in self._ticks if t <= until)
            devices = self._gpu_devices

        def figures(series: Series) -> PhaseFigures:
            return phase_figures(
                series, startup_end=startup_end, load=load, steady=steady, until=until
            )

        host = figures(rss)
        host_reason = self._not_ours or self._rss_reason
        if host_reason is None and host.peak is None:
            host_reason = (
                "no host memory sample taken (no process of the server's tree was readable)"
            )

        gpus = []
        for device in devices:
            gpu = figures(gpu_series.get(device.index, ()))
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
        gpu_reason = None if gpus else self._not_ours or self._gpu_unavailable(gpu_series, devices)

        metrics, metrics_reason = self._server_metrics(windows)
        return TelemetryReport(
            gpu=tuple(gpus),
            gpu_unavailable_reason=gpu_reason,
            gpu_source=self._gpu_source,
            host_rss_peak=host.peak,
            host_rss_startup_peak=host.startup_peak,
            host_rss_load_peak=host.load_peak,
            host_rss_steady=host.steady,
            host_rss_reason=host_reason,
            server_metrics=metrics,
            server_metrics_reason=metrics_reason,
            samples=ticks,
            interval_s=self._interval_s,
            window=window,
        )

    def _gpu_unavailable(self, series: dict[int, Series], devices: tuple[GpuDevice, ...]) -> str:
        if self._gpu_reason is not None:
            return self._gpu_reason
        if self._gpu_source is None:
            return "GPU not sampled yet (telemetry stopped before its first sample)"
        if not any(series.values()):
            return f"every GPU read failed ({self._gpu_source}: {self._gpu_error})"
        return (
            f"the server's processes held no memory on any of {len(devices)} GPU(s) "
            f"({self._gpu_source}; a server in a container with its own PID namespace "
            "is not matched)"
        )

    def _server_metrics(
        self, windows: Sequence[LoadWindow]
    ) -> tuple[ServerMetrics | None, str | None]:
        if self._metrics_url is None:
            return None, self._metrics_reason
        if not windows:
            return None, "no load window was marked, so /metrics was not scraped"
        with self._lock:
            scrapes = [
                s
                for s in self._scrapes
                if any(
                    w.metrics_start <= s.at <= (w.end if w.end is not None else s.at)
                    for w in windows
                )
            ]
            errors = self._scrape_errors
            error = self._scrape_error
        if not scrapes and not any(w.counters_start or w.counters_end for w in windows):
            return None, f"could not scrape {self._metrics_url}: {error or 'no scrape taken'}"

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
                scrape_errors=errors,
                gauge_reason=gauge_reason,
            ),
            None,
        )

    def _safe_pids(self) -> list[int]:
        try:
            return list(self._pids())
        except Exception:  # the server may be exiting while its tree is walked
            return []

    def _sample_loop(self) -> None:
        probe: GpuProbe | None = None
        try:
            probe, reason = open_gpu_probe(self._nvml, self._nvidia_smi)
        except Exception as exc:
            reason = f"no NVIDIA GPU readable ({type(exc).__name__}: {exc})"
        with self._lock:
            self._gpu_reason = reason
            if probe is not None:
                self._gpu_source = probe.source
                self._gpu_devices = probe.devices
                self._gpu = {d.index: [] for d in probe.devices}
        # nvidia-smi spawns a process per read: on a shared CI machine keep it well below 10 Hz.
        gpu_every = self._nvidia_smi_interval_s if self._gpu_source == "nvidia-smi" else 0.0
        next_gpu = next_pids = 0.0
        pids: list[int] = []
        try:
            while not self._stop_event.is_set():
                began = time.monotonic()
                if began >= next_pids:
                    pids = self._safe_pids()
                    next_pids = began + self._pids_refresh_s
                if pids:
                    read_gpu = began >= next_gpu
                    self._tick(pids, probe if read_gpu else None)
                    if read_gpu:
                        next_gpu = time.monotonic() + gpu_every
                self._stop_event.wait(max(0.0, self._interval_s - (time.monotonic() - began)))
        finally:
            if probe is not None:
                with contextlib.suppress(Exception):
                    probe.close()

    def _tick(self, pids: list[int], probe: GpuProbe | None) -> None:
        rss = tree_rss(pids) if self._rss_reason is None else None
        used: dict[int, int] | None = None
        error = None
        if probe is not None:
            try:
                used = probe.read(pids)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        # Stamped after reading: a value seen before a load window opened may land inside it,
        # which cannot raise the window's peak, while a load value never lands before it.
        now = time.monotonic()
        with self._lock:
            self._ticks.append(now)
            if rss is not None:
                self._rss.append((now, rss))
            if used is not None:
                for index, value in used.items():
                    self._gpu.setdefault(index, []).append((now, value))
            if error is not None:
                self._gpu_error = error

    def _scrape_loop(self) -> None:
        epoch = -1
        due = delay = 0.0
        while not self._stop_event.is_set():
            if not self._load_open.wait(timeout=self._interval_s):
                continue
            with self._lock:
                current = self._scrape_epoch
            now = time.monotonic()
            if current != epoch:  # a window or its measured part just opened
                epoch = current
                delay = min(FIRST_SCRAPE_DELAY_S, self._metrics_interval_s)
                due = now + delay
            if now < due:
                self._stop_event.wait(min(due - now, self._interval_s))
                continue
            snapshot = self._scrape()
            with self._lock:
                if snapshot is not None and self._load_open.is_set():
                    self._scrapes.append(snapshot)
            delay = min(delay * 2, self._metrics_interval_s)
            due = time.monotonic() + delay

    def _scrape(self) -> _Scrape | None:
        """One /metrics read; failures are counted and remembered, never raised."""
        if self._client is None or self._metrics_url is None:
            return None
        try:
            with self._scrape_lock:
                response = bounded_get(
                    self._client,
                    self._metrics_url,
                    self._metrics_headers,
                    deadline_s=self._scrape_timeout_s,
                )
            if response.status != 200:
                raise RuntimeError(f"GET {self._metrics_url} answered HTTP {response.status}")
            at = time.monotonic()
            samples = prom.parse_samples(response.text)
        except Exception as exc:
            with self._lock:
                self._scrape_errors += 1
                self._scrape_error = f"{type(exc).__name__}: {exc}"
            return None
        values: dict[str, float] = {}
        for sample in samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return _Scrape(at, values, prom.max_over_labels(samples, prom.KV_CACHE_USAGE))
