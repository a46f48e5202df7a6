"""A spec run against an external server that streams no usage, as LLaMA-Factory's API does.

The server is the timing instrument with ``x_no_usage``; the tokenizer is the tiny model's, named
with the server's `tokenizer:` key, so token counts, throughput, TPOT and `format: random` work,
and every output says the counts are estimates.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.environment import collect_run_info
from pytest_llmslo.records import Endpoint
from pytest_llmslo.report import failure_text, render_markdown, results_json
from pytest_llmslo.result import ScenarioResult
from pytest_llmslo.runner import NOT_OURS
from pytest_llmslo.session import SloSession, tokenizer_for
from pytest_llmslo.spec import load_spec
from pytest_llmslo.testing.timing_server import TimingServerProcess, serve_timing_server

SPEC = """\
# tokens are what this checks; four requests decide no interval
verdicts: {inconclusive: pass}
servers:
  llamafactory:
    backend: external
    base_url: "%(url)s"
    model: ""
    %(tokenizer)s
datasets:
  rand: {format: random, input_tokens: 16, count: 4}
scenarios:
  rand-c2:
    dataset: rand
    load:
      parallel: 2
      requests: 4
      max_tokens: 8
      ignore_eos: true
      extra_body: {x_no_usage: true}
    slo:
      output_throughput: ">= 1 tok/s"
      tpot_p95: "<= 5 s"
"""


@pytest.fixture(scope="module")
def instrument() -> Iterator[TimingServerProcess]:
    with serve_timing_server(ttft_ms=5, gap_ms=2, tokens=8) as server:
        yield server


def run_spec(tmp_path: Path, url: str, tokenizer: str) -> ScenarioResult:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(SPEC % {"url": url, "tokenizer": tokenizer}), "utf-8")
    spec = load_spec(path, env={})
    session = SloSession(tmp_path / "out")
    try:
        return session.result(spec, "rand-c2", "llamafactory")
    finally:
        session.close()


def test_a_named_tokenizer_counts_what_the_server_did_not(
    tmp_path: Path, instrument: TimingServerProcess
) -> None:
    res = run_spec(tmp_path, instrument.base_url, "tokenizer: builtin:tiny")
    assert res.error is None, res.error
    assert res.summary is not None
    assert res.summary.token_sources == {"tokenizer": 4}
    assert all(r.output_tokens and r.input_tokens == 16 for r in res.records)
    assert all(v.passed for v in res.verdicts), [v.describe() for v in res.verdicts]
    # ignore_eos is sent as the spec asks, not dropped for an external server
    assert all(e["body"].get("ignore_eos") is True for e in instrument.fetch_log(clear=True))
    assert res.token_note is not None
    assert res.token_note.startswith("token counts are estimated for 4 of 4 successful requests")

    info = collect_run_info([res], "test")
    markdown = render_markdown([res], info)
    assert "**token counts**: token counts are estimated" in markdown
    assert "ESTIMATES (text re-tokenized locally): 4" in markdown
    assert "server start-up: not applicable: external server, not started by this run" in markdown
    assert f"host memory: {NOT_OURS}" in markdown
    assert f"GPU memory: {NOT_OURS}" in markdown
    assert "not served by this server (GET /metrics answered HTTP 404" in markdown
    assert "token counts: token counts are estimated" in failure_text(res, None)
    data = json.loads(json.dumps(results_json([res], info)))
    scenario = data["scenarios"][0]
    assert scenario["token_note"].startswith("token counts are estimated")
    assert scenario["summary"]["token_sources"] == {"tokenizer": 4}


def test_without_a_tokenizer_random_prompts_say_which_key_to_set(
    tmp_path: Path, instrument: TimingServerProcess
) -> None:
    res = run_spec(tmp_path, instrument.base_url, "")
    assert res.error is not None
    assert "format random needs the model's tokenizer" in res.error
    assert "add `tokenizer:` to it in the spec" in res.error


def test_a_named_tokenizer_that_cannot_be_loaded_is_an_error(
    tmp_path: Path, instrument: TimingServerProcess
) -> None:
    res = run_spec(tmp_path, instrument.base_url, "tokenizer: no-such-org/no-such-model")
    assert res.error is not None
    assert res.error.startswith("server 'llamafactory': tokenizer: no tokenizer for")
    assert "nothing is downloaded" in res.error


def test_server_url_keeps_the_specs_tokenizer_startup_timeout_and_metrics(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            servers:
              vllm: {backend: vllm, model: builtin:tiny, startup_timeout: 7s, metrics: false}
              svc: {backend: external, base_url: "http://h:1", tokenizer: /tmp}
            datasets:
              rand: {format: random, input_tokens: 8}
            scenarios:
              s: {dataset: rand, load: {parallel: 1, requests: 1}}
            """
        ),
        "utf-8",
    )
    spec = load_spec(path, env={})
    session = SloSession(tmp_path / "out", server_url="http://gpu-box:8000")
    vllm = session.server_config(spec, "vllm")
    assert (vllm.backend, vllm.base_url, vllm.startup_timeout) == (
        "external",
        "http://gpu-box:8000",
        7.0,
    )
    assert vllm.tokenizer is None and vllm.metrics is False
    assert session.server_config(spec, "svc").tokenizer == "/tmp"


def test_an_external_servers_tokenizer_is_its_model_when_that_is_a_local_directory(
    tiny_model_dir: Path,
) -> None:
    endpoint = Endpoint("http://h:1", "served-name", "external")
    local = ServerConfig(name="s", backend="external", model=str(tiny_model_dir))
    assert tokenizer_for(local, endpoint) == str(tiny_model_dir)
    # vLLM serves a model under its path unless given another name
    by_path = Endpoint("http://h:1", str(tiny_model_dir), "external")
    assert tokenizer_for(ServerConfig(name="s", backend="external"), by_path) == str(tiny_model_dir)
    assert tokenizer_for(ServerConfig(name="s", backend="external", model="qwen"), endpoint) == ""
    managed = ServerConfig(name="s", backend="vllm", model="Qwen/Qwen2-0.5B")
    assert tokenizer_for(managed, endpoint) == "Qwen/Qwen2-0.5B"
    # --slo-server-url: the spec's vllm/hf server still names the tokenizer
    url = ServerConfig(name="s", backend="external", base_url="http://h:1")
    assert tokenizer_for(url, endpoint, spec_model="builtin:tiny") == str(tiny_model_dir)
    named = ServerConfig(name="s", backend="external", tokenizer="Qwen/Qwen2-0.5B")
    assert tokenizer_for(named, endpoint, spec_model="builtin:tiny") == "Qwen/Qwen2-0.5B"
