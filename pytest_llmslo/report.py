"""Reports as pure functions of results: markdown, the results.json tree and requests.jsonl.

Everything rendered here is redacted: credential-named values are hidden where the structure is
known, and every credential value of the run is scrubbed from the text (see `redact.py`).
Writing the files is `report_writer.py`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from pytest_llmslo import client_health
from pytest_llmslo.capacity import describe as describe_capacity
from pytest_llmslo.catalogue import Metric, MetricKind, Producer, select
from pytest_llmslo.environment import RunInfo
from pytest_llmslo.intervals import Interval
from pytest_llmslo.records import RequestRecord
from pytest_llmslo.redact import (
    REDACTED,
    Secrets,
    endpoint_secrets,
    load_secrets,
    redact_command,
    redact_mapping,
    redact_url,
    server_secrets,
)
from pytest_llmslo.report_capacity import capacity_json, capacity_lines, request_records
from pytest_llmslo.report_rounds import rounds_json, rounds_lines
from pytest_llmslo.report_telemetry import telemetry_lines
from pytest_llmslo.slo import (
    Measurement,
    Verdict,
    format_measured,
    format_value,
    relative_change,
)

if TYPE_CHECKING:
    from pytest_llmslo.config import LoadConfig, ServerConfig
    from pytest_llmslo.metrics import Summary
    from pytest_llmslo.records import Endpoint
    from pytest_llmslo.report_plots import PlotLink, Plots
    from pytest_llmslo.result import ScenarioResult
    from pytest_llmslo.spec import Scenario

# v2: `load` is the load that ran (v1 repeated the spec's), with `spec_load` and `load_notes`;
# `server_config`, `run.id`, `skipped`, `wall_seconds`, `margin_reason`; credentials redacted;
# no NaN or Infinity anywhere (null, with a reason beside it). v3: intervals and outcomes.
# v4: per scenario `fingerprint`, `measurements` and `baseline`, so a run can be a baseline;
# a relative verdict's `baseline`. See docs/results-schema.md.
RESULTS_SCHEMA = "pytest-llmslo/results/v4"
# the latency table's rows: the load's distributions the catalogue gives a report label
_LATENCY_ROWS: tuple[Metric, ...] = tuple(
    m for m in select(kind=MetricKind.DISTRIBUTION, producer=Producer.LOAD) if m.report_label
)


_TOKEN_SOURCES = {
    "usage": "the server's usage",
    "tokenizer": "ESTIMATES (text re-tokenized locally)",
    "unknown": "nowhere (not counted)",
}


def _ms(v: float) -> str:
    return "–" if math.isnan(v) else f"{v * 1000:.1f}"


def _mark(passed: bool) -> str:
    return "✅" if passed else "❌"


def _outcome_mark(v: Verdict) -> str:
    if v.skipped is not None:
        return "skipped"
    # an inconclusive objective shows what the policy made of it, and that it was not decisive
    if v.inconclusive:
        return f"{_mark(v.passed)} inconclusive"
    return _mark(v.passed)


def _status(res: ScenarioResult) -> str:
    return res.status.value  # decided by the result, as for the pytest items


def _backend_line(res: ScenarioResult) -> str:
    ep = res.endpoint
    version = f" {ep.version}" if ep and ep.version else ""
    model = ep.model if ep else (res.server.model or "?")
    return f"{res.server.backend}{version}, model `{model}`"


def _load(res: ScenarioResult) -> LoadConfig:
    """The load that ran (or would have run, when the server did not start)."""
    return res.load if res.load is not None else res.scenario.load_for(res.server.name)


def _cell(text: str) -> str:
    """Text made safe for one markdown table cell: a `|` or a line break would end the row."""
    return text.replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def _fenced(text: str) -> list[str]:
    """A code block that holds `text` whole, whatever backticks it contains."""
    fence = "`" * 3
    while fence in text:
        fence += "`"
    return [fence, text.rstrip(), fence]


def result_secrets(res: ScenarioResult) -> Secrets:
    """Every credential value a scenario's configuration, load and endpoint hold."""
    return run_secrets(res.server, res.scenario, res.load, res.endpoint)


