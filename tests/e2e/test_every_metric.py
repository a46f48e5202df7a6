"""Every metric of the registry, as an objective of a real spec run on transformers serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmslo.catalogue import METRICS, MetricKind, Producer
from pytest_llmslo.units import UnitKind

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.e2e

# a floor every measured value meets: the run checks where values come from, not how good they are
FLOOR = {
    UnitKind.TIME: ">= 0 s",
    UnitKind.TOKEN_RATE: ">= 0 tok/s",
    UnitKind.REQUEST_RATE: ">= 0 req/s",
    UnitKind.RATIO: ">= 0%",
    UnitKind.MEMORY: ">= 0 B",
    UnitKind.COUNT: ">= 0",
    UnitKind.FACTOR: ">= 0x",
}
# the answer of a capacity search needs a search: tests/plugin/test_capacity.py runs one
GATED = [m for m in METRICS if m.producer is not Producer.CAPACITY]


def objective_name(metric_name: str, kind: MetricKind) -> str:
    return f"{metric_name}_p95" if kind is MetricKind.DISTRIBUTION else metric_name


def test_every_declared_metric_is_measured_or_says_why_on_a_real_server(
    pytester: pytest.Pytester, tiny_model_dir: Path
) -> None:
    pytester.makefile(".txt", prompts="hello there\n你好\nwhat is a token?\n")
    objectives = {objective_name(m.name, m.kind): FLOOR[m.unit] for m in GATED}
    slo = ", ".join(f'{name}: "{text}"' for name, text in objectives.items())
    pytester.makefile(
        ".yaml",
        every=f"""
servers:
  hf: {{backend: hf, model: "{tiny_model_dir}"}}
datasets:
  lines: {{format: line_by_line, path: prompts.txt}}
scenarios:
  all:
    dataset: lines
    load: {{parallel: 2, requests: 6, max_tokens: 8}}
    request_slo: {{ttft: "<= 10 min"}}
    slo: {{{slo}}}
""",
    )
    report = pytester.path / "out" / "report.md"
    result = pytester.runpytest_subprocess(
        "--slo", "every.yaml", "--slo-report", str(report), timeout=600
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == len(GATED), outcomes

    data = json.loads(report.with_name("results.json").read_text(encoding="utf-8"))
    (scenario,) = data["scenarios"]
    verdicts = {v["metric"]: v for v in scenario["verdicts"]}
    assert set(verdicts) == set(objectives)
    for verdict in verdicts.values():
        # a value, or the reason there is none: never the answer for a metric nobody produces
        if verdict["measured"] is None:
            assert verdict["reason"], verdict
            assert "is not measured by this run" not in verdict["reason"], verdict
    measured = {name for name, v in verdicts.items() if v["measured"] is not None}
    # one metric of each producer a transformers serve on a CPU can give
    assert {"ttft_p95", "output_throughput", "startup_time", "host_memory_peak"} <= measured
    served = {m.name for m in METRICS if m.producer is Producer.SERVER_METRICS}
    assert not served & measured  # transformers serve has no /metrics: "not served", not zeros
