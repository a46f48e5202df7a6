"""pytest-llmslo: start an LLM inference server, drive load, gate on service-level objectives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    "ScenarioResult": "pytest_llmslo.result",
    "LoadRun": "pytest_llmslo.handtests",
    "ServerFactory": "pytest_llmslo.handtests",
    "run_workload": "pytest_llmslo.handtests",
    "assert_slo": "pytest_llmslo.handtests",
    "check_slo": "pytest_llmslo.handtests",
}
# a literal list, so that type checkers and linters see what is exported
__all__ = [
    "DatasetConfig",
    "Endpoint",
    "LoadConfig",
    "LoadRun",
    "Prompt",
    "RequestRecord",
    "ScenarioResult",
    "ServerConfig",
    "ServerFactory",
    "__version__",
    "assert_slo",
    "check_slo",
    "load_prompts",
    "load_spec",
    "make_server",
    "run_load",
    "run_workload",
    "summarize",
]

# The same names for type checkers: through __getattr__ alone, a user's mypy would see `Any`.
# tests/unit/test_imports.py holds this block, _EXPORTS and __all__ in step.
if TYPE_CHECKING:
    from pytest_llmslo.config import DatasetConfig, LoadConfig, ServerConfig
    from pytest_llmslo.datasets import load_prompts
    from pytest_llmslo.handtests import (
        LoadRun,
        ServerFactory,
        assert_slo,
        check_slo,
        run_workload,
    )
    from pytest_llmslo.load import run_load
    from pytest_llmslo.metrics import summarize
    from pytest_llmslo.records import Endpoint, Prompt, RequestRecord
    from pytest_llmslo.result import ScenarioResult
    from pytest_llmslo.servers import make_server
    from pytest_llmslo.spec import load_spec


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pytest_llmslo' has no attribute {name!r}")
