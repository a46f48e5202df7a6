"""Service-level objectives: metric names, objective parsing and evaluation to verdicts.

Which metrics exist, their units and definitions come from the registry in `catalogue.py`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pytest_llmslo.catalogue import BY_NAME, METRICS, STATISTICS, MetricKind, select
from pytest_llmslo.intervals import Interval
from pytest_llmslo.units import CANONICAL_UNIT, UnitError, UnitKind, expected_units, parse_quantity

OPERATORS = ("<=", "<", ">=", ">")
# "skipped": a relative objective in a run that records the baseline it would be compared with
Outcome = Literal["pass", "fail", "inconclusive", "skipped"]
BASELINE = "baseline"
NO_BASELINE = "no baseline: pass --slo-baseline PATH (the results.json of an earlier run)"

# Derived from the registry (catalogue.py), kept as tables: what a name means to an objective.
# Distributions over requests (or over chunk gaps, for itl); an objective picks one statistic.
DISTRIBUTIONS: dict[str, tuple[UnitKind, str]] = {
    m.name: (m.unit, m.definition) for m in select(kind=MetricKind.DISTRIBUTION)
}
STATS: Mapping[str, str] = STATISTICS
SCALARS: dict[str, tuple[UnitKind, str]] = {
    m.name: (m.unit, m.definition) for m in select(kind=MetricKind.SCALAR)
}
# Per-request objectives decide whether one request counts towards goodput.
REQUEST_METRICS: dict[str, str] = {m.name: m.per_request for m in METRICS if m.per_request}

_STAT_NAMES = tuple(s for s in STATISTICS if s != "pNN")
_DISTRIBUTION_METRIC = re.compile(
    r"(?P<base>" + "|".join(DISTRIBUTIONS) + r")_"
    r"(?P<stat>" + "|".join(_STAT_NAMES) + r"|p(?P<pct>(?:0|[1-9]\d*)(?:\.\d+)?))"
)


class ObjectiveError(ValueError):
    """An objective or metric name that does not parse; says what, and how to fix it."""

    def __init__(self, message: str, *, choices: Sequence[str] = (), fix: str = "") -> None:
        text = message
        if choices:
            text += ". Valid: " + ", ".join(choices)
        if fix:
            text += f". {fix}"
        super().__init__(text)
        self.message = message
        self.choices = tuple(choices)
        self.fix = fix


@dataclass(frozen=True)
class MetricInfo:
    """What a metric name means: its kind, canonical unit, definition and (for stats) its parts."""

    name: str
    base: str  # the distribution (ttft) or the scalar name itself
    stat: str | None  # mean | std | min | max | median | pNN (as written); None for scalars
    percentile: float | None  # 95.0 for _p95, 50.0 for _median
    kind: UnitKind
    unit: str  # canonical unit of values: s, tok/s, req/s, B, "" (ratio, count)
    description: str

    @property
    def integer(self) -> bool:
        """Values are whole numbers (counts, and their min/max)."""
        return self.kind is UnitKind.COUNT and (self.stat is None or self.stat in ("min", "max"))


def _metric_suggestions() -> list[str]:
    names = list(SCALARS)
    for base in DISTRIBUTIONS:
        names += [f"{base}_{s}" for s in (*_STAT_NAMES, "p50", "p90", "p95", "p99")]
    return names


def _catalogue_summary() -> str:
    stats = "|".join(f"_{s}" for s in STATS)
    return (
        f"distributions {', '.join(DISTRIBUTIONS)} with a suffix {stats}; "
        f"scalars {', '.join(SCALARS)}"
    )


def metric_info(metric: str) -> MetricInfo:
    """Look up a metric name (``ttft_p95``, ``failure_rate``); ObjectiveError when it is unknown."""
    if metric in SCALARS:
        kind, description = SCALARS[metric]
        return MetricInfo(metric, metric, None, None, kind, CANONICAL_UNIT[kind], description)
    match = _DISTRIBUTION_METRIC.fullmatch(metric)
    if match is not None:
        base, stat = match["base"], match["stat"]
        kind, description = DISTRIBUTIONS[base]
        percentile: float | None = None
        if match["pct"] is not None:
            percentile = float(match["pct"])
            if not 0 < percentile <= 100:
                raise ObjectiveError(
                    f"metric {metric!r}: percentile {match['pct']} is out of range",
                    fix=f"Use a percentile in (0, 100], like {base}_p99 or {base}_p99.9",
                )
            description = f"{percentile:g}th percentile of {description}"
        else:
            if stat == "median":
                percentile = 50.0
            description = f"{STATS[stat]} of {description}"
        return MetricInfo(metric, base, stat, percentile, kind, CANONICAL_UNIT[kind], description)
    if metric in DISTRIBUTIONS:
        raise ObjectiveError(
            f"metric {metric!r} is a distribution and needs a statistic",
            fix=f"Add a suffix: {metric}_p95, {metric}_p99, {metric}_mean, {metric}_max, ...",
        )
    candidates = _metric_suggestions()
    close = difflib.get_close_matches(metric, candidates, n=5, cutoff=0.5)
    rest = [c for c in candidates if c not in close]
    fix = f"Did you mean {close[0]!r}? " if close else ""
    raise ObjectiveError(
        f"unknown metric {metric!r}",
        choices=[*close, *rest],
        fix=fix + f"Metrics are {_catalogue_summary()}",
    )


def catalogue() -> list[MetricInfo]:
    """Every scalar and every distribution (without a statistic), for documentation."""
    infos = [metric_info(name) for name in SCALARS]
    for base, (kind, description) in DISTRIBUTIONS.items():
        infos.append(MetricInfo(base, base, None, None, kind, CANONICAL_UNIT[kind], description))
    return infos


@dataclass(frozen=True)
class BaselineOffset:
    """How a relative objective's threshold follows the baseline's value.

    ``relative``: ``amount`` is a fraction of the baseline (``+ 10%`` is 0.10); otherwise an
    amount in the metric's canonical unit (``+ 20 ms`` is 0.020). Negative for ``-``.
    """

    amount: float
    relative: bool

    def threshold(self, baseline: float) -> float:
        """The threshold for a baseline value; increasing in it, so an interval's ends map to
        the threshold's ends."""
        if self.relative:
            return baseline * (1.0 + self.amount)
        return baseline + self.amount


