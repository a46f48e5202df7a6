"""Saturation: a TTFT that grows through the run, told apart from a long tail."""

from __future__ import annotations

import math

import pytest

from pytest_llmslo.metrics import summarize
from pytest_llmslo.records import RequestRecord
from pytest_llmslo.saturation import (
    GROWTH_LIMIT,
    growth,
    growth_interval,
    queue_trend,
    thirds,
    verdict,
)


def record(i: int, ttft: float) -> RequestRecord:
    return RequestRecord(
        i, i, False, float(i), i + ttft + 0.1, first_content_at=i + ttft, output_tokens=4
    )


def test_thirds_follow_the_order_of_sending_not_of_the_records() -> None:
    pairs = [(3.0, 0.3), (1.0, 0.1), (2.0, 0.2), (6.0, 0.6), (5.0, 0.5), (4.0, 0.4)]
    assert thirds(pairs) == ([0.1, 0.2], [0.5, 0.6])
    assert thirds(pairs[:2]) == ([], [])


def test_a_queue_that_grows_through_the_run_is_saturation() -> None:
    # TTFT rising steadily from 0.1 s to 3 s over 60 requests: a queue that never drains
    records = [record(i, 0.1 + 0.05 * i) for i in range(60)]
    s = summarize(records)
    value, _, reason = s.value("ttft_growth")
    assert reason == "" and value == pytest.approx((0.1 + 0.05 * 49.5) / (0.1 + 0.05 * 9.5))
    interval = s.interval("ttft_growth", 0.95)
    assert interval is not None and interval.low >= GROWTH_LIMIT
    text = verdict(value, interval, waiting=[0, 1, 3, 6, 10, 15])
    assert text is not None and text.startswith("saturated: the median TTFT grew")
    assert "from 0.5 on average in the first third to 12.5 in the last, at most 15" in text


def test_a_long_tail_without_a_trend_is_not_saturation() -> None:
    # the same slow requests, spread over the whole run: the p99 is long, the trend is flat
    records = [record(i, 3.0 if i % 10 == 0 else 0.1) for i in range(60)]
    s = summarize(records)
    value, _, _ = s.value("ttft_growth")
    assert value == pytest.approx(1.0)
    assert verdict(value, s.interval("ttft_growth", 0.95)) is None


def test_growth_needs_enough_requests_and_an_undecided_growth_is_not_saturation() -> None:
    value, reason = growth([0.1, 0.1], [0.5, 0.5])
    assert math.isnan(value) and "9 or more" in reason
    s = summarize([record(i, 0.1) for i in range(5)])
    assert math.isnan(s.value("ttft_growth")[0])
    assert "9 or more" in s.value("ttft_growth")[2]
    # three per third: a median's interval at 97.5% has no bounds, so nothing is decided
    interval = growth_interval([0.1, 0.1, 0.1], [0.5, 0.5, 0.5], 0.95)
    assert math.isinf(interval.high) and verdict(5.0, interval) is None


def test_queue_trend_needs_three_scrapes() -> None:
    assert queue_trend([1, 2]) == ""
    assert "at most 9" in queue_trend([0, 0, 1, 4, 9, 9])
