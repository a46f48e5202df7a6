"""Client health: what the load client achieved against what was asked, so that a slow client is
never reported as a slow server.

The load engine runs one event loop that sends requests and stamps every chunk. When that loop
is late (a busy CPU, a garbage-collection pause, more streams than one thread can read), its
stamps are late and its sends are late: latencies read high, throughput low, and a closed loop
offers the server less concurrency than `parallel` says. Four numbers show it:

- the loop's lag: a timer on the loop every 20 ms, and how late each one fired;
- the client process's CPU use per second of the measured phase (100% = one core, which is all
  the loop can use);
- effective concurrency: the sum of request durations over the window (Little's law), against
  `parallel` in a closed loop;
- the dispatch lag of an open loop (a request's send against its schedule), in the summary.

`fell_behind` turns them into a guard. The client fell behind when it did not deliver the load
asked of it (a closed loop's concurrency under 80% of `parallel`, an open loop's median send
100 ms or more behind schedule), when it was out of CPU (95% of a core: the loop is one thread),
or when its loop was late by a quarter of a second on one probe in ten or more. A run whose
client fell behind has its server objectives judged inconclusive with the reason, never failed
on the server's account. The limits are loose on purpose: on a 2-core machine that also runs
the server, the loop is routinely late by tens of milliseconds (the tail, p99 and max, shows
it); that is reported, and gated where an objective asks (`client_loop_lag_p99`), not guarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_llmslo.config import LoadConfig
    from pytest_llmslo.metrics import Summary

PROBE_INTERVAL_S = 0.02
# the guard's limits (docs/spec-reference.md, "Client health")
LOOP_LAG_LIMIT_S = 0.25
GUARD_LAG_QUANTILE = 90.0  # sustained lateness, not the odd stall
CPU_LIMIT = 0.95
DISPATCH_LAG_LIMIT_S = 0.1
CONCURRENCY_LIMIT = 0.8
MIN_WINDOW_S = 1.0  # shorter measured phases are not judged
NAN = math.nan


@dataclass(frozen=True)
class ClientHealth:
    """The client's side of one measured phase (or of several rounds, pooled)."""

    loop_lags: tuple[float, ...]  # how late each probe timer fired, seconds
    cpu_seconds: float  # CPU time of the client process (all its threads) in the phase
    wall_seconds: float  # the phase's length

    @property
    def cpu_share(self) -> float:
        """CPU seconds per second: 1.0 is one core busy the whole time."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else NAN

    def loop_lag(self, q: float) -> float:
        """The q-quantile (0-100) of the probe's lateness; NaN without probes."""
        if not self.loop_lags:
            return NAN
        ordered = sorted(self.loop_lags)
        rank = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
        return ordered[rank]

    @classmethod
    def pooled(cls, parts: Sequence[ClientHealth | None]) -> ClientHealth | None:
        """Several rounds' health as one: their probes together, their times summed."""
        known = [p for p in parts if p is not None]
        if not known:
            return None
        return cls(
            tuple(lag for p in known for lag in p.loop_lags),
            sum(p.cpu_seconds for p in known),
            sum(p.wall_seconds for p in known),
        )


class LagProbe:
    """A timer on the load's event loop: how late it fires is how late the loop is."""

    def __init__(self, interval: float = PROBE_INTERVAL_S) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._cpu_start = 0.0
        self._wall_start = 0.0

    def start(self) -> None:
        self._cpu_start = time.process_time()
        self._wall_start = time.monotonic()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> ClientHealth:
        cpu, wall = time.process_time(), time.monotonic()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return ClientHealth(tuple(self.lags), cpu - self._cpu_start, wall - self._wall_start)

    async def _run(self) -> None:
        while True:
            due = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)
            self.lags.append(max(time.monotonic() - due, 0.0))


def effective_concurrency(summary: Summary) -> float:
    """Requests in flight on average over the measured window: the sum of their durations
    divided by the window's length (Little's law)."""
    busy = summary.busy_seconds
    duration = summary.duration_s
    return busy / duration if duration and duration > 0 and not math.isnan(duration) else NAN


