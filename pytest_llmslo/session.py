"""Runs spec scenarios: owns the servers, loads datasets, drives load, keeps every result.

No pytest here: the plugin asks `SloSession.result(...)` once per objective and the first ask for a
(scenario, server) pair runs it. A fault anywhere becomes a `ScenarioResult.error`, never an
exception that loses what was collected.
"""

from __future__ import annotations

import datetime as dt
import math
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from pytest_llmslo import interrupts
from pytest_llmslo import load as load_engine
from pytest_llmslo.config import DatasetConfig, LoadConfig, ServerConfig
from pytest_llmslo.datasets import DatasetError, load_prompts
from pytest_llmslo.metrics import RequestObjective, Summary, summarize
from pytest_llmslo.models import builtin_model_path, is_builtin, resolve_model
from pytest_llmslo.records import Endpoint, Prompt, RequestRecord
from pytest_llmslo.redact import scrub_file, server_secrets
from pytest_llmslo.servers import (
    BackendMissingError,
    ExternalServer,
    Server,
    ServerStartError,
    make_server,
)
from pytest_llmslo.slo import Measurement, Verdict, evaluate
from pytest_llmslo.spec import Scenario, Spec
from pytest_llmslo.telemetry import Telemetry, TelemetryReport
from pytest_llmslo.telemetry.measures import measure as telemetry_measure
from pytest_llmslo.tokens import Tokenizer, TokenizerUnavailable, open_tokenizer

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
NOT_OURS = "not applicable: external server, not started by this run"
_NO_TOKENIZER_HINT = (
    "server {name!r} is external and names no tokenizer: add `tokenizer:` to it in the spec "
    "(a local model directory or a hub id in the Hugging Face cache)"
)


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
        self._log_dir: Path | None = None
        # things the person running the session should know (shown in the terminal summary)
        self.notices: list[str] = []
        self.server_url = server_url
        self.api_key_env = api_key_env
        self.request_limit = request_limit
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
            startup_timeout=cfg.startup_timeout,
            tokenizer=cfg.tokenizer,
            metrics=cfg.metrics,
        )

    def _server(self, spec: Spec, cfg: ServerConfig) -> _ServerState:
        key = (str(spec.path), cfg.name)
        managed = self._servers.get(key)
        if managed is not None:
            return managed
        server = make_server(cfg, log_dir=self.log_dir)
        managed = _ServerState(server)
        self._servers[key] = managed
        # sampling starts before the server so that its start-up memory peak is seen
        managed.telemetry = Telemetry(
            server.pids,
            metrics_url=None,
            not_ours=NOT_OURS if isinstance(server, ExternalServer) else None,
        )
        managed.telemetry.start()
        try:
            managed.endpoint = server.start()
        except BackendMissingError as exc:
            managed.error, managed.missing_backend = str(exc), True
        except ServerStartError as exc:
            managed.error = str(exc)
        except Exception as exc:  # a launcher bug must not lose the session's other results
            managed.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        if managed.endpoint is not None:
            _scrape_metrics(managed.telemetry, managed.endpoint, server, cfg)
        return managed

    def stop_server(self, spec_path: str, name: str) -> None:
        managed = self._servers.pop((spec_path, name), None)
        if managed is not None:
            with interrupts.shielded():  # a signal now is raised once the server is stopped
                _stop(managed)

    def close(self) -> None:
        """Stops every server still running; safe to call more than once."""
        with interrupts.shielded():  # a signal now is raised once every server is stopped
            while self._servers:
                _, managed = self._servers.popitem()
                _stop(managed)

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
                self.results[key] = self._run(spec, spec.scenarios[scenario_name], server_name)
        return self.results[key]

    def _run(self, spec: Spec, scenario: Scenario, server_name: str) -> ScenarioResult:
        res = ScenarioResult(
            spec_path=str(spec.path),
            scenario=scenario,
            server=spec.servers[server_name],
            started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        res.load, res.load_notes = effective_load(scenario, server_name, self.request_limit, None)
        t0 = time.monotonic()
        try:
            res.server = cfg = self.server_config(spec, server_name)
            self._run_into(res, spec, scenario, cfg)
        except interrupts.Interrupted as exc:  # before the load: kept, then raised by result()
            res.interrupted = exc.signal_name
            res.error = f"interrupted by {exc.signal_name} before the load"
            interrupts.postpone(exc.signal_name)
        except Exception as exc:  # recorded and reported; the other scenarios go on
            res.error = res.error or f"{type(exc).__name__}: {exc}"
        res.wall_seconds = time.monotonic() - t0
        res.verdicts = evaluate(scenario.objectives, lambda m: self._measure(res, m))
        return res

    def _run_into(
        self, res: ScenarioResult, spec: Spec, scenario: Scenario, cfg: ServerConfig
    ) -> None:
        with interrupts.interruptible():  # a start takes minutes, and nothing is measured yet
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
        # with --slo-server-url, the model a vllm/hf server of the spec names still counts tokens
        original = spec.servers[cfg.name]
        spec_model = original.model if original.backend != "external" else ""
        tokenizer_model = tokenizer_for(cfg, endpoint, spec_model)
        try:
            with interrupts.interruptible():
                prompts, tokenizer = self._load_prompts(
                    ds, tokenizer_model, spec, required=cfg.tokenizer is not None
                )
        except TokenizerUnavailable as exc:
            res.error = f"server {cfg.name!r}: tokenizer: {exc}"
            return
        except DatasetError as exc:
            res.error = f"dataset {ds.name!r}: {exc}"
            if tokenizer_model == "" and "tokenizer" in str(exc):
                res.error += f"; {_NO_TOKENIZER_HINT.format(name=cfg.name)}"
            return
        load, res.load_notes = effective_load(scenario, cfg.name, self.request_limit, len(prompts))
        res.load = load
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
        res.load_notes += tuple(
            f"{name} is not sent to {cfg.backend} servers (transformers serve rejects it "
            "with HTTP 422)"
            for name in load_engine.unsent_fields(endpoint.backend, load)
        )
        res.token_note = token_note(run.records, tokenizer, cfg)
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
        # servers print their arguments (vLLM its non-default ones, an API key included) and the
        # log folder is what CI uploads: the log keeps everything but the credentials
        log_path = getattr(managed.server, "log_path", None)
        if log_path is not None:
            scrub_file(log_path, server_secrets(managed.server.config))


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


def token_note(
    records: list[RequestRecord], tokenizer: Tokenizer | None, cfg: ServerConfig
) -> str | None:
    """What the report says about token counts the server did not send, or None when it sent all.

    Counts from re-tokenizing the streamed text are estimates: on the tiny model against
    LLaMA-Factory's API they came out 16% above what the server generated.
    """
    ok = [r for r in records if r.ok and not r.warmup]
    estimated = sum(1 for r in ok if r.token_source == "tokenizer")
    missing = sum(1 for r in ok if r.output_tokens is None)
    if estimated:
        name = tokenizer.name if tokenizer is not None else "the model's tokenizer"
        return (
            f"token counts are estimated for {estimated} of {len(ok)} successful requests: the "
            f"server sent no usage, so their text was re-tokenized with {name}, which may count "
            "differently from the server; output_throughput, total_token_throughput, tpot and "
            "the token counts rest on these estimates"
        )
    if missing:
        hint = (
            _NO_TOKENIZER_HINT.format(name=cfg.name)
            if cfg.backend == "external"
            else f"make {cfg.model!r}'s tokenizer available locally or set `tokenizer:`"
        )
        return (
            f"{missing} of {len(ok)} successful requests have no token count: the server sent "
            f"no usage and no tokenizer was available; {hint}"
        )
    return None


def _scrape_metrics(
    telemetry: Telemetry | None, endpoint: Endpoint, server: Server, cfg: ServerConfig
) -> None:
    """Point telemetry at /metrics when the server serves it and the spec allows, else say why."""
    if telemetry is None:
        return
    if endpoint.has_metrics and cfg.metrics is not False:
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        telemetry.set_metrics_url(f"{endpoint.base_url}/metrics", headers=headers)
    elif cfg.metrics is False:
        telemetry.metrics_not_scraped("not scraped: the server's spec sets `metrics: false`")
    elif isinstance(server, ExternalServer) and server.metrics_reason:
        telemetry.metrics_not_scraped(server.metrics_reason)
