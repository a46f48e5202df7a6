"""Building blocks for hand-written SLO tests and scripts: start a server, run a workload, check.

A hand-written run goes through the runner that spec scenarios use (`runner.py`) and ends in the
same frozen `ScenarioResult`: a server started by a `ServerFactory` is watched by telemetry (its
memory objectives are measured), and under pytest the `llmslo_*` fixtures hand each result to the
session, so it appears in report.md, results.json and JUnit like a spec run.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmslo.config import DatasetConfig, LoadConfig, ServerConfig, VerdictsConfig
from pytest_llmslo.datasets import load_prompts
from pytest_llmslo.metrics import DEFAULT_PERCENTILES, Summary
from pytest_llmslo.models import resolve_model
from pytest_llmslo.records import Endpoint, Prompt, RequestRecord
from pytest_llmslo.result import ScenarioResult, Started
from pytest_llmslo.runner import MonitoredServer, run_scenario
from pytest_llmslo.schema import load_config, verdicts_config
from pytest_llmslo.slo import (
    Measurement,
    Objective,
    Verdict,
    parse_objective,
    parse_request_objective,
)
from pytest_llmslo.spec import Scenario
from pytest_llmslo.tokens import load_tokenizer

_MISSING_TOKENS_HINT = "pass tokenizer_model= (a local model directory or a cached hub id)"


@dataclass(frozen=True)
class LoadRun:
    """What `run_workload` returns: the run's frozen result, as the reports show it, and its
    summary (a run that happened always has one)."""

    result: ScenarioResult
    summary: Summary

    @classmethod
    def of(cls, result: ScenarioResult) -> LoadRun:
        if result.summary is None:
            raise RuntimeError(f"the run has no summary: {result.error or 'nothing was measured'}")
        return cls(result, result.summary)

    @property
    def records(self) -> tuple[RequestRecord, ...]:
        return self.result.records

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        """The verdicts on the objectives given to `run_workload`."""
        return self.result.verdicts

    def measure(self, metric: str) -> Measurement:
        return self.result.measure(metric)


def run_workload(
    endpoint: Endpoint,
    prompts: Sequence[Prompt] | Sequence[str] | DatasetConfig,
    load: LoadConfig | Mapping[str, Any] | None = None,
    *,
    objectives: Mapping[str, str] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    request_slo: Mapping[str, str] | None = None,
    tokenizer_model: str | None = None,
    servers: ServerFactory | None = None,
    name: str = "workload",
    verdicts: VerdictsConfig | Mapping[str, Any] | None = None,
) -> LoadRun:
    """Runs a workload against an endpoint without pytest: prompts may be strings, Prompt objects
    or a DatasetConfig; `load` a LoadConfig or a mapping of its fields (default: 1 user,
    10 requests); `objectives` ({"ttft_p95": "<= 500 ms"}) are judged into `run.verdicts`.

    An endpoint that `servers` (a ServerFactory) started gets telemetry: its memory objectives
    are measured. Any other endpoint was not started by this run, and those objectives are not
    measurable. `verdicts` ({"confidence": 0.95, "inconclusive": "rerun", "rounds": {"min": 1,
    "max": 5}}) is a spec's `verdicts:`: how objectives are judged and how many rounds may run.
    """
    return LoadRun.of(
        workload_result(
            endpoint,
            prompts,
            load,
            objectives=objectives,
            percentiles=percentiles,
            request_slo=request_slo,
            tokenizer_model=tokenizer_model,
            servers=servers,
            name=name,
            verdicts=verdicts,
        )
    )


def workload_result(
    endpoint: Endpoint,
    prompts: Sequence[Prompt] | Sequence[str] | DatasetConfig,
    load: LoadConfig | Mapping[str, Any] | None = None,
    *,
    objectives: Mapping[str, str] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    request_slo: Mapping[str, str] | None = None,
    tokenizer_model: str | None = None,
    servers: ServerFactory | None = None,
    name: str = "workload",
    source: str = "",
    verdicts: VerdictsConfig | Mapping[str, Any] | None = None,
) -> ScenarioResult:
    """`run_workload`'s result before it is wrapped; `source` names where the run comes from in
    the reports (a test's node id)."""
    started = Started.now()
    tokenizer = load_tokenizer(tokenizer_model or endpoint.model)
    if isinstance(prompts, DatasetConfig):
        prompt_list = load_prompts(prompts, tokenizer=tokenizer)
        dataset = prompts.name
    else:
        prompt_list = [
            p if isinstance(p, Prompt) else Prompt(index=i, text=str(p))
            for i, p in enumerate(prompts)
        ]
        dataset = f"{len(prompt_list)} prompts given by the test"
    config = _load_config(load)
    monitored = servers.monitored(endpoint) if servers is not None else None
    server = monitored.config if monitored is not None else reached(endpoint)
    scenario = Scenario(
        name=name,
        servers=(server.name,),
        dataset=dataset,
        load=config,
        objectives=parse_objectives(objectives or {}),
        request_slo=tuple(parse_request_objective(k, v) for k, v in (request_slo or {}).items()),
        percentiles=tuple(percentiles),
        line=0,
        verdicts=as_verdicts_config(verdicts),
    )
    return run_scenario(
        scenario,
        server,
        endpoint,
        prompt_list,
        config,
        source=source,
        started=started,
        tokenizer=tokenizer,
        missing_tokens_hint=_MISSING_TOKENS_HINT,
        monitored=monitored,
    )


def reached(endpoint: Endpoint) -> ServerConfig:
    """The configuration of a server this run did not start: its processes are not ours, so
    its start-up time and memory are not measurable (as for a spec's external server)."""
    return ServerConfig(
        name=endpoint.backend or "endpoint",
        backend="external",
        model=endpoint.model,
        base_url=endpoint.base_url,
    )


def _load_config(load: LoadConfig | Mapping[str, Any] | None) -> LoadConfig:
    if isinstance(load, LoadConfig):
        return load
    values = dict(load or {})
    # a hand-written run without a shape is one user sending ten requests
    if "rate" not in values:
        values.setdefault("parallel", 1)
    if "duration" not in values:
        values.setdefault("requests", 10)
    # checked as a spec's `load:` is: ConfigError names the key, the problem and the fix
    return load_config(values, where="run_workload(load=...)")


def as_verdicts_config(verdicts: VerdictsConfig | Mapping[str, Any] | None) -> VerdictsConfig:
    """A run's `verdicts=`: a VerdictsConfig as given, or one read from a mapping (None: the
    defaults)."""
    if isinstance(verdicts, VerdictsConfig):
        return verdicts
    return verdicts_config(verdicts or {})


def parse_objectives(objectives: Mapping[str, str]) -> tuple[Objective, ...]:
    return tuple(parse_objective(k, v) for k, v in objectives.items())


def _result(run: LoadRun | ScenarioResult) -> ScenarioResult:
    return run.result if isinstance(run, LoadRun) else run


def judge(
    run: LoadRun | ScenarioResult, objectives: Mapping[str, str] | None = None
) -> ScenarioResult:
    """The run's result judged against `objectives` (None: the objectives it ran with)."""
    result = _result(run)
    return result if objectives is None else result.judged(parse_objectives(objectives))


def check_slo(
    run: LoadRun | ScenarioResult, objectives: Mapping[str, str] | None = None
) -> list[Verdict]:
    """The verdicts on `objectives` (None: on those given to `run_workload`)."""
    return list(judge(run, objectives).verdicts)


def assert_slo(run: LoadRun | ScenarioResult, objectives: Mapping[str, str] | None = None) -> None:
    """Raises AssertionError naming every missed objective, with the same detail as a spec run;
    a run that stopped early fails too, as a spec scenario does (None: the objectives given to
    `run_workload`)."""
    result = judge(run, objectives)
    failure = failure_message(result)
    if failure:
        raise AssertionError(failure)
    for verdict in result.verdicts:
        if verdict.inconclusive:  # passed under `inconclusive: pass`: say it was not decisive
            from pytest_llmslo.collect import SLOInconclusiveWarning

            warnings.warn(SLOInconclusiveWarning(verdict.describe()), stacklevel=2)


def failure_message(result: ScenarioResult) -> str:
    """Why a judged result fails its objectives, or "" when it passes them all."""
    lines = [v.describe() for v in result.verdicts if not v.passed]
    if not result.completed:
        lines.append(f"the run did not complete: {result.error or result.interrupted}")
    if not lines:
        return ""
    if result.summary is not None:
        errors = result.summary.failures_by_category
        if errors:
            lines.append("errors: " + ", ".join(f"{k} x{n}" for k, n in errors.items()))
            lines += [f"  {k}: {result.summary.error_examples.get(k, '')}" for k in errors]
    return "\n".join(lines)


class ServerFactory:
    """Starts servers by settings and reuses one already started with the same settings; each
    is watched by telemetry from before its start, for `run_workload(..., servers=factory)`."""

    def __init__(self, log_dir: Path, *, telemetry_process: bool | None = None) -> None:
        self.log_dir = log_dir
        # None: runner.TELEMETRY_PROCESS (a process of its own)
        self.telemetry_process = telemetry_process
        self._servers: dict[str, MonitoredServer] = {}

    def __call__(self, backend: str = "vllm", model: str = "", **settings: Any) -> Endpoint:
        key = json.dumps(
            {"backend": backend, "model": model, **settings}, sort_keys=True, default=str
        )
        monitored = self._servers.get(key)
        if monitored is None or not monitored.server.is_alive():
            if monitored is not None:  # died: its telemetry and log are finished with it
                monitored.stop()
            name = settings.pop("name", f"{backend}-{len(self._servers)}")
            config = resolve_model(
                ServerConfig(name=name, backend=backend, model=model, **settings)  # type: ignore[arg-type]
            )
            monitored = MonitoredServer(
                config, self.log_dir, telemetry_process=self.telemetry_process
            )
            self._servers[key] = monitored
            monitored.start()
        endpoint = monitored.endpoint
        assert endpoint is not None
        return endpoint

    def monitored(self, endpoint: Endpoint) -> MonitoredServer | None:
        """The server this factory started at `endpoint`'s address, or None."""
        return next(
            (
                m
                for m in self._servers.values()
                if m.endpoint is not None and m.endpoint.base_url == endpoint.base_url
            ),
            None,
        )

    def close(self) -> None:
        while self._servers:
            _, monitored = self._servers.popitem()
            # stops its telemetry too, and scrubs the credentials from its log
            monitored.stop()
