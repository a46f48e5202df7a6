"""Reruns until decisive: `verdicts.rounds` and `inconclusive: rerun`, through pytest.

Against the timing instrument (TTFT 20 ms, exactly), a p90 needs 36 requests before its 95%
interval has an upper bound: at 6 requests a round, the sixth round is the first that can
decide `ttft_p90 <= 2 s`, which makes the number of rounds exact.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server
from tests.plugin.service import SERVICE, point_at

pytest_plugins = ["pytester"]

SPEC = (
    SERVICE
    + """
scenarios:
  chat:
    dataset: lines
    load: {parallel: 2, requests: 6, max_tokens: 8, warmup: 1}
    verdicts: %(verdicts)s
    slo:
      ttft_p90: "<= 2 s"
      failures: "<= 0"
"""
)


@pytest.fixture(scope="module")
def instrument() -> Iterator[TimingServerProcess]:
    with serve_timing_server(ttft_ms=20, gap_ms=2, tokens=8) as server:
        yield server


@pytest.fixture
def env(instrument: TimingServerProcess, monkeypatch: pytest.MonkeyPatch) -> TimingServerProcess:
    return point_at(monkeypatch, instrument)


def run(pytester: pytest.Pytester, verdicts: str, *args: str) -> tuple[Any, dict[str, Any]]:
    pytester.makefile(".txt", prompts="hello there\nwhat is a token?\n")
    spec = pytester.path / "svc.yaml"
    spec.write_text(SPEC % {"verdicts": verdicts}, encoding="utf-8")
    result = pytester.runpytest("--slo", str(spec), *args)
    data = json.loads((pytester.path / "llmslo-results" / "results.json").read_text())
    return result, data["scenarios"][0]


def rounds_of_requests(pytester: pytest.Pytester) -> list[int]:
    lines = (pytester.path / "llmslo-results" / "requests.jsonl").read_text().splitlines()
    return [json.loads(line)["round"] for line in lines]


def test_rerun_runs_rounds_until_the_interval_decides_and_pools_them(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    result, scenario = run(pytester, "{inconclusive: rerun, rounds: {min: 1, max: 8}}")
    result.assert_outcomes(passed=2)
    assert [r["round"] for r in scenario["rounds"]] == [1, 2, 3, 4, 5, 6]
    assert [r["requests"] for r in scenario["rounds"]] == [6, 12, 18, 24, 30, 36]
    outcomes = [r["verdicts"][0]["outcome"] for r in scenario["rounds"]]
    assert outcomes == ["inconclusive"] * 5 + ["pass"]
    assert scenario["summary"]["requests"] == 36 and scenario["summary"]["rounds"] == 6
    # the first round's warmup only: later rounds find the server warm
    rounds = rounds_of_requests(pytester)
    assert scenario["summary"]["warmup"] == 1 and len(rounds) == 37
    assert sorted(set(rounds)) == [1, 2, 3, 4, 5, 6]
    report = (pytester.path / "llmslo-results" / "report.md").read_text()
    assert "Rounds: 6 (min 1, max 8)" in report
    assert "| ttft_p90 | " in report and "after round 6 (n=36)" in report
    # the client's health, over every round: the probe fired in each
    assert "- client: event-loop lag p90 " in report and "concurrency " in report
    client = scenario["client"]
    assert client["probes"] > 0 and client["cpu"] is not None
    assert 0 < client["concurrency_ratio"] <= 1.0 and client["fell_behind"] is None


def test_rounds_stop_at_max_and_a_still_inconclusive_objective_fails_under_rerun(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    result, scenario = run(pytester, "{inconclusive: rerun, rounds: {min: 1, max: 2}}")
    result.assert_outcomes(passed=1, failed=1)
    assert len(scenario["rounds"]) == 2 and scenario["summary"]["requests"] == 12
    result.stdout.fnmatch_lines(["*INCONCLUSIVE*", "*ttft_p90 = * INCONCLUSIVE*n=12*"])
    report = (pytester.path / "llmslo-results" / "report.md").read_text()
    assert "still inconclusive after the last allowed round: ttft_p90" in report


def test_min_rounds_always_run_even_when_the_first_decides(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    # failures <= 0 is a count, decided by the first round; ttft_p90 under `pass` may stay open
    result, scenario = run(pytester, "{inconclusive: pass, rounds: 3}")
    result.assert_outcomes(passed=2)
    assert len(scenario["rounds"]) == 3 and scenario["summary"]["requests"] == 18
    assert rounds_of_requests(pytester).count(3) == 6


def test_one_round_by_default_has_no_rounds_table(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    result, scenario = run(pytester, "{inconclusive: pass}")
    result.assert_outcomes(passed=2)
    assert len(scenario["rounds"]) == 1 and scenario["summary"]["requests"] == 6
    assert "Rounds:" not in (pytester.path / "llmslo-results" / "report.md").read_text()


def test_the_command_line_turns_reruns_on_for_a_spec_that_sets_none(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    # --slo-inconclusive rerun without `rounds`: up to 5 rounds, still short of the 36 needed
    result, scenario = run(pytester, "{}", "--slo-inconclusive", "rerun")
    result.assert_outcomes(passed=1, failed=1)
    assert len(scenario["rounds"]) == 5


@pytest.mark.parametrize(
    ("verdicts", "message"),
    [
        ("{rounds: {min: 3, max: 2}}", "max (2) is below min (3)"),
        ("{rounds: {least: 2}}", "unknown key 'least'"),
        ("{rounds: 0}", "rounds"),
    ],
)
def test_bad_rounds_are_spec_errors_naming_the_key(
    pytester: pytest.Pytester, env: TimingServerProcess, verdicts: str, message: str
) -> None:
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.path / "svc.yaml"
    spec.write_text(SPEC % {"verdicts": verdicts}, encoding="utf-8")
    result = pytester.runpytest("--slo", str(spec))
    assert result.ret != 0
    out = result.stdout.str() + result.stderr.str()
    assert message in out and "scenarios.chat.verdicts.rounds" in out
    assert not Path(pytester.path / "llmslo-results" / "results.json").exists()