def run_secrets(
    server: ServerConfig, scenario: Scenario, load: LoadConfig | None, endpoint: Endpoint | None
) -> Secrets:
    """Every credential value a run's server, scenario, load and endpoint hold: what a line
    about one of its requests must not show (record_log.py writes them as they finish)."""
    secrets = server_secrets(server) | load_secrets(scenario.load)
    for each in (load, *scenario.server_loads.values()):
        if each is not None:
            secrets |= load_secrets(each)
    if endpoint is not None:
        secrets |= endpoint_secrets(endpoint)
    return secrets


def _all_secrets(results: Sequence[ScenarioResult]) -> Secrets:
    secrets = Secrets()
    for r in results:
        secrets |= result_secrets(r)
    return secrets


def _load_line(res: ScenarioResult) -> str:
    load = _load(res)
    parts = [f"parallel {load.parallel}" if load.parallel else ""]
    if load.rate:
        parts.append(f"rate {load.rate:g} req/s ({load.arrival})")
    if load.requests is not None:
        parts.append(f"{load.requests} requests")
    if load.duration is not None:
        parts.append(f"{load.duration:g} s")
    if load.warmup:
        parts.append(f"{load.warmup} warmup")
    parts.append(f"max_tokens {load.max_tokens}")
    parts.append(("streaming " if load.stream else "non-streaming ") + load.api)
    return ", ".join(p for p in parts if p)


