"""`side_by_side: true`: a scenario's servers under load at the same time, each result its own.

Two timing instruments stand for two servers (in a GPU run, one per GPU: each server's memory is
its own process tree's, tests/unit/test_telemetry.py checks that attribution on a fake NVML).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server

pytest_plugins = ["pytester"]

SPEC = """
servers:
  left: {backend: external, base_url: "${LEFT_URL}", model: timing}
  right: {backend: external, base_url: "${RIGHT_URL}", model: timing}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  together:
    servers: %(servers)s
    side_by_side: %(side_by_side)s
    dataset: lines
    load: {parallel: 2, requests: 6, max_tokens: 8}
    verdicts: {inconclusive: pass}
    slo:
      failures: "<= 0"
"""


@pytest.fixture(scope="module")
def instruments() -> Iterator[tuple[TimingServerProcess, TimingServerProcess]]:
    # 8 tokens 30 ms apart: each request takes about a quarter of a second
    with (
        serve_timing_server(ttft_ms=20, gap_ms=30, tokens=8) as left,
        serve_timing_server(ttft_ms=20, gap_ms=30, tokens=8) as right,
    ):
        yield left, right


@pytest.fixture
def env(
    instruments: tuple[TimingServerProcess, TimingServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEFT_URL", instruments[0].base_url)
    monkeypatch.setenv("RIGHT_URL", instruments[1].base_url)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def run(pytester: pytest.Pytester, side_by_side: str, servers: str = "[left, right]") -> Any:
    pytester.makefile(".txt", prompts="hello there\nwhat is a token?\n")
    spec = pytester.path / "pair.yaml"
    spec.write_text(SPEC % {"servers": servers, "side_by_side": side_by_side}, encoding="utf-8")
    return pytester.runpytest("--slo", str(spec), "-v")


def spans(pytester: pytest.Pytester) -> dict[str, tuple[float, float]]:
    """Per server: its first send and its last end, on the one monotonic clock of the run."""
    out: dict[str, tuple[float, float]] = {}
    lines = (pytester.path / "llmslo-results" / "requests.jsonl").read_text().splitlines()
    for row in map(json.loads, lines):
        first, last = out.get(row["server"], (row["sent_at"], row["end_at"]))
        out[row["server"]] = (min(first, row["sent_at"]), max(last, row["end_at"]))
    return out


def test_side_by_side_servers_are_loaded_at_the_same_time(
    pytester: pytest.Pytester, env: None
) -> None:
    result = run(pytester, "true")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*pair.yaml::together::left::failures PASSED*",
            "*pair.yaml::together::right::failures PASSED*",
        ]
    )
    left, right = spans(pytester).values()
    overlap = min(left[1], right[1]) - max(left[0], right[0])
    assert overlap > 0.5 * min(left[1] - left[0], right[1] - right[0])
    data = json.loads((pytester.path / "llmslo-results" / "results.json").read_text())
    notes = {s["server"]: s["load_notes"] for s in data["scenarios"]}
    assert notes == {"left": ["side by side with 'right'"], "right": ["side by side with 'left'"]}
    assert all(s["summary"]["requests"] == 6 for s in data["scenarios"])


def test_without_side_by_side_the_servers_take_turns(pytester: pytest.Pytester, env: None) -> None:
    result = run(pytester, "false")
    result.assert_outcomes(passed=2)
    left, right = spans(pytester).values()
    assert left[1] <= right[0] or right[1] <= left[0]


def test_side_by_side_needs_two_servers(pytester: pytest.Pytester, env: None) -> None:
    result = run(pytester, "true", servers="[left]")
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        ["*scenarios.together.side_by_side: runs servers side by side, and this scenario has one*"]
    )