@dataclass(frozen=True)
class Objective:
    """One objective: ``metric op threshold``; threshold in the canonical unit of the metric.

    A relative objective (``<= baseline + 10%``) has a ``baseline`` offset and a NaN threshold
    until `against` sets one from a baseline's value.
    """

    metric: str
    op: str  # <= | < | >= | >
    threshold: float
    unit: str  # as written ("ms", "%", "" for a bare number)
    text: str  # as written ("<= 500 ms")
    line: int | None = None  # line in the spec file, when it came from one
    baseline: BaselineOffset | None = None

    @property
    def relative(self) -> bool:
        """Whether the threshold follows a baseline (``<= baseline + 10%``)."""
        return self.baseline is not None

    def against(self, baseline: float) -> Objective:
        """This objective with the threshold a baseline value gives it (unchanged if absolute)."""
        if self.baseline is None:
            return self
        return replace(self, threshold=self.baseline.threshold(baseline))

    @property
    def lower_is_better(self) -> bool:
        return self.op in ("<=", "<")

    def holds(self, value: float) -> bool:
        """Whether ``value`` (canonical unit) meets the objective; NaN never does."""
        if math.isnan(value):
            return False
        if self.op == "<=":
            return value <= self.threshold
        if self.op == "<":
            return value < self.threshold
        if self.op == ">=":
            return value >= self.threshold
        return value > self.threshold

    @property
    def condition(self) -> str:
        """The objective as written, with one space after the operator (``<= 500 ms``)."""
        rest = self.text.strip()[len(self.op) :].strip()
        return f"{self.op} {rest}"


@dataclass(frozen=True)
class Measurement:
    """A measured value in the metric's canonical unit; NaN means it could not be measured.

    ``interval``: where the true value lies with the configured confidence; None where no
    sampling interval applies (a count, a memory peak: judged as measured).
    """

    value: float
    sample_size: int | None = None
    reason: str = ""  # why it could not be measured, when value is NaN
    interval: Interval | None = None