def scenario_section(res: ScenarioResult, plots: Sequence[PlotLink] = ()) -> str:
    """Markdown for one scenario on one server; `plots` are its PNG files beside the report."""
    out = [f"### {res.id} — {_status(res)}", ""]
    out.append(f"- server: {_backend_line(res)}")
    if res.server.backend == "external":
        out.append("- server start-up: not applicable: external server, not started by this run")
    elif res.endpoint and res.endpoint.startup_seconds is not None:
        out.append(f"- server start-up: {res.endpoint.startup_seconds:.1f} s")
    out.append(f"- dataset: `{res.scenario.dataset}`; load: {_load_line(res)}")
    if res.load_notes:
        out.append("- load differs from the scenario's `load:`: " + "; ".join(res.load_notes))
    s = res.summary
    if s is not None:
        out.append(
            f"- requests: {s.requests} measured ({s.succeeded} ok, {s.failed} failed), "
            f"{s.warmup} warmup; window {s.duration_s:.2f} s"
        )
        sources = ", ".join(
            f"{_TOKEN_SOURCES.get(k, k)}: {n}" for k, n in sorted(s.token_sources.items())
        )
        if sources:
            out.append(f"- token counts (successful requests) from {sources}")
        if _reasoned(s):
            reasoning = s.distributions["reasoning_tokens"]
            answer = s.distributions["answer_tokens"]
            out.append(
                f"- tokens per request, mean: {_num(reasoning.mean)} reasoning, "
                f"{_num(answer.mean)} answer (max {_num(reasoning.max, 0)} and "
                f"{_num(answer.max, 0)})"
            )
    client = client_health.describe(res.client, s, res.load)
    if client:
        out.append(f"- client: {client}")
    saturated = res.saturated
    if saturated is not None:
        out.append(f"- **{saturated}**")
    behind = res.client_behind
    if behind is not None:
        out.append(f"- **{behind}**: the server objectives are inconclusive")
    if res.token_note:
        out.append(f"- **token counts**: {res.token_note}")
    if res.error:
        first, _, rest = res.error.partition("\n")
        out.append(f"- **error**: {first}")
        if rest.strip():
            out += ["", "<details><summary>error details</summary>", ""]
            out += [*_fenced(rest), "</details>"]
    out.append("")
    if res.verdicts:
        out += [
            "| objective | measured [interval] | target | margin | n | outcome |",
            "|---|---|---|---|---|---|",
        ]
        for v in res.verdicts:
            out.append(_verdict_row(v))
        out.append("")
    out += rounds_lines(res)
    out += comparison_lines(res)
    out += capacity_lines(res)
    if s is not None and s.succeeded:
        pcts = list(s.percentiles)
        out.append("| ms | mean | " + " | ".join(f"p{p:g}" for p in pcts) + " | max | n |")
        out.append("|---" * (len(pcts) + 4) + "|")
        reasoned = _reasoned(s)
        for metric in _LATENCY_ROWS:
            d = s.distributions.get(metric.name)
            if d is None or (metric.reasoning and not reasoned):
                continue
            cells = (
                [_ms(d.mean)] + [_ms(d.percentiles[p]) for p in pcts] + [_ms(d.max), str(d.count)]
            )
            out.append(f"| {metric.report_label} | " + " | ".join(cells) + " |")
        out.append("")
        out.append(
            f"Throughput: {_num(s.output_throughput)} output tok/s, "
            f"{_num(s.total_token_throughput)} total tok/s, {_num(s.request_throughput, 2)} req/s; "
            f"failure rate {s.failure_rate:.1%}"
            + (
                f"; goodput {_num(s.goodput, 2)} req/s ({s.goodput_ratio:.0%})"
                if not math.isnan(s.goodput)
                else ""
            )
        )
        out.append("")
    out += plot_lines(plots)
    if s is not None and s.failures_by_category:
        out += ["| error | count | example |", "|---|---|---|"]
        for cat, n in s.failures_by_category.items():
            example = _cell(s.error_examples.get(cat, "").replace("\n", " ")[:160])
            out.append(f"| {_cell(cat)} | {n} | {example} |")
        out.append("")
    if res.telemetry is not None:
        out += telemetry_lines(res.telemetry)
        out.append("")
    if res.server_log_tail:
        out += [
            "<details><summary>server log tail</summary>",
            "",
            *_fenced(res.server_log_tail),
            "</details>",
            "",
        ]
    return result_secrets(res).scrub("\n".join(out))


def plot_lines(plots: Sequence[PlotLink]) -> list[str]:
    """Each plot as an image with a path relative to report.md (the same from the run's folder
    and beside the latest report), or why it was not drawn."""
    out = []
    for plot in plots:
        if plot.error is None:
            out += [f"![{plot.title}]({plot.path})", ""]
        else:
            why = plot.error.strip().partition("\n")[0]
            out += [f"- plot `{plot.path}` ({plot.title}) not drawn: {why}", ""]
    return out


def comparison_lines(res: ScenarioResult) -> list[str]:
    """The relative objectives against the baseline: value, baseline, change, verdict; and how
    the two runs' setups differ. Nothing for a scenario without relative objectives."""
    relative = [v for v in res.verdicts if v.objective.relative]
    if not relative:
        return []
    comparison = res.comparison
    out = ["Against the baseline:"]
    if comparison is not None and comparison.entry is not None:
        out.append(f"- baseline: `{comparison.source}`, {comparison.entry.describe()}")
    if comparison is not None and comparison.differences:
        out.append("- setup differences (fingerprint):")
        out += [f"  - {d.kind}: {d.describe()}" for d in comparison.differences]
    if comparison is not None and comparison.refused:
        out.append(f"- **comparison refused**: {comparison.refused}")
    if comparison is not None and comparison.missing:
        out.append(f"- **no baseline**: {comparison.missing}")
    if comparison is not None and comparison.skip:
        out.append(f"- not compared: {comparison.skip}")
    # a reason stated above for the whole scenario is not repeated in every row
    stated = comparison is not None and bool(
        comparison.refused or comparison.missing or comparison.skip
    )
    out += [
        "",  # a list above ends before the table
        "| metric | value [interval] | baseline [interval] | change | objective | verdict |",
        "|---|---|---|---|---|---|",
    ]
    out += [_comparison_row(v, stated) for v in relative]
    out.append("")
    return out


