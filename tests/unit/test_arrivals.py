"""Open-loop arrival schedules: reproducible, the right mean rate, gamma burstiness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pytest_llmslo.arrivals import arrival_offsets
from pytest_llmslo.config import Arrival


def offsets(
    count: int, rate: float, arrival: Arrival = "poisson", burstiness: float = 1.0, seed: int = 0
) -> np.ndarray:
    schedule = arrival_offsets(rate, arrival, burstiness=burstiness, seed=seed)
    return np.array(list(itertools.islice(schedule, count)))


def gaps(
    count: int, rate: float, arrival: Arrival = "poisson", burstiness: float = 1.0, seed: int = 0
) -> np.ndarray:
    """``count`` gaps between successive sends of the schedule."""
    return np.diff(offsets(count + 1, rate, arrival, burstiness, seed))


def test_same_seed_same_schedule_and_other_seed_differs() -> None:
    a = gaps(500, 10.0, "poisson", seed=7)
    b = gaps(500, 10.0, "poisson", seed=7)
    c = gaps(500, 10.0, "poisson", seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("arrival", ["poisson", "constant", "gamma"])
def test_mean_rate(arrival: Arrival) -> None:
    drawn = gaps(20_000, 25.0, arrival, burstiness=0.5, seed=1)
    assert len(drawn) == 20_000
    assert np.all(drawn >= 0)
    assert 1 / drawn.mean() == pytest.approx(25.0, rel=0.05)


def test_constant_is_evenly_spaced() -> None:
    assert list(offsets(5, 4.0, "constant")) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize(("burstiness", "cv"), [(0.25, 2.0), (1.0, 1.0), (4.0, 0.5)])
def test_gamma_burstiness_sets_the_coefficient_of_variation(burstiness: float, cv: float) -> None:
    drawn = gaps(50_000, 10.0, "gamma", burstiness=burstiness, seed=3)
    assert drawn.std() / drawn.mean() == pytest.approx(cv, rel=0.06)


def test_offsets_start_at_zero_and_do_not_depend_on_how_far_they_are_consumed() -> None:
    long = offsets(3000, 50.0, seed=5)  # more than one internal block of draws
    short = offsets(1500, 50.0, seed=5)
    assert long[0] == 0.0
    assert np.array_equal(long[:1500], short)
    assert np.all(np.diff(long) >= 0)
    assert 1 / np.diff(long).mean() == pytest.approx(50.0, rel=0.1)


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
    args: dict[str, object] = {"rate": 1.0, "arrival": "gamma", "burstiness": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        next(arrival_offsets(**args))  # type: ignore[arg-type]
