"""pytest-llmslo: start an LLM inference server, drive load, gate on service-level objectives."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# the scripting API, imported on first use so that `import pytest_llmslo` stays cheap
_EXPORTS = {
    "Endpoint": "pytest_llmslo.records",
    "Prompt": "pytest_llmslo.records",
    "RequestRecord": "pytest_llmslo.records",
    "DatasetConfig": "pytest_llmslo.config",
    "LoadConfig": "pytest_llmslo.config",
    "ServerConfig": "pytest_llmslo.config",
    "make_server": "pytest_llmslo.servers",
    "load_prompts": "pytest_llmslo.datasets",
    "run_load": "pytest_llmslo.load",
    "summarize": "pytest_llmslo.metrics",
    "load_spec": "pytest_llmslo.spec",
    "run_workload": "pytest_llmslo.handtests",
    "assert_slo": "pytest_llmslo.handtests",
    "check_slo": "pytest_llmslo.handtests",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pytest_llmslo' has no attribute {name!r}")