@dataclass(frozen=True)
class Verdict:
    """An objective checked against its measurement.

    ``outcome`` is what the interval says: pass (all of it meets the objective), fail (none of
    it does) or inconclusive. ``passed`` is the gate's decision: the outcome pass, or
    inconclusive under the policy ``pass``; every caller that asks "did it pass" reads it.
    """

    objective: Objective
    measured: Measurement
    passed: bool
    margin: float | None  # signed headroom relative to the threshold; positive is good
    outcome: Outcome | None = None  # None: as ``passed`` says (a value judged as measured)
    # a relative objective's baseline value (NaN with the reason when there is none to use)
    baseline: Measurement | None = None
    skipped: str | None = None  # why a relative objective was not judged (outcome "skipped")
    # why the outcome is inconclusive whatever the interval says: the load client fell behind
    # (client_health.py), so the value says as much about the client as about the server
    guard: str | None = None

    def __post_init__(self) -> None:
        if self.outcome is None:
            object.__setattr__(self, "outcome", "pass" if self.passed else "fail")

    @property
    def inconclusive(self) -> bool:
        return self.outcome == "inconclusive"

    @property
    def effective(self) -> Objective:
        """The objective with its threshold: a relative one's from the baseline's value."""
        if self.baseline is None or math.isnan(self.baseline.value):
            return self.objective
        return self.objective.against(self.baseline.value)

    def describe(self) -> str:
        """One line for people, e.g. ``ttft_p95 = 612.3 ms, objective <= 500 ms: missed by ...``;
        a relative objective's line says the value against the baseline's."""
        metric = self.objective.metric
        condition = self.objective.condition
        value = self.measured.value
        if self.skipped is not None:
            return f"{metric}: skipped: {self.skipped} (objective {condition})"
        if math.isnan(value):
            reason = self.measured.reason or "no value was measured"
            return f"{metric} = not measurable: {reason} (objective {condition})"
        shown = format_measured(metric, self.measured)
        if self.baseline is not None and math.isnan(self.baseline.value):
            reason = self.baseline.reason or NO_BASELINE
            return f"{metric} = {shown}, objective {condition}: no baseline value: {reason}"
        size = "" if self.measured.sample_size is None else f", n={self.measured.sample_size}"
        return f"{metric} = {shown}{self._versus()}, objective {condition}{self._threshold()}: " + (
            f"{self._outcome_text(value)}{size}"
        )

    def _versus(self) -> str:
        # " vs baseline 500.0 ms [480.2, 530.1] (+22.4%)"
        if self.baseline is None:
            return ""
        metric = self.objective.metric
        change = relative_change(self.measured.value, self.baseline.value)
        shown = "" if change is None else f" ({change:+.1%})"
        return f" vs baseline {format_measured(metric, self.baseline)}{shown}"

    def _threshold(self) -> str:
        if self.baseline is None:
            return ""
        return f" (= {format_value(self.objective.metric, self.effective.threshold)})"

    def _outcome_text(self, value: float) -> str:
        objective = self.effective
        difference = format_difference(objective.metric, abs(value - objective.threshold))
        if self.margin is None or math.isinf(self.margin):
            relative = ""
        else:
            relative = f" ({abs(self.margin) * 100:.1f}%)"
        if self.guard is not None:
            return (
                f"INCONCLUSIVE: {self.guard}; the value cannot be put down to the server (it "
                f"{'meets' if objective.holds(value) else 'misses'} the objective by {difference})"
            )
        if self.inconclusive:
            side = "meets" if objective.holds(value) else "misses"
            straddles = (
                "intervals of this run and the baseline leave it undecided"
                if self.baseline is not None
                else "interval straddles the threshold"
            )
            return (
                f"INCONCLUSIVE: the value {side} it by {difference}{relative}, but the "
                f"{format_confidence(self.measured.interval)} {straddles}"
            )
        if objective.holds(value):
            return f"met with {difference} to spare{relative}"
        return f"missed by {difference}{relative}"


