"""Client health: the probe sees a stalled event loop, and a client that fell behind turns the
server's objectives inconclusive instead of failing them."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from pytest_llmslo.client_health import (
    ClientHealth,
    LagProbe,
    effective_concurrency,
    fell_behind,
    measure,
)
from pytest_llmslo.config import LoadConfig, ServerConfig, VerdictsConfig
from pytest_llmslo.handtests import parse_objectives
from pytest_llmslo.metrics import summarize
from pytest_llmslo.records import RequestRecord
from pytest_llmslo.result import ScenarioResult
from pytest_llmslo.spec import Scenario


def test_the_probe_measures_a_stall_of_the_loop() -> None:
    async def stalled() -> ClientHealth:
        probe = LagProbe(interval=0.01)
        probe.start()
        await asyncio.sleep(0.1)
        time.sleep(0.3)  # the loop is blocked: no timer can fire
        await asyncio.sleep(0.05)
        return await probe.stop()

    health = asyncio.run(stalled())
    assert health.loop_lag(100) >= 0.25
    assert health.wall_seconds >= 0.45
    # the blocking sleep used no CPU: the process's CPU share stays far below a core
    assert 0 <= health.cpu_share < 0.5


def test_pooled_rounds_keep_every_probe_and_sum_the_times() -> None:
    a, b = ClientHealth((0.001, 0.002), 0.5, 10.0), ClientHealth((0.2,), 1.5, 10.0)
    pooled = ClientHealth.pooled([a, None, b])
    assert pooled == ClientHealth((0.001, 0.002, 0.2), 2.0, 20.0)
    assert pooled.cpu_share == pytest.approx(0.1) and pooled.loop_lag(100) == 0.2
    assert ClientHealth.pooled([None]) is None


def _records(n: int, duration: float) -> list[RequestRecord]:
    return [
        RequestRecord(
            i, i, False, float(i), i + duration, first_content_at=i + 0.1, output_tokens=4
        )
        for i in range(n)
    ]


def test_effective_concurrency_is_littles_law() -> None:
    # 10 requests of 2 s each over an 11 s window: 20 busy seconds, 1.8 in flight on average
    summary = summarize(_records(10, 2.0), window=(0.0, 11.0))
    assert effective_concurrency(summary) == pytest.approx(20 / 11)
    value, n, _ = measure("client_concurrency_ratio", None, summary, LoadConfig(parallel=2))
    assert value == pytest.approx(10 / 11) and n == 10
    value, _, reason = measure("client_concurrency_ratio", None, summary, LoadConfig(rate=2.0))
    assert math.isnan(value) and "open loop" in reason


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        # stalls on fewer than one probe in ten are the tail of a busy machine, not a trend;
        # nor is a loop late by a tenth of a second throughout, as on a 2-core box beside vLLM
        (ClientHealth((0.001,) * 92 + (0.5,) * 8, 1.0, 10.0), None),
        (ClientHealth((0.12,) * 100, 1.0, 10.0), None),
        (ClientHealth((0.001,) * 85 + (0.3,) * 15, 1.0, 10.0), "p90 lag 300 ms"),
        (ClientHealth((0.001,) * 100, 9.8, 10.0), "98% of a core"),
    ],
)
def test_the_guard_names_how_the_client_fell_behind(
    health: ClientHealth, expected: str | None
) -> None:
    reason = fell_behind(health, None, None)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


def test_a_closed_loop_that_kept_too_few_requests_in_flight_fell_behind() -> None:
    # 10 requests of 2 s over 11 s: 1.8 in flight on average, of 4 asked
    summary = summarize(_records(10, 2.0), window=(0.0, 11.0))
    healthy = ClientHealth((0.001,) * 100, 0.1, 11.0)
    reason = fell_behind(healthy, summary, LoadConfig(parallel=4))
    assert reason is not None and "it kept 45% of the 4 concurrent requests" in reason
    assert fell_behind(healthy, summary, LoadConfig(parallel=2)) is None  # 91% of 2
    assert fell_behind(healthy, summary, LoadConfig(rate=1.0)) is None  # an open loop


def _result(health: ClientHealth, policy: str = "fail", guard: bool = True) -> ScenarioResult:
    records = _records(20, 0.95)  # back to back: 95% of the one request asked in flight
    scenario = Scenario(
        "s",
        ("svc",),
        "lines",
        LoadConfig(parallel=1),
        (),
        (),
        (50.0,),
        0,
        verdicts=VerdictsConfig(inconclusive=policy, client_guard=guard),  # type: ignore[arg-type]
    )
    return ScenarioResult(
        spec_path="spec.yaml",
        scenario=scenario,
        server=ServerConfig(name="svc", backend="external", base_url="http://h:1"),
        summary=summarize(records, window=(0.0, 20.0), percentiles=(50,)),
        records=tuple(records),
        load=LoadConfig(parallel=1),
        client=health,
    ).judged(
        parse_objectives(
            {"ttft_max": "<= 1 s", "e2e_max": "<= 1 ms", "client_cpu": "<= 50%", "failures": "<= 0"}
        )
    )


def test_a_client_that_fell_behind_makes_server_objectives_inconclusive_not_failed() -> None:
    busy = ClientHealth((0.001,) * 100, 9.9, 10.0)
    result = _result(busy)
    by_metric = {v.objective.metric: v for v in result.verdicts}
    for metric in ("ttft_max", "e2e_max"):  # a pass and a failure alike
        verdict = by_metric[metric]
        assert verdict.outcome == "inconclusive" and not verdict.passed
        assert verdict.guard is not None and "99% of a core" in verdict.guard
        assert "INCONCLUSIVE: the load client fell behind" in verdict.describe()
    # the client's own objective is judged on its value: that is what it is for; and a count of
    # failed requests is no timing: a request that failed, failed
    assert by_metric["client_cpu"].outcome == "fail" and by_metric["client_cpu"].guard is None
    assert by_metric["failures"].outcome == "pass" and by_metric["failures"].guard is None
    # under the pass policy the guarded objectives pass (with the warning the plugin adds)
    assert {v.objective.metric for v in _result(busy, "pass").verdicts if v.passed} == {
        "ttft_max",
        "e2e_max",
        "failures",
    }


def test_a_healthy_client_or_a_guard_switched_off_leaves_the_verdicts_alone() -> None:
    healthy = _result(ClientHealth((0.001,) * 100, 0.5, 10.0))
    assert [v.outcome for v in healthy.verdicts] == ["pass", "fail", "pass", "pass"]
    off = _result(ClientHealth((0.001,) * 100, 9.9, 10.0), guard=False)
    assert [v.outcome for v in off.verdicts] == ["pass", "fail", "fail", "pass"]


def test_a_phase_too_short_to_show_a_pace_is_not_judged() -> None:
    # six requests that failed at once: 80 ms of loop, most of it busy; nothing to say of pace
    assert fell_behind(ClientHealth((0.001,) * 4, 0.07, 0.08), None, None) is None
