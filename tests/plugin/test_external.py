"""External servers through pytest: a hung one stops its scenario, an unreachable one fails fast.

The service is the project's timing instrument (stalling on request), or a port where nothing
listens; the reports must say what happened and keep what was measured.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server

pytest_plugins = ["pytester"]

SPEC = """
servers:
  svc: {backend: external, base_url: "${SERVICE_URL}", startup_timeout: 60s}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  hung:
    dataset: lines
    load:
      parallel: 3
      requests: 60
      max_tokens: 8
      read_timeout: 0.3s
      extra_body: {x_fault: stall}
    slo:
      failure_rate: "<= 1%"
"""


@pytest.fixture(scope="module")
def instrument() -> Iterator[TimingServerProcess]:
    with serve_timing_server(ttft_ms=5, gap_ms=1, tokens=4) as server:
        yield server


def test_a_hung_server_stops_its_scenario_and_the_reports_say_why(
    pytester: pytest.Pytester, instrument: TimingServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVICE_URL", instrument.base_url)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.makefile(".yaml", svc=SPEC)
    result = pytester.runpytest("--slo", str(spec))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*load stopped early: 3 requests in a row timed out*server looks hung*"]
    )
    out = pytester.path / "llmslo-results"
    assert "requests in a row timed out" in (out / "report.md").read_text()
    scenario = json.loads((out / "results.json").read_text())["scenarios"][0]
    assert scenario["interrupted"].startswith("3 requests in a row timed out")
    # the default limit stopped it within the first wave of 3 users, and kept those records
    records = (out / "requests.jsonl").read_text().splitlines()
    assert 3 <= len(records) <= 6


def test_an_unreachable_server_url_fails_fast_despite_a_long_startup_timeout(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("SERVICE_URL", "http://127.0.0.1:9")  # never used: the flag wins
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makefile(".txt", prompts="hello\n")
    spec = pytester.makefile(".yaml", svc=SPEC)
    result = pytester.runpytest("--slo", str(spec), "--slo-server-url", f"http://127.0.0.1:{port}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"*server 'svc': nothing accepts connections at http://127.0.0.1:{port}*"]
    )
