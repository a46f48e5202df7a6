"""Plots beside the report: TTFT and E2E CDFs per scenario, latency and throughput against load
per capacity search, as PNG files that report.md links.

Optional: matplotlib comes with the `plots` extra. Without it no plot is drawn and the report says
once how to get them. matplotlib is imported only here, only when a report is written, and drawn
through its Agg canvas directly (no pyplot), so it needs no display and leaves a user's own
matplotlib settings alone. Drawing never raises: a plot that cannot be drawn is a note in its
scenario's section, and the other plots, the report and its files are kept.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_llmslo import metrics
from pytest_llmslo.report_capacity import headline

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pytest_llmslo.capacity import CapacitySearch, Step
    from pytest_llmslo.records import RequestRecord
    from pytest_llmslo.result import ScenarioResult

PLOTS_DIR = "plots"  # beside report.md, in the run's folder and beside the latest report
INSTALL = "pip install pytest-llmslo[plots]"
NO_MATPLOTLIB = f"no plots: matplotlib is not installed (`{INSTALL}` adds them)"

# a capacity search's latency lines: label, distribution, percentile
_CAPACITY_LATENCY: tuple[tuple[str, str, float], ...] = (
    ("TTFT p50", "ttft", 50.0),
    ("TTFT p90", "ttft", 90.0),
    ("TTFT p99", "ttft", 99.0),
    ("E2E p90", "e2e", 90.0),
)
# each step's outcome: marker, colour, legend label
_OUTCOME_STYLE = {
    "pass": ("o", "tab:green", "step passed"),
    "fail": ("X", "tab:red", "step failed"),
    "inconclusive": ("D", "tab:orange", "step inconclusive"),
    "error": ("s", "tab:gray", "step did not complete"),
}
_NAME_LENGTH = 60  # of each part of a file name: scenario, server

Draw = Callable[["Figure"], None]


@dataclass(frozen=True)
class PlotLink:
    """One plot of a scenario's section: its path relative to report.md, or why it is missing."""

    title: str
    path: str
    error: str | None = None


