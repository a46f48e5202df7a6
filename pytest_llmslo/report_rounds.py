"""How a scenario's verdicts narrowed over its rounds (`verdicts.rounds`), for report.md and
results.json.

A scenario that ran one round has nothing here; one that ran more shows, per objective with an
interval, its value, interval and outcome after each round, over every round so far pooled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_llmslo.slo import Verdict, format_measured

if TYPE_CHECKING:
    from pytest_llmslo.result import ScenarioResult


def _narrowing(v: Verdict) -> bool:
    """An objective whose verdict rests on an interval (the rows worth showing per round)."""
    interval = v.measured.interval
    return interval is not None and interval.method != "as measured"


def rounds_lines(res: ScenarioResult) -> list[str]:
    """Markdown: why the scenario ran the rounds it ran, and each interval round by round."""
    rounds = res.rounds
    if len(rounds) < 2:
        return []
    fewest, most = res.scenario.verdicts.round_limits()
    last = rounds[-1]
    if last.inconclusive and len(rounds) == most:
        why = f"still inconclusive after the last allowed round: {', '.join(last.inconclusive)}"
    elif len(rounds) > fewest:
        why = "each further round ran because an objective was still inconclusive"
    else:
        why = f"`rounds` asks for at least {fewest}"
    out = [
        f"Rounds: {len(rounds)} (min {fewest}, max {most}), their requests pooled; {why}.",
        "",
    ]
    metrics = [v.objective.metric for v in last.verdicts if _narrowing(v)]
    if not metrics:
        return [*out, ""]
    header = " | ".join(f"after round {t.number} (n={t.requests})" for t in rounds)
    out += [f"| objective | {header} |", "|---" * (len(rounds) + 1) + "|"]
    for metric in metrics:
        cells = []
        for trace in rounds:
            v = next((v for v in trace.verdicts if v.objective.metric == metric), None)
            cells.append("" if v is None else f"{format_measured(metric, v.measured)} {v.outcome}")
        out.append(f"| {metric} | " + " | ".join(cells) + " |")
    return [*out, ""]


def rounds_json(res: ScenarioResult) -> list[dict[str, Any]]:
    """results.json's `rounds`: per round, the pooled requests and each objective's outcome."""
    from pytest_llmslo.report import measurement_json

    return [
        {
            "round": trace.number,
            "requests": trace.requests,
            "verdicts": [
                {
                    "metric": v.objective.metric,
                    "outcome": v.outcome,
                    **measurement_json(v.measured),
                }
                for v in trace.verdicts
            ],
        }
        for trace in res.rounds
    ]
