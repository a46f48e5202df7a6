"""Reports as pure functions of results (markdown, JSON, JSONL), and one step that writes them.

Writing never raises: a report that cannot be written is a message, not a failed run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmslo import __version__
from pytest_llmslo.environment import RunInfo, collect_run_info
from pytest_llmslo.slo import Verdict, format_value
from pytest_llmslo.telemetry.measures import markdown_lines

if TYPE_CHECKING:
    from pytest_llmslo.session import ScenarioResult

RESULTS_SCHEMA = "pytest-llmslo/results/v1"
_LATENCY_ROWS = [
    ("ttft", "TTFT"),
    ("ttfc", "time to first chunk"),
    ("tpot", "TPOT"),
    ("itl", "ITL (per chunk)"),
    ("e2e", "E2E latency"),
]


def _ms(v: float) -> str:
    return "–" if math.isnan(v) else f"{v * 1000:.1f}"


def _mark(passed: bool) -> str:
    return "✅" if passed else "❌"


def _status(res: ScenarioResult) -> str:
    if res.skipped:
        return "SKIPPED"
    ok = not res.error and not res.interrupted and all(v.passed for v in res.verdicts)
    return "PASS" if ok else "FAIL"


def _backend_line(res: ScenarioResult) -> str:
    ep = res.endpoint
    version = f" {ep.version}" if ep and ep.version else ""
    model = ep.model if ep else (res.server.model or "?")
    return f"{res.server.backend}{version}, model `{model}`"


def _load_line(res: ScenarioResult) -> str:
    load = res.scenario.load
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


def scenario_section(res: ScenarioResult) -> str:
    """Markdown for one scenario on one server."""
    out = [f"### {res.id} — {_status(res)}", ""]
    out.append(f"- server: {_backend_line(res)}")
    if res.endpoint and res.endpoint.startup_seconds is not None:
        out.append(f"- server start-up: {res.endpoint.startup_seconds:.1f} s")
    out.append(f"- dataset: `{res.scenario.dataset}`; load: {_load_line(res)}")
    s = res.summary
    if s is not None:
        out.append(
            f"- requests: {s.requests} measured ({s.succeeded} ok, {s.failed} failed), "
            f"{s.warmup} warmup; window {s.duration_s:.2f} s"
        )
        sources = ", ".join(f"{k}: {n}" for k, n in sorted(s.token_sources.items()))
        if sources:
            out.append(f"- token counts from {sources}")
    if res.token_note:
        out.append(f"- note: {res.token_note}")
    if res.error:
        out.append(f"- **error**: {res.error.splitlines()[0] if res.error else ''}")
    out.append("")
    if res.verdicts:
        out += ["| objective | measured | target | margin | n | |", "|---|---|---|---|---|---|"]
        for v in res.verdicts:
            out.append(_verdict_row(v))
        out.append("")
    if s is not None and s.succeeded:
        pcts = list(s.percentiles)
        out.append("| ms | mean | " + " | ".join(f"p{p:g}" for p in pcts) + " | max | n |")
        out.append("|---" * (len(pcts) + 4) + "|")
        for key, label in _LATENCY_ROWS:
            d = s.distributions[key]
            cells = (
                [_ms(d.mean)] + [_ms(d.percentiles[p]) for p in pcts] + [_ms(d.max), str(d.count)]
            )
            out.append(f"| {label} | " + " | ".join(cells) + " |")
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
    if s is not None and s.failures_by_category:
        out += ["| error | count | example |", "|---|---|---|"]
        for cat, n in s.failures_by_category.items():
            example = s.error_examples.get(cat, "").replace("|", "\\|").replace("\n", " ")[:160]
            out.append(f"| {cat} | {n} | {example} |")
        out.append("")
    if res.telemetry is not None:
        out += markdown_lines(res.telemetry)
        out.append("")
    if res.server_log_tail:
        out += [
            "<details><summary>server log tail</summary>",
            "",
            "```",
            res.server_log_tail.rstrip(),
            "```",
            "</details>",
            "",
        ]
    return "\n".join(out)


def _num(v: float, digits: int = 1) -> str:
    return "–" if math.isnan(v) else f"{v:,.{digits}f}"


def _verdict_row(v: Verdict) -> str:
    m = v.measured
    measured = (
        f"not measurable: {m.reason}"
        if math.isnan(m.value)
        else format_value(v.objective.metric, m.value)
    )
    margin = "–" if v.margin is None or math.isnan(v.margin) else f"{v.margin:+.1%}"
    n = "–" if m.sample_size is None else str(m.sample_size)
    cells = [v.objective.metric, measured, v.objective.text, margin, n, _mark(v.passed)]
    return "| " + " | ".join(cells) + " |"


def render_markdown(results: Sequence[ScenarioResult], info: RunInfo) -> str:
    """The whole report: run header, an overview, then one section per scenario and server."""
    passed = sum(1 for r in results if _status(r) == "PASS")
    out = ["# LLM SLO report", ""]
    out.append(f"- pytest-llmslo {info.plugin_version}, {info.date}")
    out.append(f"- hardware: {info.hardware}")
    backends = sorted({_backend_line(r) for r in results})
    out.append("- servers: " + "; ".join(backends))
    out.append(f"- scenarios: {passed} of {len(results)} passed every objective")
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
            f"| {r.scenario.name} | {r.server.name} | {_status(r)} | " + " | ".join(cells) + " |"
        )
    out.append("")
    for r in results:
        out.append(scenario_section(r))
    out.append(
        "Definitions: TTFT = send to first generated text; "
        "TPOT = (E2E − TTFT) / (output tokens − 1); "
        "ITL = gaps between content chunks; E2E = send to last byte; throughput over the measured "
        "window. Warmup requests are excluded."
    )
    return "\n".join(out) + "\n"


def failure_text(res: ScenarioResult, verdict: Verdict | None) -> str:
    """The message a failing objective item shows: value, target, margin, n, errors, log tail."""
    lines = [f"{res.id} on {_backend_line(res)}"]
    if verdict is not None:
        lines.append(verdict.describe())
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
    if res.server_log_tail:
        lines += ["server log tail:", res.server_log_tail.rstrip()]
    return "\n".join(lines)


def results_json(results: Sequence[ScenarioResult], info: RunInfo) -> dict[str, Any]:
    """Everything needed to compare runs later, under a versioned schema name."""
    return {
        "schema": RESULTS_SCHEMA,
        "run": dataclasses.asdict(info),
        "scenarios": [_scenario_json(r) for r in results],
    }


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _scenario_json(r: ScenarioResult) -> dict[str, Any]:
    s = r.summary
    summary = None
    if s is not None:
        summary = {
            f.name: getattr(s, f.name)
            for f in dataclasses.fields(s)
            if f.name not in ("samples", "distributions")
        }
        summary["distributions"] = {k: dataclasses.asdict(d) for k, d in s.distributions.items()}
    cleaned: dict[str, Any] = _clean(
        {
            "scenario": r.scenario.name,
            "server": r.server.name,
            "spec": r.spec_path,
            "backend": r.server.backend,
            "endpoint": dataclasses.asdict(r.endpoint) if r.endpoint else None,
            "load": dataclasses.asdict(r.scenario.load),
            "dataset": r.scenario.dataset,
            "started": r.started,
            "status": _status(r),
            "error": r.error,
            "interrupted": r.interrupted,
            "summary": summary,
            "telemetry": dataclasses.asdict(r.telemetry) if r.telemetry is not None else None,
            "verdicts": [
                {
                    "metric": v.objective.metric,
                    "objective": v.objective.text,
                    "threshold": v.objective.threshold,
                    "measured": v.measured.value,
                    "sample_size": v.measured.sample_size,
                    "reason": v.measured.reason,
                    "passed": v.passed,
                    "margin": v.margin,
                }
                for v in r.verdicts
            ],
        }
    )
    return cleaned


def request_lines(results: Sequence[ScenarioResult]) -> list[str]:
    """Per-request JSONL: one line per request with its scenario, server and raw timestamps."""
    lines = []
    for r in results:
        for rec in r.records:
            row = dataclasses.asdict(rec)
            row["error"] = str(rec.error) if rec.error else None
            row.update(scenario=r.scenario.name, server=r.server.name)
            lines.append(json.dumps(_clean(row), ensure_ascii=False))
    return lines


@dataclass
class Written:
    markdown: str
    messages: list[str] = field(default_factory=list)


def write_reports(
    results: Sequence[ScenarioResult], report_path: Path, step_summary: str | None
) -> Written:
    """Writes report.md, results.json, requests.jsonl and the GitHub job summary; never raises."""
    info = collect_run_info(results, __version__)
    markdown = render_markdown(results, info)
    written = Written(markdown)
    targets = [
        (report_path, markdown),
        (
            report_path.with_name("results.json"),
            json.dumps(results_json(results, info), indent=2, ensure_ascii=False),
        ),
        (report_path.with_name("requests.jsonl"), "\n".join(request_lines(results)) + "\n"),
    ]
    for path, text in targets:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.messages.append(f"llmslo: wrote {path}")
        except OSError as exc:
            written.messages.append(f"llmslo: could not write {path}: {exc}")
    if step_summary:
        try:
            with open(step_summary, "a", encoding="utf-8") as fh:
                fh.write(markdown + os.linesep)
            written.messages.append("llmslo: appended the report to $GITHUB_STEP_SUMMARY")
        except OSError as exc:
            written.messages.append(f"llmslo: could not append to $GITHUB_STEP_SUMMARY: {exc}")
    return written
