"""The result of one scenario on one server, frozen, and the one place that says pass or fail.

Spec scenarios and hand-written runs end in the same `ScenarioResult` (built by `runner.py`);
the pytest items, `assert_slo` and the reports all ask it, so no two of them can disagree about
whether a run passed.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pytest_llmslo import client_health, saturation
from pytest_llmslo.capacity import CAPACITY_METRICS, CapacitySearch
from pytest_llmslo.capacity import measure as measure_capacity
from pytest_llmslo.catalogue import METRICS, Producer
from pytest_llmslo.config import DEFAULT_CONFIDENCE
from pytest_llmslo.slo import Measurement, Objective, Verdict, evaluate, guarded, metric_info
from pytest_llmslo.telemetry.measures import measure as telemetry_measure
from pytest_llmslo.units import UnitKind

if TYPE_CHECKING:
    from pytest_llmslo.baseline import Comparison
    from pytest_llmslo.client_health import ClientHealth
    from pytest_llmslo.config import LoadConfig, ServerConfig
    from pytest_llmslo.fingerprint import Fingerprint
    from pytest_llmslo.metrics import Summary
    from pytest_llmslo.records import Endpoint, RequestRecord
    from pytest_llmslo.spec import Scenario
    from pytest_llmslo.telemetry import TelemetryReport

# measured on the server's own process tree or its start: meaningless for a server this run did
# not start (an external one, or an endpoint a hand-written test reached on its own)
SERVER_PROCESS_METRICS = frozenset(m.name for m in METRICS if m.server_process)


# measured on the client itself: what a client that fell behind is still judged on
CLIENT_METRICS = frozenset(m.name for m in METRICS if m.producer is Producer.CLIENT)


def client_side(metric: str) -> bool:
    """A metric of the client, not the server: client health, and an open loop's dispatch lag."""
    return metric in CLIENT_METRICS or metric_info(metric).base == "dispatch_lag"


# what a late client distorts: the times it stamps, the rates over its window, and what is
# derived from them; not what it counts (a failed request failed), nor the server's memory
_TIMED = frozenset({UnitKind.TIME, UnitKind.TOKEN_RATE, UnitKind.REQUEST_RATE, UnitKind.FACTOR})


def client_timed(metric: str) -> bool:
    """A server objective the client guard holds back when the client fell behind."""
    if client_side(metric):
        return False
    return metric_info(metric).kind in _TIMED or metric == "goodput_ratio"


# why a server-process metric has no value (verdicts and reports say "not measurable: " first)
NOT_STARTED = (
    "the server was not started by this run, so its processes are not ours to see (start it "
    "with llmslo_server_factory, or as a vllm/hf server of a spec)"
)


class Status(str, enum.Enum):
    """A run as a whole: every objective met and the run complete, or not, or not run at all."""

    PASS = "PASS"
    FAIL = "FAIL"
    SKIPPED = "SKIPPED"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Started:
    """When a run began: wall-clock time for the reports, the monotonic clock for its length."""

    at: str  # ISO 8601, UTC
    monotonic: float

    @classmethod
    def now(cls) -> Started:
        wall = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        return cls(wall, time.monotonic())

    def seconds(self) -> float:
        return time.monotonic() - self.monotonic


@dataclass(frozen=True)
class RoundTrace:
    """The verdicts after one round, over every round so far pooled: how the intervals
    narrowed, and why another round ran (something was still inconclusive)."""

    number: int  # 1 for the first round
    requests: int  # measured requests pooled so far
    verdicts: tuple[Verdict, ...]

    @property
    def inconclusive(self) -> tuple[str, ...]:
        return tuple(v.objective.metric for v in self.verdicts if v.inconclusive)