def guarded(verdict: Verdict, reason: str, inconclusive: str) -> Verdict:
    """`verdict` made inconclusive because `reason` (the client fell behind), passing only
    under the policy `pass`; a value that was not measured, or a skipped one, stays as it is."""
    if verdict.skipped is not None or math.isnan(verdict.measured.value):
        return verdict
    return replace(verdict, outcome="inconclusive", passed=inconclusive == "pass", guard=reason)


def relative_change(value: float, baseline: float) -> float | None:
    """(value - baseline) / baseline; None where it has no meaning (a zero or NaN baseline)."""
    if baseline == 0 or math.isnan(baseline) or math.isnan(value) or math.isinf(baseline):
        return None
    return (value - baseline) / baseline


_OBJECTIVE = re.compile(r"\s*(?P<op><=|>=|<|>)\s*(?P<quantity>.*?)\s*")
_WRONG_OPERATORS = {"=<": "<=", "=>": ">=", "≤": "<=", "≥": ">=", "==": "<= or >=", "=": "<= or >="}


def _parse(metric: str, kind: UnitKind, integer: bool, text: str, line: int | None) -> Objective:
    if not isinstance(text, str):
        raise ObjectiveError(
            f"objective {metric}: {text!r} is not a string",
            fix=f'Write an operator and a threshold in quotes, like "<= {_example(kind)}"',
        )
    match = _OBJECTIVE.fullmatch(text)
    if match is None:
        stripped = text.strip()
        for wrong, right in _WRONG_OPERATORS.items():
            if stripped.startswith(wrong):
                raise ObjectiveError(
                    f"objective {metric}: {text!r} uses the operator {wrong!r}",
                    fix=f"Write {right} instead (operators: {', '.join(OPERATORS)})",
                )
        raise ObjectiveError(
            f"objective {metric}: {text!r} does not start with an operator",
            fix=f'Write one of {", ".join(OPERATORS)} and a threshold, like "<= {_example(kind)}"',
        )
    try:
        quantity = parse_quantity(match["quantity"], kind, integer=integer)
    except UnitError as error:
        raise ObjectiveError(
            f"objective {metric}: {text!r}: {metric} is a {kind}, and {error.message}",
            fix=error.fix or f"Units for a {kind}: {expected_units(kind)}",
        ) from None
    return Objective(metric, match["op"], quantity.value, quantity.unit, text, line)


def _example(kind: UnitKind) -> str:
    return {
        UnitKind.TIME: "500 ms",
        UnitKind.TOKEN_RATE: "1000 tok/s",
        UnitKind.REQUEST_RATE: "5 req/s",
        UnitKind.RATIO: "1%",
        UnitKind.MEMORY: "24 GiB",
        UnitKind.COUNT: "0",
        UnitKind.FACTOR: "2x",
    }[kind]


def parse_objective(metric: str, text: str, *, line: int | None = None) -> Objective:
    """Parse ``ttft_p95: "<= 500 ms"`` or, relative to a baseline run, ``"<= baseline + 10%"``;
    ObjectiveError names the metric, the text and the fix."""
    info = metric_info(metric)
    if isinstance(text, str):
        match = _OBJECTIVE.fullmatch(text)
        if match is not None and _names_baseline(match["quantity"]):
            offset = _parse_baseline(metric, info.kind, info.integer, text, match["quantity"])
            return Objective(metric, match["op"], math.nan, "", text, line, offset)
    return _parse(metric, info.kind, info.integer, text, line)


_BASELINE_TERM = re.compile(r"(?P<word>[A-Za-z_]\w*)\s*(?:(?P<sign>[-+])\s*(?P<offset>.*))?")
_PERCENT = re.compile(r"(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*%")
_RELATIVE_FORMS = "baseline, baseline + 10%, baseline - 5% or baseline + 20 ms"


def _names_baseline(term: str) -> bool:
    """Whether a threshold is meant as the baseline (or a misspelling of it, like ``base``)."""
    word = re.match(r"[A-Za-z_]\w*", term)
    return word is not None and bool(
        difflib.get_close_matches(word[0].lower(), [BASELINE], n=1, cutoff=0.6)
    )


