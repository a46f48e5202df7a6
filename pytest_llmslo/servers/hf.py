"""Hugging Face ``transformers serve``, launched as a child process with the model preloaded."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from typing import ClassVar

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.servers.base import args_to_flags
from pytest_llmslo.servers.process import ManagedServer
from pytest_llmslo.servers.vllm import nvidia_gpu_visible


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when an NVIDIA GPU is visible, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    return "cuda" if nvidia_gpu_visible() else "cpu"


class HFServer(ManagedServer):
    """``transformers serve MODEL``: the model given on the command line is loaded before the
    server listens and is the only one it serves, under the name it was given."""

    backend: ClassVar[str] = "hf"
    # /v1/models lists the local hub cache, not the served model (and fails when the cache does
    # not exist), so /health alone says the server is ready
    readiness_paths: ClassVar[tuple[str, ...]] = ("/health",)
    has_metrics: ClassVar[bool] = False
    install_hint: ClassVar[str] = "pip install 'pytest-llmslo[hf]'"

    def __init__(self, config: ServerConfig, *, log_dir: Path) -> None:
        if config.served_model_name and config.served_model_name != config.model:
            raise ValueError(
                f"server {config.name!r}: the hf backend serves the model under the name it was "
                f"loaded from ({config.model!r}) and cannot rename it to "
                f"{config.served_model_name!r}; remove served_model_name"
            )
        if not config.model:
            raise ValueError(
                f"server {config.name!r}: the hf backend needs `model` (a hub id or a local "
                "directory)"
            )
        super().__init__(config, log_dir=log_dir)
        self.required_modules = ("transformers", "accelerate", "fastapi", "uvicorn")

    def command(self, port: int) -> list[str]:
        cfg = self.config
        return [
            sys.executable,
            "-m",
            "transformers.cli.transformers",
            "serve",
            cfg.model,
            "--host",
            cfg.host,
            "--port",
            str(port),
            "--device",
            resolve_device(cfg.device),
            *args_to_flags(cfg.args),
            *cfg.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        # the CLI asks the hub for a newer release at start; pointless (and slow) offline
        env.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")
        return env

    def served_model(self, model_ids: list[str]) -> str:
        # requests must name the preloaded model exactly as given, or omit it
        return self.config.model

    def version(self) -> str | None:
        try:
            return importlib.metadata.version("transformers")
        except importlib.metadata.PackageNotFoundError:
            return None
