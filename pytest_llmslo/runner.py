"""The one scenario runner: a workload against a server -> a frozen `ScenarioResult`.

Spec scenarios (`session.py`) and hand-written runs (`handtests.py`) both come here, so both get
the same telemetry window, summary, notes and verdicts, built once. A server this run starts is a
`MonitoredServer`: its telemetry samples from before the start (the start-up memory peak) to the
stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pytest_llmslo import load as load_engine
from pytest_llmslo.catalogue import BY_NAME, Producer
from pytest_llmslo.client_health import ClientHealth
from pytest_llmslo.config import LoadConfig, ServerConfig
from pytest_llmslo.gap_histogram import GapHistogram
from pytest_llmslo.metrics import RequestObjective, Summary, summarize
from pytest_llmslo.progress import LoadProgress
from pytest_llmslo.record_log import RecordSink, RequestLog
from pytest_llmslo.records import Endpoint, Prompt, RequestRecord
from pytest_llmslo.redact import scrub_file, server_secrets
from pytest_llmslo.report import run_secrets
from pytest_llmslo.result import RoundTrace, ScenarioResult, Started
from pytest_llmslo.servers import ExternalServer, Server, make_server
from pytest_llmslo.slo import metric_info
from pytest_llmslo.spec import Scenario
from pytest_llmslo.telemetry import Telemetry, TelemetryReport
from pytest_llmslo.telemetry.process import ServerTelemetry, TelemetryProcess
from pytest_llmslo.tokens import Tokenizer
from pytest_llmslo.workers import run_load_any

STEADY_SETTLE_S = 0.5
NOT_OURS = "not applicable: external server, not started by this run"
# Telemetry samples from a process of its own (telemetry/process.py: a fresh interpreter), not
# from threads beside the event loop that stamps requests. False keeps it in this process, for
# where no child Python can be started (an embedded interpreter whose sys.executable is not
# Python, a sandbox that forbids new processes); a start that fails is reported either way.
TELEMETRY_PROCESS = True


class MonitoredServer:
    """A server and the telemetry that watches it, from before its start until its stop.

    `telemetry_process` (default: `TELEMETRY_PROCESS`) says whether telemetry samples from a
    process of its own.
    """

    def __init__(
        self, config: ServerConfig, log_dir: Path, *, telemetry_process: bool | None = None
    ) -> None:
        self.config = config
        self.server: Server = make_server(config, log_dir=log_dir)
        self.external = isinstance(self.server, ExternalServer)
        own = TELEMETRY_PROCESS if telemetry_process is None else telemetry_process
        kind = TelemetryProcess if own else Telemetry
        self.telemetry: ServerTelemetry = kind(
            self.server.pids, metrics_url=None, not_ours=NOT_OURS if self.external else None
        )
        self.endpoint: Endpoint | None = None

    def start(self) -> Endpoint:
        """Samples first, then starts the server; raises what the server's start raises."""
        self.telemetry.start()
        self.endpoint = self.server.start()
        self._scrape_metrics(self.endpoint)
        return self.endpoint

    def gone(self) -> str | None:
        """Why a load on this server should stop now, or None (the load engine polls it)."""
        if not self.external and not self.server.is_alive():
            return "the server process exited during the run"
        return None

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            self.telemetry.stop()
            # servers print their arguments (vLLM its non-default ones, an API key included) and
            # the log folder is what CI uploads: the log keeps everything but the credentials
            log_path = getattr(self.server, "log_path", None)
            if log_path is not None:
                scrub_file(log_path, server_secrets(self.server.config))

    def _scrape_metrics(self, endpoint: Endpoint) -> None:
        """Point telemetry at /metrics when the server serves it and its config allows, else
        say why not."""
        if endpoint.has_metrics and self.config.metrics is not False:
            headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
            self.telemetry.set_metrics_url(f"{endpoint.base_url}/metrics", headers=headers)
        elif self.config.metrics is False:
            self.telemetry.metrics_not_scraped(
                "not scraped: the server's spec sets `metrics: false`"
            )
        elif isinstance(self.server, ExternalServer) and self.server.metrics_reason:
            self.telemetry.metrics_not_scraped(self.server.metrics_reason)