def _parse_baseline(
    metric: str, kind: UnitKind, integer: bool, text: str, term: str
) -> BaselineOffset:
    """``baseline``, ``baseline + 10%`` (of the baseline's value), ``baseline - 20 ms`` (in
    the metric's units). A ``%`` offset is always relative, for ratios too: an absolute offset
    on a ratio is a fraction (``baseline + 0.01``)."""
    where = f"objective {metric}: {text!r}"
    match = _BASELINE_TERM.fullmatch(term)
    word = match["word"] if match is not None else term.split()[0]
    if word != BASELINE:
        raise ObjectiveError(
            f"{where}: {word!r} is neither a number nor 'baseline'",
            fix=f"Did you mean 'baseline'? A threshold is a quantity (like {_example(kind)}) "
            f"or {_RELATIVE_FORMS}",
        )
    if match is None:
        rest = term[len(BASELINE) :].strip()
        operator = f"{rest[0]!r}" if rest and not rest[0].isalnum() else "no + or -"
        raise ObjectiveError(
            f"{where}: the baseline is followed by {operator}; an offset is added to or "
            "subtracted from it",
            fix=f"Write {_RELATIVE_FORMS}",
        )
    if match["sign"] is None:
        return BaselineOffset(0.0, relative=True)
    sign = -1.0 if match["sign"] == "-" else 1.0
    offset = match["offset"].strip()
    if not offset:
        raise ObjectiveError(
            f"{where}: {match['sign']} has no offset after it", fix=f"Write {_RELATIVE_FORMS}"
        )
    percent = _PERCENT.fullmatch(offset)
    if percent is not None:
        amount = sign * float(percent["number"]) / 100
        if amount <= -1.0:
            raise ObjectiveError(
                f"{where}: a threshold {offset} below the baseline is zero or less",
                fix="Subtract less than 100%",
            )
        return BaselineOffset(amount, relative=True)
    try:
        quantity = parse_quantity(offset, kind, integer=integer)
    except UnitError as error:
        raise ObjectiveError(
            f"{where}: the offset {offset!r}: {metric} is a {kind}, and {error.message}",
            fix=(error.fix or f"Units for a {kind}: {expected_units(kind)}")
            + f"; or a percentage of the baseline, like baseline {match['sign']} 10%",
        ) from None
    return BaselineOffset(sign * quantity.value, relative=False)


def parse_request_objective(metric: str, text: str, *, line: int | None = None) -> Objective:
    """Parse a per-request objective for goodput (``ttft: "<= 2 s"``): a REQUEST_METRICS name."""
    if metric not in REQUEST_METRICS:
        close = difflib.get_close_matches(metric, list(REQUEST_METRICS), n=1, cutoff=0.5)
        stat = _DISTRIBUTION_METRIC.fullmatch(metric)
        if stat is not None and stat["base"] in REQUEST_METRICS:
            fix = f"A per-request objective has no statistic: write {stat['base']!r}"
        elif close:
            fix = f"Did you mean {close[0]!r}?"
        else:
            fix = ""
        raise ObjectiveError(
            f"unknown per-request metric {metric!r}", choices=list(REQUEST_METRICS), fix=fix
        )
    return _parse(metric, BY_NAME[metric].unit, False, text, line)


def derive_request_objectives(objectives: Iterable[Objective]) -> tuple[Objective, ...]:
    """Per-request objectives implied by upper bounds on percentiles or maxima of REQUEST_METRICS.

    ``ttft_p95 <= 2 s`` becomes ``ttft <= 2 s`` for each request; where several bound one base, the
    tightest wins, so a request only counts as good when it meets every stated bound.
    """
    tightest: dict[str, Objective] = {}
    for objective in objectives:
        info = metric_info(objective.metric)
        if info.base not in REQUEST_METRICS or objective.op not in ("<=", "<"):
            continue
        if objective.relative:  # its threshold is known only once a baseline is read
            continue
        if info.percentile is None and info.stat != "max":
            continue
        derived = Objective(
            info.base,
            objective.op,
            objective.threshold,
            objective.unit,
            objective.text,
            objective.line,
        )
        current = tightest.get(info.base)
        if current is None or (derived.threshold, derived.op == "<=") < (
            current.threshold,
            current.op == "<=",
        ):
            tightest[info.base] = derived
    return tuple(tightest[base] for base in REQUEST_METRICS if base in tightest)


