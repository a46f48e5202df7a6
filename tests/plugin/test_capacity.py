"""A capacity search through pytest, against a server whose knee is known exactly.

The service is the timing instrument with a TTFT that grows by 50 ms for each other request open
when one arrives: at `parallel N` a request waits 50 ms x N once the load is steady, so a median
TTFT of at most 275 ms holds up to 5 users and not at 6.
"""

from __future__ import annotations

import json

import pytest

from pytest_llmslo.testing.timing_server import TimingServerProcess
from tests.plugin.service import SERVICE, point_at

pytest_plugins = ["pytester"]

SPEC = (
    SERVICE
    + """
scenarios:
  knee:
    dataset: lines
    load: {requests: 20, max_tokens: 4}
    capacity: {vary: parallel, start: 1, max: 16, budget: 2 min}
    slo:
      ttft_p50: "<= 275 ms"
      max_parallel: ">= 5"
"""
)


def test_a_capacity_search_finds_the_known_knee_and_reports_every_step(
    pytester: pytest.Pytester, slowing: TimingServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_at(monkeypatch, slowing)
    pytester.makefile(".txt", prompts="hello\nwhat is a token?\n")
    spec = pytester.makefile(".yaml", knee=SPEC)
    result = pytester.runpytest("--slo", str(spec), "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*knee.yaml::knee::svc::max_parallel PASSED*"])

    out = pytester.path / "llmslo-results"
    scenario = json.loads((out / "results.json").read_text())["scenarios"][0]
    search = scenario["capacity"]
    steps = [(s["level"], s["phase"], s["outcome"]) for s in search["steps"]]
    # doubling to 16 fails at 8; bisection: 6 does not pass (fail, or inconclusive where the
    # first requests of the step arrived before the others opened), 5 passes
    assert [level for level, _, _ in steps] == [1, 2, 4, 8, 6, 5]
    assert [phase for _, phase, _ in steps] == ["probe"] * 4 + ["bisect"] * 2
    assert [outcome for _, _, outcome in steps][:3] == ["pass"] * 3
    assert steps[3][2] == "fail" and steps[4][2] != "pass" and steps[5][2] == "pass"
    assert (search["answer"], search["stopped"], search["budget_limited"]) == (
        5,
        "resolution",
        False,
    )
    assert scenario["load"]["parallel"] == 5  # the result is the highest passing step's run
    assert {v["metric"]: v["passed"] for v in scenario["verdicts"]} == {
        "ttft_p50": True,
        "max_parallel": True,
    }

    report = (out / "report.md").read_text()
    assert "**max_parallel 5**" in report
    assert "- stopped: resolution 1 reached: parallel 5 passed, parallel 6 did not" in report
    assert "| step | parallel | phase | ttft_p50 | step outcome | s |" in report

    rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert [r["capacity_step"] for r in rows] == [n for n in range(1, 7) for _ in range(20)]