def run_scenario(
    scenario: Scenario,
    server: ServerConfig,
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    load: LoadConfig,
    *,
    source: str,
    started: Started,
    load_notes: tuple[str, ...] = (),
    tokenizer: Tokenizer | None = None,
    missing_tokens_hint: str = "",
    monitored: MonitoredServer | None = None,
    compared: Callable[[ScenarioResult], ScenarioResult] | None = None,
    progress: LoadProgress | None = None,
    log: RequestLog | None = None,
    log_fields: Mapping[str, Any] | None = None,
) -> ScenarioResult:
    """Runs `load` with `prompts` against `endpoint` and judges `scenario.objectives`.

    `compared` (the session's baseline comparison) judges the relative objectives of every
    pooled result, so that they too can ask for another round. `progress` counts every round's
    requests as they finish, for the live display (progress.py). With `log`, each request is
    written to it as it finishes (with `log_fields`: scenario, server, capacity step) and only
    its slim form is kept (record_log.py): memory stays bounded however long the run.

    The load runs `verdicts.rounds`' min rounds, then more while some objective is
    inconclusive, up to its max, on the same server; the rounds' records are pooled. Rounds
    after the first send no warmup (the server is warm) and share one telemetry window.
    A load that cannot start (a configuration the engine refuses) raises; once it ran, a fault
    becomes the result's `error`, keeping every record.
    """
    telemetry = monitored.telemetry if monitored is not None else None
    window = telemetry.mark_load_start() if telemetry is not None else None
    count: Callable[[str], int] | None = tokenizer.count if tokenizer is not None else None
    fewest, most = scenario.verdicts.round_limits()
    rounds: list[load_engine.LoadResult] = []
    traces: list[RoundTrace] = []
    interrupted: str | None = None
    # per round, the chunk gaps of a logged run (its records keep none)
    itl: list[GapHistogram] | None = [] if log is not None else None
    secrets = run_secrets(server, scenario, load, endpoint)
    fields = dict(log_fields or {"scenario": scenario.name, "server": server.name})

    def pooled(telemetry_report: TelemetryReport | None, final: bool) -> ScenarioResult:
        result = _assemble(
            scenario,
            server,
            endpoint,
            load,
            rounds,
            source=source,
            started=started,
            load_notes=load_notes,
            tokenizer=tokenizer,
            missing_tokens_hint=missing_tokens_hint,
            monitored=monitored if final else None,
            interrupted=interrupted,
            telemetry_report=telemetry_report,
            itl=itl,
        )
        return compared(result) if compared is not None else result

    try:
        for number in range(1, most + 1):
            sink = (
                RecordSink(log, secrets, fields, round_number=number, counting=count is not None)
                if log is not None
                else None
            )
            run = run_load_any(
                endpoint,
                prompts,
                load if number == 1 else replace(load, warmup=0),
                count_tokens=count,
                should_stop=monitored.gone if monitored is not None else None,
                on_measured_start=(
                    telemetry.mark_measured_start if telemetry is not None and number == 1 else None
                ),
                progress=progress,
                keep=sink.keep if sink is not None else None,
            )
            if sink is not None and itl is not None:
                run = replace(run, records=sink.settle(run.records))
                itl.append(sink.itl)
            elif number > 1:
                run = replace(run, records=[replace(r, round=number) for r in run.records])
            rounds.append(run)
            interrupted = run.interrupted
            if interrupted is None and monitored is not None and any(r.error for r in run.records):
                # requests to a dead server fail within milliseconds: the load can end before
                # the engine's poll sees the exit, and the run must still not count as complete
                interrupted = monitored.gone()
            if interrupted or number == most:
                break
            interim = pooled(None, final=False)
            traces.append(_trace(number, interim, interim=True))
            if number >= fewest and (interim.error or not traces[-1].inconclusive):
                break
    finally:
        if telemetry is not None and window is not None:
            telemetry.mark_load_end()
    telemetry_report: TelemetryReport | None = None
    telemetry_error: str | None = None
    if telemetry is not None and window is not None:
        try:
            # a few samples after the load give the level the server settles at ("steady")
            time.sleep(STEADY_SETTLE_S)
            telemetry_report = telemetry.window_report(window)
        except Exception as exc:  # recorded with every request kept, never lost to a traceback
            telemetry_error = f"{type(exc).__name__}: {exc}"
    result = pooled(telemetry_report, final=True)
    if telemetry_error is not None and result.error is None:
        result = replace(result, error=telemetry_error).judged(result.scenario.objectives)
    final = _trace(len(rounds), result)
    return replace(result, rounds=(*traces[: len(rounds) - 1], final))


