"""Open-loop arrival schedules: seeded, reproducible send times for a target request rate."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pytest_llmslo.config import Arrival

ARRIVALS: tuple[Arrival, ...] = ("poisson", "constant", "gamma")

# Drawing in fixed-size blocks keeps a schedule identical however far it is consumed.
_BLOCK = 1024


def arrival_offsets(
    rate: float,
    arrival: Arrival = "poisson",
    *,
    burstiness: float = 1.0,
    seed: int = 0,
) -> Iterator[float]:
    """Endless send times in seconds from the start of the schedule; the first is 0.0.

    The gaps between sends have mean ``1 / rate``: ``poisson`` draws exponential gaps,
    ``constant`` spaces sends evenly and ``gamma`` draws gamma gaps of shape ``burstiness``
    (1.0 is Poisson; below 1 requests come in bursts, above 1 they are more regular). The same
    seed always gives the same schedule.
    """
    _check(rate, arrival, burstiness)
    mean = 1.0 / rate
    rng = np.random.default_rng(seed)
    at = 0.0
    while True:
        gaps = (
            np.full(_BLOCK, mean)
            if arrival == "constant"
            else _draw(rng, arrival, mean, burstiness)
        )
        for gap in gaps.tolist():
            yield at
            at += gap


def _draw(rng: np.random.Generator, arrival: Arrival, mean: float, burstiness: float) -> np.ndarray:
    if arrival == "poisson":
        return rng.exponential(mean, _BLOCK)
    # gamma with shape k and scale mean/k keeps the mean and sets the coefficient of variation
    # to 1/sqrt(k), which is what "burstiness" means in vLLM's benchmark as well
    return rng.gamma(burstiness, mean / burstiness, _BLOCK)


def _check(rate: float, arrival: str, burstiness: float) -> None:
    if not rate > 0 or not np.isfinite(rate):
        raise ValueError(f"load.rate must be a positive number of requests per second, got {rate}")
    if arrival not in ARRIVALS:
        raise ValueError(
            f"load.arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r}; "
            "poisson is the usual choice"
        )
    if not burstiness > 0 or not np.isfinite(burstiness):
        raise ValueError(
            f"load.burstiness must be > 0 (gamma shape; 1.0 is Poisson), got {burstiness}"
        )
