"""Saturation: a server past its knee, recognised from the run itself.

Below its knee a server's queue stays short, and a request's wait for its first token does not
depend on when in the run it was sent. Past the knee (an open loop sending faster than the
server completes) the queue grows for as long as the load lasts, and so does TTFT: the last
requests wait for everything queued before them. A long latency tail and a saturated server
look alike in a p99; they differ in the trend, so the run is cut by send time into thirds and
the median TTFT of the last third is compared with that of the first:

- `ttft_growth` = median TTFT of the last third / median TTFT of the first third, with an
  interval from the two medians' order-statistic intervals (lowest last over highest first,
  highest last over lowest first): conservative, like every interval here;
- the run is **saturated** when the whole interval lies at or above GROWTH_LIMIT (the TTFT at
  least doubled through the run, decisively); vLLM's waiting-request gauge on `/metrics`, where
  scraped, is reported beside it (how long the queue got, and whether it grew).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pytest_llmslo.intervals import INF, Interval, check_confidence, quantile_interval

GROWTH_LIMIT = 2.0
THIRDS = 3
MIN_PER_THIRD = 3  # fewer and a third's median is one or two requests
METHOD = "ratio of the thirds' medians (order statistic)"


def thirds(sent_and_ttft: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The TTFTs of the first and the last third of the requests, in order of sending."""
    ordered = [ttft for _, ttft in sorted(sent_and_ttft)]
    size = len(ordered) // THIRDS
    if size == 0:
        return [], []
    return ordered[:size], ordered[-size:]


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def growth(first: Sequence[float], last: Sequence[float]) -> tuple[float, str]:
    """(last third's median TTFT / first third's, reason when NaN)."""
    if len(first) < MIN_PER_THIRD or len(last) < MIN_PER_THIRD:
        needed = THIRDS * MIN_PER_THIRD
        return math.nan, f"a trend needs {needed} or more successful requests with a TTFT"
    base = _median(first)
    if base <= 0:
        return math.nan, "the first third's median TTFT is 0"
    return _median(last) / base, ""


def growth_interval(first: Sequence[float], last: Sequence[float], confidence: float) -> Interval:
    """Where the true growth lies: from the two medians' intervals, each at a confidence that
    makes both hold together at `confidence` (Bonferroni: sqrt would assume independence)."""
    check_confidence(confidence)
    each = 1.0 - (1.0 - confidence) / 2.0
    a = quantile_interval(first, 0.5, each)
    b = quantile_interval(last, 0.5, each)
    n = len(first) + len(last)
    if not (a.bounded and b.bounded) or a.low <= 0:
        return Interval(0.0, INF, confidence, METHOD, n)
    return Interval(b.low / a.high, b.high / a.low, confidence, METHOD, n)


def verdict(value: float, interval: Interval | None, waiting: Sequence[float] = ()) -> str | None:
    """Why the run is saturated, or None: the TTFT growth decisively at or above the limit."""
    if math.isnan(value) or interval is None or interval.low < GROWTH_LIMIT:
        return None
    text = (
        f"saturated: the median TTFT grew {value:.1f}x from the first third of the run to the "
        f"last ({interval.confidence:.0%} interval {interval.low:.1f}x to "
        f"{'inf' if math.isinf(interval.high) else f'{interval.high:.1f}x'}): requests queued "
        "faster than the server completed them, so the latency tail is a queue that grew for as "
        "long as the load lasted, not the server's speed"
    )
    queue = queue_trend(waiting)
    return f"{text}; {queue}" if queue else text


def queue_trend(waiting: Sequence[float]) -> str:
    """What the server's waiting-request gauge did, in words ("" without scrapes)."""
    if len(waiting) < THIRDS:
        return ""
    size = len(waiting) // THIRDS
    early = sum(waiting[:size]) / size
    late = sum(waiting[-size:]) / size
    return (
        f"the server's queue (vLLM's waiting requests) went from {early:.1f} on average in the "
        f"first third to {late:.1f} in the last, at most {max(waiting):.0f}"
    )
