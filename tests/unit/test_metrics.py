"""The pinned metric definitions, checked on hand-computed records."""

from __future__ import annotations

import dataclasses
import math

import pytest

from pytest_llmslo.metrics import (
    Distribution,
    RequestObjective,
    summarize,
    tpot,
    ttfat,
    ttfc,
    ttft,
)
from pytest_llmslo.records import ErrorCategory, RequestRecord


def rec(
    i: int,
    *,
    sent: float = 0.0,
    first_chunk: float | None = 0.05,
    first: float | None = 0.1,
    times: tuple[float, ...] = (0.1, 0.2, 0.3),
    end: float = 0.3,
    out: int | None = 3,
    inp: int | None = 10,
    warmup: bool = False,
    error: ErrorCategory | None = None,
    msg: str = "",
) -> RequestRecord:
    return RequestRecord(
        index=i,
        prompt_index=i,
        warmup=warmup,
        sent_at=sent,
        end_at=end,
        first_chunk_at=first_chunk,
        first_content_at=first,
        content_times=times,
        output_tokens=out,
        input_tokens=inp,
        token_source="usage" if out is not None else None,
        error=error,
        error_message=msg,
    )


def test_per_request_definitions() -> None:
    r = rec(0, sent=1.0, first_chunk=1.01, first=1.2, times=(1.2, 1.3, 1.5), end=1.6, out=5)
    assert ttft(r) == pytest.approx(0.2)  # to the first content, not the role-only chunk
    assert ttfc(r) == pytest.approx(0.01)
    assert tpot(r) == pytest.approx((0.6 - 0.2) / 4)
    assert tpot(rec(1, out=1)) is None  # one token has no time per output token


def test_summary_excludes_warmup_and_counts_failures() -> None:
    records = [
        rec(0, warmup=True, end=9.0),
        rec(1, sent=1.0, first=1.1, times=(1.1, 1.2), end=1.2, out=2),
        rec(2, sent=1.0, first=1.3, times=(1.3, 1.4, 1.6), end=1.6, out=3),
        rec(
            3,
            sent=1.5,
            first=None,
            times=(),
            end=2.0,
            out=None,
            error=ErrorCategory.HTTP_5XX,
            msg="500 boom",
        ),
    ]
    s = summarize(records, window=(1.0, 2.0), percentiles=[50, 95])
    assert (s.requests, s.succeeded, s.failed, s.warmup) == (3, 2, 1, 1)
    assert s.failure_rate == pytest.approx(1 / 3)
    assert s.failures_by_category == {"http_5xx": 1}
    assert s.error_examples["http_5xx"] == "500 boom"
    assert s.output_throughput == pytest.approx(5 / 1.0)
    assert s.request_throughput == pytest.approx(2 / 1.0)
    assert s.total_token_throughput == pytest.approx((5 + 20) / 1.0)
    ttfts = s.distributions["ttft"]
    assert ttfts.count == 2 and ttfts.mean == pytest.approx(0.2)
    # ITL pools the gaps of every successful request: 0.1 | 0.1, 0.2
    assert s.distributions["itl"].count == 3
    assert s.distributions["itl"].max == pytest.approx(0.2)
    value, n, _ = s.value("ttft_mean")
    assert value == pytest.approx(0.2) and n == 2
    assert s.value("e2e_p99.9")[0] == pytest.approx(0.6, abs=0.01)  # computed on demand


def test_empty_samples_are_nan_with_a_reason() -> None:
    s = summarize([rec(0, error=ErrorCategory.CONNECT, msg="refused", out=None)])
    value, n, reason = s.value("ttft_p95")
    assert math.isnan(value) and n == 0 and reason
    assert math.isnan(s.output_throughput)
    assert s.failure_rate == 1.0
    none = summarize([])
    assert math.isnan(none.failure_rate) and "no measured requests" in none.value("failure_rate")[2]


def test_time_to_first_answer_token_skips_the_reasoning() -> None:
    thinking = dataclasses.replace(
        rec(0, sent=1.0, first=1.1, times=(1.1, 1.2, 1.5, 1.6), end=1.7, out=12),
        first_answer_at=1.5,
        reasoning_tokens=8,
    )
    plain = dataclasses.replace(rec(1, sent=1.0, first=1.2, end=1.4), first_answer_at=1.2)
    only_reasoning = dataclasses.replace(rec(2, out=6), first_answer_at=None, reasoning_tokens=6)
    assert ttft(thinking) == pytest.approx(0.1)  # TTFT counts reasoning text
    assert ttfat(thinking) == pytest.approx(0.5)
    assert ttfat(plain) == ttft(plain)
    assert ttfat(only_reasoning) is None
    assert (thinking.answer_tokens, only_reasoning.answer_tokens) == (4, 0)

    s = summarize([thinking, plain, only_reasoning], percentiles=[50])
    assert s.distributions["ttfat"].count == 2
    assert s.value("ttfat_max")[0] == pytest.approx(0.5)
    assert s.value("reasoning_tokens_mean")[0] == pytest.approx(7.0)  # plain has no count
    assert s.value("answer_tokens_max")[0] == 4
    none = summarize([only_reasoning])
    value, n, reason = none.value("ttfat_p95")
    assert math.isnan(value) and n == 0 and "reasoning only" in reason


