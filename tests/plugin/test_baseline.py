"""Baselines through pytest: record one against the timing instrument, then a slowed instrument
fails the relative objective as a regression and the unchanged one does not.

The instrument's time to first token is set exactly, so "slower" is known, not hoped for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server
from tests.plugin.service import SERVICE

pytest_plugins = ["pytester"]

SPEC = (
    SERVICE
    + """
scenarios:
  chat:
    dataset: lines
    # enough requests for the p95's interval to have a finite upper end at 95%
    load: {parallel: 4, requests: 120, max_tokens: 4}
    slo:
      ttft_p95: "<= baseline + 25%"
      failure_rate: "<= 1%"
"""
)


@pytest.fixture(scope="module")
def instrument() -> Iterator[TimingServerProcess]:
    with serve_timing_server(ttft_ms=40, gap_ms=1, tokens=4) as server:
        yield server


@pytest.fixture(scope="module")
def slowed() -> Iterator[TimingServerProcess]:
    # the same service with its first token three times later: a regression
    with serve_timing_server(ttft_ms=120, gap_ms=1, tokens=4) as server:
        yield server


@pytest.fixture
def spec(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    # as in the other plugin tests: what the intervals leave undecided passes, with a warning
    monkeypatch.setenv("LLMSLO_INCONCLUSIVE", "pass")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makefile(".txt", prompts="hello\n")
    return pytester.makefile(".yaml", regression=SPEC)


def run_against(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    server: TimingServerProcess,
    *args: str,
) -> pytest.RunResult:
    monkeypatch.setenv("INSTRUMENT_URL", server.base_url)
    return pytester.runpytest("--slo", "regression.yaml", "-rs", *args)


def test_a_slowed_server_fails_against_the_baseline_and_an_unchanged_one_does_not(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    spec: Path,
    instrument: TimingServerProcess,
    slowed: TimingServerProcess,
) -> None:
    recorded = run_against(pytester, monkeypatch, instrument, "--slo-save-baseline", "base")
    recorded.assert_outcomes(passed=1, skipped=1)
    recorded.stdout.fnmatch_lines(["*this run records the baseline*", "*saved the baseline*"])
    saved = json.loads((pytester.path / "base" / "results.json").read_text())
    assert saved["scenarios"][0]["measurements"]["ttft_p95"]["value"] > 0.04

    regressed = run_against(pytester, monkeypatch, slowed, "--slo-baseline", "base")
    regressed.assert_outcomes(passed=1, failed=1)
    regressed.stdout.fnmatch_lines(
        [
            "llmslo: * baseline=base*",
            "*ttft_p95 = * vs baseline * objective <= baseline + 25% (= *): missed by*",
            "baseline: base/results.json, chat[[]svc] of *regression.yaml",
        ]
    )
    report = (pytester.path / "llmslo-results" / "report.md").read_text()
    assert "| metric | value [interval] | baseline [interval] | change |" in report
    # another URL is another server definition: reported beside the comparison, not refused
    assert "other: spec_hash:" in report

    unchanged = run_against(
        pytester, monkeypatch, instrument, "--slo-baseline", "base/results.json"
    )
    unchanged.assert_outcomes(passed=2)
    data = json.loads((pytester.path / "llmslo-results" / "results.json").read_text())
    [verdict] = [v for v in data["scenarios"][0]["verdicts"] if v["metric"] == "ttft_p95"]
    assert verdict["outcome"] in ("pass", "inconclusive") and verdict["baseline"]["value"] > 0


def test_without_a_baseline_a_relative_objective_fails_and_says_how_to_give_one(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    spec: Path,
    instrument: TimingServerProcess,
) -> None:
    result = run_against(pytester, monkeypatch, instrument)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*no baseline: pass --slo-baseline PATH*"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "*--slo-baseline: old.json does not exist*"),
        ('{"schema": "pytest-llmslo/results/v3"}', "*re-record the baseline*"),
        ("not json", "*old.json is not a results.json*"),
    ],
)
def test_an_unusable_baseline_is_a_usage_error_before_any_server_starts(
    pytester: pytest.Pytester, spec: Path, content: str | None, message: str
) -> None:
    if content is not None:
        (pytester.path / "old.json").write_text(content)
    # nothing listens at this URL: a server start would be a different error
    pytester.makeini("[pytest]\nslo_server_url = http://127.0.0.1:9\n")
    result = pytester.runpytest("--slo", str(spec), "--slo-baseline", "old.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_an_undecided_relative_objective_asks_for_more_rounds(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    spec: Path,
    instrument: TimingServerProcess,
) -> None:
    base_spec = SPEC.replace("ttft_p95:", "ttft_p50:").replace(
        'failure_rate: "<= 1%"', 'failures: "<= 0"'
    )
    spec.write_text(base_spec, encoding="utf-8")
    recorded = run_against(pytester, monkeypatch, instrument, "--slo-save-baseline", "base")
    recorded.assert_outcomes(passed=1, skipped=1)
    # rounds of 4 requests: a median's interval has no bounds on 4, [min, max] on 8, and the
    # 3rd to 10th of 12 (robust to a slow request or two) on 12
    spec.write_text(
        base_spec.replace("requests: 120", "requests: 4").replace(
            "    slo:", "    verdicts: {inconclusive: rerun, rounds: {min: 1, max: 5}}\n    slo:"
        ),
        encoding="utf-8",
    )
    monkeypatch.delenv("LLMSLO_INCONCLUSIVE")
    compared = run_against(pytester, monkeypatch, instrument, "--slo-baseline", "base")
    compared.assert_outcomes(passed=2)
    scenario = json.loads((pytester.path / "llmslo-results" / "results.json").read_text())[
        "scenarios"
    ][0]
    outcomes = [
        next(v["outcome"] for v in r["verdicts"] if v["metric"] == "ttft_p50")
        for r in scenario["rounds"]
    ]
    assert outcomes[0] == "inconclusive" and outcomes[-1] == "pass" and 2 <= len(outcomes) <= 5