def _margin(objective: Objective, value: float) -> float:
    if objective.op in ("<=", "<"):
        headroom = objective.threshold - value
    else:
        headroom = value - objective.threshold
    if objective.threshold == 0:
        # relative to zero: none at all when equal, unbounded either way otherwise
        return 0.0 if headroom == 0 else math.copysign(math.inf, headroom)
    return headroom / objective.threshold


def judge(objective: Objective, measured: Measurement) -> Outcome:
    """Pass when the whole interval meets the objective, fail when none of it does, inconclusive
    otherwise; without an interval, the value as measured decides. NaN fails (not measurable).

    The interval judged also spans the value itself, so a verdict never contradicts the number
    shown beside it (batch means can centre a little off the window's value).
    """
    value = measured.value
    if math.isnan(value):
        return "fail"
    interval = measured.interval
    if interval is None:
        return "pass" if objective.holds(value) else "fail"
    low, high = min(interval.low, value), max(interval.high, value)
    meets_low, meets_high = objective.holds(low), objective.holds(high)
    if meets_low and meets_high:
        return "pass"
    if not meets_low and not meets_high:
        return "fail"
    return "inconclusive"


def judge_against(objective: Objective, measured: Measurement, baseline: Measurement) -> Outcome:
    """A relative objective judged with both runs' intervals: conservative on both sides.

    The threshold grows with the baseline's value, so the baseline's interval gives a range of
    thresholds. Pass when this run's whole interval meets the strictest of them (from the
    baseline's strict end: its low end for ``<=``, its high end for ``>=``); fail when the whole
    interval misses the most lenient one (from the other end); inconclusive otherwise. A value
    judged as measured is a point, at either end. Overlapping the two intervals like this asks
    more than a test of the difference would: it may say inconclusive where one could decide,
    never pass or fail where the two intervals do not support it.
    """
    if math.isnan(measured.value) or math.isnan(baseline.value):
        return "fail"
    low, high = _span(baseline)
    strict, lenient = (low, high) if objective.lower_is_better else (high, low)
    if judge(objective.against(strict), measured) == "pass":
        return "pass"
    if judge(objective.against(lenient), measured) == "fail":
        return "fail"
    return "inconclusive"


def _span(measured: Measurement) -> tuple[float, float]:
    # the interval, widened to hold the value shown beside it (as `judge` does)
    interval = measured.interval
    if interval is None:
        return measured.value, measured.value
    return min(interval.low, measured.value), max(interval.high, measured.value)


def evaluate(
    objectives: Sequence[Objective],
    measure: Callable[[str], Measurement],
    *,
    inconclusive: str = "fail",
    baseline: Callable[[str], Measurement] | None = None,
    skip_relative: str | None = None,
) -> list[Verdict]:
    """Check each objective against ``measure(metric)``; a value that is NaN fails with its reason.

    ``inconclusive`` is the policy for an interval that straddles the threshold: ``fail`` or
    ``pass``. An exception from ``measure`` fails only that objective, with the error as the reason.
    A relative objective is judged against ``baseline(metric)``: without one it fails (NaN
    baseline with the reason), or is skipped with the reason ``skip_relative`` when given.
    """
    verdicts = []
    for objective in objectives:
        measured = _measured(measure, objective.metric)
        if objective.relative:
            verdicts.append(
                _relative_verdict(objective, measured, baseline, skip_relative, inconclusive)
            )
            continue
        if math.isnan(measured.value):
            verdicts.append(Verdict(objective, measured, passed=False, margin=None))
            continue
        margin = _margin(objective, measured.value)
        outcome = judge(objective, measured)
        passed = outcome == "pass" or (outcome == "inconclusive" and inconclusive == "pass")
        verdicts.append(Verdict(objective, measured, passed, margin, outcome))
    return verdicts


def _measured(measure: Callable[[str], Measurement], metric: str) -> Measurement:
    try:
        return measure(metric)
    except Exception as error:  # one broken metric must not hide the verdicts of the others
        return Measurement(math.nan, reason=f"{type(error).__name__}: {error}")