def _trace(number: int, result: ScenarioResult, *, interim: bool = False) -> RoundTrace:
    """The verdicts after round `number`; between rounds, only those of the load's own values
    (telemetry spans every round and is judged once, at the end)."""
    requests = result.summary.requests if result.summary is not None else 0
    verdicts = result.verdicts
    if interim:
        verdicts = tuple(v for v in verdicts if _from_load(v.objective.metric))
    return RoundTrace(number, requests, verdicts)


def _from_load(metric: str) -> bool:
    base = BY_NAME.get(metric) or BY_NAME.get(metric_info(metric).base)
    return base is not None and base.producer is Producer.LOAD


def _assemble(
    scenario: Scenario,
    server: ServerConfig,
    endpoint: Endpoint,
    load: LoadConfig,
    rounds: Sequence[load_engine.LoadResult],
    *,
    source: str,
    started: Started,
    load_notes: tuple[str, ...],
    tokenizer: Tokenizer | None,
    missing_tokens_hint: str,
    monitored: MonitoredServer | None,
    interrupted: str | None,
    telemetry_report: TelemetryReport | None,
    itl: Sequence[GapHistogram] | None,
) -> ScenarioResult:
    """The judged result of the rounds run so far, their records pooled; `itl`: each round's
    chunk gaps, when its records were logged and slimmed."""
    records = [r for run in rounds for r in run.records]
    error = f"load stopped early: {interrupted}" if interrupted else None
    summary: Summary | None = None
    log_tail: str | None = None
    note: str | None = None
    try:
        summary = summarize(
            records,
            window=(rounds[0].window_start, rounds[-1].window_end),
            rounds=[(run.window_start, run.window_end) for run in rounds],
            percentiles=scenario.percentiles,
            request_objectives=[
                RequestObjective(o.metric, o.op, o.threshold) for o in scenario.request_slo
            ],
            itl=itl,
        )
        note = token_note(records, tokenizer, missing_tokens_hint)
        failed_5xx = summary.failures_by_category.get("http_5xx", 0)
        if monitored is not None and (interrupted or failed_5xx or monitored.gone()):
            log_tail = monitored.server.log_tail()
    except Exception as exc:  # recorded with every request kept, never lost to a traceback
        error = error or f"{type(exc).__name__}: {exc}"
    unsent = tuple(
        f"{name} is not sent to {server.backend} servers (transformers serve rejects it "
        "with HTTP 422)"
        for name in load_engine.unsent_fields(endpoint.backend, load)
    )
    return ScenarioResult(
        spec_path=source,
        scenario=scenario,
        server=server,
        endpoint=endpoint,
        summary=summary,
        telemetry=telemetry_report,
        records=tuple(records),
        error=error,
        interrupted=interrupted,
        load=load,
        load_notes=load_notes + unsent,
        server_log_tail=log_tail,
        token_note=note,
        started=started.at,
        wall_seconds=started.seconds(),
        client=ClientHealth.pooled([run.client for run in rounds]),
    ).judged(scenario.objectives)


def not_run(
    scenario: Scenario,
    server: ServerConfig,
    *,
    source: str,
    started: Started,
    load: LoadConfig,
    load_notes: tuple[str, ...] = (),
    endpoint: Endpoint | None = None,
    error: str | None = None,
    skipped: str | None = None,
    interrupted: str | None = None,
) -> ScenarioResult:
    """The result of a scenario whose load never ran: why, and what it would have run."""
    return ScenarioResult(
        spec_path=source,
        scenario=scenario,
        server=server,
        endpoint=endpoint,
        error=error,
        skipped=skipped,
        interrupted=interrupted,
        load=load,
        load_notes=load_notes,
        started=started.at,
        wall_seconds=started.seconds(),
    ).judged(scenario.objectives)


def token_note(
    records: Sequence[RequestRecord], tokenizer: Tokenizer | None, missing_hint: str
) -> str | None:
    """What the report says about token counts the server did not send, or None when it sent all.

    Counts from re-tokenizing the streamed text are estimates: on the tiny model against
    LLaMA-Factory's API they came out 16% above what the server generated. `missing_hint` says
    how to make a tokenizer available when none was.
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
        return (
            f"{missing} of {len(ok)} successful requests have no token count: the server sent "
            f"no usage and no tokenizer was available; {missing_hint}"
        )
    return None
