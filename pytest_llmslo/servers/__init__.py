"""Inference servers behind one interface: vLLM or transformers serve we launch, or a URL."""

from __future__ import annotations

from pathlib import Path

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.servers.base import (
    BackendMissingError,
    PortInUseError,
    Server,
    ServerStartError,
    args_to_flags,
    free_port,
)
from pytest_llmslo.servers.external import ExternalServer
from pytest_llmslo.servers.hf import HFServer
from pytest_llmslo.servers.process import (
    ManagedServer,
    ProcessInfo,
    live_servers,
    process_tree,
    stop_all_servers,
)
from pytest_llmslo.servers.vllm import VLLMServer, is_vllm_cpu_build

__all__ = [
    "BackendMissingError",
    "ExternalServer",
    "HFServer",
    "ManagedServer",
    "PortInUseError",
    "ProcessInfo",
    "Server",
    "ServerStartError",
    "VLLMServer",
    "args_to_flags",
    "free_port",
    "is_vllm_cpu_build",
    "live_servers",
    "make_server",
    "process_tree",
    "stop_all_servers",
]


def make_server(config: ServerConfig, *, log_dir: Path) -> Server:
    """The server for `config.backend`, not started yet; managed servers write logs to `log_dir`."""
    if config.backend == "vllm":
        return VLLMServer(config, log_dir=log_dir)
    if config.backend == "hf":
        return HFServer(config, log_dir=log_dir)
    if config.backend == "external":
        return ExternalServer(config)
    raise ValueError(
        f"server {config.name!r}: unknown backend {config.backend!r}; "
        "choose one of 'vllm', 'hf', 'external'"
    )
