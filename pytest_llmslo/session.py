"""Runs spec scenarios: owns the servers, loads datasets, drives load, keeps every result.

No pytest here: the plugin asks `SloSession.result(...)` once per objective and the first ask for a
(scenario, server) pair runs it. A fault anywhere becomes a `ScenarioResult.error`, never an
exception that loses what was collected.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pytest_llmslo import load as load_engine
from pytest_llmslo.config import DatasetConfig, ServerConfig
from pytest_llmslo.datasets import DatasetError, load_prompts
from pytest_llmslo.metrics import RequestObjective, Summary, summarize
from pytest_llmslo.models import resolve_model
from pytest_llmslo.records import Endpoint, Prompt, RequestRecord
from pytest_llmslo.servers import BackendMissingError, Server, ServerStartError, make_server
from pytest_llmslo.slo import Measurement, Verdict, evaluate
from pytest_llmslo.spec import Scenario, Spec
from pytest_llmslo.telemetry import Telemetry, TelemetryReport
from pytest_llmslo.telemetry.measures import measure as telemetry_measure
from pytest_llmslo.tokens import Tokenizer, load_tokenizer

ServerKey = tuple[str, str]  # (spec path, server name)
# measured on the server's own process tree or its start: meaningless for an external server
SERVER_PROCESS_METRICS = frozenset(
    {
        "startup_time",
        "gpu_memory_peak",
        "gpu_memory_startup_peak",
        "gpu_memory_load_peak",
        "gpu_memory_steady",
        "host_memory_peak",
    }
)
STEADY_SETTLE_S = 0.5
INTERRUPTED_BY_USER = "KeyboardInterrupt"  # LoadResult.interrupted after Ctrl-C


@dataclass
class ScenarioResult:
    """One scenario run against one server: the numbers, the verdicts, and what went wrong."""

    spec_path: str
    scenario: Scenario
    server: ServerConfig
    endpoint: Endpoint | None = None
    summary: Summary | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    telemetry: TelemetryReport | None = None
    records: list[RequestRecord] = field(default_factory=list)
    error: str | None = None  # setup failure or fault that stopped the run
    skipped: str | None = None  # the backend is not installed and the spec allows skipping
    interrupted: str | None = None  # the load stopped early (records kept)
    server_log_tail: str | None = None
    token_note: str | None = None  # how tokens were counted when usage was absent
    started: str = ""  # wall-clock time, ISO 8601
    wall_seconds: float = 0.0

    @property
    def id(self) -> str:
        return f"{self.scenario.name}[{self.server.name}]"

    def verdict(self, metric: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.objective.metric == metric), None)


@dataclass
class _ServerState:
    server: Server
    telemetry: Telemetry | None = None
    endpoint: Endpoint | None = None
    error: str | None = None
    missing_backend: bool = False


class SloSession:
    """Lazily runs (scenario, server) pairs; servers are shared and stopped on request or close."""

    def __init__(
        self,
        output_dir: Path,
        *,
        server_url: str | None = None,
        api_key_env: str | None = None,
        request_limit: int | None = None,
    ) -> None:
        self.output_dir = output_dir
        self.server_url = server_url
        self.api_key_env = api_key_env
        self.request_limit = request_limit
        self.results: dict[tuple[str, str, str], ScenarioResult] = {}
        self._servers: dict[ServerKey, _ServerState] = {}
        self._prompts: dict[tuple[str, str, str], list[Prompt] | DatasetError] = {}
        self._tokenizers: dict[str, Tokenizer | None] = {}

    # --- servers --------------------------------------------------------------------------------

    def unmeasurable(self, spec: Spec, server_name: str, metric: str) -> str | None:
        """Why `metric` cannot be measured on this server, known before anything runs, or None.

        An external server was not started by this run and its processes are not ours: its
        start-up time and memory would be the readiness probe's 40 ms and nothing, values that
        would pass a ceiling they never measured.
        """
        if metric not in SERVER_PROCESS_METRICS:
            return None
        if not self.server_url and spec.servers[server_name].backend != "external":
            return None
        where = "--slo-server-url" if self.server_url else "backend: external"
        return (
            f"{metric} is not measurable on server {server_name!r} ({where}): this run did not "
            "start that server and cannot see its processes; measure it on a server the plugin "
            "starts (backend vllm or hf), or remove the objective for external servers"
        )

    def server_config(self, spec: Spec, name: str) -> ServerConfig:
        cfg = spec.servers[name]
        if not self.server_url:
            return resolve_model(cfg)
        # --slo-server-url: the spec's workload and objectives against a running service
        return ServerConfig(
            name=cfg.name,
            backend="external",
            model=cfg.served_model_name or "",
            base_url=self.server_url,
            api_key_env=self.api_key_env or cfg.api_key_env,
        )

    def _server(self, spec: Spec, cfg: ServerConfig) -> _ServerState:
        key = (str(spec.path), cfg.name)
        managed = self._servers.get(key)
        if managed is not None:
            return managed
        server = make_server(cfg, log_dir=self.output_dir / "logs")
        managed = _ServerState(server)
        self._servers[key] = managed
        # sampling starts before the server so that its start-up memory peak is seen
        managed.telemetry = Telemetry(server.pids, metrics_url=None)
        managed.telemetry.start()
        try:
            managed.endpoint = server.start()
        except BackendMissingError as exc:
            managed.error, managed.missing_backend = str(exc), True
        except ServerStartError as exc:
            managed.error = str(exc)
        except Exception as exc:  # a launcher bug must not lose the session's other results
            managed.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        if managed.endpoint is not None and managed.endpoint.has_metrics:
            managed.telemetry.set_metrics_url(f"{managed.endpoint.base_url}/metrics")
        return managed

    def stop_server(self, spec_path: str, name: str) -> None:
        managed = self._servers.pop((spec_path, name), None)
        if managed is not None:
            _stop(managed)

    def close(self) -> None:
        """Stops every server still running; safe to call more than once."""
        while self._servers:
            _, managed = self._servers.popitem()
            _stop(managed)

    # --- datasets -------------------------------------------------------------------------------

    def _tokenizer(self, model: str) -> Tokenizer | None:
        if model not in self._tokenizers:
            self._tokenizers[model] = load_tokenizer(model)
        return self._tokenizers[model]

    def _load_prompts(
        self, ds: DatasetConfig, model: str, spec: Spec
    ) -> tuple[list[Prompt], Tokenizer | None]:
        tokenizer = self._tokenizer(model)
        key = (str(spec.path), ds.name, model)
        if key not in self._prompts:
            try:
                self._prompts[key] = load_prompts(
                    ds, tokenizer=tokenizer, base_dir=Path(spec.path).parent
                )
            except DatasetError as exc:
                self._prompts[key] = exc
        got = self._prompts[key]
        if isinstance(got, DatasetError):
            raise got
        return got, tokenizer

    # --- scenarios ------------------------------------------------------------------------------

    def result(self, spec: Spec, scenario_name: str, server_name: str) -> ScenarioResult:
        key = (str(spec.path), scenario_name, server_name)
        if key not in self.results:
            res = self.results[key] = self._run(spec, spec.scenarios[scenario_name], server_name)
            if res.interrupted == INTERRUPTED_BY_USER:
                # the engine caught Ctrl-C to keep its records; the person meant the whole run
                raise KeyboardInterrupt(f"{res.id}: {res.interrupted}")
        return self.results[key]

    def _run(self, spec: Spec, scenario: Scenario, server_name: str) -> ScenarioResult:
        res = ScenarioResult(
            spec_path=str(spec.path),
            scenario=scenario,
            server=spec.servers[server_name],
            started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        t0 = time.monotonic()
        try:
            res.server = cfg = self.server_config(spec, server_name)
            self._run_into(res, spec, scenario, cfg)
        except Exception as exc:  # recorded and reported; the other scenarios go on
            res.error = res.error or f"{type(exc).__name__}: {exc}"
        res.wall_seconds = time.monotonic() - t0
        res.verdicts = evaluate(scenario.objectives, lambda m: self._measure(res, m))
        return res

    def _run_into(
        self, res: ScenarioResult, spec: Spec, scenario: Scenario, cfg: ServerConfig
    ) -> None:
        managed = self._server(spec, cfg)
        res.endpoint = managed.endpoint
        if managed.missing_backend and cfg.skip_if_missing:
            res.skipped = f"server {cfg.name!r}: {managed.error}"
            return
        if managed.error is not None or managed.endpoint is None:
            res.error = f"server {cfg.name!r} did not start: {managed.error}"
            return
        endpoint = managed.endpoint
        ds = spec.datasets[scenario.dataset]
        tokenizer_model = cfg.model if cfg.backend != "external" else ""
        try:
            prompts, tokenizer = self._load_prompts(ds, tokenizer_model, spec)
        except DatasetError as exc:
            res.error = f"dataset {ds.name!r}: {exc}"
            return
        load = scenario.load_for(cfg.name)
        if self.request_limit is not None and load.requests is not None:
            load = replace(load, requests=min(load.requests, self.request_limit))
        telemetry = managed.telemetry
        window = telemetry.mark_load_start() if telemetry else None

        def server_gone() -> str | None:
            if cfg.backend != "external" and not managed.server.is_alive():
                return "the server process exited during the run"
            return None

        count: Callable[[str], int] | None = tokenizer.count if tokenizer is not None else None
        run = load_engine.run_load(
            endpoint,
            prompts,
            load,
            count_tokens=count,
            should_stop=server_gone,
            on_measured_start=telemetry.mark_measured_start if telemetry else None,
        )
        if telemetry is not None and window is not None:
            telemetry.mark_load_end()
            # a few samples after the load give the level the server settles at ("steady")
            time.sleep(STEADY_SETTLE_S)
            res.telemetry = telemetry.window_report(window)
        res.records = run.records
        res.interrupted = run.interrupted
        if run.interrupted:
            res.error = f"load stopped early: {run.interrupted}"
            res.server_log_tail = managed.server.log_tail(40)
        if any(r.token_source == "tokenizer" for r in run.records):
            res.token_note = "some responses carried no usage; their tokens were counted locally"
        res.summary = summarize(
            run.records,
            window=(run.window_start, run.window_end),
            percentiles=scenario.percentiles,
            request_objectives=[
                RequestObjective(o.metric, o.op, o.threshold) for o in scenario.request_slo
            ],
        )
        failed_5xx = res.summary.failures_by_category.get("http_5xx", 0)
        if failed_5xx or server_gone():
            res.server_log_tail = managed.server.log_tail(40)

    def _measure(self, res: ScenarioResult, metric: str) -> Measurement:
        if res.error and res.summary is None:
            return Measurement(math.nan, None, res.error)
        if metric in SERVER_PROCESS_METRICS and res.server.backend == "external":
            return Measurement(
                math.nan, None, "not measurable: the server was not started by this run"
            )
        if metric == "startup_time":
            s = res.endpoint.startup_seconds if res.endpoint else None
            if s is None:
                return Measurement(math.nan, None, "the server was not started by this run")
            return Measurement(s, 1, "")
        if res.telemetry is not None:
            got = telemetry_measure(res.telemetry, metric)
            if got is not None:
                return Measurement(*got)
        if res.summary is None:
            return Measurement(math.nan, None, res.error or "no results")
        try:
            value, n, reason = res.summary.value(metric)
        except KeyError:
            return Measurement(math.nan, None, f"{metric} is not measured by this run")
        return Measurement(value, n, reason)


def _stop(managed: _ServerState) -> None:
    try:
        managed.server.stop()
    finally:
        if managed.telemetry is not None:
            managed.telemetry.stop()
