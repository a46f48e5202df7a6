"""Background sampling of one server's memory and /metrics: the threads, their locks, the marks.

What the threads collect is reported by the pure functions of ``analysis.py`` (phases, load
windows, /metrics gauges and deltas); this module owns only collecting it safely.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx

from pytest_llmslo.netpolicy import bounded_get, probe_client
from pytest_llmslo.telemetry import analysis
from pytest_llmslo.telemetry import prometheus as prom
from pytest_llmslo.telemetry.analysis import (
    MIN_GAUGE_SCRAPES,
    NOT_SERVED,
    GpuMemory,
    LoadWindow,
    PhaseFigures,
    Samples,
    Scrape,
    Series,
    ServerMetrics,
    TelemetryReport,
    peak_between,
    phase_figures,
)
from pytest_llmslo.telemetry.gpu import GpuDevice, GpuProbe, open_gpu_probe
from pytest_llmslo.telemetry.host import rss_unavailable_reason, tree_rss

# the figures' types and functions stay importable from here, where callers found them first
__all__ = [
    "FIRST_SCRAPE_DELAY_S",
    "MIN_GAUGE_SCRAPES",
    "NOT_SERVED",
    "GpuMemory",
    "LoadWindow",
    "PhaseFigures",
    "Series",
    "ServerMetrics",
    "Telemetry",
    "TelemetryReport",
    "peak_between",
    "phase_figures",
]

# The first in-window scrape waits this long after the measured window opens (requests must be
# in flight for a gauge to see them); later ones double the wait up to ``metrics_interval_s``,
# so a short load still gets several scrapes and a long one costs the server little.
FIRST_SCRAPE_DELAY_S = 0.25


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
        self._scrapes: list[Scrape] = []
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
            self._report = analysis.failed_report(
                reason, samples=len(self._ticks), interval_s=self._interval_s
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
        return analysis.lifetime_report(self.collected(), self._now())

    def window_report(self, window: LoadWindow | None = None) -> TelemetryReport:
        """One load window (default: the latest): its load peak, the steady level after it."""
        samples = self.collected()
        if not samples.windows:
            raise RuntimeError("Telemetry.window_report(): no load window was marked")
        index = len(samples.windows) - 1 if window is None else window.index
        return analysis.window_report(samples, index, self._now())

    def collected(self) -> Samples:
        """A copy of everything sampled and scraped so far, for the pure reports."""
        with self._lock:
            return Samples(
                interval_s=self._interval_s,
                ticks=tuple(self._ticks),
                rss=tuple(self._rss),
                rss_reason=self._rss_reason,
                gpu={index: tuple(series) for index, series in self._gpu.items()},
                gpu_devices=self._gpu_devices,
                gpu_source=self._gpu_source,
                gpu_reason=self._gpu_reason,
                gpu_error=self._gpu_error,
                not_ours=self._not_ours,
                windows=tuple(self._windows),
                metrics_url=self._metrics_url,
                metrics_reason=self._metrics_reason,
                scrapes=tuple(self._scrapes),
                scrape_errors=self._scrape_errors,
                scrape_error=self._scrape_error,
            )

    # -- internals -------------------------------------------------------------------------

    def _now(self) -> float:
        return self._stopped_at if self._stopped_at is not None else time.monotonic()

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
                    # no process yet (the server is being launched): look again next tick, or
                    # a server that starts and serves within a second is never sampled
                    next_pids = began + (self._pids_refresh_s if pids else 0.0)
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

    def _scrape(self) -> Scrape | None:
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
        return analysis.scrape_of(samples, at)
