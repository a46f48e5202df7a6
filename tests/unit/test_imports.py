"""The plugin loads without the serving stacks: `pip install pytest-llmslo` alone must work."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "vllm", "tokenizers", "safetensors", "pynvml")


def test_plugin_and_scripting_api_import_without_heavy_packages() -> None:
    code = (
        "import sys\n"
        "import pytest_llmslo.plugin\n"
        "from pytest_llmslo import run_workload, assert_slo, load_spec, Endpoint\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
