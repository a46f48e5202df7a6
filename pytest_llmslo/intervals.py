"""Confidence intervals for gated values: pure math over plain numbers, no numpy, no scipy.

Which method applies to which metric, and why, is in docs/spec-reference.md ("Intervals"):

- a percentile of per-request values (TTFT p95, ...): the distribution-free order-statistic
  interval, from the binomial distribution of how many samples fall below the true quantile.
  It needs no assumption about the latency distribution, and it widens honestly with a small
  sample: a p99 from 20 requests has no finite upper bound at 95% confidence;
- a mean of per-request values: Student's t interval;
- a proportion (failure rate, goodput ratio): the Wilson score interval, which stays inside
  [0, 1] and is sound at 0 failures;
- a value of the measured window (throughput, goodput): Student's t over the values of
  repeated rounds, or over batch means (equal time slices of one window) when one round is all
  there is.

Every interval is conservative where a choice exists: a verdict drawn from it may be
inconclusive, never confidently wrong more often than 1 - confidence says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

INF = math.inf


@dataclass(frozen=True)
class Interval:
    """A two-sided interval that holds the true value with probability ``confidence``.

    ``low`` may be -inf and ``high`` +inf: too few samples to bound that side.
    """

    low: float
    high: float
    confidence: float
    method: str
    n: int

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


def check_confidence(confidence: float) -> float:
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), e.g. 0.95; got {confidence!r}")
    return confidence


# --- distributions -------------------------------------------------------------------------


def _log_binom_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -INF
    if p >= 1.0:
        return 0.0 if k == n else -INF
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def binomial_cdf(n: int, p: float) -> list[float]:
    """P(B <= k) for k = 0..n, B ~ Binomial(n, p)."""
    out = []
    total = 0.0
    for k in range(n + 1):
        total += math.exp(_log_binom_pmf(k, n, p))
        out.append(min(total, 1.0))
    return out


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (bisection on the cdf)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def normal_quantile(p: float) -> float:
    """The p-quantile of the standard normal (Student's t with infinite df, by bisection)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    low, high = -40.0, 40.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


# --- intervals -----------------------------------------------------------------------------


# above this many samples the binomial ranks come from the normal approximation, one rank wider
# on each side (conservative): the exact sums cost O(n) and add nothing at this size, unless the
# quantile is so far out that fewer than NORMAL_MIN_VARIANCE samples' worth spread it (skewed)
EXACT_RANKS_UP_TO = 20_000
NORMAL_MIN_VARIANCE = 100.0


def quantile_ranks(n: int, q: float, confidence: float) -> tuple[int, int]:
    """The 1-based order-statistic ranks (l, u) whose values bound the q-quantile of n samples.

    With B ~ Binomial(n, q) the number of samples below the true quantile, [x_(l), x_(u)]
    covers it with probability P(l <= B < u) >= confidence. l = 0 or u = n + 1: that side is
    unbounded.
    """
    check_confidence(confidence)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    alpha = 1.0 - confidence
    if n > EXACT_RANKS_UP_TO and n * q * (1.0 - q) >= NORMAL_MIN_VARIANCE:
        z = normal_quantile(1.0 - alpha / 2.0)
        spread = z * math.sqrt(n * q * (1.0 - q))
        low = math.floor(n * q - spread)
        high = math.ceil(n * q + spread) + 2
        return max(low, 0), min(high, n + 1)
    cdf = binomial_cdf(n, q)
    # lower: the largest l with P(B <= l - 1) <= alpha / 2
    l_rank = 0
    for k in range(n + 1):
        if cdf[k] <= alpha / 2.0:
            l_rank = k + 1
        else:
            break
    # upper: the smallest u with P(B >= u) <= alpha / 2, i.e. P(B <= u - 1) >= 1 - alpha / 2
    u_rank = n + 1
    for k in range(n + 1):
        if cdf[k] >= 1.0 - alpha / 2.0:
            u_rank = k + 1
            break
    return l_rank, u_rank


def quantile_interval(samples: Sequence[float], q: float, confidence: float) -> Interval:
    """Distribution-free interval for the q-quantile (0 < q < 1) from order statistics
    (`quantile_ranks`); a side whose rank falls outside 1..n is unbounded."""
    check_confidence(confidence)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    xs = sorted(x for x in samples if not math.isnan(x))
    n = len(xs)
    if n == 0:
        return Interval(-INF, INF, confidence, "order statistic", 0)
    l_rank, u_rank = quantile_ranks(n, q, confidence)
    low = xs[l_rank - 1] if l_rank >= 1 else -INF
    high = xs[u_rank - 1] if u_rank <= n else INF
    return Interval(low, high, confidence, "order statistic", n)


def mean_interval(samples: Sequence[float], confidence: float, method: str = "t") -> Interval:
    """Student's t interval for the mean; one value alone bounds nothing."""
    xs = [x for x in samples if not math.isnan(x)]
    n = len(xs)
    if n < 2:
        return mean_interval_of(n, math.nan, math.nan, confidence, method)
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean_interval_of(n, mean, var, confidence, method)


def mean_interval_of(
    n: int, mean: float, variance: float, confidence: float, method: str = "t"
) -> Interval:
    """Student's t interval from a sample's size, mean and (n - 1) variance."""
    check_confidence(confidence)
    if n < 2:
        return Interval(-INF, INF, confidence, method, n)
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, n - 1) * math.sqrt(variance / n)
    return Interval(mean - half, mean + half, confidence, method, n)


def proportion_interval(hits: int, n: int, confidence: float) -> Interval:
    """Wilson score interval for a proportion hits / n."""
    check_confidence(confidence)
    if n <= 0:
        return Interval(0.0, 1.0, confidence, "wilson", 0)
    z = normal_quantile(1.0 - (1.0 - confidence) / 2.0)
    p = hits / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(max(0.0, centre - half), min(1.0, centre + half), confidence, "wilson", n)


def rounds_interval(values: Sequence[float], confidence: float) -> Interval:
    """A window value measured once per round: Student's t over the rounds' values."""
    return mean_interval(values, confidence, method="t over rounds")


def batch_means_interval(batch_values: Sequence[float], confidence: float) -> Interval:
    """A window value from one round, split into equal time slices: t over the slice values.

    Slices of one run are not independent (a slow stretch spans two); enough slices of
    reasonable length make the correlation small, and the docs say so.
    """
    return mean_interval(batch_values, confidence, method="batch means")


def exact(value: float, n: int = 1) -> Interval:
    """A value taken as measured, with no sampling interval (e.g. a peak of memory)."""
    return Interval(value, value, 1.0, "as measured", n)
