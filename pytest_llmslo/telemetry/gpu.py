"""GPU memory held by a process tree: NVML first, ``nvidia-smi`` as a fallback.

Both report memory per process id as the driver sees it. A server inside a container that does
not share the host's PID namespace sees different ids than the driver reports, so its processes
match nothing and the report says it held no GPU memory; this is a known limitation.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as the driver lists it."""

    index: int
    name: str
    total_bytes: int
    uuid: str = ""


class GpuProbe(Protocol):
    """Reads the memory a set of processes holds on each GPU."""

    source: str  # "nvml" | "nvidia-smi"
    devices: tuple[GpuDevice, ...]

    def read(self, pids: Collection[int]) -> dict[int, int]:
        """Bytes held by ``pids`` on each device, keyed by device index (every device listed)."""
        ...

    def close(self) -> None: ...


class NvmlProbe:
    """GPU memory through NVML (the ``pynvml`` module of ``nvidia-ml-py``, or a stand-in)."""

    source = "nvml"

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        nvml.nvmlInit()
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            self.devices = tuple(
                GpuDevice(
                    index=i,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    total_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle))
                    if hasattr(nvml, "nvmlDeviceGetUUID")
                    else "",
                )
                for i, handle in enumerate(handles)
            )
        except Exception:
            nvml.nvmlShutdown()
            raise
        self._handles = handles

    def read(self, pids: Collection[int]) -> dict[int, int]:
        wanted = set(pids)
        used: dict[int, int] = {}
        for device, handle in zip(self.devices, self._handles, strict=True):
            held: dict[int, int] = {}
            # A process that both computes and renders appears in both lists: count it once.
            for getter in (
                "nvmlDeviceGetComputeRunningProcesses",
                "nvmlDeviceGetGraphicsRunningProcesses",
            ):
                if not hasattr(self._nvml, getter):
                    continue
                for proc in getattr(self._nvml, getter)(handle):
                    memory = getattr(proc, "usedGpuMemory", None)
                    # None is NVML_VALUE_NOT_AVAILABLE (e.g. no permission to see other processes)
                    if proc.pid in wanted and memory is not None:
                        held[proc.pid] = max(held.get(proc.pid, 0), int(memory))
            used[device.index] = sum(held.values())
        return used

    def close(self) -> None:
        self._nvml.nvmlShutdown()


class NvidiaSmiProbe:
    """GPU memory through ``nvidia-smi`` queries; a process spawn per read, so read it rarely."""

    source = "nvidia-smi"

    def __init__(self, executable: str, timeout_s: float = 10.0) -> None:
        self._executable = executable
        self._timeout_s = timeout_s
        self.devices = tuple(
            parse_smi_gpus(self._query("--query-gpu=index,uuid,name,memory.total"))
        )
        self._index_by_uuid = {d.uuid: d.index for d in self.devices}

    def read(self, pids: Collection[int]) -> dict[int, int]:
        wanted = set(pids)
        used = {d.index: 0 for d in self.devices}
        for pid, uuid, memory in parse_smi_apps(
            self._query("--query-compute-apps=pid,used_memory,gpu_uuid")
        ):
            if pid in wanted and uuid in self._index_by_uuid:
                used[self._index_by_uuid[uuid]] += memory
        return used

    def close(self) -> None:
        pass

    def _query(self, query: str) -> str:
        done = subprocess.run(
            [self._executable, query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=self._timeout_s,
            check=False,
        )
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            raise RuntimeError(
                f"{self._executable} exited with {done.returncode}: "
                f"{message[-1] if message else 'no output'}"
            )
        return done.stdout


def parse_smi_gpus(text: str) -> list[GpuDevice]:
    """Parse ``--query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits``."""
    devices = []
    for line in text.splitlines():
        if not line.strip():
            continue
        index, uuid, rest = (part.strip() for part in line.split(",", 2))
        # GPU names may hold commas; memory.total is the last field.
        name, total = (part.strip() for part in rest.rsplit(",", 1))
        devices.append(
            GpuDevice(index=int(index), name=name, total_bytes=int(float(total) * MIB), uuid=uuid)
        )
    return devices


def parse_smi_apps(text: str) -> list[tuple[int, str, int]]:
    """Parse ``--query-compute-apps=pid,used_memory,gpu_uuid`` into (pid, GPU uuid, bytes).

    Rows whose memory is not reported (``[N/A]``, ``[Insufficient Permissions]``) are dropped.
    """
    apps = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        try:
            memory = int(float(parts[1]) * MIB)
        except ValueError:
            continue
        apps.append((int(parts[0]), parts[2], memory))
    return apps


def open_gpu_probe(
    nvml: Any | None = None, nvidia_smi: str | None = "nvidia-smi"
) -> tuple[GpuProbe | None, str | None]:
    """The best available probe, or None with the reason no GPU can be read.

    ``nvml`` is a module with NVML's functions (default: import ``pynvml``); ``nvidia_smi`` is the
    executable to fall back on (None: do not try it).
    """
    reasons = []
    if nvml is None:
        try:
            import pynvml

            nvml = pynvml
        except ImportError:
            reasons.append("NVML: pynvml not installed (pip install 'pytest-llmslo[gpu]')")
    if nvml is not None:
        try:
            return NvmlProbe(nvml), None
        except Exception as exc:
            reasons.append(f"NVML: {_describe(exc)}")
    if nvidia_smi is None:
        reasons.append("nvidia-smi: not tried")
    elif (executable := shutil.which(nvidia_smi)) is None:
        reasons.append(f"{nvidia_smi}: not found")
    else:
        try:
            smi = NvidiaSmiProbe(executable)
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"nvidia-smi: {_describe(exc)}")
        else:
            if smi.devices:
                return smi, None
            reasons.append("nvidia-smi: lists no GPU")
    return None, f"no NVIDIA GPU visible ({'; '.join(reasons)})"


def _text(value: object) -> str:
    # Older nvidia-ml-py releases return bytes for names and UUIDs.
    return value.decode() if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
