"""A run stops early when the server looks hung or failures pass the budget, and says why."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pytest_llmslo.config import LoadConfig
from pytest_llmslo.load import check_load, failure_budget, request_body, run_load, unsent_fields
from pytest_llmslo.records import Endpoint, ErrorCategory, Prompt
from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server

PROMPTS = [Prompt(index=i, text=f"question {i}") for i in range(3)]


@pytest.fixture(scope="module")
def instrument() -> Iterator[TimingServerProcess]:
    with serve_timing_server(ttft_ms=5, gap_ms=1, tokens=3) as server:
        yield server


def _run(instrument: TimingServerProcess, **config: Any) -> tuple[Any, int]:
    instrument.fetch_log(clear=True)
    result = run_load(instrument.endpoint(), PROMPTS, LoadConfig(max_tokens=None, **config))
    return result, len(instrument.fetch_log(clear=True))


def test_a_hung_server_stops_the_run_after_consecutive_timeouts(
    instrument: TimingServerProcess,
) -> None:
    result, sent = _run(
        instrument,
        parallel=2,
        requests=40,
        read_timeout=0.3,
        max_consecutive_timeouts=2,
        extra_body={"x_fault": "stall"},
    )
    assert result.interrupted is not None
    assert result.interrupted.startswith("2 requests in a row timed out")
    assert "read timeout" in result.interrupted
    assert "load.max_consecutive_timeouts: 2" in result.interrupted
    # the first wave timed out; the requests already on their way are cancelled and kept, the
    # other 36 or more were never sent
    timeouts = [r for r in result.records if r.error == ErrorCategory.TIMEOUT]
    others = [r for r in result.records if r.error != ErrorCategory.TIMEOUT]
    assert len(timeouts) >= 2 and len(result.records) <= 4
    assert all(r.error_message.startswith("cancelled: 2 requests in a row") for r in others)
    assert sent <= 4


def test_consecutive_timeouts_stop_a_hung_server_by_default() -> None:
    assert LoadConfig().max_consecutive_timeouts == 3


def test_failures_past_the_budget_stop_the_run(instrument: TimingServerProcess) -> None:
    result, sent = _run(
        instrument,
        parallel=1,
        requests=20,
        failure_budget=3,
        extra_body={"x_fault": "http_500"},
    )
    assert result.interrupted is not None
    assert "4 measured requests failed, more than load.failure_budget allows (3)" in (
        result.interrupted
    )
    # a user may have sent its next request while the failure was being read: it is cancelled
    assert 4 <= len(result.records) <= 5 and sent <= 5
    assert sum(r.error == ErrorCategory.HTTP_5XX for r in result.records) >= 4


def test_a_fractional_budget_is_a_share_of_the_requests(instrument: TimingServerProcess) -> None:
    config = LoadConfig(parallel=1, requests=20, failure_budget=0.1)
    assert failure_budget(config) == 2
    result, sent = _run(
        instrument, parallel=1, requests=20, failure_budget=0.1, extra_body={"x_fault": "http_400"}
    )
    assert result.interrupted is not None and "allows (2)" in result.interrupted
    assert 3 <= len(result.records) <= 4 and sent <= 4


def test_warmup_failures_do_not_spend_the_budget(instrument: TimingServerProcess) -> None:
    result, sent = _run(
        instrument,
        parallel=1,
        requests=2,
        warmup=3,
        failure_budget=2,
        max_consecutive_timeouts=None,
        extra_body={"x_fault": "http_500"},
    )
    assert result.interrupted is None
    assert sent == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_response_bytes": 0}, "max_response_bytes must be >= 1"),
        ({"max_consecutive_timeouts": 0}, "max_consecutive_timeouts must be >= 1"),
        ({"failure_budget": 1.5}, "must be in (0, 1]"),
        ({"failure_budget": -1}, "failure_budget must be >= 0"),
        ({"failure_budget": 0.5, "requests": None, "duration": 5.0}, "share of load.requests"),
    ],
)
def test_bad_stop_limits_say_what_to_fix(change: dict[str, Any], message: str) -> None:
    config = LoadConfig(parallel=1, requests=10)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        check_load(LoadConfig(**{**config.__dict__, **change}), PROMPTS)


# --- fields some backends reject ---------------------------------------------------------------


def test_ignore_eos_and_min_tokens_reach_every_backend_but_transformers_serve() -> None:
    config = LoadConfig(ignore_eos=True, min_tokens=3)
    for backend in ("vllm", "external"):
        body = request_body(Endpoint("http://h:1", "m", backend), PROMPTS[0], config)
        assert body["ignore_eos"] is True and body["min_tokens"] == 3, backend
        assert unsent_fields(backend, config) == ()
    hf = request_body(Endpoint("http://h:1", "m", "hf"), PROMPTS[0], config)
    assert "ignore_eos" not in hf and "min_tokens" not in hf
    assert unsent_fields("hf", config) == ("ignore_eos", "min_tokens")
    assert unsent_fields("hf", LoadConfig()) == ()


def test_an_external_server_receives_ignore_eos(instrument: TimingServerProcess) -> None:
    instrument.fetch_log(clear=True)
    config = LoadConfig(parallel=1, requests=1, ignore_eos=True, min_tokens=2, max_tokens=None)
    assert run_load(instrument.endpoint("external"), PROMPTS, config).records[0].ok
    body = instrument.fetch_log(clear=True)[0]["body"]
    assert body["ignore_eos"] is True and body["min_tokens"] == 2
