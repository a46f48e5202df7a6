"""pytest nodes for SLO specs: file -> scenario[server] -> one item per objective."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

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
        spec = load_spec(self.path)
        for scenario in spec.scenarios.values():
            for server in scenario.servers:
                yield ScenarioNode.from_parent(
                    self,
                    name=f"{scenario.name}[{server}]",
                    spec=spec,
                    scenario=scenario,
                    server=server,
                )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, SpecError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class ScenarioNode(pytest.Collector):
    def __init__(self, *, spec: Spec, scenario: Scenario, server: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.spec = spec
        self.scenario = scenario
        self.server = server

    def collect(self) -> Iterator[pytest.Item]:
        metrics = [o.metric for o in self.scenario.objectives] or [COMPLETED]
        for metric in metrics:
            yield SLOItem.from_parent(self, name=metric, metric=metric)


class SLOItem(pytest.Item):
    """One objective of one scenario on one server; the first item of a pair runs the load."""

    def __init__(self, *, metric: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.metric = metric
        parent = self.parent
        assert isinstance(parent, ScenarioNode)
        self.scenario_node = parent

    @property
    def server_key(self) -> tuple[str, str]:
        return (str(self.scenario_node.spec.path), self.scenario_node.server)

    def runtest(self) -> None:
        from pytest_llmslo.plugin import SESSION_KEY

        session: SloSession = self.config.stash[SESSION_KEY]
        node = self.scenario_node
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
        line = next(
            (o.line for o in self.scenario_node.scenario.objectives if o.metric == self.metric),
            self.scenario_node.scenario.line,
        )
        return self.path, (line - 1) if line else None, f"{self.scenario_node.name}::{self.metric}"
