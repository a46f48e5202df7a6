"""Cheap to have installed, typed for users, and no import cycles.

The plugin loads without the serving stacks (`pip install pytest-llmslo` alone must work), and
without numpy, httpx or yaml until a spec is collected or an llmslo_* fixture is used: a plain
pytest run pays nothing for having it installed. The scripting API is typed for a user's mypy.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pytest_llmslo

HEAVY = ("torch", "transformers", "vllm", "tokenizers", "safetensors", "pynvml")
# what a run without specs or llmslo_* fixtures must not import (Hypothesis' plugin is the model)
# (and matplotlib, which only writing a report with plots loads)
ENGINE = ("numpy", "httpx", "httpcore", "yaml", "matplotlib")
PACKAGE = Path(pytest_llmslo.__file__).parent
ROOT = PACKAGE.parent


def python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # the plugin named with -p, other plugins off: what is measured is this plugin's imports
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def loaded_after(statement: str, cwd: Path | None = None) -> list[str]:
    code = (
        "import sys, contextlib, io\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    {statement}\n"
        f"print(','.join(m for m in {ENGINE!r} if m in sys.modules))\n"
    )
    done = python(code, cwd)
    assert done.returncode == 0, done.stderr
    return [m for m in done.stdout.strip().split(",") if m]


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


def test_importing_the_plugin_loads_no_numpy_httpx_or_yaml() -> None:
    assert loaded_after("import pytest_llmslo.plugin") == []


def test_pytest_help_with_the_plugin_loads_no_numpy_httpx_or_yaml(tmp_path: Path) -> None:
    statement = "import pytest; pytest.main(['-p', 'pytest_llmslo.plugin', '--help'])"
    assert loaded_after(statement, cwd=tmp_path) == []


def test_a_plain_test_run_with_the_plugin_loads_no_numpy_httpx_or_yaml(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    (tmp_path / "config.yaml").write_text("a: 1\n")  # a YAML file that is not a spec
    statement = (
        "import pytest; assert pytest.main(['-p', 'pytest_llmslo.plugin', "
        "'-p', 'no:cacheprovider', '-q']) == 0"
    )
    assert loaded_after(statement, cwd=tmp_path) == []
    assert not (tmp_path / "llmslo-results").exists()


def test_collecting_a_spec_is_what_loads_the_engine(tmp_path: Path) -> None:
    """The other side of the tests above: the measurement itself must not be lazy-broken."""
    (tmp_path / "prompts.txt").write_text("hello\n")
    (tmp_path / "s.yaml").write_text(
        "servers: {svc: {backend: external, base_url: 'http://127.0.0.1:9'}}\n"
        "datasets: {lines: {format: line_by_line, path: prompts.txt}}\n"
        "scenarios: {chat: {dataset: lines, load: {parallel: 1, requests: 1}}}\n"
    )
    statement = (
        "import pytest; pytest.main(['-p', 'pytest_llmslo.plugin', '-p', 'no:cacheprovider', "
        "'--collect-only', '-q', 's.yaml'])"
    )
    assert set(loaded_after(statement, cwd=tmp_path)) >= {"numpy", "yaml"}


def imported_modules(path: Path) -> set[str]:
    """Every pytest_llmslo module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m.startswith("pytest_llmslo")}


def test_no_module_imports_the_plugin_back() -> None:
    """The plugin configures and the nodes and sessions run: nothing imports plugin.py (its stash
    keys and messages live with the code that uses them), so there is no cycle through it."""
    importers = [
        str(path.relative_to(ROOT))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "plugin.py" and "pytest_llmslo.plugin" in imported_modules(path)
    ]
    assert importers == []


def type_checking_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    return {
        alias.asname or alias.name
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_every_export_is_listed_lazy_and_typed() -> None:
    exports = set(pytest_llmslo._EXPORTS)
    assert set(pytest_llmslo.__all__) == exports | {"__version__"}
    assert type_checking_names(PACKAGE / "__init__.py") == exports
    for name in sorted(exports):
        assert getattr(pytest_llmslo, name) is not None


def test_a_users_strict_mypy_sees_the_types_of_the_public_api(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    user = tmp_path / "user_code.py"
    names = sorted(set(pytest_llmslo.__all__) - {"__version__"})
    user.write_text(
        textwrap.dedent(
            f"""\
            from pytest_llmslo import {", ".join(names)}

            run = run_workload(Endpoint("http://h:1", "m", "vllm"), ["hi"], {{"requests": 2}})
            reveal_type(run.summary.succeeded)
            run_workload("http://h:1", ["hi"])
            """
        )
        + "".join(f"reveal_type({name})\n" for name in names)
    )
    # the project's configuration (strict) and cache: mypy resolves the package from here
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(user)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    lines = done.stdout.splitlines()
    revealed = [line for line in lines if "Revealed type is" in line]
    assert len(revealed) == len(names) + 1, done.stdout + done.stderr
    assert 'Revealed type is "int"' in revealed[0]
    assert not [line for line in revealed if 'Revealed type is "Any"' in line]
    assert any(
        ':5: error: Argument 1 to "run_workload" has incompatible type "str"; expected "Endpoint"'
        in line
        for line in lines
    ), done.stdout