@dataclass(frozen=True)
class ScenarioResult:
    """One scenario run against one server: the numbers, the verdicts, and what went wrong.

    `spec_path` is the spec file, or the node id of the hand-written test that ran it.
    """

    spec_path: str
    scenario: Scenario
    server: ServerConfig
    endpoint: Endpoint | None = None
    summary: Summary | None = None
    verdicts: tuple[Verdict, ...] = ()
    telemetry: TelemetryReport | None = None
    records: tuple[RequestRecord, ...] = ()
    error: str | None = None  # setup failure or fault that stopped the run
    skipped: str | None = None  # the backend is not installed and the spec allows skipping
    interrupted: str | None = None  # why the load stopped early (records kept)
    # the load that ran (server_load and the request cap applied), and why it differs from the
    # scenario's `load:`; reports state this, not the spec's numbers
    load: LoadConfig | None = None
    load_notes: tuple[str, ...] = ()
    server_log_tail: str | None = None
    token_note: str | None = None  # how tokens were counted when usage was absent
    started: str = ""  # wall-clock time, ISO 8601
    wall_seconds: float = 0.0
    # one per round that ran (`verdicts.rounds`); empty when no load ran
    rounds: tuple[RoundTrace, ...] = ()
    # what the run depended on (None: it did not run), and what its relative objectives are
    # judged against (None: it has none, or no session compared it yet)
    fingerprint: Fingerprint | None = None
    comparison: Comparison | None = None
    # a capacity search (`capacity:`): every step it ran and why it stopped; this result is
    # its highest passing step's run (the first step's when none passed)
    capacity: CapacitySearch | None = None
    # the load client's side of the run (loop lag, CPU); None when no load ran
    client: ClientHealth | None = None

    @property
    def id(self) -> str:
        return f"{self.scenario.name}[{self.server.name}]"

    @property
    def key(self) -> tuple[str, str, str]:
        """What tells runs of one session apart: source, scenario, server."""
        return (self.spec_path, self.scenario.name, self.server.name)

    def verdict(self, metric: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.objective.metric == metric), None)

    @property
    def completed(self) -> bool:
        """The run went through: no error stopped it and its load was not cut short."""
        return self.skipped is None and self.error is None and self.interrupted is None

    def passed(self, metric: str) -> bool:
        """Whether the objective on `metric` is met: its verdict passed on a completed run
        (numbers from part of a run do not pass anything)."""
        verdict = self.verdict(metric)
        return verdict is not None and verdict.passed and self.completed

    @property
    def status(self) -> Status:
        if self.skipped is not None:
            return Status.SKIPPED
        if self.completed and all(v.passed for v in self.verdicts):
            return Status.PASS
        return Status.FAIL

    def measure(self, metric: str, confidence: float = DEFAULT_CONFIDENCE) -> Measurement:
        """The value of `metric` in this run with its interval at `confidence`; NaN with the
        reason when it was not measured."""
        if metric in CAPACITY_METRICS:
            return measure_capacity(self.capacity, metric)
        if metric in CLIENT_METRICS:
            return Measurement(*client_health.measure(metric, self.client, self.summary, self.load))
        if self.error and self.summary is None:
            return Measurement(math.nan, None, self.error)
        if metric in SERVER_PROCESS_METRICS and self.server.backend == "external":
            return Measurement(math.nan, None, NOT_STARTED)
        if metric == "startup_time":
            s = self.endpoint.startup_seconds if self.endpoint else None
            if s is None:
                return Measurement(math.nan, None, "the server was not started by this run")
            return Measurement(s, 1, "")
        if self.telemetry is not None:
            got = telemetry_measure(self.telemetry, metric)
            if got is not None:
                return Measurement(*got)
        if self.summary is None:
            return Measurement(math.nan, None, self.error or "no results")
        try:
            value, n, reason = self.summary.value(metric)
        except KeyError:
            return Measurement(math.nan, None, f"{metric} is not measured by this run")
        interval = self.summary.interval(metric, confidence) if not reason else None
        return Measurement(value, n, reason, interval)

    def judged(self, objectives: Sequence[Objective]) -> ScenarioResult:
        """This result with `objectives` as the scenario's objectives and their verdicts, at the
        scenario's confidence and inconclusive policy (`verdicts:`)."""
        policy = self.scenario.verdicts
        comparison = self.comparison
        verdicts = evaluate(
            objectives,
            lambda metric: self.measure(metric, policy.confidence),
            inconclusive=policy.inconclusive,
            # relative objectives: against the baseline's entry, skipped while this run
            # records the baseline, failed ("no baseline") before any comparison
            baseline=None if comparison is None or comparison.skip else comparison.measure,
            skip_relative=comparison.skip if comparison is not None else None,
        )
        behind = self.client_behind
        if behind is not None:
            verdicts = [
                guarded(v, behind, policy.inconclusive) if client_timed(v.objective.metric) else v
                for v in verdicts
            ]
        return replace(
            self,
            scenario=replace(self.scenario, objectives=tuple(objectives)),
            verdicts=tuple(verdicts),
        )

    @property
    def saturated(self) -> str | None:
        """Why the server is past its knee in this run (TTFT grew decisively through it), or
        None; saturation.py says how it is told."""
        if self.summary is None:
            return None
        value, _, reason = self.summary.value("ttft_growth")
        if reason:
            return None
        interval = self.summary.interval("ttft_growth", self.scenario.verdicts.confidence)
        metrics = self.telemetry.server_metrics if self.telemetry is not None else None
        waiting = metrics.requests_waiting_series if metrics is not None else ()
        return saturation.verdict(value, interval, waiting)

    @property
    def client_behind(self) -> str | None:
        """Why the load client could not keep up with the load asked of it (its server
        objectives are then inconclusive), or None; `verdicts.client_guard: false` turns the
        guard off."""
        if not self.scenario.verdicts.client_guard:
            return None
        return client_health.fell_behind(self.client, self.summary, self.load)