def _comparison_row(v: Verdict, stated: bool) -> str:
    metric = v.objective.metric
    value = _shown(metric, v.measured)
    before = v.baseline
    if before is None or (stated and math.isnan(before.value)):
        baseline = "–"
    else:
        baseline = _shown(metric, before)
    change = None if before is None else relative_change(v.measured.value, before.value)
    objective = v.objective.text
    if before is not None and not math.isnan(before.value):
        objective += f" (= {format_value(metric, v.effective.threshold)})"
    cells = [
        metric,
        value,
        baseline,
        "–" if change is None else f"{change:+.1%}",
        objective,
        _outcome_mark(v),
    ]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _shown(metric: str, measured: Measurement) -> str:
    if math.isnan(measured.value):
        reason = (measured.reason or "not measured").strip().partition("\n")[0]
        return f"not measurable: {reason}"
    return format_measured(metric, measured)


def _definitions(results: Sequence[ScenarioResult]) -> list[str]:
    """The definitions of the latency table's rows, as the catalogue states them."""
    reasoned = any(r.summary is not None and _reasoned(r.summary) for r in results)
    out = ["Definitions (warmup requests excluded; throughput over the measured window):", ""]
    for m in _LATENCY_ROWS:
        if reasoned or not m.reasoning:
            out.append(f"- `{m.name}`: {m.definition}")
    return out


def _reasoned(s: Summary) -> bool:
    """Whether the stream carried reasoning (counted, or streamed with no count available)."""
    d = s.distributions.get("reasoning_tokens")
    return "reasoning_tokens" in s.reasons or (d is not None and d.count > 0 and d.max > 0)


def _num(v: float, digits: int = 1) -> str:
    return "–" if math.isnan(v) else f"{v:,.{digits}f}"


