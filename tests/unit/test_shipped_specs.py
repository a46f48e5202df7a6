"""Every spec under slo_specs/ reads without error, with the environment's defaults: a spec the
project ships (the GPU ones included, which only a GPU runner executes) never breaks unseen."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmslo.spec import load_spec

SPECS = sorted((Path(__file__).resolve().parents[2] / "slo_specs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_a_shipped_spec_reads(path: Path) -> None:
    spec = load_spec(path)
    assert spec.scenarios and spec.servers
    for scenario in spec.scenarios.values():
        assert scenario.objectives, f"{path.name}: scenario {scenario.name} gates nothing"


def test_the_two_gpu_spec_spreads_one_server_and_runs_two_side_by_side() -> None:
    spec = load_spec(Path(SPECS[0]).parent / "qwen_2gpu.yaml")
    assert spec.servers["vllm-tp2"].args["tensor_parallel_size"] == 2
    assert spec.servers["vllm-tp2"].gpu_ids == (0, 1)
    pair = spec.scenarios["pair-openqa-c10"]
    assert pair.side_by_side and pair.servers == ("vllm-gpu0", "vllm-gpu1")
    assert {spec.servers[s].gpu_ids for s in pair.servers} == {(0,), (1,)}
