"""Request records -> Summary: the measurement of every metric whose producer is the load.

The metrics themselves (names, units, definitions) are declared in `catalogue.py`; each
distribution there has its per-request function here, in `PER_REQUEST`, each scalar its entry in
`PER_RUN`. Pure numpy. Warmup records are excluded from everything. An empty sample gives NaN
with a reason, never 0: a gate must not pass on "no data".
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pytest_llmslo import saturation
from pytest_llmslo.catalogue import BY_NAME, IntervalMethod, MetricKind, Producer, names
from pytest_llmslo.gap_histogram import GapHistogram
from pytest_llmslo.intervals import (
    Interval,
    batch_means_interval,
    exact,
    mean_interval,
    proportion_interval,
    quantile_interval,
    rounds_interval,
)
from pytest_llmslo.records import RequestRecord

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)
# a distribution's values: every one of them, or (ITL of a streamed run) their histogram
Sample = np.ndarray | GapHistogram
# equal time slices of the measured window whose rates give a window value's batch-means interval
BATCHES = 10
NAN = float("nan")

# names of the per-request distributions a Summary carries, in report order
DISTRIBUTIONS = names(kind=MetricKind.DISTRIBUTION, producer=Producer.LOAD)
_STAT = re.compile(r"^(mean|std|min|max|median|p(\d+(?:\.\d+)?))$")


@dataclass(frozen=True)
class Distribution:
    """Descriptive statistics of one sample; NaN everywhere when the sample is empty."""

    count: int
    mean: float
    std: float
    min: float
    max: float
    percentiles: dict[float, float]

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray, percentiles: Sequence[float]) -> Distribution:
        arr = np.asarray(values, dtype=float)
        if arr.size == 0:
            return cls(0, NAN, NAN, NAN, NAN, {float(p): NAN for p in percentiles})
        # linear interpolation: the same percentile definition numpy and vLLM's client use
        pct = np.percentile(arr, list(percentiles)) if percentiles else []
        return cls(
            count=int(arr.size),
            mean=float(arr.mean()),
            std=float(arr.std()),
            min=float(arr.min()),
            max=float(arr.max()),
            percentiles={float(p): float(v) for p, v in zip(percentiles, pct, strict=True)},
        )

    @classmethod
    def of_histogram(cls, histogram: GapHistogram, percentiles: Sequence[float]) -> Distribution:
        """The same statistics from a histogram (gap_histogram.py: percentiles to 0.05%)."""
        if histogram.n == 0:
            return cls.of((), percentiles)
        return cls(
            count=histogram.n,
            mean=histogram.mean,
            std=histogram.std,
            min=histogram.low,
            max=histogram.high,
            percentiles={float(p): histogram.percentile(float(p)) for p in percentiles},
        )

    def stat(self, name: str, sample: Sample | None = None) -> float:
        """`mean`, `std`, `min`, `max`, `median` or `pNN`.

        A percentile that was not precomputed is computed from `sample`.
        """
        m = _STAT.match(name)
        if not m:
            raise KeyError(f"unknown statistic {name!r}")
        if name in ("mean", "std", "min", "max"):
            return float(getattr(self, name))
        q = 50.0 if name == "median" else float(m.group(2))
        if q in self.percentiles:
            return self.percentiles[q]
        if isinstance(sample, GapHistogram):
            return sample.percentile(q)
        if sample is None or sample.size == 0:
            return NAN
        return float(np.percentile(sample, q))


@dataclass(frozen=True)
class RequestObjective:
    """A per-request bound used for goodput: `metric` is a distribution with a per-request form
    in the catalogue (for itl, the request's largest gap)."""

    metric: str
    op: str  # <=, <, >=, >
    threshold: float  # seconds


@dataclass(frozen=True)
class Summary:
    """Numbers only: what a load run measured, ready for objectives and reports."""

    requests: int  # measured requests sent (warmup excluded)
    succeeded: int
    failed: int
    warmup: int
    duration_s: float  # measured window: first measured send to last measured end
    failures_by_category: dict[str, int]
    error_examples: dict[str, str]  # one message per category
    distributions: dict[str, Distribution]
    output_throughput: float  # tok/s
    total_token_throughput: float  # tok/s, input + output
    request_throughput: float  # successful req/s
    failure_rate: float
    goodput: float  # req/s meeting every per-request objective
    goodput_ratio: float
    token_sources: dict[str, int]  # usage / tokenizer / unknown, successful requests
    percentiles: tuple[float, ...]
    reasons: dict[str, str] = field(default_factory=dict)  # why a metric is NaN
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    good: int = 0  # requests that succeeded and met every per-request objective
    # per window rate (output_throughput, ...): its value in each of BATCHES equal time slices
    batches: dict[str, tuple[float, ...]] = field(default_factory=dict, repr=False, compare=False)
    rounds: int = 1  # rounds pooled (`verdicts.rounds`); duration_s is their windows' total
    # per distribution, when rounds > 1: each round's own sample, in round order
    round_samples: dict[str, tuple[np.ndarray, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )
    # the measured requests' durations summed (send to end): over duration_s, the concurrency
    # the client achieved
    busy_seconds: float = 0.0
    # TTFTs of the first and the last third of the successful requests by send time: the trend
    # through the run that tells a saturated server (saturation.py)
    ttft_thirds: tuple[tuple[float, ...], tuple[float, ...]] = field(
        default=((), ()), repr=False, compare=False
    )
    # per window rate, when rounds > 1: its value in each round's window
    round_values: dict[str, tuple[float, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )
    # a distribution held as a histogram instead of in `samples` (ITL of a run whose records
    # were written out as they finished), and, when rounds > 1, each round's own
    histograms: dict[str, GapHistogram] = field(default_factory=dict, repr=False, compare=False)
    round_histograms: dict[str, tuple[GapHistogram, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def sample_of(self, name: str) -> Sample | None:
        """Every value of distribution `name`, or its histogram; None when neither is kept."""
        sample = self.samples.get(name)
        return sample if sample is not None else self.histograms.get(name)

    def interval(self, metric: str, confidence: float) -> Interval | None:
        """The confidence interval of `metric` by the method the catalogue names for it; None
        where none applies (the value is NaN, or the metric is not the load's)."""
        value, n, _ = self.value(metric)
        if math.isnan(value):
            return None
        scalar = BY_NAME.get(metric)
        if scalar is not None:
            method = scalar.interval_method
            if method is IntervalMethod.WILSON:
                hits = self.failed if metric == "failure_rate" else self.good
                return proportion_interval(hits, self.requests, confidence)
            if method is IntervalMethod.BATCH_MEANS and metric in self.round_values:
                # several rounds: independent measurements of the window value
                return rounds_interval(self.round_values[metric], confidence)
            if method is IntervalMethod.BATCH_MEANS and metric in self.batches:
                return batch_means_interval(self.batches[metric], confidence)
            if method is IntervalMethod.TREND:
                return saturation.growth_interval(*self.ttft_thirds, confidence)
            return exact(value, n or 1)
        base, _, stat = metric.rpartition("_")
        sample = self.sample_of(base)
        size = (
            sample.n
            if isinstance(sample, GapHistogram)
            else sample.size
            if sample is not None
            else 0
        )
        if sample is None or size == 0:
            return None
        if stat == "mean":
            within = (
                sample.mean_interval(confidence)
                if isinstance(sample, GapHistogram)
                else mean_interval(sample.tolist(), confidence)
            )
        else:
            m = _STAT.match(stat)
            q = 50.0 if stat == "median" else float(m.group(2)) if m and m.group(2) else None
            if q is None or q >= 100.0:  # min, max, std (and p100 = max): as measured
                return exact(value, size)
            within = (
                sample.quantile_interval(q / 100.0, confidence)
                if isinstance(sample, GapHistogram)
                else quantile_interval(sample.tolist(), q / 100.0, confidence)
            )
        return self._with_rounds(base, stat, within, confidence)

    def _with_rounds(self, base: str, stat: str, within: Interval, confidence: float) -> Interval:
        """`within` (which takes the requests as independent), widened to cover how the
        statistic moved from round to round: requests of one round share its conditions (a
        busy host, a warm cache), and on a shared machine that spread can exceed what the
        requests' own scatter suggests. Student's t over the rounds' values; the union of both."""
        values = [
            Distribution.of(s, ()).stat(stat, s) for s in self.round_samples.get(base, ()) if s.size
        ]
        values += [
            Distribution.of_histogram(h, ()).stat(stat, h)
            for h in self.round_histograms.get(base, ())
            if h.n
        ]
        if len(values) < 2:
            return within
        between = rounds_interval(values, confidence)
        return Interval(
            min(within.low, between.low),
            max(within.high, between.high),
            confidence,
            f"{within.method} and t over rounds",
            within.n,
        )

    def value(self, metric: str) -> tuple[float, int | None, str]:
        """(value, sample size, reason-if-NaN) of a metric name like `ttft_p95` or `goodput`."""
        scalar = PER_RUN.get(metric)
        if scalar is not None:
            v, n = scalar(self)
        else:
            base, _, stat = metric.rpartition("_")
            if base not in self.distributions:
                raise KeyError(f"{metric!r} is not a load metric")
            dist = self.distributions[base]
            v, n = dist.stat(stat, self.sample_of(base)), dist.count
            if dist.count == 0:
                return NAN, 0, self.reasons.get(base, f"no {base} samples")
        if math.isnan(v):
            return v, n, self.reasons.get(metric, self.reasons.get("requests", "no data"))
        return v, n, ""


# One entry per scalar of the catalogue whose producer is the load (a test holds the two in step):
# its value and the sample size behind it.
PER_RUN: dict[str, Callable[[Summary], tuple[float, int]]] = {
    "output_throughput": lambda s: (s.output_throughput, s.succeeded),
    "total_token_throughput": lambda s: (s.total_token_throughput, s.succeeded),
    "request_throughput": lambda s: (s.request_throughput, s.succeeded),
    "failure_rate": lambda s: (s.failure_rate, s.requests),
    "failures": lambda s: (float(s.failed), s.requests),
    "goodput": lambda s: (s.goodput, s.requests),
    "goodput_ratio": lambda s: (s.goodput_ratio, s.requests),
    "ttft_growth": lambda s: (_growth(s), sum(map(len, s.ttft_thirds))),
}


def _growth(s: Summary) -> float:
    return saturation.growth(*s.ttft_thirds)[0]


# --- per-request definitions -------------------------------------------------------------------


def ttft(r: RequestRecord) -> float | None:
    """Time to first token: request sent -> first chunk carrying non-empty generated text."""
    return None if r.first_content_at is None else r.first_content_at - r.sent_at


def ttfat(r: RequestRecord) -> float | None:
    """Time to first answer token: request sent -> first chunk carrying answer text.

    Reasoning streamed before the answer (``reasoning_content``/``reasoning`` deltas) does not
    count; without reasoning this equals TTFT. A request that streamed reasoning only has none.
    """
    return None if r.first_answer_at is None else r.first_answer_at - r.sent_at


def ttfc(r: RequestRecord) -> float | None:
    """Time to first chunk of any kind (a role-only chunk counts)."""
    return None if r.first_chunk_at is None else r.first_chunk_at - r.sent_at


def e2e(r: RequestRecord) -> float:
    """End-to-end latency: request sent -> last byte of the response."""
    return r.end_at - r.sent_at


def tpot(r: RequestRecord) -> float | None:
    """Time per output token: (E2E - TTFT) / (output_tokens - 1), for >= 2 output tokens."""
    first = ttft(r)
    if first is None or r.output_tokens is None or r.output_tokens < 2:
        return None
    return (e2e(r) - first) / (r.output_tokens - 1)


def itl(r: RequestRecord) -> list[float]:
    """Inter-chunk latencies: gaps between successive content-bearing chunks.

    Per chunk, not per token: a server that coalesces tokens into one chunk shows fewer,
    longer gaps.
    """
    t = r.content_times
    return [b - a for a, b in itertools.pairwise(t)]


def input_tokens(r: RequestRecord) -> float | None:
    """Prompt tokens of the request (the server's usage, else the tokenizer's count)."""
    return r.input_tokens


def output_tokens(r: RequestRecord) -> float | None:
    """Generated tokens of the request (the server's usage, else the tokenizer's count)."""
    return r.output_tokens


def reasoning_tokens(r: RequestRecord) -> float | None:
    """Of the generated tokens, those spent reasoning (0 when none was streamed)."""
    return r.reasoning_tokens


def answer_tokens(r: RequestRecord) -> float | None:
    """Generated tokens that are not reasoning: output_tokens - reasoning_tokens."""
    return r.answer_tokens


def dispatch_lag(r: RequestRecord) -> float | None:
    """Open loop: actual send time minus the scheduled send time (None: closed loop)."""
    return r.dispatch_lag


# One function per distribution of the catalogue whose producer is the load (a test holds the two
# in step). A function gives a value, none (not measurable for this request) or, for itl, a list.
PER_REQUEST: dict[str, Callable[[RequestRecord], float | list[float] | None]] = {
    "ttft": ttft,
    "ttfat": ttfat,
    "ttfc": ttfc,
    "tpot": tpot,
    "itl": itl,
    "e2e": e2e,
    "dispatch_lag": dispatch_lag,
    "input_tokens": input_tokens,
    "output_tokens": output_tokens,
    "reasoning_tokens": reasoning_tokens,
    "answer_tokens": answer_tokens,
}
# sampled over every measured request, failed ones too: the client keeps its schedule or not
# whatever the server answers; every other distribution describes successful requests
_OVER_EVERY_REQUEST = frozenset({"dispatch_lag"})


def _sample(
    f: Callable[[RequestRecord], float | list[float] | None], records: Sequence[RequestRecord]
) -> np.ndarray:
    values: list[float] = []
    for r in records:
        v = f(r)
        if isinstance(v, list):
            values += v
        elif v is not None:
            values.append(v)
    return np.array(values, dtype=float)


def _meets(r: RequestRecord, objectives: Sequence[RequestObjective]) -> bool:
    ops: dict[str, Callable[[float, float], bool]] = {
        "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b,
        ">=": lambda a, b: a >= b,
        ">": lambda a, b: a > b,
    }
    for o in objectives:
        got = PER_REQUEST[o.metric](r)
        # a per-chunk distribution (itl) bounds each request by its largest value (kept by a
        # slim record, which has no chunk times)
        value = (max(got) if got else r.itl_max) if isinstance(got, list) else got
        # a request whose value cannot be measured did not demonstrably meet the objective
        if value is None or not ops[o.op](value, o.threshold):
            return False
    return True


# --- the summary ---------------------------------------------------------------------------------


def summarize(
    records: Sequence[RequestRecord],
    *,
    window: tuple[float, float] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    request_objectives: Sequence[RequestObjective] = (),
    rounds: Sequence[tuple[float, float]] = (),
    itl: Sequence[GapHistogram] | None = None,
) -> Summary:
    """Summarise the measured (non-warmup) records; `window` is (start, end) on time.monotonic().

    `rounds`: the measured windows of several rounds whose records are pooled here; a rate is
    then the total over their summed length, and each round's own value is kept for the
    interval (t over rounds). The gaps between rounds count nowhere.

    `itl`: for records that were written out and slimmed as they finished (record_log.py), the
    chunk gaps of each round's measured successful requests, as histograms; the ITL
    distribution then comes from them instead of from the records' chunk times.
    """
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    if itl is None and any(r.slimmed for r in ok):
        raise ValueError(
            "these records were slimmed (their chunk times dropped once written out): pass "
            "their ITL histograms as summarize(itl=...)"
        )
    pcts = tuple(sorted({float(p) for p in percentiles}))
    reasons: dict[str, str] = {}
    if not measured:
        reasons["requests"] = "no measured requests were sent"
    elif not ok:
        reasons["requests"] = f"all {len(measured)} measured requests failed"

    if window is None and measured:
        window = (min(r.sent_at for r in measured), max(r.end_at for r in measured))
    duration = (window[1] - window[0]) if window else NAN
    if len(rounds) > 1:
        duration = sum(end - start for start, end in rounds)

    from_records = [n for n in DISTRIBUTIONS if itl is None or n != "itl"]
    samples = {
        name: _sample(PER_REQUEST[name], measured if name in _OVER_EVERY_REQUEST else ok)
        for name in from_records
    }
    histograms = {"itl": GapHistogram.merged(itl)} if itl is not None else {}
    sizes = {name: int(v.size) for name, v in samples.items()}
    sizes.update({name: h.n for name, h in histograms.items()})
    if ok and sizes["tpot"] == 0:
        reasons["tpot"] = "no successful request produced 2 or more output tokens"
    if ok and sizes["ttfat"] == 0:
        reasons["ttfat"] = "no successful request streamed answer text (reasoning only?)"
    uncounted = sum(1 for r in ok if r.reasoning_tokens is None and r.extra.get("reasoning_text"))
    if uncounted:
        reasons["reasoning_tokens"] = (
            f"{uncounted} successful requests streamed reasoning that neither usage nor a "
            "tokenizer counted"
        )
    if ok and sizes["answer_tokens"] == 0:
        reasons["answer_tokens"] = "output or reasoning token counts are missing"
    if ok and sizes["itl"] == 0:
        reasons["itl"] = "no successful request streamed 2 or more content chunks"
    thirds = _ttft_thirds(ok)
    growth_reason = saturation.growth(*thirds)[1]
    if ok and growth_reason:
        reasons["ttft_growth"] = growth_reason
    if sizes["dispatch_lag"] == 0:
        reasons["dispatch_lag"] = "closed-loop run: requests have no arrival schedule"

    sources = Counter(r.token_source or "unknown" for r in ok)
    out_tokens = [r.output_tokens for r in ok]
    in_tokens = [r.input_tokens for r in ok]
    if ok and None in out_tokens:
        reasons["output_throughput"] = (
            f"{out_tokens.count(None)} successful requests have no output token count "
            "(server sent no usage and no tokenizer was available)"
        )
        out_tp = NAN
    else:
        out_tp = _rate(sum(t or 0 for t in out_tokens), duration, bool(ok))
    if ok and None in in_tokens:
        reasons["total_token_throughput"] = "input token counts are missing"
        total_tp = NAN
    else:
        total_tp = _rate(sum(t or 0 for t in in_tokens), duration, bool(ok)) + out_tp

    good_requests = [r for r in ok if _meets(r, request_objectives)]
    good = len(good_requests)
    if not request_objectives:
        reasons["goodput"] = reasons["goodput_ratio"] = "no per-request objectives are set"
    failures = Counter(str(r.error) for r in measured if not r.ok)
    # what each window rate counts, and when it was counted (a request's end); as arrays: an
    # hour-long run has hundreds of thousands of requests
    ends = np.array([r.end_at for r in ok], dtype=float)
    counted: dict[str, Counted] = {
        "output_throughput": _amounts(ends, out_tokens),
        "total_token_throughput": _amounts(
            ends, [_sum_or_none(r.input_tokens, r.output_tokens) for r in ok]
        ),
        "request_throughput": (ends, np.ones(ends.size)) if ok else None,
        "goodput": (
            (np.array([r.end_at for r in good_requests], dtype=float), np.ones(good))
            if request_objectives and good_requests
            else None
        ),
    }
    examples: dict[str, str] = {}
    for r in measured:
        if r.error is not None:
            examples.setdefault(str(r.error), r.error_message)

    return Summary(
        requests=len(measured),
        succeeded=len(ok),
        failed=len(measured) - len(ok),
        warmup=len(records) - len(measured),
        duration_s=duration,
        failures_by_category=dict(failures.most_common()),
        error_examples=examples,
        distributions={
            name: (
                Distribution.of_histogram(histograms[name], pcts)
                if name in histograms
                else Distribution.of(samples[name], pcts)
            )
            for name in DISTRIBUTIONS
        },
        output_throughput=out_tp,
        total_token_throughput=total_tp,
        request_throughput=_rate(len(ok), duration, bool(measured)),
        failure_rate=(len(measured) - len(ok)) / len(measured) if measured else NAN,
        goodput=_rate(good, duration, bool(measured)) if request_objectives else NAN,
        goodput_ratio=good / len(measured) if measured and request_objectives else NAN,
        token_sources={str(k): n for k, n in sources.items()},
        percentiles=pcts,
        reasons=reasons,
        samples=samples,
        good=good,
        batches=_batches(window, counted) if len(rounds) <= 1 else {},
        rounds=max(len(rounds), 1),
        round_samples=_per_round_samples(measured, ok, from_records) if len(rounds) > 1 else {},
        busy_seconds=sum(r.end_at - r.sent_at for r in measured),
        ttft_thirds=thirds,
        round_values=_per_round(rounds, counted) if len(rounds) > 1 else {},
        histograms=histograms,
        round_histograms={"itl": tuple(itl)} if itl is not None and len(itl) > 1 else {},
    )


def _sum_or_none(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


# a window rate's amounts (tokens or requests) and when each was counted; None: not countable
Counted = tuple[np.ndarray, np.ndarray] | None


def _amounts(ends: np.ndarray, amounts: Sequence[float | None]) -> Counted:
    if not amounts or any(a is None for a in amounts):
        return None
    return ends, np.array(amounts, dtype=float)


def _batches(
    window: tuple[float, float] | None, counted: dict[str, Counted]
) -> dict[str, tuple[float, ...]]:
    """Per rate: the amount counted in each of BATCHES equal slices of the window, each divided
    by the slice's length. A request counts in the slice it ended in (its tokens arrive over
    its whole life, so slices are correlated a little: the docs say so)."""
    if window is None or not window[1] > window[0]:
        return {}
    start, length = window[0], (window[1] - window[0]) / BATCHES
    out: dict[str, tuple[float, ...]] = {}
    for name, items in counted.items():
        if items is None:
            continue
        ends, amounts = items
        slices = np.clip(np.floor((ends - start) / length), 0, BATCHES - 1).astype(np.int64)
        totals = np.bincount(slices, weights=amounts, minlength=BATCHES)
        out[name] = tuple(float(v) / length for v in totals)
    return out


def _per_round_samples(
    measured: Sequence[RequestRecord], ok: Sequence[RequestRecord], names: Sequence[str]
) -> dict[str, tuple[np.ndarray, ...]]:
    numbers = sorted({r.round for r in measured})
    out = {}
    for name in names:
        chosen = measured if name in _OVER_EVERY_REQUEST else ok
        out[name] = tuple(
            _sample(PER_REQUEST[name], [r for r in chosen if r.round == n]) for n in numbers
        )
    return out


def _ttft_thirds(ok: Sequence[RequestRecord]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    first, last = saturation.thirds([(r.sent_at, t) for r in ok if (t := ttft(r)) is not None])
    return tuple(first), tuple(last)


def _per_round(
    rounds: Sequence[tuple[float, float]], counted: dict[str, Counted]
) -> dict[str, tuple[float, ...]]:
    """Per rate: its value in each round's window. Rounds run one after another, so a request
    belongs to the last round that started before it ended."""
    starts = np.array([start for start, _ in rounds], dtype=float)
    out: dict[str, tuple[float, ...]] = {}
    for name, items in counted.items():
        if items is None:
            continue
        ends, amounts = items
        which = np.maximum(np.searchsorted(starts, ends, side="right") - 1, 0)
        totals = np.bincount(which, weights=amounts, minlength=len(rounds))
        out[name] = tuple(
            _rate(float(total), end - start, True)
            for total, (start, end) in zip(totals, rounds, strict=True)
        )
    return out


def _rate(count: float, duration: float, have_data: bool) -> float:
    if not have_data or not duration or math.isnan(duration) or duration <= 0:
        return NAN
    return count / duration