def _verdict_row(v: Verdict) -> str:
    m = v.measured
    # a reason may be a whole start error with its log tail: its first line fits a cell, the
    # rest is in the section's error details
    reason = (m.reason or "").strip().partition("\n")[0]
    measured = (
        f"not measurable: {reason}"
        if math.isnan(m.value)
        else format_measured(v.objective.metric, m)
    )
    if v.margin is None or math.isnan(v.margin):
        margin = "–"
    elif math.isinf(v.margin):
        margin = "+∞" if v.margin > 0 else "−∞"
    else:
        margin = f"{v.margin:+.1%}"
    n = "–" if m.sample_size is None else str(m.sample_size)
    cells = [v.objective.metric, measured, v.objective.text, margin, n, _outcome_mark(v)]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def render_markdown(
    results: Sequence[ScenarioResult],
    info: RunInfo,
    notices: Sequence[str] = (),
    plots: Plots | None = None,
) -> str:
    """The whole report: run header, an overview, then one section per scenario and server
    (with its `plots`, drawn beforehand by report_plots.py)."""
    passed = sum(1 for r in results if _status(r) == "PASS")
    out = ["# LLM SLO report", ""]
    out.append(f"- pytest-llmslo {info.plugin_version}, {info.date}")
    out.append(f"- hardware: {info.hardware}")
    backends = sorted({_backend_line(r) for r in results})
    out.append("- servers: " + "; ".join(backends))
    out.append(f"- scenarios: {passed} of {len(results)} passed every objective")
    out += [f"- note: {n}" for n in notices]
    out += [f"- note: {n}" for n in (plots.notes if plots is not None else ())]
    out.append("")
    out += [
        "| scenario | server | result | output tok/s | TTFT p95 ms | TPOT mean ms | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary
        cells = ["–"] * 4
        if s is not None:
            ttft = s.distributions["ttft"]
            tpot = s.distributions["tpot"]
            p95 = ttft.stat("p95", s.samples.get("ttft"))
            cells = [
                _num(s.output_throughput),
                _ms(p95),
                _ms(tpot.mean),
                f"{s.failed}/{s.requests}",
            ]
        out.append(
            f"| {_cell(r.scenario.name)} | {_cell(r.server.name)} | {_status(r)} | "
            + " | ".join(cells)
            + " |"
        )
    out.append("")
    for r in results:
        out.append(scenario_section(r, plots.links.get(r.key, ()) if plots is not None else ()))
    out += _definitions(results)
    return _all_secrets(results).scrub("\n".join(out) + "\n")


def failure_text(res: ScenarioResult, verdict: Verdict | None) -> str:
    """The message a failing objective item shows: value, target, margin, n, errors, log tail."""
    lines = [f"{res.id} on {_backend_line(res)}"]
    if verdict is not None and verdict.inconclusive:
        # first, so a CI log and a JUnit message tell it from a plain miss at a glance
        lines.insert(0, f"INCONCLUSIVE (inconclusive: {res.scenario.verdicts.inconclusive})")
    if verdict is not None:
        lines.append(verdict.describe())
    comparison = res.comparison
    if verdict is not None and verdict.objective.relative and comparison is not None:
        if comparison.entry is not None:
            lines.append(f"baseline: {comparison.source}, {comparison.entry.describe()}")
        lines += [f"setup differs: {d.describe()}" for d in comparison.differences]
    if res.capacity is not None:
        lines.append(describe_capacity(res.capacity))
    if res.interrupted:
        lines.append(
            f"the load stopped early ({res.interrupted}): the numbers cover part of the run"
        )
    if res.error:
        lines.append(f"error: {res.error}")
    s = res.summary
    if s is not None:
        lines.append(f"requests: {s.requests} measured, {s.succeeded} ok, {s.failed} failed")
        for cat, n in list(s.failures_by_category.items())[:3]:
            lines.append(f"  {cat} x{n}: {s.error_examples.get(cat, '')[:300]}")
    if res.token_note:
        lines.append(f"token counts: {res.token_note}")
    if res.server_log_tail:
        lines += ["server log tail:", res.server_log_tail.rstrip()]
    return result_secrets(res).scrub("\n".join(lines))


def results_json(
    results: Sequence[ScenarioResult], info: RunInfo, run_id: str | None = None
) -> dict[str, Any]:
    """Everything needed to compare runs later, under a versioned schema name: JSON-ready (no
    NaN, no Infinity, nothing json.dumps cannot write) and redacted."""
    tree = {
        "schema": RESULTS_SCHEMA,
        "run": {**jsonable(info), "id": run_id},
        "scenarios": [_scenario_json_guarded(r) for r in results],
    }
    scrubbed: dict[str, Any] = _all_secrets(results).scrub_tree(tree)
    return scrubbed


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data; never raises.

    Non-finite numbers become null (with a reason beside them where one is known); dates and
    paths become strings; what has no JSON form becomes a string marked ``<not JSON: ...>``.
    """
    kind = type(value)
    if kind is float:  # the common cases first: requests.jsonl holds every chunk time
        return value if math.isfinite(value) else None
    if kind is int or kind is str or value is None:
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=repr)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    try:
        shown = repr(value)[:200]
    except Exception:  # a broken __repr__ must not lose the report
        shown = "?"
    return f"<not JSON: {type(value).__name__} {shown}>"


def _scenario_json_guarded(r: ScenarioResult) -> dict[str, Any]:
    # one scenario that cannot be rendered must not take the others, or its verdicts, with it
    try:
        return _scenario_json(r)
    except Exception as exc:
        return {
            "scenario": r.scenario.name,
            "server": r.server.name,
            "status": _status(r),
            "verdicts": [
                {"metric": v.objective.metric, "objective": v.objective.text, "passed": v.passed}
                for v in r.verdicts
            ],
            "render_error": f"{type(exc).__name__}: {exc}",
        }


def load_json(load: LoadConfig) -> dict[str, Any]:
    """A load's fields with credential-named headers and body fields hidden."""
    data: dict[str, Any] = jsonable(load)
    data["headers"] = redact_mapping(data.get("headers") or {})
    data["extra_body"] = redact_mapping(data.get("extra_body") or {})
    return data


def server_json(cfg: ServerConfig) -> dict[str, Any]:
    """A server's configuration as it ran, with credentials hidden (`api_key_env` is a name)."""
    data: dict[str, Any] = jsonable(cfg)
    data["args"] = redact_mapping(data.get("args") or {})
    data["env"] = redact_mapping(data.get("env") or {})
    data["extra_args"] = redact_command([str(a) for a in cfg.extra_args])
    if cfg.base_url:
        data["base_url"] = redact_url(cfg.base_url)
    return data


def endpoint_json(endpoint: Endpoint) -> dict[str, Any]:
    data: dict[str, Any] = jsonable(endpoint)
    data["base_url"] = redact_url(endpoint.base_url)
    data["api_key"] = REDACTED if endpoint.api_key else None
    return data


def _margin_reason(v: Verdict) -> str | None:
    if v.margin is None or math.isnan(v.margin):
        return "not measured" if math.isnan(v.measured.value) else "no margin"
    if math.isinf(v.margin):
        side = "headroom" if v.margin > 0 else "shortfall"
        return f"the threshold is 0: a {side} relative to it is unbounded"
    return None


def _interval_json(interval: Interval | None) -> dict[str, Any] | None:
    # an unbounded side is null: too few samples to bound it
    if interval is None:
        return None
    return {
        "low": interval.low if math.isfinite(interval.low) else None,
        "high": interval.high if math.isfinite(interval.high) else None,
        "confidence": interval.confidence,
        "method": interval.method,
        "n": interval.n,
    }


def measurement_json(measured: Measurement) -> dict[str, Any]:
    """A measurement for results.json (read back by baseline.py): null for what is not a finite
    number (an unbounded interval side, a value not measured), with the reason beside it."""
    interval = measured.interval
    return {
        "value": jsonable(measured.value),
        "n": measured.sample_size,
        "interval": None
        if interval is None
        else {
            "low": jsonable(interval.low),
            "high": jsonable(interval.high),
            "confidence": interval.confidence,
            "method": interval.method,
        },
        "reason": measured.reason or None,
    }


def _measurements_json(r: ScenarioResult) -> dict[str, Any]:
    # every metric an objective names, relative ones included, so that this run can be the
    # baseline of a later one that gates on any of them
    confidence = r.scenario.verdicts.confidence
    out = {}
    for metric in dict.fromkeys(o.metric for o in r.scenario.objectives):
        try:
            measured = r.measure(metric, confidence)
        except Exception as exc:  # one metric must not cost the others
            measured = Measurement(math.nan, reason=f"{type(exc).__name__}: {exc}")
        out[metric] = measurement_json(measured)
    return out


def _baseline_json(r: ScenarioResult) -> dict[str, Any] | None:
    comparison = r.comparison
    if comparison is None:
        return None
    entry = comparison.entry
    return {
        "file": comparison.source,
        "scenario": entry.scenario if entry else None,
        "server": entry.server if entry else None,
        "spec": entry.spec if entry else None,
        "differences": [jsonable(d) for d in comparison.differences],
        "refused": comparison.refused,
        "missing": comparison.missing,
        "skipped": comparison.skip,
    }


def _scenario_json(r: ScenarioResult) -> dict[str, Any]:
    s = r.summary
    summary: dict[str, Any] | None = None
    if s is not None:
        summary = {
            f.name: jsonable(getattr(s, f.name))
            for f in dataclasses.fields(s)
            if f.name not in ("samples", "distributions", "batches", "ttft_thirds")
        }
        summary["distributions"] = {k: jsonable(d) for k, d in s.distributions.items()}
    return {
        "scenario": r.scenario.name,
        "server": r.server.name,
        "spec": r.spec_path,
        "backend": r.server.backend,
        "server_config": server_json(r.server),
        "endpoint": endpoint_json(r.endpoint) if r.endpoint else None,
        "load": load_json(_load(r)),
        "spec_load": load_json(r.scenario.load),
        "load_notes": list(r.load_notes),
        "dataset": r.scenario.dataset,
        "started": r.started,
        "wall_seconds": jsonable(r.wall_seconds),
        "status": _status(r),
        "error": r.error,
        "skipped": r.skipped,
        "interrupted": r.interrupted,
        # set when the server sent no usage: counts were estimated with a tokenizer
        "token_note": r.token_note,
        "summary": summary,
        "telemetry": jsonable(r.telemetry),
        "fingerprint": r.fingerprint.as_dict() if r.fingerprint is not None else None,
        "measurements": _measurements_json(r) if r.summary is not None else {},
        "baseline": _baseline_json(r),
        "rounds": rounds_json(r),
        "client": client_health.as_json(r.client, s, r.load),
        "saturated": r.saturated,
        "capacity": capacity_json(r),
        "verdicts": [
            {
                "metric": v.objective.metric,
                "objective": v.objective.text,
                # a relative objective's: from the baseline's value (null without one)
                "threshold": jsonable(v.effective.threshold),
                "measured": jsonable(v.measured.value),
                "sample_size": v.measured.sample_size,
                "reason": v.measured.reason,
                "passed": v.passed,
                "outcome": v.outcome,
                "interval": _interval_json(v.measured.interval),
                "margin": jsonable(v.margin),
                "margin_reason": _margin_reason(v),
                "baseline": measurement_json(v.baseline) if v.baseline is not None else None,
                "skipped": v.skipped,
                "guard": v.guard,
            }
            for v in r.verdicts
        ],
    }


# the chunk times are in the line: their largest gap (itl_max, kept by a slim record) is not
_LINE_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRecord) if f.name != "itl_max")


