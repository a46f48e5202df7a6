"""A saturated server is reported as such: an open loop faster than the timing instrument can
serve (each open stream adds to every TTFT, so the queue feeds itself) against one it can."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server
from tests.plugin.service import SERVICE, point_at

pytest_plugins = ["pytester"]

SPEC = (
    SERVICE
    + """
scenarios:
  burst:
    dataset: lines
    load: {%(load)s, requests: 60, max_tokens: 4}
    verdicts: {inconclusive: pass}
    slo:
      ttft_growth: "<= 1.5x"
"""
)


@pytest.fixture(scope="module")
def instrument() -> Iterator[TimingServerProcess]:
    # 10 ms more TTFT per other open stream: at 200 req/s arrivals outpace completions
    with serve_timing_server(ttft_ms=20, gap_ms=1, tokens=4, ttft_per_stream_ms=10) as server:
        yield server


def run(pytester: pytest.Pytester, instrument: TimingServerProcess, load: str) -> Any:
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.path / "burst.yaml"
    spec.write_text(SPEC % {"load": load}, encoding="utf-8")
    result = pytester.runpytest("--slo", str(spec))
    data = json.loads((pytester.path / "llmslo-results" / "results.json").read_text())
    report = (pytester.path / "llmslo-results" / "report.md").read_text()
    return result, data["scenarios"][0], report


@pytest.fixture
def env(instrument: TimingServerProcess, monkeypatch: pytest.MonkeyPatch) -> TimingServerProcess:
    return point_at(monkeypatch, instrument)


def test_an_open_loop_past_the_knee_is_reported_saturated(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    result, scenario, report = run(pytester, env, "rate: 200")
    result.assert_outcomes(failed=1)
    assert scenario["saturated"].startswith("saturated: the median TTFT grew")
    assert scenario["measurements"]["ttft_growth"]["value"] >= 2.0
    assert "- **saturated: the median TTFT grew" in report
    result.stdout.fnmatch_lines(["*ttft_growth = *x [[]*objective <= 1.5x: missed by*"])


def test_a_closed_loop_below_the_knee_is_not(
    pytester: pytest.Pytester, env: TimingServerProcess
) -> None:
    result, scenario, report = run(pytester, env, "parallel: 2")
    result.assert_outcomes(passed=1)
    assert scenario["saturated"] is None and "saturated" not in report