def test_missing_token_counts_are_not_guessed() -> None:
    s = summarize([rec(0, out=None)])
    value, _, reason = s.value("output_throughput")
    assert math.isnan(value) and "no output token count" in reason


def test_goodput_against_per_request_objectives() -> None:
    records = [rec(0, first=0.1), rec(1, first=0.25, times=(0.25, 0.3)), rec(2, first=0.05)]
    objectives = [RequestObjective("ttft", "<=", 0.2)]
    s = summarize(records, window=(0.0, 2.0), request_objectives=objectives)
    assert s.goodput_ratio == pytest.approx(2 / 3)
    assert s.goodput == pytest.approx(1.0)
    assert math.isnan(summarize(records).goodput)


def test_distribution_stats() -> None:
    d = Distribution.of([1.0, 2.0, 3.0, 4.0], [50])
    assert d.stat("median") == pytest.approx(2.5)
    assert d.stat("max") == 4.0
    with pytest.raises(KeyError):
        d.stat("p")


def _round(start: float, length: float, tokens: int, count: int) -> list[RequestRecord]:
    """`count` requests ending evenly over [start, start + length], `tokens` output each."""
    step = length / count
    return [
        rec(
            i,
            sent=start + i * step,
            first=start + i * step + 0.01,
            times=(start + i * step + 0.01,),
            end=start + (i + 1) * step,
            out=tokens,
        )
        for i in range(count)
    ]


def test_pooled_rounds_rate_over_their_summed_windows_and_keep_each_rounds_value() -> None:
    # round 1: 100 tok over 10 s; a 100 s pause; round 2: 300 tok over 10 s
    first, second = _round(0.0, 10.0, 10, 10), _round(110.0, 10.0, 30, 10)
    s = summarize(first + second, window=(0.0, 120.0), rounds=[(0.0, 10.0), (110.0, 120.0)])
    assert s.duration_s == pytest.approx(20.0)  # the pause between rounds counts nowhere
    assert s.output_throughput == pytest.approx(400 / 20)
    assert s.round_values["output_throughput"] == pytest.approx((10.0, 30.0))
    assert s.rounds == 2 and s.batches == {}
    interval = s.interval("output_throughput", 0.95)
    assert interval is not None and interval.method == "t over rounds" and interval.n == 2
    # two rounds of 10 and 30: mean 20, t(0.975, 1) = 12.706 times the standard error 10
    assert interval.low == pytest.approx(20 - 127.06, rel=1e-3)
    assert interval.high == pytest.approx(20 + 127.06, rel=1e-3)
    # per-request percentiles pool every round's samples
    assert s.distributions["ttft"].count == 20


def test_one_round_keeps_batch_means() -> None:
    s = summarize(_round(0.0, 10.0, 10, 20), window=(0.0, 10.0), rounds=[(0.0, 10.0)])
    assert s.rounds == 1 and s.round_values == {} and len(s.batches["output_throughput"]) == 10
    interval = s.interval("output_throughput", 0.95)
    assert interval is not None and interval.method == "batch means"


def test_with_rounds_a_percentiles_interval_also_covers_the_rounds_spread() -> None:
    # each round's requests agree closely, but the rounds do not: the host got busier. The
    # order statistic alone, taking all 40 requests as independent, would be far too sure.
    first = [dataclasses.replace(r, round=1) for r in _round(0.0, 10.0, 10, 20)]
    second = [
        dataclasses.replace(r, round=2, first_content_at=r.sent_at + 0.5)
        for r in _round(20.0, 10.0, 10, 20)
    ]
    s = summarize(first + second, window=(0.0, 30.0), rounds=[(0.0, 10.0), (20.0, 30.0)])
    assert [a.size for a in s.round_samples["ttft"]] == [20, 20]
    interval = s.interval("ttft_p50", 0.95)
    assert interval is not None and interval.method == "order statistic and t over rounds"
    # rounds' medians 10 ms and 500 ms: t with one degree of freedom spans far beyond both
    assert interval.low < 0.01 and interval.high > 0.5 + 2.0
    single = summarize(first, window=(0.0, 10.0))
    assert single.interval("ttft_p50", 0.95).method == "order statistic"  # type: ignore[union-attr]
