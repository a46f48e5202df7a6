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

from pytest_llmslo.catalogue import METRICS
from pytest_llmslo.config import DEFAULT_CONFIDENCE
from pytest_llmslo.slo import Measurement, Objective, Verdict, evaluate
from pytest_llmslo.telemetry.measures import measure as telemetry_measure

if TYPE_CHECKING:
    from pytest_llmslo.config import LoadConfig, ServerConfig
    from pytest_llmslo.metrics import Summary
    from pytest_llmslo.records import Endpoint, RequestRecord
    from pytest_llmslo.spec import Scenario
    from pytest_llmslo.telemetry import TelemetryReport

# measured on the server's own process tree or its start: meaningless for a server this run did
# not start (an external one, or an endpoint a hand-written test reached on its own)
SERVER_PROCESS_METRICS = frozenset(m.name for m in METRICS if m.server_process)


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
        return replace(
            self,
            scenario=replace(self.scenario, objectives=tuple(objectives)),
            verdicts=tuple(
                evaluate(
                    objectives,
                    lambda metric: self.measure(metric, policy.confidence),
                    inconclusive=policy.inconclusive,
                )
            ),
        )
