"""`--slo-progress` through pytest, against the timing instrument as an external server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server
from tests.plugin.service import SERVICE, point_at

pytest_plugins = ["pytester"]

SPEC = (
    SERVICE
    + """
scenarios:
  short:
    dataset: lines
    load: {parallel: 2, requests: 4, max_tokens: 8}
    slo: {failures: "<= 0"}
  longer:
    dataset: lines
    load: {parallel: 2, requests: 6, max_tokens: 8, warmup: 1}
    slo: {failures: "<= 0"}
"""
)


@pytest.fixture(scope="module")
def instrument() -> Iterator[TimingServerProcess]:
    with serve_timing_server(ttft_ms=20, gap_ms=2, tokens=8) as server:
        yield server


@pytest.fixture
def spec(
    pytester: pytest.Pytester, instrument: TimingServerProcess, monkeypatch: pytest.MonkeyPatch
) -> str:
    point_at(monkeypatch, instrument)
    pytester.makefile(".txt", prompts="hello there\nwhat is a token?\n")
    path = pytester.path / "svc.yaml"
    path.write_text(SPEC, encoding="utf-8")
    return str(path)


def progress_lines(output: list[str]) -> list[str]:
    return [line for line in output if line.startswith("llmslo: ") and " requests, " in line]


def test_output_that_is_not_a_terminal_gets_one_line_per_scenario_and_server_start(
    pytester: pytest.Pytester, spec: str
) -> None:
    result = pytester.runpytest("--slo", spec)
    result.assert_outcomes(passed=2)
    # the rate and the time vary from run to run: matched with wildcards
    result.stdout.fnmatch_lines(
        [
            "llmslo: server svc ready after * s",
            "llmslo: short::svc: 4/4 requests, 0 failed, * tok/s, * s",
            "llmslo: longer::svc: 6/6 requests, 0 failed, * tok/s, * s",
        ]
    )
    assert len(progress_lines(result.outlines)) == 2


def test_progress_off_writes_no_progress_line(pytester: pytest.Pytester, spec: str) -> None:
    result = pytester.runpytest("--slo", spec, "--slo-progress", "off")
    result.assert_outcomes(passed=2)
    assert progress_lines(result.outlines) == []
    assert not any("server svc ready" in line for line in result.outlines)
    result.stdout.fnmatch_lines(["llmslo: * progress=off"])


def test_the_environment_chooses_the_mode_and_a_wrong_one_is_refused(
    pytester: pytest.Pytester, spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMSLO_PROGRESS", "sometimes")
    result = pytester.runpytest("--slo", spec)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*$LLMSLO_PROGRESS: expected one of auto, live, lines, off, got 'sometimes'"]
    )


def test_a_live_line_is_drawn_and_its_thread_is_gone_at_the_end_of_the_run(
    pytester: pytest.Pytester, spec: str
) -> None:
    # a run of a second or more: the line is drawn at least once (twice a second at most)
    slow = "{parallel: 2, requests: 6, max_tokens: 8, extra_body: {x_gap_ms: 150}}"
    text = SPEC.replace("{parallel: 2, requests: 4, max_tokens: 8}", slow)
    (pytester.path / "svc.yaml").write_text(text, encoding="utf-8")
    result = pytester.runpytest("--slo", spec, "--slo-progress", "live")
    result.assert_outcomes(passed=2)
    output = result.stdout.str()
    # drawn, rewritten in place (erase to the end of the line), and cleared before pytest's "."
    assert "short::svc: 0/6 requests, 0 failed" in output
    assert "\x1b[K\x1b[1A." in output
    assert progress_lines(result.outlines) == []  # live, not lines
    assert not any(t.name == "llmslo-progress" for t in threading.enumerate())
