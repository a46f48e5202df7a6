"""What the run happened on: plugin version, date, CPU, memory and GPUs, for report headers."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    plugin_version: str
    date: str  # UTC, ISO 8601
    hardware: str  # one line: CPU, cores, memory, GPUs
    python: str
    platform: str


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        return float(pages * os.sysconf("SC_PAGE_SIZE")) / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def gpu_names() -> list[str]:
    """`NAME (N GiB)` per visible NVIDIA GPU; empty where none can be read."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    names = []
    for line in out.strip().splitlines():
        name, _, mib = line.rpartition(",")
        try:
            names.append(f"{name.strip()} ({int(mib) / 1024:.0f} GiB)")
        except ValueError:
            names.append(line.strip())
    return names


def collect_run_info(results: Sequence[Any], plugin_version: str) -> RunInfo:
    mem = _memory_gib()
    parts = [f"{_cpu_name()}, {os.cpu_count()} cores"]
    if mem is not None:
        parts.append(f"{mem:.0f} GiB RAM")
    gpus = gpu_names()
    parts.append(("GPU: " + ", ".join(gpus)) if gpus else "no GPU")
    return RunInfo(
        plugin_version=plugin_version,
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        hardware="; ".join(parts),
        python=platform.python_version(),
        platform=platform.platform(),
    )
