"""Plots through pytest: a capacity search against the timing instrument, whose TTFT grows by
50 ms for each other request open, so latency rises with every step."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from pytest_llmslo.testing.timing_server import TimingServerProcess
from tests.plugin.service import SERVICE, point_at

pytest_plugins = ["pytester"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPEC = (
    SERVICE
    + """
scenarios:
  knee:
    dataset: lines
    load: {requests: 12, max_tokens: 4}
    capacity: {vary: parallel, start: 1, max: 4, budget: 1 min}
    slo:
      ttft_p50: "<= 300 ms"  # parallel 1 passes decisively even on a busy machine
  plain:
    dataset: lines
    load: {requests: 6, parallel: 2, max_tokens: 4}
    slo:
      ttft_p50: "<= 1 s"
"""
)


def run_spec(
    pytester: pytest.Pytester, server: TimingServerProcess, monkeypatch: pytest.MonkeyPatch
) -> Path:
    point_at(monkeypatch, server)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(pytester.path / "summary.md"))
    pytester.makefile(".txt", prompts="hello\nwhat is a token?\n")
    spec = pytester.makefile(".yaml", plots=SPEC)
    result = pytester.runpytest("--slo", str(spec))
    result.assert_outcomes(passed=2)
    return pytester.path / "llmslo-results"


def image_links(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_the_report_shows_a_cdf_per_scenario_and_the_search_plot_in_both_folders(
    pytester: pytest.Pytester, slowing: TimingServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    out = run_spec(pytester, slowing, monkeypatch)
    [run_dir] = list((out / "runs").iterdir())
    for folder in (out, run_dir):
        markdown = (folder / "report.md").read_text()
        assert image_links(markdown) == [
            "plots/knee--svc-cdf.png",
            "plots/knee--svc-capacity.png",
            "plots/plain--svc-cdf.png",
        ]
        for link in image_links(markdown):
            data = (folder / link).read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 1000, link
        assert "matplotlib" not in markdown
    # the job summary has no plots folder beside it: the plots are named, not broken images
    summary = (pytester.path / "summary.md").read_text()
    assert image_links(summary) == []
    assert (
        "*TTFT and E2E" in summary and "`plots/knee--svc-cdf.png` in the report folder*" in summary
    )


def test_without_matplotlib_the_run_reports_everything_and_says_how_to_get_plots(
    pytester: pytest.Pytester, slowing: TimingServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    out = run_spec(pytester, slowing, monkeypatch)
    markdown = (out / "report.md").read_text()
    assert markdown.count("pip install pytest-llmslo[plots]") == 1
    assert image_links(markdown) == [] and not (out / "plots").exists()
    assert "### knee[svc] — PASS" in markdown and "### plain[svc] — PASS" in markdown
    assert "| step | parallel | phase | ttft_p50 | step outcome | s |" in markdown