def request_lines(results: Sequence[ScenarioResult]) -> list[str]:
    """Per-request JSONL: one line per request with its scenario, server and raw timestamps.

    A slim record (record.slimmed) was written to requests.jsonl when it finished and has
    none of its chunk times left: it is not written again.
    """
    lines = []
    for r in results:
        secrets = result_secrets(r)
        for rec, step in request_records(r):
            if not rec.slimmed:
                fields = {"scenario": r.scenario.name, "server": r.server.name, **step}
                lines.append(request_line(rec, secrets, fields))
    return lines


def request_line(record: RequestRecord, secrets: Secrets, fields: Mapping[str, Any]) -> str:
    """One request as a line of requests.jsonl: its raw timestamps and `fields` (scenario,
    server, capacity step), every secret scrubbed.

    A run writes each line as its request ends, on the event loop that stamps the others: the
    row is built field by field (a third of the cost of walking it generically), and only a
    value JSON has no form for takes the generic path.
    """
    row: dict[str, Any] = {}
    for name in _LINE_FIELDS:
        value = getattr(record, name)
        row[name] = secrets.scrub(value) if type(value) is str else value
    row["content_times"] = list(record.content_times)
    row["error"] = str(record.error) if record.error else None
    row["extra"] = secrets.scrub_tree(jsonable(record.extra))
    row.update(secrets.scrub_tree(dict(fields)))
    try:
        return json.dumps(row, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):  # NaN, or a type json cannot write: made JSON, then written
        return json.dumps(secrets.scrub_tree(jsonable(row)), ensure_ascii=False, allow_nan=False)
