"""What a measurement depends on, so that two runs are compared only where that means something.

A baseline from an H100 says nothing about an H200, nor one of a 0.5B model about a 7B one: a
fingerprint names the hardware, the serving stack, the model and the settings of one scenario's
run, and `differences` says what changed between two of them. Hardware and model differences
refuse a comparison unless the user allows it; the others are reported beside it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

HARDWARE = ("gpu_model", "gpu_count", "driver")
MODEL = ("model", "model_config_hash", "weights_index_hash")
# weight files are gigabytes: their names and sizes stand for them (with the index, if any)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True)
class Fingerprint:
    plugin_version: str
    gpu_model: str | None  # the GPUs' names, "A, B" when they differ; None: no GPU visible
    gpu_count: int
    driver: str | None  # NVIDIA driver version
    backend: str
    backend_version: str | None
    model: str  # the model as configured: a local path or a hub id
    model_config_hash: str | None  # sha256 of config.json, when the model is a local directory
    weights_index_hash: str | None  # sha256 of the weight files' names and sizes (and index)
    server_args: tuple[str, ...]  # the server's settings as flags, credentials redacted
    spec_hash: str  # sha256 of the scenario's definition (servers, dataset, load, objectives)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["server_args"] = list(self.server_args)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fingerprint:
        """Read one back from results.json; a field it lacks (an older file) is None."""
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {name: data.get(name) for name in names}
        values["server_args"] = tuple(values["server_args"] or ())
        values["gpu_count"] = int(values["gpu_count"] or 0)
        values["plugin_version"] = str(values["plugin_version"] or "")
        values["backend"] = str(values["backend"] or "")
        values["model"] = str(values["model"] or "")
        values["spec_hash"] = str(values["spec_hash"] or "")
        return cls(**values)


@dataclass(frozen=True)
class Difference:
    field: str
    baseline: Any
    current: Any
    kind: str  # "hardware" | "model" | "other"

    def describe(self) -> str:
        return f"{self.field}: {self.baseline!r} (baseline) vs {self.current!r} (this run)"


def differences(baseline: Fingerprint, current: Fingerprint) -> list[Difference]:
    out = []
    for f in fields(Fingerprint):
        before, now = getattr(baseline, f.name), getattr(current, f.name)
        if before != now:
            kind = "hardware" if f.name in HARDWARE else "model" if f.name in MODEL else "other"
            out.append(Difference(f.name, before, now, kind))
    return out


def refusal(diffs: Sequence[Difference], *, allow: bool) -> str | None:
    """Why a comparison across these differences is refused, or None when it may go ahead."""
    blocking = [d for d in diffs if d.kind in ("hardware", "model")]
    if not blocking or allow:
        return None
    what = "; ".join(d.describe() for d in blocking)
    return (
        f"the baseline ran on different {' and '.join(sorted({d.kind for d in blocking}))}: "
        f"{what}. A comparison would measure the change of setup, not of the service; rerun "
        "the baseline on this setup, or pass --slo-baseline-allow-mismatch to compare anyway"
    )


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_hashes(model: str) -> tuple[str | None, str | None]:
    """(config.json hash, weights hash) of a local model directory; (None, None) otherwise."""
    path = Path(model)
    if not path.is_dir():
        return None, None
    config = path / "config.json"
    config_hash = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None
    listing = []
    for item in sorted(path.iterdir()):
        index = item.name.endswith(".index.json")
        if item.is_file() and (item.suffix in _WEIGHT_SUFFIXES or index):
            entry: dict[str, Any] = {"name": item.name, "size": item.stat().st_size}
            if index:
                entry["sha256"] = hashlib.sha256(item.read_bytes()).hexdigest()
            listing.append(entry)
    weights_hash = sha256_text(json.dumps(listing, sort_keys=True)) if listing else None
    return config_hash, weights_hash


def gpu_inventory() -> tuple[list[str], str | None]:
    """(name of each visible NVIDIA GPU, driver version) from nvidia-smi; ([], None) without."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return [], None
    names, drivers = [], set()
    for line in out.strip().splitlines():
        name, _, driver = line.rpartition(",")
        names.append(name.strip())
        drivers.add(driver.strip())
    return names, (", ".join(sorted(drivers)) or None)


def gpu_model_name(names: Sequence[str]) -> str | None:
    return ", ".join(sorted(set(names))) or None
