"""Runs spec scenarios: owns the servers, loads datasets, and keeps every result of the run.

No pytest here: the plugin asks `SloSession.result(...)` once per objective and the first ask for a
(scenario, server) pair runs it through `runner.py`. A fault anywhere becomes the result's
`error`, never an exception that loses what was collected. Hand-written runs are added with
`add_result`, so the reports hold them too.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
import traceback
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, cast

from pytest_llmslo import interrupts
from pytest_llmslo.baseline import Baseline, compare, run_fingerprint
from pytest_llmslo.capacity import search_capacity
from pytest_llmslo.config import (
    DatasetConfig,
    InconclusivePolicy,
    LoadConfig,
    ServerConfig,
    VerdictsConfig,
)
from pytest_llmslo.datasets import DatasetError, load_prompts
from pytest_llmslo.models import builtin_model_path, is_builtin, resolve_model
from pytest_llmslo.progress import Progress
from pytest_llmslo.record_log import RequestLog
from pytest_llmslo.records import Endpoint, Prompt
from pytest_llmslo.result import SERVER_PROCESS_METRICS, ScenarioResult, Started
from pytest_llmslo.runner import MonitoredServer, not_run, run_scenario
from pytest_llmslo.servers import BackendMissingError, ServerStartError
from pytest_llmslo.spec import Scenario, Spec
from pytest_llmslo.tokens import Tokenizer, TokenizerUnavailable, open_tokenizer

ServerKey = tuple[str, str]  # (spec path, server name)
_NO_TOKENIZER_HINT = (
    "server {name!r} is external and names no tokenizer: add `tokenizer:` to it in the spec "
    "(a local model directory or a hub id in the Hugging Face cache)"
)


@dataclass
class _ServerState:
    monitored: MonitoredServer
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
        confidence: float | None = None,
        inconclusive: str | None = None,
        baseline: Baseline | None = None,
        allow_mismatch: bool = False,
        recording_baseline: bool = False,
        progress: Progress | None = None,
        request_log: RequestLog | None = None,
    ) -> None:
        self.output_dir = output_dir
        # requests.jsonl, written as requests finish (record_log.py); None: with the reports
        self.request_log = request_log
        # server starts and loads as they go (--slo-progress); off unless the plugin shows them
        self.progress = progress if progress is not None else Progress()
        self._log_dir: Path | None = None
        # things the person running the session should know (shown in the terminal summary)
        self.notices: list[str] = []
        self.server_url = server_url
        self.api_key_env = api_key_env
        self.request_limit = request_limit
        # --slo-confidence / --slo-inconclusive: override every spec's `verdicts:`
        self.confidence = confidence
        self.inconclusive = inconclusive
        # --slo-baseline (read at start-up), --slo-baseline-allow-mismatch, and whether this run
        # records a baseline without comparing with one (--slo-save-baseline alone)
        self.baseline = baseline
        self.allow_mismatch = allow_mismatch
        self.recording_baseline = recording_baseline
        # (spec path or test node id, scenario, server) -> its result, in the order they ran
        self.results: dict[tuple[str, str, str], ScenarioResult] = {}
        self._servers: dict[ServerKey, _ServerState] = {}
        self._prompts: dict[tuple[str, str, str], list[Prompt] | DatasetError] = {}
        self._tokenizers: dict[str, Tokenizer | TokenizerUnavailable | None] = {}

    # --- servers --------------------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        """Where managed servers write their logs: `<report dir>/logs`, or a temporary folder
        when that cannot be written (a server must not fail to start over where its log goes)."""
        if self._log_dir is None:
            wanted = self.output_dir / "logs"
            self._log_dir, problem = writable_dir(wanted)
            if problem is not None:
                self.notices.append(
                    f"server logs go to {self._log_dir}: {wanted} cannot be written ({problem})"
                )
        return self._log_dir

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
            f"server {server_name!r} ({where}) was not started by this run, which cannot see its "
            "processes; measure it on a server the plugin starts (backend vllm or hf), or "
            "remove the objective for external servers"
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
            startup_timeout=cfg.startup_timeout,
            tokenizer=cfg.tokenizer,
            metrics=cfg.metrics,
        )

    def _server(self, spec: Spec, cfg: ServerConfig) -> _ServerState:
        key = (str(spec.path), cfg.name)
        state = self._servers.get(key)
        if state is not None:
            return state
        state = _ServerState(MonitoredServer(cfg, self.log_dir))
        self._servers[key] = state
        server = state.monitored.server
        self.progress.server_starting(cfg.name, lambda: getattr(server, "log_path", None))
        try:
            state.endpoint = state.monitored.start()
        except BackendMissingError as exc:
            state.error, state.missing_backend = str(exc), True
        except ServerStartError as exc:
            state.error = str(exc)
        except Exception as exc:  # a launcher bug must not lose the session's other results
            state.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        finally:  # an interrupted start ends here too, and its line must not stay
            failed = (state.error or "interrupted") if state.endpoint is None else None
            self.progress.server_started(cfg.name, failed)
        return state

    def stop_server(self, spec_path: str, name: str) -> None:
        state = self._servers.pop((spec_path, name), None)
        if state is not None:
            with interrupts.shielded():  # a signal now is raised once the server is stopped
                state.monitored.stop()

    def close(self) -> None:
        """Stops every server still running and closes the request log; safe to call more than
        once."""
        self.progress.close()
        if self.request_log is not None:
            self.request_log.close()
        with interrupts.shielded():  # a signal now is raised once every server is stopped
            while self._servers:
                _, state = self._servers.popitem()
                state.monitored.stop()

    # --- datasets -------------------------------------------------------------------------------

    def _tokenizer(self, model: str, *, required: bool) -> Tokenizer | None:
        """The tokenizer `model` names; None when there is none, unless `required` (raises)."""
        if model not in self._tokenizers:
            try:
                self._tokenizers[model] = open_tokenizer(model) if model else None
            except TokenizerUnavailable as exc:
                self._tokenizers[model] = exc
        got = self._tokenizers[model]
        if isinstance(got, TokenizerUnavailable):
            if required:
                raise got
            return None
        return got

    def _load_prompts(
        self, ds: DatasetConfig, model: str, spec: Spec, *, required: bool = False
    ) -> tuple[list[Prompt], Tokenizer | None]:
        tokenizer = self._tokenizer(model, required=required)
        key = (str(spec.path), ds.name, model)
        if key not in self._prompts:
            try:
                self._prompts[key] = load_prompts(
                    ds,
                    tokenizer=tokenizer,
                    base_dir=Path(spec.path).parent,
                    rows=spec.rows.get(ds.name),  # read at collection; not read again
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
            # a signal (Ctrl-C, CI's SIGTERM) stops the load, which keeps its records; it is
            # raised here, once the scenario's result is kept, and ends the whole run
            with interrupts.shielded():
                scenario = spec.scenarios[scenario_name]
                if scenario.side_by_side:
                    self._run_side_by_side(spec, scenario)
                else:
                    self.results[key] = self.compared(self._run(spec, scenario, server_name))
        return self.results[key]

    def _run_side_by_side(self, spec: Spec, scenario: Scenario) -> None:
        """Every server of `scenario` under its load at the same time (`side_by_side: true`).

        The servers start here, one after another, where a signal ends a start at once; then
        each server's load runs in a thread of its own, and a signal stops them all (each load
        listens for it). Each result is its own server's: its records, and the memory of its
        own process tree.
        """
        names = [
            n for n in scenario.servers if (str(spec.path), scenario.name, n) not in self.results
        ]
        started = Started.now()
        for position, name in enumerate(names):
            try:
                cfg = self.server_config(spec, name)
                with interrupts.interruptible():
                    self._server(spec, cfg)
            except interrupts.Interrupted as exc:  # kept, then raised by result()
                interrupts.postpone(exc.signal_name)
                for unrun in names[position:]:
                    self.results[(str(spec.path), scenario.name, unrun)] = self._never_loaded(
                        spec,
                        scenario,
                        unrun,
                        started,
                        interrupted=exc.signal_name,
                        error=f"interrupted by {exc.signal_name} before the load",
                    )
                return
        outcomes: dict[str, ScenarioResult] = {}

        def run(name: str) -> None:
            outcomes[name] = self._run(spec, scenario, name)  # records every fault it meets

        threads = [
            threading.Thread(target=run, args=(name,), name=f"llmslo-load-{name}", daemon=True)
            for name in names
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # a short wait lets the signal handler run meanwhile
                thread.join(0.2)
        for name in names:
            others = ", ".join(repr(n) for n in names if n != name)
            outcome = outcomes.get(name)
            if outcome is None:  # _run records every Exception: only a thread killed hard
                outcome = self._never_loaded(
                    spec, scenario, name, started, error="the load's thread ended without a result"
                )
            result = replace(
                outcome, load_notes=(*outcome.load_notes, f"side by side with {others}")
            )
            self.results[(str(spec.path), scenario.name, name)] = self.compared(result)

    def _never_loaded(
        self,
        spec: Spec,
        scenario: Scenario,
        name: str,
        started: Started,
        *,
        error: str,
        interrupted: str | None = None,
    ) -> ScenarioResult:
        load, notes = effective_load(scenario, name, self.request_limit, None)
        return not_run(
            self.with_overrides(scenario),
            spec.servers[name],
            source=str(spec.path),
            started=started,
            load=load,
            load_notes=notes,
            interrupted=interrupted,
            error=error,
        )

    def compared(self, result: ScenarioResult) -> ScenarioResult:
        """`result` with its fingerprint and, when it has relative objectives, judged against
        the baseline (or skipped, or failed for want of one)."""
        if result.skipped is not None or result.endpoint is None:
            return result
        if result.fingerprint is None:  # each round's pooled result comes here: taken once
            result = replace(result, fingerprint=run_fingerprint(result))
        if not any(o.relative for o in result.scenario.objectives):
            return result
        comparison = compare(
            self.baseline,
            result,
            allow_mismatch=self.allow_mismatch,
            recording=self.recording_baseline,
        )
        return replace(result, comparison=comparison).judged(result.scenario.objectives)

    def with_overrides(self, scenario: Scenario) -> Scenario:
        """`scenario` with --slo-confidence / --slo-inconclusive applied to its `verdicts`."""
        return replace(scenario, verdicts=self.verdicts_for(scenario.verdicts))

    def verdicts_for(self, verdicts: VerdictsConfig) -> VerdictsConfig:
        """`verdicts` with --slo-confidence / --slo-inconclusive applied."""
        if self.confidence is not None:
            verdicts = replace(verdicts, confidence=self.confidence)
        if self.inconclusive is not None:
            verdicts = replace(verdicts, inconclusive=cast(InconclusivePolicy, self.inconclusive))
        return verdicts

    def rejudged(self, result: ScenarioResult) -> ScenarioResult:
        """A run made elsewhere (a hand-written test's) judged under this session's overrides."""
        scenario = self.with_overrides(result.scenario)
        return self.compared(replace(result, scenario=scenario).judged(scenario.objectives))

    def add_result(self, result: ScenarioResult) -> None:
        """Keep a run made elsewhere (a hand-written test's) for the reports; a later result
        with the same source, scenario and server replaces it."""
        self.results[result.key] = result

    def _run(self, spec: Spec, scenario: Scenario, server_name: str) -> ScenarioResult:
        started = Started.now()
        scenario = self.with_overrides(scenario)
        cfg = spec.servers[server_name]
        load, notes = effective_load(scenario, server_name, self.request_limit, None)
        endpoint: Endpoint | None = None

        def not_run_because(
            *, error: str | None = None, skipped: str | None = None, interrupted: str | None = None
        ) -> ScenarioResult:
            return not_run(
                scenario,
                cfg,
                source=str(spec.path),
                started=started,
                load=load,
                load_notes=notes,
                endpoint=endpoint,
                error=error,
                skipped=skipped,
                interrupted=interrupted,
            )

        try:
            cfg = self.server_config(spec, server_name)
            with interrupts.interruptible():  # a start takes minutes, and nothing is measured yet
                state = self._server(spec, cfg)
            endpoint = state.endpoint
            if state.missing_backend and cfg.skip_if_missing:
                return not_run_because(skipped=f"server {cfg.name!r}: {state.error}")
            if state.error is not None or endpoint is None:
                return not_run_because(error=f"server {cfg.name!r} did not start: {state.error}")
            ds = spec.datasets[scenario.dataset]
            # with --slo-server-url, the model a vllm/hf server of the spec names counts tokens
            original = spec.servers[cfg.name]
            spec_model = original.model if original.backend != "external" else ""
            tokenizer_model = tokenizer_for(cfg, endpoint, spec_model)
            try:
                with interrupts.interruptible():
                    prompts, tokenizer = self._load_prompts(
                        ds, tokenizer_model, spec, required=cfg.tokenizer is not None
                    )
            except TokenizerUnavailable as exc:
                return not_run_because(error=f"server {cfg.name!r}: tokenizer: {exc}")
            except DatasetError as exc:
                error = f"dataset {ds.name!r}: {exc}"
                if tokenizer_model == "" and "tokenizer" in str(exc):
                    error += f"; {_NO_TOKENIZER_HINT.format(name=cfg.name)}"
                return not_run_because(error=error)
            load, notes = effective_load(scenario, cfg.name, self.request_limit, len(prompts))
            live, server = endpoint, cfg  # as they are now, for the runs below
            steps = itertools.count(1)  # a capacity search's steps, in the order they run

            def run_once(
                step: Scenario, step_load: LoadConfig, step_notes: tuple[str, ...]
            ) -> ScenarioResult:
                line: dict[str, Any] = {"scenario": scenario.name, "server": server.name}
                if scenario.capacity is not None:
                    line["capacity_step"] = next(steps)
                return run_scenario(
                    step,
                    server,
                    live,
                    prompts,
                    step_load,
                    source=str(spec.path),
                    started=started if step is scenario else Started.now(),
                    load_notes=step_notes,
                    tokenizer=tokenizer,
                    missing_tokens_hint=(
                        _NO_TOKENIZER_HINT.format(name=server.name)
                        if server.backend == "external"
                        else f"make {server.model!r}'s tokenizer available locally or set "
                        "`tokenizer:`"
                    ),
                    monitored=state.monitored,
                    compared=self.compared,
                    progress=counters,
                    log=self.request_log,
                    log_fields=line,
                )

            # one set of counters for the scenario on this server: rounds and capacity steps add up
            counters = self.progress.load(f"{scenario.name}::{cfg.name}")
            try:
                if scenario.capacity is not None:  # the same load at rising parallel or rate
                    return search_capacity(scenario, load, notes, run_once, started=started)
                return run_once(scenario, load, notes)
            finally:
                self.progress.load_ended(counters)
        except interrupts.Interrupted as exc:  # before the load: kept, then raised by result()
            interrupts.postpone(exc.signal_name)
            return not_run_because(
                interrupted=exc.signal_name,
                error=f"interrupted by {exc.signal_name} before the load",
            )
        except Exception as exc:  # recorded and reported; the other scenarios go on
            return not_run_because(error=f"{type(exc).__name__}: {exc}")


def effective_load(
    scenario: Scenario, server: str, request_cap: int | None, prompt_count: int | None
) -> tuple[LoadConfig, tuple[str, ...]]:
    """The load a scenario runs on a server, and why it differs from the scenario's `load:`.

    `server_load` replaces fields per server; a load with neither `requests` nor `duration`
    sends one request per prompt; the request cap (--slo-max-requests) lowers `requests`, and
    gives a duration-only load a request count too (the duration still bounds it).
    """
    load = scenario.load_for(server)
    notes: list[str] = []
    changed = [
        f"{f.name} {getattr(load, f.name)}"
        for f in fields(LoadConfig)
        if getattr(load, f.name) != getattr(scenario.load, f.name)
    ]
    if changed:
        notes.append(f"server_load.{server}: " + ", ".join(changed))
    if load.requests is None and load.duration is None and prompt_count is not None:
        load = replace(load, requests=prompt_count)
        notes.append(f"{prompt_count} requests: one per prompt (no requests or duration given)")
    if request_cap is not None:
        if load.requests is None:
            load = replace(load, requests=request_cap)
            notes.append(
                f"requests capped at {request_cap} by --slo-max-requests "
                f"(the {load.duration:g} s duration still applies)"
                if load.duration is not None
                else f"requests capped at {request_cap} by --slo-max-requests"
            )
        elif load.requests > request_cap:
            notes.append(
                f"requests capped at {request_cap} by --slo-max-requests (from {load.requests})"
            )
            load = replace(load, requests=request_cap)
    return load, tuple(notes)


def writable_dir(wanted: Path) -> tuple[Path, str | None]:
    """`wanted`, created, if a file can be written in it; else a new temporary folder and why."""
    try:
        wanted.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=wanted, prefix=".llmslo-probe-"):
            pass
        return wanted, None
    except OSError as exc:
        return Path(tempfile.mkdtemp(prefix="llmslo-logs-")), f"{type(exc).__name__}: {exc}"


def tokenizer_for(cfg: ServerConfig, endpoint: Endpoint, spec_model: str = "") -> str:
    """What names the tokenizer a server's tokens are counted with; "" when nothing does.

    The spec's `tokenizer:` first; then a started server's model (or, with --slo-server-url,
    `spec_model`, the model the spec's vllm/hf server names); for an external server, its
    `model` or the name it serves when either is a local directory (vLLM serves a model under
    its path unless given another name).
    """
    name = cfg.tokenizer or (cfg.model if cfg.backend != "external" else spec_model)
    if is_builtin(name):
        return str(builtin_model_path(name))
    if name:
        return name
    for name in (cfg.model, endpoint.model):
        if name and Path(name).expanduser().is_dir():
            return name
    return ""