@dataclass
class Plots:
    """What drawing produced: PNG bytes by path relative to report.md, each scenario's links
    (by `ScenarioResult.key`), notes for the report's header and warnings for the terminal."""

    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[tuple[str, str, str], list[PlotLink]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Planned:
    key: tuple[str, str, str]
    title: str
    path: str
    draw: Draw


def draw_plots(results: Sequence[ScenarioResult]) -> Plots:
    """Every plot of `results` as PNG bytes; no plots and one note without matplotlib. A plot
    that cannot be drawn is a link with its error and a warning; the others are drawn."""
    plots = Plots()
    planned = plan(results)
    if not planned:
        return plots
    canvas = _agg()
    if canvas is None:
        plots.notes.append(NO_MATPLOTLIB)
        return plots
    for plot in planned:
        links = plots.links.setdefault(plot.key, [])
        try:
            plots.files[plot.path] = canvas(plot.draw)
        except Exception as exc:  # one plot must not cost the others or the report
            why = f"{type(exc).__name__}: {exc}"
            links.append(PlotLink(plot.title, plot.path, why))
            plots.warnings.append(f"llmslo: could not draw {plot.path}: {why}")
        else:
            links.append(PlotLink(plot.title, plot.path))
    return plots


def plan(results: Sequence[ScenarioResult]) -> list[_Planned]:
    """The plots `results` get, with file names from scenario and server: a CDF for each result
    with successful measured requests, a load plot for each capacity search with a step that
    ran."""
    out: list[_Planned] = []
    taken: set[str] = set()
    for res in results:
        stem = _unique(file_stem(res), taken)
        if successful(res):
            out.append(
                _Planned(
                    res.key,
                    "TTFT and E2E CDFs",
                    f"{PLOTS_DIR}/{stem}-cdf.png",
                    _drawing_cdfs(res),
                )
            )
        search = res.capacity
        if search is not None and _ran(search):
            out.append(
                _Planned(
                    res.key,
                    "latency and throughput against load",
                    f"{PLOTS_DIR}/{stem}-capacity.png",
                    _drawing_capacity(res, search),
                )
            )
    return out


def _drawing_cdfs(res: ScenarioResult) -> Draw:
    def draw(fig: Figure) -> None:
        draw_cdfs(fig, res)  # looked up when drawn, as a test replaces it

    return draw


def _drawing_capacity(res: ScenarioResult, search: CapacitySearch) -> Draw:
    def draw(fig: Figure) -> None:
        draw_capacity(fig, res, search)

    return draw


def file_stem(res: ScenarioResult) -> str:
    """``<scenario>--<server>`` in letters, digits, `.`, `_` and `-` only: the same for the same
    names in every run, safe in a file name and a markdown link."""
    return f"{_safe(res.scenario.name)}--{_safe(res.server.name)}"


def _safe(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:_NAME_LENGTH]
    return cleaned or "unnamed"


def _unique(stem: str, taken: set[str]) -> str:
    # two results whose names clean to the same stem (one name in two specs, `a b` and `a_b`)
    # are told apart by their order, which is the report's
    unique, n = stem, 2
    while unique in taken:
        unique, n = f"{stem}-{n}", n + 1
    taken.add(unique)
    return unique


def successful(res: ScenarioResult) -> list[RequestRecord]:
    """The successful measured requests (warmup excluded): the CDFs' sample."""
    return [r for r in res.records if not r.warmup and r.ok]


def _ran(search: CapacitySearch) -> bool:
    return any(_summary_of(step) is not None for step in search.steps)


def _agg() -> Callable[[Draw], bytes] | None:
    """A function that draws a figure to PNG bytes on matplotlib's Agg canvas; None without
    matplotlib."""
    try:
        import matplotlib  # noqa: F401  (first, so that a blocked or broken install is None)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None

    def png(draw: Draw) -> bytes:
        fig = Figure(figsize=(10, 4.5), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        # a glyph missing from the font (a scenario named in Chinese) is not worth a warning
        # that a test suite's `error` filter would turn into a lost plot
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            draw(fig)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png")
        return buffer.getvalue()

    return png


# --- TTFT and E2E CDFs -------------------------------------------------------------------------


def draw_cdfs(fig: Figure, res: ScenarioResult) -> None:
    """Two panels: the empirical CDF of TTFT and of E2E latency over the successful measured
    requests."""
    measured = successful(res)
    ttft = [v for r in measured if (v := metrics.ttft(r)) is not None]
    e2e = [metrics.e2e(r) for r in measured]
    left, right = fig.subplots(1, 2, sharey=True)
    _cdf(left, "TTFT", ttft)
    _cdf(right, "E2E latency", e2e)
    left.set_ylabel("fraction of requests at or below")
    where = ""
    if res.capacity is not None and res.load is not None:
        best = res.capacity.best
        level = res.load.parallel if res.capacity.config.vary == "parallel" else res.load.rate
        which = "highest passing step" if best is not None else "first step"
        where = f" at {res.capacity.config.vary} {level:g} ({which})"
    fig.suptitle(f"{res.id}: {len(measured)} successful measured requests{where}")


def _cdf(ax: Axes, name: str, seconds: list[float]) -> None:
    ax.set_title(name)
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    if not seconds:
        ax.text(0.5, 0.5, f"no {name} measured", ha="center", va="center", transform=ax.transAxes)
        return
    scale, unit = _time_unit(seconds)
    xs = [0.0, *sorted(v * scale for v in seconds)]
    n = len(seconds)
    ax.step(xs, [i / n for i in range(n + 1)], where="post", color="tab:blue")
    for q in (0.5, 0.9, 0.99):
        ax.axhline(q, color="gray", linestyle=":", linewidth=0.8)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 0.9, 1])
    ax.set_xlim(left=0)
    ax.set_xlabel(f"{name} ({unit})")


def _time_unit(seconds: Sequence[float]) -> tuple[float, str]:
    """Milliseconds below a second, else seconds: the scale and its label."""
    finite = [v for v in seconds if math.isfinite(v)]
    return (1000.0, "ms") if not finite or max(finite) < 1.0 else (1.0, "s")


# --- a capacity search -------------------------------------------------------------------------


