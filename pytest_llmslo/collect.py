"""pytest nodes for SLO specs: file -> scenario -> server -> one item per objective.

Ids read ``spec.yaml::scenario::server::objective``: every part is a node of its own, so an id
copied from the output selects its test, and ``--lf``, ``--deselect`` and JUnit names keep it
whole (pytest reads ``[...]`` as a parameter list that may only end an id).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmslo.datasets import read_spec_datasets
from pytest_llmslo.report import failure_text, scenario_section
from pytest_llmslo.spec import Scenario, Spec, SpecError, load_spec

if TYPE_CHECKING:
    from pytest_llmslo.session import ScenarioResult, SloSession

# when a scenario declares no objective, this item still fails a run that could not complete
COMPLETED = "completed"


class SLOFailure(Exception):
    """An objective was missed or could not be measured."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class SpecFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        if hasattr(self.config, "workerinput"):  # found by name on a pytest-xdist worker
            from pytest_llmslo.plugin import XDIST_REFUSAL

            raise SpecError(self.path, None, "", XDIST_REFUSAL)
        # dataset files are read now: a broken one fails collection, before any server starts
        spec = read_spec_datasets(load_spec(self.path))
        for scenario in spec.scenarios.values():
            yield ScenarioNode.from_parent(self, name=scenario.name, spec=spec, scenario=scenario)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
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
        from pytest_llmslo.plugin import SESSION_KEY

        session: SloSession = self.config.stash[SESSION_KEY]
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
        from pytest_llmslo.plugin import SESSION_KEY

        if self.unmeasurable:
            raise SLOFailure(f"{self.metric}: not measurable: {self.unmeasurable}")
        session: SloSession = self.config.stash[SESSION_KEY]
        node = self.server_node
        result = session.result(node.spec, node.scenario.name, node.server)
        if result.skipped:
            pytest.skip(result.skipped)
        self._record_properties(result)
        if self.metric == COMPLETED:
            if result.error:
                raise SLOFailure(failure_text(result, None))
            return
        verdict = result.verdict(self.metric)
        if verdict is None:
            raise SLOFailure(f"{self.metric}: no verdict was produced")
        if not verdict.passed or result.interrupted:
            raise SLOFailure(failure_text(result, verdict))

    def _record_properties(self, result: ScenarioResult) -> None:
        verdict = result.verdict(self.metric)
        if verdict is not None:
            self.user_properties.append(("slo_objective", verdict.objective.text))
            self.user_properties.append(("slo_measured", str(verdict.measured.value)))
            self.user_properties.append(("slo_passed", str(verdict.passed).lower()))
        self.user_properties.append(("slo_report", scenario_section(result)))

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