def _relative_verdict(
    objective: Objective,
    measured: Measurement,
    baseline: Callable[[str], Measurement] | None,
    skip: str | None,
    inconclusive: str,
) -> Verdict:
    if baseline is None and skip is not None:
        return Verdict(objective, measured, True, None, "skipped", skipped=skip)
    before = (
        _measured(baseline, objective.metric)
        if baseline is not None
        else Measurement(math.nan, reason=NO_BASELINE)
    )
    if math.isnan(measured.value) or math.isnan(before.value):
        return Verdict(objective, measured, passed=False, margin=None, baseline=before)
    margin = _margin(objective.against(before.value), measured.value)
    outcome = judge_against(objective, measured, before)
    passed = outcome == "pass" or (outcome == "inconclusive" and inconclusive == "pass")
    return Verdict(objective, measured, passed, margin, outcome, baseline=before)


def _kind(metric: str) -> UnitKind:
    declared = BY_NAME.get(metric)
    if declared is not None:  # a scalar, or a distribution named bare by a per-request objective
        return declared.unit
    return metric_info(metric).kind


def format_value(metric: str, value: float) -> str:
    """A value of ``metric`` (canonical unit) in human units: ms under 10 s, GiB, %, tok/s."""
    if math.isnan(value):
        return "n/a"
    kind = _kind(metric)
    if kind is UnitKind.TIME:
        if abs(value) < 10:
            ms = value * 1e3
            return f"{ms:.1f} ms" if abs(ms) >= 1 or ms == 0 else f"{ms:.3g} ms"
        return f"{value:.2f} s"
    if kind is UnitKind.TOKEN_RATE:
        return f"{value:.1f} tok/s"
    if kind is UnitKind.REQUEST_RATE:
        return f"{value:.2f} req/s"
    if kind is UnitKind.RATIO:
        return f"{value * 100:.2f}%"
    if kind is UnitKind.FACTOR:
        return f"{value:.2f}x"
    if kind is UnitKind.MEMORY:
        if abs(value) >= 2**30:
            return f"{value / 2**30:.2f} GiB"
        return f"{value / 2**20:.1f} MiB"
    if math.isinf(value) or value.is_integer():
        return f"{value:.0f}"
    return f"{value:.1f}"


def format_difference(metric: str, difference: float) -> str:
    """A difference between two values of ``metric``; ratios differ in percentage points."""
    if _kind(metric) is UnitKind.RATIO:
        return f"{difference * 100:.2f} pp"
    return format_value(metric, difference)


def format_interval(metric: str, interval: Interval | None, unit: str = "") -> str:
    """``[48.0, 57.3]`` in the metric's units (``-inf``/``inf`` for an unbounded side); empty
    for a value taken as measured. A bound in ``unit`` (the value's) is shown without it."""
    if interval is None or interval.method == "as measured":
        return ""
    low = "-inf" if math.isinf(interval.low) else _bound(metric, interval.low, unit)
    high = "inf" if math.isinf(interval.high) else _bound(metric, interval.high, unit)
    return f"[{low}, {high}]"


def _bound(metric: str, value: float, unit: str) -> str:
    # "52.1 ms [48.0, 57.3]": a bound in the value's unit drops it; one in another (9.8 s beside
    # 10.20 s shown in ms) keeps its own
    text = format_value(metric, value)
    if unit == "%" and text.endswith("%"):
        return text[:-1]
    number, _, own = text.partition(" ")
    return number if own and own == unit else text


def format_measured(metric: str, measured: Measurement) -> str:
    """The value with its interval: ``52.1 ms [48.0, 57.3]``."""
    shown = format_value(metric, measured.value)
    unit = "%" if shown.endswith("%") else shown.partition(" ")[2]
    bounds = format_interval(metric, measured.interval, unit)
    return f"{shown} {bounds}" if bounds and not math.isnan(measured.value) else shown


def format_confidence(interval: Interval | None) -> str:
    """``95% order statistic``: the level and the method of an interval."""
    if interval is None:
        return "as measured"
    return f"{interval.confidence * 100:g}% {interval.method}"