def measure(
    metric: str, health: ClientHealth | None, summary: Summary | None, load: LoadConfig | None
) -> tuple[float, int | None, str]:
    """(value, sample size, reason if NaN) of a `client_*` metric."""
    if metric == "client_concurrency_ratio":
        if summary is None or load is None:
            return NAN, None, "no load ran"
        if load.rate is not None or not load.parallel:
            return NAN, None, "open loop: the client sends on a schedule (see dispatch_lag)"
        return effective_concurrency(summary) / load.parallel, summary.requests, ""
    if health is None:
        return NAN, None, "the load engine reported no client health"
    if metric == "client_cpu":
        return health.cpu_share, 1, ""
    q = {
        "client_loop_lag_p90": 90.0,
        "client_loop_lag_p99": 99.0,
        "client_loop_lag_max": 100.0,
    }.get(metric)
    if q is None:
        raise KeyError(metric)
    if not health.loop_lags:
        return NAN, 0, "the measured phase was too short for the loop probe to fire"
    return health.loop_lag(q), len(health.loop_lags), ""


def fell_behind(
    health: ClientHealth | None, summary: Summary | None, load: LoadConfig | None
) -> str | None:
    """Why the client could not keep up with the load asked of it, or None when it did."""
    reasons = []
    if health is not None and health.wall_seconds < MIN_WINDOW_S:
        # a phase of a few hundred milliseconds (requests failing at once) says nothing about
        # pace: one busy moment of the loop is most of it
        return None
    if health is not None:
        lag = health.loop_lag(GUARD_LAG_QUANTILE)
        if lag > LOOP_LAG_LIMIT_S:
            reasons.append(
                f"its event loop ran late (p{GUARD_LAG_QUANTILE:g} lag {lag * 1e3:.0f} ms, "
                f"limit {LOOP_LAG_LIMIT_S * 1e3:.0f} ms)"
            )
        if health.cpu_share >= CPU_LIMIT:
            reasons.append(
                f"it used {health.cpu_share:.0%} of a core (limit {CPU_LIMIT:.0%}; its event "
                "loop is one thread)"
            )
    ratio = measure("client_concurrency_ratio", health, summary, load)[0]
    if ratio < CONCURRENCY_LIMIT:  # NaN (an open loop, no load) compares False
        reasons.append(
            f"it kept {ratio:.0%} of the {load.parallel if load else '?'} concurrent requests "
            f"asked in flight on average (limit {CONCURRENCY_LIMIT:.0%})"
        )
    if summary is not None and load is not None and load.rate is not None:
        dispatch = summary.distributions.get("dispatch_lag")
        if dispatch is not None and dispatch.count:
            median = dispatch.stat("median", summary.samples.get("dispatch_lag"))
            if median > DISPATCH_LAG_LIMIT_S:
                reasons.append(
                    f"it sent behind its arrival schedule (median dispatch lag "
                    f"{median * 1e3:.0f} ms, limit {DISPATCH_LAG_LIMIT_S * 1e3:.0f} ms)"
                )
    if not reasons:
        return None
    return "the load client fell behind: " + "; ".join(reasons)


def describe(health: ClientHealth | None, summary: Summary | None, load: LoadConfig | None) -> str:
    """One line for the report's header of a run: what the client achieved."""
    parts = []
    if health is not None and health.loop_lags:
        parts.append(
            f"event-loop lag p90 {health.loop_lag(90.0) * 1e3:.1f} ms, "
            f"p99 {health.loop_lag(99.0) * 1e3:.1f} ms, max {health.loop_lag(100.0) * 1e3:.1f} ms"
        )
    if health is not None and not math.isnan(health.cpu_share):
        parts.append(f"CPU {health.cpu_share:.0%} of a core")
    if summary is not None and load is not None and load.rate is None and load.parallel:
        achieved = effective_concurrency(summary)
        if not math.isnan(achieved):
            parts.append(
                f"concurrency {achieved:.2f} of {load.parallel} ({achieved / load.parallel:.0%})"
            )
    return ", ".join(parts)


def as_json(
    health: ClientHealth | None, summary: Summary | None, load: LoadConfig | None
) -> dict[str, float | int | str | None]:
    """results.json's `client`: the client_* metrics and the guard's finding."""

    def number(metric: str) -> float | None:
        value = measure(metric, health, summary, load)[0]
        return None if math.isnan(value) else value

    return {
        "loop_lag_p90": number("client_loop_lag_p90") if health else None,
        "loop_lag_p99": number("client_loop_lag_p99") if health else None,
        "loop_lag_max": number("client_loop_lag_max") if health else None,
        "probes": len(health.loop_lags) if health else 0,
        "cpu": number("client_cpu") if health else None,
        "concurrency_ratio": number("client_concurrency_ratio"),
        "fell_behind": fell_behind(health, summary, load),
    }
