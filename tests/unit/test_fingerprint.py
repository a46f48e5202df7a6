"""Run fingerprints: what differs between a baseline and this run, and when that refuses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pytest_llmslo.fingerprint import Fingerprint, differences, model_hashes, refusal


def fingerprint(**kw: object) -> Fingerprint:
    base = Fingerprint(
        plugin_version="0.2.0",
        gpu_model="NVIDIA H200",
        gpu_count=1,
        driver="580.1",
        backend="vllm",
        backend_version="0.24.0",
        model="/models/qwen",
        model_config_hash="c" * 64,
        weights_index_hash="w" * 64,
        server_args=("--max-model-len", "4096"),
        spec_hash="s" * 64,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_identical_runs_differ_in_nothing() -> None:
    assert differences(fingerprint(), fingerprint()) == []
    assert refusal([], allow=False) is None


def test_other_hardware_refuses_unless_allowed() -> None:
    diffs = differences(fingerprint(), fingerprint(gpu_model="NVIDIA H100 80GB HBM3"))
    assert [(d.field, d.kind) for d in diffs] == [("gpu_model", "hardware")]
    reason = refusal(diffs, allow=False)
    assert reason is not None
    assert "different hardware" in reason and "NVIDIA H100 80GB HBM3" in reason
    assert "--slo-baseline-allow-mismatch" in reason
    assert refusal(diffs, allow=True) is None


def test_another_model_refuses_and_a_new_backend_version_is_only_reported() -> None:
    diffs = differences(
        fingerprint(), fingerprint(weights_index_hash="x" * 64, backend_version="0.25.0")
    )
    kinds = {d.field: d.kind for d in diffs}
    assert kinds == {"backend_version": "other", "weights_index_hash": "model"}
    assert "different model" in (refusal(diffs, allow=False) or "")
    only_version = differences(fingerprint(), fingerprint(backend_version="0.25.0"))
    assert refusal(only_version, allow=False) is None


def test_a_fingerprint_survives_json_and_an_older_file_reads_as_unknown() -> None:
    fp = fingerprint()
    again = Fingerprint.from_dict(json.loads(json.dumps(fp.as_dict())))
    assert again == fp
    old = Fingerprint.from_dict({"backend": "vllm", "model": "/m"})
    assert old.gpu_model is None and old.server_args == () and old.gpu_count == 0


def test_model_hashes_follow_config_and_weight_files_not_other_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 128}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    config, weights = model_hashes(str(tmp_path))
    assert config is not None and weights is not None
    (tmp_path / "README.md").write_text("notes")
    assert model_hashes(str(tmp_path)) == (config, weights)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)
    assert model_hashes(str(tmp_path)) == (config, model_hashes(str(tmp_path))[1])
    assert model_hashes(str(tmp_path))[1] != weights
    (tmp_path / "config.json").write_text('{"hidden_size": 256}')
    assert model_hashes(str(tmp_path))[0] != config
    assert model_hashes("Qwen/Qwen2-0.5B") == (None, None)  # a hub id: nothing local to hash
