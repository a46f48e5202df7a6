"""Spec keys for external servers and for stopping a run: tokenizer, metrics, model, limits."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_llmslo.spec import Spec, SpecError, load_spec

SPEC = """\
servers:
  svc: {backend: external, base_url: "http://127.0.0.1:8000"%(server)s}
datasets:
  lines: {format: line_by_line, path: prompts.txt}
scenarios:
  s:
    dataset: lines
    load: {parallel: 1, requests: 10%(load)s}
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("prompts.txt").write_text("hello\n", encoding="utf-8")


def load(server: str = "", load: str = "", text: str | None = None) -> Spec:
    path = Path("spec.yaml")
    body = text if text is not None else SPEC % {"server": server, "load": load}
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return load_spec(path, env={})


def error(server: str = "", load_: str = "", text: str | None = None) -> str:
    with pytest.raises(SpecError) as excinfo:
        load(server, load_, text)
    return str(excinfo.value)


def test_an_external_server_may_leave_the_model_empty_to_ask_the_server() -> None:
    assert load(', model: ""').servers["svc"].model == ""


def test_a_started_server_still_needs_a_model() -> None:
    text = SPEC.replace(
        'svc: {backend: external, base_url: "http://127.0.0.1:8000"%(server)s}',
        'svc: {backend: vllm, model: ""}',
    ) % {"load": ""}
    assert "spec.yaml:2: servers.svc.model: must not be empty" in error(text=text)


def test_a_tokenizer_can_be_named_for_any_server(tmp_path: Path) -> None:
    assert load(", tokenizer: Qwen/Qwen2-0.5B-Instruct").servers["svc"].tokenizer == (
        "Qwen/Qwen2-0.5B-Instruct"
    )
    (tmp_path / "tok").mkdir()
    assert load(", tokenizer: ./tok").servers["svc"].tokenizer == "./tok"
    assert load().servers["svc"].tokenizer is None


def test_a_tokenizer_directory_that_does_not_exist_is_an_error() -> None:
    message = error(", tokenizer: ./missing")
    assert "spec.yaml:2: servers.svc.tokenizer: tokenizer directory './missing' does not exist" in (
        message
    )
    assert "tokenizer.json" in message


@pytest.mark.parametrize(("written", "parsed"), [("auto", None), ("true", True), ("false", False)])
def test_metrics_is_true_false_or_auto(written: str, parsed: bool | None) -> None:
    assert load(f", metrics: {written}").servers["svc"].metrics is parsed
    assert load().servers["svc"].metrics is None


def test_metrics_takes_no_other_value_and_hf_cannot_require_it() -> None:
    assert "servers.svc.metrics: expected true, false or auto, got 'yes please'" in error(
        ', metrics: "yes please"'
    )
    text = SPEC.replace(
        'svc: {backend: external, base_url: "http://127.0.0.1:8000"%(server)s}',
        "svc: {backend: hf, model: m, metrics: true}",
    ) % {"load": ""}
    assert "servers.svc.metrics: transformers serve has no /metrics endpoint" in error(text=text)


def test_stop_limits_parse_counts_sizes_and_percentages() -> None:
    load_ = (
        load(load=", max_response_bytes: 8 MiB, max_consecutive_timeouts: 5, failure_budget: 10%")
        .scenarios["s"]
        .load
    )
    assert load_.max_response_bytes == 8 * 2**20
    assert load_.max_consecutive_timeouts == 5
    assert load_.failure_budget == pytest.approx(0.1)
    assert isinstance(load_.failure_budget, float)
    counted = load(load=", max_response_bytes: 1000, failure_budget: 3").scenarios["s"].load
    assert counted.max_response_bytes == 1000 and counted.failure_budget == 3
    off = load(load=", max_consecutive_timeouts: null").scenarios["s"].load
    assert off.max_consecutive_timeouts is None and off.failure_budget is None


@pytest.mark.parametrize(
    ("load_", "message"),
    [
        (", max_response_bytes: 8 tok/s", "max_response_bytes: '8 tok/s' is a token rate"),
        (", max_response_bytes: 0", "max_response_bytes: must be at least 1"),
        (", max_consecutive_timeouts: 0", "max_consecutive_timeouts: must be at least 1"),
        (
            ", failure_budget: 0.5",
            "got 0.5. Write a share of the requests as a percentage, e.g. 50%",
        ),
        (", failure_budget: 0%", "expected a count of failed requests or a percentage above 0"),
    ],
)
def test_bad_stop_limits_name_the_key(load_: str, message: str) -> None:
    text = error(load_=load_)
    assert "spec.yaml:8: scenarios.s.load." in text
    assert message in text


def test_a_percentage_budget_needs_requests() -> None:
    text = SPEC.replace("requests: 10", "duration: 5s") % {
        "server": "",
        "load": ", failure_budget: 5%",
    }
    assert "a percentage budget is a share of 'requests'" in error(text=text)
