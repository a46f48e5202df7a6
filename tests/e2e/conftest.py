"""Real inference servers on the tiny model, started once per test session and always stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.servers import BackendMissingError, Server, make_server
from pytest_llmslo.servers.process import ProcessInfo, read_process, still_running

# vLLM on two shared CPU cores takes 45-90 s to be ready, longer while other jobs run
STARTUP_TIMEOUT = 600.0


def vllm_config(model_dir: Path, **overrides: object) -> ServerConfig:
    """vLLM on the tiny model; eager mode skips torch.compile, which costs a minute on CPU."""
    base: dict[str, object] = {
        "name": "vllm-tiny",
        "backend": "vllm",
        "model": str(model_dir),
        "args": {"enforce_eager": True, "max_model_len": 8192},
        "startup_timeout": STARTUP_TIMEOUT,
    }
    base.update(overrides)
    return ServerConfig(**base)  # type: ignore[arg-type]


def hf_config(model_dir: Path, **overrides: object) -> ServerConfig:
    base: dict[str, object] = {
        "name": "hf-tiny",
        "backend": "hf",
        "model": str(model_dir),
        "device": "cpu",
        "startup_timeout": STARTUP_TIMEOUT,
    }
    base.update(overrides)
    return ServerConfig(**base)  # type: ignore[arg-type]


def serve(config: ServerConfig, log_dir: Path) -> Iterator[Server]:
    """Start, yield, and stop a server; teardown fails if any process of its tree survives."""
    server = make_server(config, log_dir=log_dir)
    tree: list[ProcessInfo] = []
    try:
        try:
            server.start()
        except BackendMissingError as exc:
            pytest.skip(str(exc))
        yield server
        tree = [p for pid in server.pids() if (p := read_process(pid)) is not None]
    finally:
        server.stop()
    survivors = [p.pid for p in tree if still_running(p)]
    assert survivors == [], f"{config.name}: processes left after stop: {survivors}"


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A started vLLM server (CPU build here) on the tiny model; `.endpoint` is set."""
    yield from serve(vllm_config(tiny_model_dir), tmp_path_factory.mktemp("vllm-logs"))


@pytest.fixture(scope="session")
def hf_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A started `transformers serve` on the tiny model, on the CPU; `.endpoint` is set."""
    yield from serve(hf_config(tiny_model_dir), tmp_path_factory.mktemp("hf-logs"))


@pytest.fixture(scope="session")
def tiny_vllm_config() -> Callable[..., ServerConfig]:
    """Builds vLLM configs for the tiny model: ``tiny_vllm_config(model_dir, name=..., ...)``."""
    return vllm_config


@pytest.fixture(scope="session")
def tiny_hf_config() -> Callable[..., ServerConfig]:
    """Builds `transformers serve` configs for the tiny model, like ``tiny_vllm_config``."""
    return hf_config
