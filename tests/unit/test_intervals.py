"""Confidence intervals: known values of the distributions, and coverage on seeded samples."""

from __future__ import annotations

import math
import random

import pytest

from pytest_llmslo.intervals import (
    batch_means_interval,
    binomial_cdf,
    mean_interval,
    normal_quantile,
    proportion_interval,
    quantile_interval,
    rounds_interval,
    t_quantile,
)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [(0.975, 1, 12.7062), (0.975, 4, 2.7764), (0.975, 10, 2.2281), (0.95, 30, 1.6973)],
)
def test_t_quantiles_match_the_tables(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-4)


def test_normal_quantile_matches_the_tables() -> None:
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.5) == pytest.approx(0.0, abs=1e-9)


def test_binomial_cdf_ends_at_one() -> None:
    cdf = binomial_cdf(10, 0.5)
    assert cdf[1] == pytest.approx(11 / 1024)
    assert cdf[-1] == pytest.approx(1.0)


def test_the_median_of_ten_is_bounded_by_the_second_and_ninth_values() -> None:
    interval = quantile_interval([float(i) for i in range(10, 0, -1)], 0.5, 0.95)
    assert (interval.low, interval.high) == (2.0, 9.0)
    assert interval.method == "order statistic" and interval.n == 10


def test_a_p99_of_twenty_requests_has_no_upper_bound() -> None:
    interval = quantile_interval([float(i) for i in range(20)], 0.99, 0.95)
    assert math.isinf(interval.high) and interval.low < 19.0
    assert not interval.bounded


def test_an_interval_narrows_as_the_sample_grows() -> None:
    rng = random.Random(7)
    small = quantile_interval([rng.expovariate(1.0) for _ in range(100)], 0.95, 0.95)
    large = quantile_interval([rng.expovariate(1.0) for _ in range(10_000)], 0.95, 0.95)
    assert large.high - large.low < (small.high - small.low) / 3


def test_quantile_intervals_cover_the_true_quantile_at_least_as_often_as_promised() -> None:
    rng = random.Random(1)
    truth = -math.log(1 - 0.9)  # p90 of Exp(1)
    trials = 1000
    covered = sum(
        quantile_interval([rng.expovariate(1.0) for _ in range(60)], 0.9, 0.95).contains(truth)
        for _ in range(trials)
    )
    assert covered / trials >= 0.94  # conservative by construction; 1000 trials allow ~0.7%


def test_mean_intervals_cover_the_true_mean() -> None:
    rng = random.Random(2)
    trials = 1000
    covered = sum(
        mean_interval([rng.gauss(5.0, 2.0) for _ in range(12)], 0.9).contains(5.0)
        for _ in range(trials)
    )
    assert 0.87 <= covered / trials <= 0.93


def test_one_value_bounds_nothing() -> None:
    assert not mean_interval([3.0], 0.95).bounded
    assert not rounds_interval([3.0], 0.95).bounded
    assert batch_means_interval([1.0, 2.0, 3.0], 0.95).method == "batch means"


def test_wilson_interval_at_zero_failures_stays_inside_zero_one() -> None:
    interval = proportion_interval(0, 100, 0.95)
    assert interval.low == 0.0
    assert interval.high == pytest.approx(0.037, abs=0.001)
    full = proportion_interval(100, 100, 0.95)
    assert full.high == 1.0 and full.low == pytest.approx(0.963, abs=0.001)


def test_a_confidence_outside_its_range_says_so() -> None:
    with pytest.raises(ValueError, match=r"confidence must be in \[0.5, 1\)"):
        quantile_interval([1.0], 0.5, 0.4)
    with pytest.raises(ValueError, match="confidence must be"):
        mean_interval([1.0, 2.0], 1.0)