def draw_capacity(fig: Figure, res: ScenarioResult, search: CapacitySearch) -> None:
    """Two panels against the load level: TTFT p50/p90/p99 and E2E p90 above, output throughput
    below; each step marked by its outcome and numbered, the answer marked."""
    steps = sorted((s for s in search.steps if _summary_of(s) is not None), key=lambda s: s.level)
    levels = [s.level for s in steps]
    latency_ax, throughput_ax = fig.subplots(2, 1, sharex=True)

    series = {
        label: [_percentile(s, name, q) for s in steps] for label, name, q in _CAPACITY_LATENCY
    }
    scale, unit = _time_unit([v for values in series.values() for v in values])
    for label, values in series.items():
        scaled = [v * scale for v in values]
        latency_ax.plot(levels, scaled, label=label)
        _mark_outcomes(latency_ax, steps, scaled)
    latency_ax.set_ylabel(f"latency ({unit})")
    latency_ax.set_ylim(bottom=0)

    throughput = [_throughput(s) for s in steps]
    throughput_ax.plot(levels, throughput, color="tab:purple", label="output tok/s")
    _mark_outcomes(throughput_ax, steps, throughput, numbered=True)
    throughput_ax.set_ylabel("output tokens/s")
    highest = max((v for v in throughput if math.isfinite(v)), default=0.0)
    throughput_ax.set_ylim(0, highest * 1.25 or 1.0)  # room above the points for their numbers
    vary = search.config.vary
    throughput_ax.set_xlabel(
        "parallel (concurrent users)" if vary == "parallel" else "rate (req/s)"
    )

    answer = search.answer
    for ax in (latency_ax, throughput_ax):
        ax.grid(True, alpha=0.3)
        if answer is not None:
            ax.axvline(
                answer, color="tab:green", linestyle="--", label=f"answer: {headline(search)}"
            )
    _level_axis(throughput_ax, levels, vary)
    # beside the panels, where no line runs under them
    latency_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    throughput_ax.legend(
        handles=_outcome_handles(throughput_ax, steps),
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        fontsize=8,
    )
    fig.suptitle(f"{res.id}: capacity search over {vary}, {headline(search)}")


def _summary_of(step: Step) -> metrics.Summary | None:
    return step.result.summary if step.result is not None else None


def _percentile(step: Step, name: str, q: float) -> float:
    summary = _summary_of(step)
    distribution = summary.distributions.get(name) if summary is not None else None
    if summary is None or distribution is None or distribution.count == 0:
        return math.nan  # a gap in the line, not a zero
    return distribution.stat(f"p{q:g}", summary.samples.get(name))


def _throughput(step: Step) -> float:
    summary = _summary_of(step)
    return summary.output_throughput if summary is not None else math.nan


def _mark_outcomes(
    ax: Axes, steps: Sequence[Step], values: Sequence[float], numbered: bool = False
) -> None:
    for step, value in zip(steps, values, strict=True):
        if not math.isfinite(value):
            continue
        marker, colour, _ = _OUTCOME_STYLE[step.outcome]
        ax.plot([step.level], [value], marker=marker, color=colour, linestyle="none", zorder=3)
        if numbered:  # the order the search ran them in: probe up, then bisect
            ax.annotate(
                str(step.number),
                (step.level, value),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=7,
            )


def _outcome_handles(ax: Axes, steps: Sequence[Step]) -> list[Artist]:
    from matplotlib.lines import Line2D

    handles: list[Artist] = list(ax.get_legend_handles_labels()[0])
    present = {s.outcome for s in steps}
    for outcome, (marker, colour, label) in _OUTCOME_STYLE.items():  # one order in every plot
        if outcome not in present:
            continue
        handles.append(Line2D([], [], marker=marker, color=colour, linestyle="none", label=label))
    return handles


def _level_axis(ax: Axes, levels: Sequence[float], vary: str) -> None:
    """Ticks at the loads that ran; a doubling probe spread over a factor of 8 or more reads
    best on a log axis."""
    log = bool(levels) and min(levels) > 0 and max(levels) / min(levels) >= 8
    if log:
        ax.set_xscale("log", base=2)
        ax.set_xticks([], minor=True)
    shown = _spaced(sorted(set(levels)), log)
    ax.set_xticks(shown, [f"{v:.0f}" if vary == "parallel" else f"{v:g}" for v in shown])


def _spaced(levels: Sequence[float], log: bool, gap: float = 0.04) -> list[float]:
    """The levels to label: bisection packs its steps close together, and labels closer than
    `gap` of the axis would print over each other (the step numbers still mark every point)."""
    if len(levels) < 3:
        return list(levels)
    where = [math.log2(v) for v in levels] if log else list(levels)
    span = (where[-1] - where[0]) or 1.0
    kept = [0]
    for i in range(1, len(levels)):
        if (where[i] - where[kept[-1]]) / span >= gap:
            kept.append(i)
    if kept[-1] != len(levels) - 1:  # the highest load keeps its label
        kept[-1] = len(levels) - 1
    return [levels[i] for i in kept]
