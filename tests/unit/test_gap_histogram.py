"""ITL in fixed memory: the histogram's statistics against numpy's over every gap, and a summary
of slim records (their chunk times written out) against one of the whole records."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from pytest_llmslo.gap_histogram import BUCKETS, RESOLUTION, GapHistogram
from pytest_llmslo.intervals import quantile_interval
from pytest_llmslo.metrics import RequestObjective, summarize
from pytest_llmslo.records import RequestRecord


def gaps(n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.lognormal(mean=math.log(0.01), sigma=0.6, size=n)
    values[::17] = 0.0  # chunks read in one go
    return values


def close(got: float, want: float) -> bool:
    # half a bucket of the value, or the 1 us floor under which gaps count as 0
    return abs(got - want) <= want * RESOLUTION / 2 + 1e-6


def test_percentiles_are_numpys_to_half_a_bucket_and_the_moments_are_exact() -> None:
    values = gaps(50_000)
    histogram = GapHistogram.of(values.tolist())
    assert histogram.n == values.size and histogram.counts.size == BUCKETS
    for q in (0.1, 1, 25, 50, 90, 95, 99, 99.9):
        assert close(histogram.percentile(q), float(np.percentile(values, q))), q
    assert histogram.low == values.min() and histogram.high == values.max()
    assert histogram.mean == pytest.approx(values.mean(), rel=1e-12)
    assert histogram.std == pytest.approx(values.std(), rel=1e-9)


def test_merging_histograms_is_the_histogram_of_all_their_gaps() -> None:
    values = gaps(9_000)
    parts = [GapHistogram.of(values[i::3].tolist()) for i in range(3)]
    merged, whole = GapHistogram.merged(parts), GapHistogram.of(values.tolist())
    assert (merged.counts == whole.counts).all() and merged.n == whole.n
    assert (merged.low, merged.high) == (whole.low, whole.high)
    assert merged.total == pytest.approx(whole.total)


def test_the_order_statistic_interval_reads_the_same_ranks_as_the_list_does() -> None:
    values = gaps(3_000)
    histogram = GapHistogram.of(values.tolist())
    for q in (0.5, 0.9, 0.99):
        exact = quantile_interval(values.tolist(), q, 0.95)
        binned = histogram.quantile_interval(q, 0.95)
        assert close(binned.low, exact.low) and close(binned.high, exact.high), q
        assert binned.n == exact.n
    # a p99.9 from 3,000 gaps has too few above it to bound its top: unbounded, not invented
    assert math.isinf(histogram.quantile_interval(0.9995, 0.95).high)


def test_an_empty_histogram_gives_nan_not_zero() -> None:
    histogram = GapHistogram()
    assert math.isnan(histogram.percentile(50)) and math.isnan(histogram.mean)


def _records(n: int) -> list[RequestRecord]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        sent = float(i)
        steps = np.cumsum(rng.lognormal(math.log(0.02), 0.5, size=12))
        times = tuple(float(sent + 0.1 + t) for t in steps)
        out.append(
            RequestRecord(
                index=i,
                prompt_index=i,
                warmup=i < 2,
                sent_at=sent,
                end_at=times[-1] + 0.001,
                first_chunk_at=times[0],
                first_content_at=times[0],
                content_times=times,
                input_tokens=10,
                output_tokens=12,
                token_source="usage",
            )
        )
    return out


def test_a_summary_of_slim_records_and_their_histogram_matches_the_whole_records() -> None:
    records = _records(400)
    itl_bound = [RequestObjective("itl", "<=", 0.05)]
    whole = summarize(records, request_objectives=itl_bound)
    measured_gaps = GapHistogram()
    for r in records:
        if not r.warmup:
            measured_gaps.add(np.diff(r.content_times))
    slim = [r.slim() for r in records]
    assert all(r.slimmed and r.content_times == () and r.itl_max for r in slim)
    streamed = summarize(slim, itl=[measured_gaps], request_objectives=itl_bound)
    for q in (50, 90, 99):
        assert close(streamed.value(f"itl_p{q}")[0], whole.value(f"itl_p{q}")[0])
    assert streamed.value("itl_mean")[0] == pytest.approx(whole.value("itl_mean")[0])
    # a per-request ITL objective reads the slim record's largest gap
    assert streamed.good == whole.good and 0 < whole.good < whole.requests
    for metric in ("ttft_p90", "e2e_p50", "tpot_mean", "output_throughput"):
        assert streamed.value(metric) == whole.value(metric)
    interval = streamed.interval("itl_p90", 0.95)
    assert interval is not None and interval.low <= streamed.value("itl_p90")[0] <= interval.high


def test_slim_records_without_their_histogram_are_refused() -> None:
    slim = [replace(r.slim(), warmup=False) for r in _records(5)]
    with pytest.raises(ValueError, match="summarize\\(itl="):
        summarize(slim)
