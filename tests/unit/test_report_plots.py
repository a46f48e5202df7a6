"""Plots beside the report: what is drawn, where it goes, how report.md links it, and that the
report stays whole without matplotlib or when a plot fails."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_llmslo import report_plots
from pytest_llmslo.capacity import CapacitySearch, Step, StepOutcome
from pytest_llmslo.config import CapacityConfig, LoadConfig, ServerConfig, VerdictsConfig
from pytest_llmslo.metrics import summarize
from pytest_llmslo.records import ErrorCategory, RequestRecord
from pytest_llmslo.report_plots import INSTALL, draw_capacity, draw_cdfs, file_stem, plan
from pytest_llmslo.report_writer import RunFolder, Written, write_reports
from pytest_llmslo.result import ScenarioResult
from pytest_llmslo.slo import parse_objective
from pytest_llmslo.spec import Scenario

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SERVER = ServerConfig(name="svc", backend="external", base_url="http://127.0.0.1:9")


def record(
    i: int, ttft: float, e2e: float, *, warmup: bool = False, failed: bool = False
) -> RequestRecord:
    return RequestRecord(
        index=i,
        prompt_index=0,
        warmup=warmup,
        sent_at=float(i),
        end_at=i + e2e,
        first_chunk_at=i + ttft,
        first_content_at=None if failed else i + ttft,
        content_times=() if failed else (i + ttft, i + e2e),
        input_tokens=4,
        output_tokens=None if failed else 2,
        token_source=None if failed else "usage",
        error=ErrorCategory.HTTP_5XX if failed else None,
    )


def scenario(name: str = "chat", capacity: CapacityConfig | None = None) -> Scenario:
    return Scenario(
        name=name,
        servers=("svc",),
        dataset="lines",
        load=LoadConfig(requests=10),
        objectives=(parse_objective("ttft_p50", "<= 1 s"),),
        request_slo=(),
        percentiles=(50.0,),
        line=1,
        capacity=capacity,
        verdicts=VerdictsConfig(client_guard=False),
    )


def result(
    records: list[RequestRecord],
    *,
    name: str = "chat",
    server: ServerConfig = SERVER,
    parallel: int = 1,
    capacity: CapacitySearch | None = None,
) -> ScenarioResult:
    measured = [r for r in records if not r.warmup]
    window = (0.0, max(r.end_at for r in measured)) if measured else None
    return ScenarioResult(
        spec_path="spec.yaml",
        scenario=scenario(name, capacity.config if capacity is not None else None),
        server=server,
        summary=summarize(records, window=window, percentiles=(50.0,)) if records else None,
        records=tuple(records),
        load=LoadConfig(parallel=parallel, requests=len(records)),
        capacity=capacity,
    ).judged((parse_objective("ttft_p50", "<= 1 s"),))


def ran(ttft: float = 0.1, e2e: float = 0.4, n: int = 10) -> list[RequestRecord]:
    return [record(i, ttft * (1 + i / n), e2e * (1 + i / n)) for i in range(n)]


def search(outcomes: dict[int, StepOutcome], stopped: str = "resolution") -> CapacitySearch:
    """Steps whose TTFT grows with the load, run in the order given."""
    steps = tuple(
        Step(n, float(level), "probe", outcome, "", 1.0, result(ran(0.05 * level), parallel=level))
        for n, (level, outcome) in enumerate(outcomes.items(), start=1)
    )
    config = CapacityConfig(vary="parallel", start=1, max=16, budget=600)
    return CapacitySearch(config, steps, stopped, "why it stopped")  # type: ignore[arg-type]


def searched() -> ScenarioResult:
    return result(
        ran(0.2),
        name="knee",
        parallel=4,
        capacity=search({1: "pass", 2: "pass", 4: "pass", 8: "fail", 6: "inconclusive"}),
    )


def write(results: list[ScenarioResult], report: Path) -> Written:
    return write_reports(results, report, None, run=RunFolder.start(report))


def image_links(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC)


# --- files and links ----------------------------------------------------------------------------


def test_each_run_scenario_gets_a_cdf_and_a_search_its_load_plot_linked_from_both_reports(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    report = tmp_path / "out" / "report.md"
    written = write([result(ran()), searched()], report)
    assert written.warnings == []
    [run_dir] = list((tmp_path / "out" / "runs").iterdir())
    expected = [
        "plots/chat--svc-cdf.png",
        "plots/knee--svc-cdf.png",
        "plots/knee--svc-capacity.png",
    ]
    for folder in (run_dir, report.parent):
        markdown = (folder / "report.md").read_text()
        assert image_links(markdown) == expected
        for link in image_links(markdown):
            assert is_png(folder / link), link  # the relative link resolves from this folder
    assert "3 plots beside it" in written.messages[-1]


def test_each_plot_sits_under_its_own_scenario_section(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = tmp_path / "report.md"
    write([result(ran()), searched()], report)
    markdown = report.read_text()
    chat, knee = markdown.split("### chat[svc]")[1].split("### knee[svc]")
    assert image_links(chat) == ["plots/chat--svc-cdf.png"]
    assert image_links(knee) == ["plots/knee--svc-cdf.png", "plots/knee--svc-capacity.png"]


def test_a_scenario_without_successful_measured_requests_gets_no_cdf() -> None:
    failed = [record(i, 0.1, 0.2, failed=True) for i in range(3)]
    warmup_only = [record(i, 0.1, 0.2, warmup=True) for i in range(3)]
    assert plan([result(failed), result(warmup_only, name="warm"), result([], name="none")]) == []


def test_file_names_are_safe_and_the_same_every_run_and_two_results_never_share_one() -> None:
    odd = ServerConfig(name="gpu box/1", backend="external", base_url="http://127.0.0.1:9")
    weird = result(ran(), name="聊天 chat: long/ctx", server=odd)
    assert file_stem(weird) == "chat_long_ctx--gpu_box_1"
    assert file_stem(result(ran(), name="中文")) == "unnamed--svc"
    twins = [result(ran(), name="a b"), result(ran(), name="a_b"), result(ran(), name="a b")]
    paths = [p.path for p in plan(twins)]
    assert paths == [
        "plots/a_b--svc-cdf.png",
        "plots/a_b--svc-2-cdf.png",
        "plots/a_b--svc-3-cdf.png",
    ]
    assert paths == [p.path for p in plan(twins)]
    assert all(re.fullmatch(r"plots/[A-Za-z0-9._-]+\.png", p) for p in paths)


# --- what the figures show ----------------------------------------------------------------------


def test_the_cdfs_are_over_successful_measured_requests_in_ms_below_a_second() -> None:
    figure = pytest.importorskip("matplotlib.figure")
    records = [
        record(0, 0.1, 0.5),
        record(1, 0.3, 1.5),
        record(2, 0.2, 2.5),
        record(3, 9.0, 9.0, warmup=True),  # warmup: not measured
        record(4, 0.1, 9.0, failed=True),  # failed: no latency to show
    ]
    fig = figure.Figure()
    draw_cdfs(fig, result(records))
    ttft_ax, e2e_ax = fig.axes
    assert (ttft_ax.get_xlabel(), e2e_ax.get_xlabel()) == ("TTFT (ms)", "E2E latency (s)")
    [ttft_line] = ttft_ax.get_lines()[:1]
    assert list(ttft_line.get_xdata()) == pytest.approx([0, 100, 200, 300])
    assert list(ttft_line.get_ydata()) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    [e2e_line] = e2e_ax.get_lines()[:1]
    assert list(e2e_line.get_xdata()) == pytest.approx([0, 0.5, 1.5, 2.5])
    assert "3 successful measured requests" in fig.get_suptitle()


def test_the_load_plot_marks_each_step_by_outcome_and_the_answer() -> None:
    figure = pytest.importorskip("matplotlib.figure")
    res = searched()
    assert res.capacity is not None
    fig = figure.Figure()
    draw_capacity(fig, res, res.capacity)
    latency_ax, throughput_ax = fig.axes
    lines = {line.get_label(): line for line in latency_ax.get_lines()}
    # the percentiles against the load, in the order of the load, not of the search
    assert list(lines["TTFT p50"].get_xdata()) == [1, 2, 4, 6, 8]
    assert set(lines) >= {"TTFT p50", "TTFT p90", "TTFT p99", "E2E p90"}
    assert list(lines["answer: max_parallel 4"].get_xdata()) == [4, 4]
    legend = [t.get_text() for t in throughput_ax.get_legend().get_texts()]
    assert legend == [
        "output tok/s",
        "answer: max_parallel 4",
        "step passed",
        "step failed",
        "step inconclusive",
    ]
    numbers = sorted(t.get_text() for t in throughput_ax.texts)
    assert numbers == ["1", "2", "3", "4", "5"]
    assert throughput_ax.get_xlabel() == "parallel (concurrent users)"


# --- without matplotlib, and when a plot fails --------------------------------------------------


def test_without_matplotlib_the_report_is_whole_and_says_once_how_to_get_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    report = tmp_path / "report.md"
    written = write([result(ran()), searched()], report)
    assert written.warnings == []
    markdown = report.read_text()
    assert markdown.count(INSTALL) == 1
    assert f"- note: no plots: matplotlib is not installed (`{INSTALL}` adds them)" in markdown
    assert image_links(markdown) == []
    assert "### chat[svc] — PASS" in markdown and "### knee[svc]" in markdown
    assert "| step | parallel | phase |" in markdown  # the capacity table, as without plots
    assert not (tmp_path / "plots").exists()


def test_a_plot_that_fails_is_a_note_and_the_other_plots_and_files_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")

    def broken(*args: Any) -> None:
        raise RuntimeError("plotting bug")

    monkeypatch.setattr(report_plots, "draw_cdfs", broken)
    report = tmp_path / "report.md"
    written = write([searched()], report)
    assert written.warnings == [
        "llmslo: could not draw plots/knee--svc-cdf.png: RuntimeError: plotting bug"
    ]
    markdown = report.read_text()
    assert (
        "- plot `plots/knee--svc-cdf.png` (TTFT and E2E CDFs) not drawn: RuntimeError: plotting bug"
        in markdown
    )
    assert image_links(markdown) == ["plots/knee--svc-capacity.png"]
    assert is_png(tmp_path / "plots" / "knee--svc-capacity.png")
    assert not (tmp_path / "plots" / "knee--svc-cdf.png").exists()
    for name in ("results.json", "requests.jsonl"):
        assert (tmp_path / name).stat().st_size > 0


def test_plots_that_cannot_be_planned_cost_the_report_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(results: Any) -> None:
        raise ValueError("bad result")

    monkeypatch.setattr(report_plots, "plan", broken)
    report = tmp_path / "report.md"
    written = write([result(ran())], report)
    assert written.warnings == ["llmslo: could not draw plots: ValueError: bad result"]
    markdown = report.read_text()
    assert "- note: no plots: ValueError: bad result" in markdown
    assert "### chat[svc] — PASS" in markdown


def test_bisection_steps_packed_together_do_not_print_labels_over_each_other() -> None:
    from pytest_llmslo.report_plots import _spaced

    # the H200 search: probes doubling to 256, then bisection between 128 and 256
    levels = [8.0, 16, 32, 64, 128, 160, 168, 176, 192, 256]
    assert _spaced(levels, log=True) == [8, 16, 32, 64, 128, 160, 192, 256]
    assert _spaced([1.0, 2, 3, 4, 5, 6, 7, 8], log=False) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert _spaced([4.0, 4.01, 4.02], log=False)[-1] == 4.02  # the highest keeps its label
