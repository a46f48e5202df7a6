"""A capacity search (`capacity:`) in report.md, results.json and requests.jsonl: each step's
load, its objectives' values with intervals and outcomes, and why the search stopped.

A scenario without a search has nothing here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pytest_llmslo.capacity import CapacitySearch, Step, format_level
from pytest_llmslo.slo import format_measured

if TYPE_CHECKING:
    from pytest_llmslo.records import RequestRecord
    from pytest_llmslo.result import ScenarioResult

_OUTCOME = {
    "pass": "✅ pass",
    "fail": "❌ fail",
    "inconclusive": "❔ inconclusive",
    "error": "error",
}


def _level(search: CapacitySearch, level: float) -> str:
    return f"{level:.0f}" if search.config.vary == "parallel" else f"{level:g}"


def _resolution(search: CapacitySearch) -> str:
    step = search.config.step
    return f"{step:.0f}" if search.config.vary == "parallel" else f"{step:.0%}"


def headline(search: CapacitySearch) -> str:
    """The answer in one phrase: ``max_parallel 5``, labelled when the budget ended it."""
    answer = search.answer
    if answer is None:
        return f"{search.metric}: no load passed"
    shown = f"{search.metric} {_level(search, answer)}"
    return f"{shown} (budget-limited: a lower bound)" if search.budget_limited else shown


def capacity_lines(res: ScenarioResult) -> list[str]:
    """Markdown: the search's settings and answer, why it stopped, and one row per step."""
    search = res.capacity
    if search is None:
        return []
    config = search.config
    best = search.best
    out = [
        f"Capacity search over `{config.vary}`, {_level(search, config.start)} to "
        f"{_level(search, config.max)} (growth {config.growth:g}, resolution "
        f"{_resolution(search)}, budget {config.budget:g} s): **{headline(search)}**.",
        "",
        f"- stopped: {search.reason}",
        "- the objectives above are those of "
        + (
            f"the highest passing step, {format_level(config, best.level)}"
            if best is not None
            else "the first step (none passed)"
        ),
        "- a step passes when every objective passed decisively; an inconclusive one was not "
        "proven and counts as not passing",
        "",
    ]
    metrics = list(dict.fromkeys(m for s in search.steps for m in _verdicts(s)))
    unit = "parallel" if config.vary == "parallel" else "rate (req/s)"
    header = ["step", unit, "phase", *metrics, "step outcome", "s"]
    out += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for step in search.steps:
        verdicts = _verdicts(step)
        cells = [str(step.number), _level(search, step.level), step.phase]
        cells += [verdicts.get(m, "") for m in metrics]
        outcome = _OUTCOME[step.outcome]
        if step.outcome == "error":
            outcome += f": {step.why.partition(chr(10))[0]}"
        cells += [outcome, f"{step.seconds:.1f}"]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return [*out, ""]


def _verdicts(step: Step) -> dict[str, str]:
    """Each objective of a step: its value with interval, and its outcome."""
    if step.result is None:
        return {}
    return {
        v.objective.metric: f"{format_measured(v.objective.metric, v.measured)} {v.outcome}"
        for v in step.result.verdicts
    }


def capacity_json(res: ScenarioResult) -> dict[str, Any] | None:
    """results.json's `capacity`: the settings, the answer, the stop and every step."""
    from pytest_llmslo.report import jsonable, measurement_json

    search = res.capacity
    if search is None:
        return None
    config = search.config
    return {
        "vary": config.vary,
        "start": config.start,
        "max": config.max,
        "growth": config.growth,
        "resolution": config.step,
        "budget_s": config.budget,
        "metric": search.metric,
        "answer": search.answer,
        "budget_limited": search.budget_limited,
        "stopped": search.stopped,
        "stop_reason": search.reason,
        "steps": [
            {
                "step": step.number,
                "level": step.level,
                "phase": step.phase,
                "outcome": step.outcome,
                "why": step.why,
                "seconds": jsonable(step.seconds),
                "requests": _requests(step),
                "load_notes": list(step.result.load_notes) if step.result is not None else [],
                "verdicts": [
                    {
                        "metric": v.objective.metric,
                        "objective": v.objective.text,
                        "outcome": v.outcome,
                        "passed": v.passed,
                        **measurement_json(v.measured),
                    }
                    for v in (step.result.verdicts if step.result is not None else ())
                ],
            }
            for step in search.steps
        ],
    }


def _requests(step: Step) -> int | None:
    summary = step.result.summary if step.result is not None else None
    return summary.requests if summary is not None else None


def request_records(res: ScenarioResult) -> Iterator[tuple[RequestRecord, dict[str, Any]]]:
    """Every request of a result with the fields requests.jsonl adds for it: a search's come
    from all its steps, each with `capacity_step`."""
    search = res.capacity
    if search is None:
        for record in res.records:
            yield record, {}
        return
    for step in search.steps:
        for record in step.result.records if step.result is not None else ():
            yield record, {"capacity_step": step.number}
