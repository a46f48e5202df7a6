"""A spec whose backend package is absent: a clear failure, or a skip where the spec allows it."""

from __future__ import annotations

import pytest

from pytest_llmslo.servers import process

pytest_plugins = ["pytester"]

SPEC = """
servers:
  vllm: {backend: vllm, model: builtin:tiny, skip_if_missing: %s}
datasets:
  rand: {format: random, input_tokens: 8, count: 4}
scenarios:
  s:
    dataset: rand
    load: {parallel: 1, requests: 2}
    slo: {failure_rate: "<= 0%%", ttft_p95: "<= 1 s"}
"""


@pytest.fixture(autouse=True)
def no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    # stands in for an environment without the vllm package; nothing else is replaced
    monkeypatch.setattr(process, "missing_modules", lambda modules: list(modules))


def test_missing_backend_fails_every_objective_with_the_install_hint(
    pytester: pytest.Pytester,
) -> None:
    spec = pytester.makefile(".yaml", spec=SPEC % "false")
    result = pytester.runpytest("--slo", str(spec))
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*server 'vllm' did not start*", "*pip install*"])


def test_missing_backend_is_skipped_when_allowed(pytester: pytest.Pytester) -> None:
    spec = pytester.makefile(".yaml", spec=SPEC % "true")
    result = pytester.runpytest("--slo", str(spec), "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["SKIPPED*server 'vllm'*"])
    assert "SKIPPED" in (pytester.path / "llmslo-results" / "report.md").read_text()
