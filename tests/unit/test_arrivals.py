"""Open-loop arrival schedules: reproducible, the right mean rate, gamma burstiness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pytest_llmslo.arrivals import arrival_offsets, interarrival_times


def test_same_seed_same_schedule_and_other_seed_differs() -> None:
    a = interarrival_times(500, 10.0, "poisson", seed=7)
    b = interarrival_times(500, 10.0, "poisson", seed=7)
    c = interarrival_times(500, 10.0, "poisson", seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("arrival", ["poisson", "constant", "gamma"])
def test_mean_rate(arrival: str) -> None:
    gaps = interarrival_times(20_000, 25.0, arrival, burstiness=0.5, seed=1)  # type: ignore[arg-type]
    assert len(gaps) == 20_000
    assert np.all(gaps >= 0)
    assert 1 / gaps.mean() == pytest.approx(25.0, rel=0.05)


def test_constant_is_evenly_spaced() -> None:
    offsets = list(itertools.islice(arrival_offsets(4.0, "constant"), 5))
    assert offsets == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize(("burstiness", "cv"), [(0.25, 2.0), (1.0, 1.0), (4.0, 0.5)])
def test_gamma_burstiness_sets_the_coefficient_of_variation(burstiness: float, cv: float) -> None:
    gaps = interarrival_times(50_000, 10.0, "gamma", burstiness=burstiness, seed=3)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.06)


def test_offsets_start_at_zero_and_follow_the_gaps_across_blocks() -> None:
    count = 3000  # more than one internal block of draws
    offsets = np.array(list(itertools.islice(arrival_offsets(50.0, seed=5), count)))
    gaps = interarrival_times(count - 1, 50.0, seed=5)
    assert offsets[0] == 0.0
    assert np.allclose(np.diff(offsets), gaps)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0.0}, "load.rate must be a positive"),
        ({"rate": float("inf")}, "load.rate must be a positive"),
        ({"arrival": "uniform"}, "load.arrival must be one of poisson, constant, gamma"),
        ({"burstiness": 0.0}, "load.burstiness must be > 0"),
    ],
)
def test_bad_parameters_say_which_and_how(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"count": 3, "rate": 1.0, "arrival": "gamma", "burstiness": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        interarrival_times(**args)  # type: ignore[arg-type]
