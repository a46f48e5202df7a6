"""pytest nodes for SLO specs: file -> scenario -> server -> one item per objective.

Ids read ``spec.yaml::scenario::server::objective``: every part is a node of its own, so an id
copied from the output selects its test, and ``--lf``, ``--deselect`` and JUnit names keep it
whole (pytest reads ``[...]`` as a parameter list that may only end an id).

The plugin imports this module in every pytest run: the spec reader, the datasets, the reports
and the engine are imported when a spec is collected or run, never before.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_llmslo.result import ScenarioResult
    from pytest_llmslo.session import SloSession
    from pytest_llmslo.spec import Scenario, Spec


class SLOInconclusiveWarning(pytest.PytestWarning):
    """An objective's interval straddles its threshold and the policy counts it as passed
    (`inconclusive: pass`): the test passes, and this warning says that it was not decisive."""


# when a scenario declares no objective, this item still fails a run that could not complete
COMPLETED = "completed"

XDIST_REFUSAL = (
    "pytest-llmslo: SLO specs cannot run under pytest-xdist: every worker would start its own "
    "copy of each server, and concurrent load from other workers would distort the measurements. "
    "Run the specs in a separate pytest invocation without -n (e.g. 'pytest --slo SPEC -p "
    "no:xdist'), and your other tests with -n."
)

# How to open the run's SloSession (the plugin sets it when pytest is configured), and the
# session once open: it opens on first use, so a run without specs or llmslo_* fixtures never
# imports the load engine.
OPEN_SESSION_KEY: pytest.StashKey[Callable[[], SloSession]] = pytest.StashKey()
_SESSION_KEY: pytest.StashKey[SloSession] = pytest.StashKey()


def slo_session(config: pytest.Config) -> SloSession:
    """The run's SloSession, opened now if nothing has opened it yet."""
    session = config.stash.get(_SESSION_KEY, None)
    if session is None:
        session = config.stash[OPEN_SESSION_KEY]()
        config.stash[_SESSION_KEY] = session
    return session


def opened_session(config: pytest.Config) -> SloSession | None:
    """The run's SloSession if something opened it; None: nothing to report and no server."""
    return config.stash.get(_SESSION_KEY, None)


class SLOFailure(Exception):
    """An objective was missed or could not be measured."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class SpecFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        from pytest_llmslo.datasets import read_spec_datasets
        from pytest_llmslo.spec import SpecError, load_spec

        if hasattr(self.config, "workerinput"):  # found by name on a pytest-xdist worker
            raise SpecError(self.path, None, "", XDIST_REFUSAL)
        # dataset files are read now: a broken one fails collection, before any server starts
        spec = read_spec_datasets(load_spec(self.path))
        for scenario in spec.scenarios.values():
            yield ScenarioNode.from_parent(self, name=scenario.name, spec=spec, scenario=scenario)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        from pytest_llmslo.spec import SpecError

        if isinstance(excinfo.value, SpecError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class ScenarioNode(pytest.Collector):
    """One scenario of a spec; its children are the servers it runs on."""

    def __init__(self, *, spec: Spec, scenario: Scenario, **kw: Any) -> None:
        super().__init__(**kw)
        self.spec = spec
        self.scenario = scenario

    def collect(self) -> Iterator[pytest.Collector]:
        for server in self.scenario.servers:
            yield ServerNode.from_parent(
                self, name=server, spec=self.spec, scenario=self.scenario, server=server
            )


class ServerNode(pytest.Collector):
    """A scenario on one server: one run of its load, one item per objective."""

    def __init__(self, *, spec: Spec, scenario: Scenario, server: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.spec = spec
        self.scenario = scenario
        self.server = server

    def collect(self) -> Iterator[pytest.Item]:
        session = slo_session(self.config)
        metrics = [o.metric for o in self.scenario.objectives] or [COMPLETED]
        for metric in metrics:
            yield SLOItem.from_parent(
                self,
                name=metric,
                metric=metric,
                unmeasurable=session.unmeasurable(self.spec, self.server, metric),
            )


class SLOItem(pytest.Item):
    """One objective of one scenario on one server; the first item of a pair runs the load."""

    def __init__(self, *, metric: str, unmeasurable: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.metric = metric
        # known at collection: fail without running (or waiting for) the scenario's load
        self.unmeasurable = unmeasurable
        parent = self.parent
        assert isinstance(parent, ServerNode)
        self.server_node = parent

    @property
    def server_key(self) -> tuple[str, str]:
        return (str(self.server_node.spec.path), self.server_node.server)

    def runtest(self) -> None:
        from pytest_llmslo.report import failure_text

        if self.unmeasurable:
            raise SLOFailure(f"{self.metric} = not measurable: {self.unmeasurable}")
        node = self.server_node
        result = slo_session(self.config).result(node.spec, node.scenario.name, node.server)
        if result.skipped:
            pytest.skip(result.skipped)
        self.user_properties += junit_properties(result, [self.metric])
        if self.metric == COMPLETED:
            if not result.completed:
                raise SLOFailure(failure_text(result, None))
            return
        verdict = result.verdict(self.metric)
        if verdict is None:
            raise SLOFailure(f"{self.metric}: no verdict was produced")
        if verdict.skipped is not None:  # a relative objective while the baseline is recorded
            pytest.skip(verdict.skipped)
        if not result.passed(self.metric):
            raise SLOFailure(failure_text(result, verdict))
        if verdict.inconclusive:
            warnings.warn(SLOInconclusiveWarning(verdict.describe()), stacklevel=1)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, SLOFailure):
            return excinfo.value.text
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        node = self.server_node
        line = next(
            (o.line for o in node.scenario.objectives if o.metric == self.metric),
            node.scenario.line,
        )
        domain = f"{node.scenario.name}::{node.server}::{self.metric}"
        return self.path, (line - 1) if line else None, domain


def junit_properties(result: ScenarioResult, metrics: list[str]) -> list[tuple[str, object]]:
    """What JUnit XML records for a test: each objective's target, value and outcome, and the
    scenario's report section (spec items and hand-written tests alike)."""
    from pytest_llmslo.report import scenario_section

    properties: list[tuple[str, object]] = []
    for metric in metrics:
        verdict = result.verdict(metric)
        if verdict is not None:
            properties.append(("slo_objective", verdict.objective.text))
            properties.append(("slo_measured", str(verdict.measured.value)))
            properties.append(("slo_passed", str(result.passed(metric)).lower()))
            properties.append(("slo_outcome", str(verdict.outcome)))
            interval = verdict.measured.interval
            if interval is not None:
                properties.append(("slo_interval_low", str(interval.low)))
                properties.append(("slo_interval_high", str(interval.high)))
    properties.append(("slo_report", scenario_section(result)))
    return properties
