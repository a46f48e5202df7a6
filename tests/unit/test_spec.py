"""The strict YAML spec: shapes, defaults, ${VAR} substitution and every validation error."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from pytest_llmslo.config import DatasetConfig, LoadConfig, ServerConfig
from pytest_llmslo.handtests import run_workload
from pytest_llmslo.kinds import keys_of
from pytest_llmslo.records import Endpoint
from pytest_llmslo.schema import (
    DATASET_KEYS,
    LOAD_KEYS,
    SERVER_KEYS,
    dataset_config,
    load_config,
    server_config,
)
from pytest_llmslo.schema_docs import drift, key_table
from pytest_llmslo.spec import (
    DEFAULT_PERCENTILES,
    DEFAULTS_KEYS,
    SCENARIO_KEYS,
    TOP_KEYS,
    Spec,
    SpecError,
    load_spec,
)
from pytest_llmslo.spec_yaml import substitute
from pytest_llmslo.values import ConfigError

BASE = """\
servers:
  vllm: {backend: vllm, model: m}
datasets:
  rand: {format: random, input_tokens: 8}
scenarios:
  s:
    dataset: rand
    load: {parallel: 1, requests: 2}
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # errors show paths relative to the working directory, so messages compare exactly
    monkeypatch.chdir(tmp_path)


def load(text: str, env: Mapping[str, str] | None = None) -> Spec:
    path = Path("spec.yaml")
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_spec(path, env={} if env is None else env)


def error(text: str, env: Mapping[str, str] | None = None) -> SpecError:
    with pytest.raises(SpecError) as excinfo:
        load(text, env)
    return excinfo.value


FULL = """\
version: 1
defaults:
  load: {max_tokens: 256, temperature: 0}
  slo: {failure_rate: "<= 1%"}
  percentiles: [50, 90, 95, 99]
servers:
  vllm:
    backend: vllm
    model: ${QWEN_MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
    args: {gpu_memory_utilization: 0.9, max_model_len: 32768, enforce_eager: true}
    extra_args: ["--seed", 0]
    env: {VLLM_LOGGING_LEVEL: INFO, VLLM_CPU_KVCACHE_SPACE: 1}
    startup_timeout: 10 min
    gpu_ids: [0, 1]
  hf: {backend: hf, model: m, args: {continuous_batching: true}, device: cpu, port: 8123}
  prod: {backend: external, base_url: "https://svc.example/", model: qwen, api_key_env: PROD_KEY}
datasets:
  openqa: {format: openqa, path: ${DATA:-data}/open_qa.jsonl, sample: 100, seed: 0}
  rand: {format: random, input_tokens: 128, count: 50}
scenarios:
  openqa-c10:
    servers: [vllm, hf]
    dataset: openqa
    load: {parallel: 10, requests: 100, warmup: 5, max_tokens: 512, stream: true}
    slo: {ttft_p95: "<= 2 s", output_throughput: ">= 1000 tok/s", e2e_p99: "<= 10 s"}
    percentiles: [50, 95, 99, 99.9]
  rate-limited:
    dataset: rand
    load: {rate: 2.5 req/s, arrival: gamma, burstiness: 0.5, duration: 30s, stop: END}
    slo: {failure_rate: null, goodput: ">= 1 req/s"}
    request_slo: {ttft: "<= 1 s", itl: "<= 200 ms"}
"""


def _data_dir() -> Path:
    (Path("data")).mkdir(exist_ok=True)
    (Path("data") / "open_qa.jsonl").write_text("{}\n", encoding="utf-8")
    return Path("data").resolve()


def test_full_spec(tmp_path: Path) -> None:
    data = _data_dir()
    spec = load(FULL)
    assert spec.path == Path("spec.yaml")
    assert list(spec.servers) == ["vllm", "hf", "prod"]
    assert spec.servers["vllm"] == ServerConfig(
        name="vllm",
        backend="vllm",
        model="Qwen/Qwen2.5-0.5B-Instruct",
        args={"gpu_memory_utilization": 0.9, "max_model_len": 32768, "enforce_eager": True},
        extra_args=("--seed", "0"),
        env={"VLLM_LOGGING_LEVEL": "INFO", "VLLM_CPU_KVCACHE_SPACE": "1"},
        startup_timeout=600.0,
        gpu_ids=(0, 1),
    )
    assert spec.servers["hf"].device == "cpu"
    assert spec.servers["hf"].port == 8123
    prod = spec.servers["prod"]
    assert (prod.backend, prod.base_url, prod.api_key_env) == (
        "external",
        "https://svc.example",
        "PROD_KEY",
    )
    assert spec.datasets["openqa"] == DatasetConfig(
        name="openqa", format="openqa", path=str(data / "open_qa.jsonl"), sample=100, seed=0
    )
    assert spec.datasets["rand"].input_tokens == 128

    c10 = spec.scenarios["openqa-c10"]
    assert c10.servers == ("vllm", "hf")
    assert c10.line == 21
    assert c10.load == LoadConfig(
        parallel=10, requests=100, warmup=5, max_tokens=512, stream=True, temperature=0.0
    )
    assert [o.metric for o in c10.objectives] == [
        "failure_rate",
        "ttft_p95",
        "output_throughput",
        "e2e_p99",
    ]
    assert c10.objectives[0].line == 4  # inherited: the line where the default is written
    assert c10.objectives[1].line == 25
    assert c10.percentiles == (50.0, 95.0, 99.0, 99.9)
    # per-request objectives derived from the percentile bounds
    assert [(o.metric, o.threshold) for o in c10.request_slo] == [("ttft", 2.0), ("e2e", 10.0)]

    limited = spec.scenarios["rate-limited"]
    assert limited.servers == ("vllm", "hf", "prod")  # default: every server
    assert limited.load.rate == 2.5
    assert limited.load.arrival == "gamma"
    assert limited.load.duration == 30.0
    assert limited.load.requests is None
    assert limited.load.stop == ("END",)
    assert limited.load.max_tokens == 256  # from defaults
    assert [o.metric for o in limited.objectives] == ["goodput"]  # null dropped the default
    assert [o.metric for o in limited.request_slo] == ["ttft", "itl"]
    assert limited.percentiles == DEFAULT_PERCENTILES


def test_defaults_merge_key_by_key() -> None:
    spec = load(
        BASE.replace("scenarios:", "defaults:\n  load: {parallel: 4, warmup: 3}\nscenarios:")
        + '    slo: {ttft_p50: "<= 1 s"}\n'
    )
    load_config = spec.scenarios["s"].load
    assert (load_config.parallel, load_config.warmup, load_config.requests) == (1, 3, 2)


def test_builtin_models_are_checked_where_they_are_written() -> None:
    spec = load(BASE.replace("model: m}", "model: builtin:tiny-qwen3}"))
    assert spec.servers["vllm"].model == "builtin:tiny-qwen3"
    typo = str(error(BASE.replace("model: m}", "model: builtin:tiny-qwen}")))
    assert "spec.yaml:2: servers.vllm.model: unknown built-in model 'builtin:tiny-qwen'" in typo
    assert "builtin:tiny-llama3" in typo and "Did you mean 'builtin:tiny-qwen3'?" in typo
    external = BASE.replace(
        "{backend: vllm, model: m}",
        "{backend: external, base_url: 'http://h:1', model: builtin:tiny}",
    )
    assert "not by an external one" in str(error(external))
    tokenizer = BASE.replace("model: m}", "model: m, tokenizer: builtin:tiny-mistrall}")
    assert "servers.vllm.tokenizer: unknown built-in model" in str(error(tokenizer))


def test_include_usage_is_a_load_switch_that_defaults_to_asking() -> None:
    spec = load(BASE.replace("requests: 2}", "requests: 2, include_usage: false}"))
    assert spec.scenarios["s"].load.include_usage is False
    assert load(BASE).scenarios["s"].load.include_usage is True
    wrong = error(BASE.replace("requests: 2}", "requests: 2, include_usage: no-thanks}"))
    assert "scenarios.s.load.include_usage" in str(wrong) and "expected true or false" in str(wrong)


def test_scenario_load_may_come_from_defaults_alone() -> None:
    text = BASE.replace("    load: {parallel: 1, requests: 2}\n", "")
    spec = load(
        text.replace("scenarios:", "defaults:\n  load: {rate: 3, duration: 60}\nscenarios:")
    )
    assert spec.scenarios["s"].load.rate == 3.0
    assert spec.scenarios["s"].load.duration == 60.0


# --- ${VAR} substitution --------------------------------------------------------------------------


def test_env_set_default_and_int_conversion() -> None:
    text = BASE.replace("model: m", "model: ${MODEL:-fallback}").replace(
        "requests: 2", "requests: ${N:-100}"
    )
    spec = load(text, {"N": "42"})
    assert spec.servers["vllm"].model == "fallback"
    assert spec.scenarios["s"].load.requests == 42
    spec = load(text, {"MODEL": "/models/tiny", "N": ""})
    assert spec.servers["vllm"].model == "/models/tiny"
    assert spec.scenarios["s"].load.requests == 100  # empty takes the default, as in the shell


def test_env_missing_names_variable_file_and_line() -> None:
    err = error(BASE.replace("model: m", "model: ${QWEN_MODEL}"))
    assert str(err) == (
        "spec.yaml:2: servers.vllm.model: environment variable QWEN_MODEL is not set. "
        "Set QWEN_MODEL, or give a default: ${QWEN_MODEL:-value}."
    )
    assert (err.line, err.key) == (2, "servers.vllm.model")


def test_env_escaping_and_quoting() -> None:
    text = BASE.replace("model: m", 'model: "$${HOME}/$$x-${A}"')
    assert load(text, {"A": "a"}).servers["vllm"].model == "${HOME}/$x-a"
    # a quoted reference stays a string even when it looks like a number
    err = error(BASE.replace("requests: 2", 'requests: "${N:-100}"'))
    assert "expected an integer, got a string '100'" in str(err)
    assert "Remove the quotes" in str(err)


def test_env_malformed_reference() -> None:
    err = error(BASE.replace("model: m", 'model: "${1BAD}"'))
    assert err.line == 2
    assert "invalid variable reference '${1BAD}'" in err.message


def test_substitute() -> None:
    env = {"A": "1", "E": ""}
    assert substitute("x${A}y", env) == "x1y"
    assert substitute("${B:-d}", env) == "d"
    assert substitute("${E:-d}", env) == "d"
    assert substitute("${E}", env) == ""
    assert substitute("$$A $A $", env) == "$A $A $"
    with pytest.raises(KeyError):
        substitute("${B}", env)
    with pytest.raises(ValueError, match="unterminated"):
        substitute("${A", env)


# --- strictness -----------------------------------------------------------------------------------


def test_unknown_load_key_message() -> None:
    err = error(BASE.replace("parallel: 1,", "paralel: 1,"))
    assert str(err).startswith(
        "spec.yaml:8: scenarios.s.load.paralel: unknown key. Valid keys: api,"
    )
    assert str(err).endswith("Did you mean 'parallel'?")
    assert "parallel, rate" in str(err)
    assert err.choices[0] == "api"
    assert err.fix == "Did you mean 'parallel'?"


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (BASE + "extra: 1\n", 9, "extra"),
        (BASE.replace("model: m}", "model: m, modle: x}"), 2, "servers.vllm.modle"),
        (
            BASE.replace("input_tokens: 8}", "input_tokens: 8, smaple: 2}"),
            4,
            "datasets.rand.smaple",
        ),
        (BASE + "    percentile: [50]\n", 9, "scenarios.s.percentile"),
        ("defaults:\n  lod: {}\n" + BASE, 2, "defaults.lod"),
        ("defaults:\n  load: {paralel: 1}\n" + BASE, 2, "defaults.load.paralel"),
    ],
)
def test_unknown_keys_at_every_level(text: str, line: int, key: str) -> None:
    err = error(text)
    assert (err.line, err.key, err.message) == (line, key, "unknown key")
    assert str(err).startswith(f"spec.yaml:{line}: {key}: unknown key. Valid keys: ")


def test_duplicate_keys() -> None:
    err = error(BASE.replace("    dataset: rand\n", "    dataset: rand\n    dataset: rand\n"))
    assert str(err).startswith("spec.yaml:8: scenarios.s.dataset: duplicate key (first written at")
    err = error(
        BASE.replace("{parallel: 1, requests: 2}", "{parallel: 1, parallel: 2, requests: 2}")
    )
    assert (err.line, err.key) == (8, "scenarios.s.load.parallel")


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "fragment"),
    [
        (
            "parallel: 1",
            "parallel: ten",
            8,
            "scenarios.s.load.parallel",
            "expected an integer, got a string 'ten'",
        ),
        ("parallel: 1", "parallel: 1.5", 8, "scenarios.s.load.parallel", "expected an integer"),
        ("parallel: 1", "parallel: 0", 8, "scenarios.s.load.parallel", "must be at least 1"),
        ("parallel: 1", "parallel: true", 8, "scenarios.s.load.parallel", "got a boolean"),
        (
            "requests: 2",
            "requests: 2, stream: 'yes'",
            8,
            "scenarios.s.load.stream",
            "expected true or false",
        ),
        (
            "requests: 2",
            "requests: 2, duration: soon",
            8,
            "scenarios.s.load.duration",
            "not a number with a unit",
        ),
        (
            "requests: 2",
            "requests: 2, duration: 5 GiB",
            8,
            "scenarios.s.load.duration",
            "is a memory, not a time",
        ),
        ("requests: 2", "requests: 2, top_p: 2", 8, "scenarios.s.load.top_p", "must be at most 1"),
        (
            "requests: 2",
            "requests: 2, headers: [a]",
            8,
            "scenarios.s.load.headers",
            "expected a mapping",
        ),
        ("model: m}", "model: m, port: 70000}", 2, "servers.vllm.port", "must be at most 65535"),
        (
            "model: m}",
            "model: m, gpu_ids: 0}",
            2,
            "servers.vllm.gpu_ids",
            "expected a list of GPU indices",
        ),
        (
            "model: m}",
            "model: m, extra_args: --x}",
            2,
            "servers.vllm.extra_args",
            "expected a list",
        ),
        (
            "model: m}",
            "model: m, args: {--max-model-len: 8}}",
            2,
            "servers.vllm.args.--max-model-len",
            "without leading dashes",
        ),
        ("model: m}", "model: m, device: tpu}", 2, "servers.vllm.device", "unknown device 'tpu'"),
        (
            "model: m}",
            "model: m, env: {A: true}}",
            2,
            "servers.vllm.env.A",
            "expected a string, got a boolean",
        ),
        (
            "model: m}",
            "model: m, api_key_env: sk-123}",
            2,
            "servers.vllm.api_key_env",
            "not an environment variable name",
        ),
        (
            "input_tokens: 8}",
            "input_tokens: 8, sample: -1}",
            4,
            "datasets.rand.sample",
            "must be at least 1",
        ),
    ],
)
def test_wrong_types_and_values(old: str, new: str, line: int, key: str, fragment: str) -> None:
    err = error(BASE.replace(old, new, 1))
    assert (err.line, err.key) == (line, key), str(err)
    assert fragment in str(err)
    assert str(err).startswith(f"spec.yaml:{line}: {key}: ")


def test_unknown_references_list_defined_names() -> None:
    err = error(BASE + "    servers: [vllm, vlm]\n")
    assert str(err) == (
        "spec.yaml:9: scenarios.s.servers[1]: unknown server 'vlm'. Defined servers: vllm. "
        "Did you mean 'vllm'?"
    )
    err = error(BASE.replace("dataset: rand", "dataset: openqa"))
    assert str(err) == (
        "spec.yaml:7: scenarios.s.dataset: unknown dataset 'openqa'. Defined datasets: rand. "
        "Define it under datasets:."
    )
    err = error(BASE + "    servers: [vllm, vllm]\n")
    assert "listed twice" in err.message


@pytest.mark.parametrize(
    ("old", "new", "line", "fragment"),
    [
        (
            "backend: vllm",
            "backend: vlm",
            2,
            "unknown backend 'vlm'. Valid backends: vllm, hf, external. Did you mean 'vllm'?",
        ),
        (
            "format: random",
            "format: csv",
            4,
            "unknown format 'csv'. Valid formats: openqa, longalpaca",
        ),
        (
            "requests: 2",
            "requests: 2, arrival: burst",
            8,
            "unknown arrival 'burst'. Valid arrivals: poisson, constant, gamma",
        ),
        (
            "requests: 2",
            "requests: 2, api: responses",
            8,
            "unknown api 'responses'. Valid apis: chat, completions",
        ),
    ],
)
def test_unknown_choices(old: str, new: str, line: int, fragment: str) -> None:
    err = error(BASE.replace(old, new))
    assert err.line == line
    assert fragment in str(err)


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "fragment"),
    [
        (
            "{backend: vllm, model: m}",
            "{model: m}",
            2,
            "servers.vllm",
            "missing required key 'backend'",
        ),
        (
            "{backend: vllm, model: m}",
            "{backend: vllm}",
            2,
            "servers.vllm",
            "missing required key 'model' for backend vllm",
        ),
        (
            "{backend: vllm, model: m}",
            "{backend: external}",
            2,
            "servers.vllm",
            "missing required key 'base_url'",
        ),
        (
            "model: m}",
            "model: m, base_url: 'http://x'}",
            2,
            "servers.vllm.base_url",
            "base_url is for backend external",
        ),
        (
            "{backend: vllm, model: m}",
            "{backend: external, base_url: x.com}",
            2,
            "servers.vllm.base_url",
            "not an http(s) URL",
        ),
        (
            "{format: random, input_tokens: 8}",
            "{input_tokens: 8}",
            4,
            "datasets.rand",
            "missing required key 'format'",
        ),
        (
            "{format: random, input_tokens: 8}",
            "{format: random}",
            4,
            "datasets.rand",
            "missing required key 'input_tokens'",
        ),
        (
            "{format: random, input_tokens: 8}",
            "{format: openqa}",
            4,
            "datasets.rand",
            "missing required key 'path' for format openqa",
        ),
        (
            "{format: random, input_tokens: 8}",
            "{format: random, input_tokens: 8, path: x}",
            4,
            "datasets.rand.path",
            "reads no file",
        ),
        (
            "{format: random, input_tokens: 8}",
            "{format: openqa, path: nowhere.jsonl}",
            4,
            "datasets.rand.path",
            "does not exist",
        ),
        (
            "{format: random, input_tokens: 8}",
            "{format: random, input_tokens: 8, field: x}",
            4,
            "datasets.rand.field",
            "jsonl only",
        ),
        (
            "    dataset: rand\n",
            "",
            6,
            "scenarios.s",
            "missing required key 'dataset'. Defined datasets: rand",
        ),
        ("{parallel: 1, requests: 2}", "{parallel: 1}", 8, "scenarios.s.load", "needs 'requests'"),
        (
            "{parallel: 1, requests: 2}",
            "{requests: 2}",
            8,
            "scenarios.s.load",
            "needs 'parallel' (concurrent users) or 'rate'",
        ),
    ],
)
def test_missing_and_misplaced_keys(old: str, new: str, line: int, key: str, fragment: str) -> None:
    err = error(BASE.replace(old, new))
    assert (err.line, err.key) == (line, key), str(err)
    assert fragment in str(err)


def test_relative_dataset_paths_resolve_against_the_spec_directory(tmp_path: Path) -> None:
    sub = tmp_path / "specs"
    (sub / "data").mkdir(parents=True)
    (sub / "data" / "q.jsonl").write_text("{}\n", encoding="utf-8")
    spec_path = sub / "spec.yaml"
    spec_path.write_text(
        BASE.replace(
            "{format: random, input_tokens: 8}", "{format: jsonl, path: data/q.jsonl, field: p}"
        ),
        encoding="utf-8",
    )
    spec = load_spec(spec_path, env={})
    assert spec.datasets["rand"].path == str(sub / "data" / "q.jsonl")
    assert spec.datasets["rand"].field == "p"


def test_objective_errors_carry_file_line_and_key() -> None:
    err = error(BASE + '    slo:\n      failure_rate: "<= 1%"\n      ttft_p95: ">= 5 tok/s"\n')
    assert str(err).startswith(
        "spec.yaml:11: scenarios.s.slo.ttft_p95: objective ttft_p95: '>= 5 tok/s': "
        "ttft_p95 is a time, and '5 tok/s' is a token rate, not a time."
    )
    assert "us, µs, ms, s or min" in str(err)
    err = error(BASE + '    slo: {ttft_95: "<= 1 s"}\n')
    assert err.key == "scenarios.s.slo.ttft_95"
    assert err.choices[0] == "ttft_p95"
    assert "Did you mean 'ttft_p95'?" in str(err)
    err = error(BASE + "    slo: {failures: 0}\n")
    assert "has no operator" in str(err)
    assert 'failures: "<= 0"' in str(err)
    err = error(BASE + '    request_slo: {ttft_p95: "<= 1 s"}\n')
    assert (err.line, err.key) == (9, "scenarios.s.request_slo.ttft_p95")


def test_goodput_needs_per_request_objectives() -> None:
    err = error(BASE + '    slo: {goodput_ratio: ">= 0.9"}\n')
    assert (err.line, err.key) == (9, "scenarios.s.slo.goodput_ratio")
    assert "request_slo" in err.fix
    spec = load(BASE + '    slo: {goodput_ratio: ">= 0.9", tpot_p99: "<= 80 ms"}\n')
    assert [o.metric for o in spec.scenarios["s"].request_slo] == ["tpot"]


def test_percentiles() -> None:
    spec = load(BASE + "    percentiles: [99.99, 50, 0.1]\n")
    assert spec.scenarios["s"].percentiles == (99.99, 50.0, 0.1)
    for bad, fragment in [
        ("[0]", "out of range"),
        ("[101]", "out of range"),
        ("[]", "non-empty"),
        ("[50, 50]", "listed twice"),
        ("[p50]", "expected a number"),
    ]:
        err = error(BASE + f"    percentiles: {bad}\n")
        assert err.line == 9
        assert fragment in str(err)


def test_yaml_syntax_error_has_its_line() -> None:
    err = error(BASE + "    slo: {ttft_p95: '<= 1 s'\n")
    assert err.line is not None and err.line >= 9
    assert err.message.startswith("YAML syntax error")
    err = error("servers:\n  a: b\n - c\n")
    assert err.line == 3


def test_flow_collections_accept_variable_references() -> None:
    _data_dir()
    text = BASE.replace(
        "{format: random, input_tokens: 8}", "{format: openqa, path: ${DATA:-data}/open_qa.jsonl}"
    ).replace("{parallel: 1, requests: 2}", "{parallel: ${P:-3}, requests: 2}")
    spec = load(text)
    assert spec.scenarios["s"].load.parallel == 3
    assert spec.datasets["rand"].path is not None and spec.datasets["rand"].path.endswith(
        "data/open_qa.jsonl"
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the spec is empty"),
        ("# only a comment\n", "the spec is empty"),
        ("- a\n- b\n", "expected a mapping"),
        (BASE.split("scenarios:")[0], "missing required section 'scenarios'"),
        (BASE.split("scenarios:")[0] + "scenarios: {}\n", "defines no scenario"),
        (BASE.split("datasets:")[0] + "scenarios: {}\n", "missing required section 'datasets'"),
        ("version: 2\n" + BASE, "unsupported spec version 2"),
        (BASE.replace("  s:", "  'bad name':"), "letters, digits"),
    ],
)
def test_whole_file_errors(text: str, fragment: str) -> None:
    assert fragment in str(error(text))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(tmp_path / "absent.yaml")


def test_error_path_outside_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    spec_path = outside / "x.yaml"
    spec_path.write_text(BASE + "oops: 1\n", encoding="utf-8")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(SpecError) as excinfo:
        load_spec(spec_path, env={})
    assert str(excinfo.value).startswith(f"{spec_path}:9: oops: unknown key.")
    assert excinfo.value.path == spec_path


def test_server_load_overrides_merge_over_the_scenario_load() -> None:
    text = BASE.replace(
        "  vllm: {backend: vllm, model: m}",
        "  vllm: {backend: vllm, model: m}\n  hf: {backend: hf, model: m, skip_if_missing: true}",
    )
    spec = load(text + "    server_load: {hf: {requests: 1, max_tokens: 9}}\n")
    scenario = spec.scenarios["s"]
    assert scenario.load_for("vllm").requests == 2
    hf_load = scenario.load_for("hf")
    assert (hf_load.requests, hf_load.max_tokens, hf_load.parallel) == (1, 9, 1)
    assert spec.servers["hf"].skip_if_missing and not spec.servers["vllm"].skip_if_missing


def test_server_load_names_a_server_of_the_scenario() -> None:
    err = error(BASE + "    servers: [vllm]\n    server_load: {hf: {requests: 1}}\n")
    assert "server 'hf' does not run this scenario" in str(err)
    assert err.line == 10
    err = error(BASE + "    server_load: {vllm: {paralel: 1}}\n")
    assert "Did you mean 'parallel'?" in str(err)


# --- YAML the composer refuses: alias bombs, cycles, depth, tags ----------------------------------

BOMB = """{
  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol],
  l1: &l1 [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0],
  l2: &l2 [*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1],
  l3: &l3 [*l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2],
  l4: &l4 [*l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3],
  l5: &l5 [*l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4]}"""


@pytest.mark.parametrize(
    ("old", "new", "line", "key"),
    [
        ("model: m}", f"model: m, args: {BOMB}}}", 7, "servers.vllm.args.l4[0]"),
        (
            "requests: 2}",
            f"requests: 2, extra_body: {BOMB}}}",
            13,
            "scenarios.s.load.extra_body.l4[0]",
        ),
    ],
)
def test_an_alias_bomb_is_refused_where_its_expansion_passes_the_budget(
    old: str, new: str, line: int, key: str
) -> None:
    # nine to the sixth power values: expanding them took seconds and hundreds of MB
    err = error(BASE.replace(old, new))
    assert (err.line, err.key) == (line, key)
    assert err.message == "aliases expand to more than 10,000 values (at *l3)"
    assert "write large values out once" in err.fix


def test_aliases_within_the_budget_share_settings() -> None:
    text = BASE.replace(
        "model: m}",
        "model: m, args: &args {max_model_len: 4096}}\n  hf: {backend: hf, model: m, args: *args}",
    )
    spec = load(text)
    assert spec.servers["hf"].args == spec.servers["vllm"].args == {"max_model_len": 4096}


def test_an_alias_inside_the_value_it_names_is_refused() -> None:
    err = error(BASE.replace("model: m}", "model: m, args: &a {self: *a}}"))
    assert (err.line, err.key) == (2, "servers.vllm.args.self")
    assert "alias *a refers to a value that contains it" in err.message


def test_deep_nesting_is_refused_without_a_traceback() -> None:
    deep = "[" * 3000 + "]" * 3000
    err = error(BASE.replace("requests: 2}", f"requests: 2, extra_body: {{x: {deep}}}}}"))
    assert err.line == 8
    assert err.key.startswith("scenarios.s.load.extra_body.x[0][0]")
    assert err.message == "nested more than 64 levels deep"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("!!python/name:os.system x", "YAML tag !!python/name:os.system is not allowed"),
        ("!!python/object/apply:os.system [echo]", "YAML tag !!python/object/apply:os.system"),
        ("!mine x", "YAML tag !mine is not allowed"),
        ("!!binary aGk=", "YAML tag !!binary is not allowed"),
        ("!!timestamp 2024-01-01", "YAML tag !!timestamp is not allowed"),
        ("!!int abc", "'abc' is not a valid !!int value"),
        ("!!float x", "'x' is not a valid !!float value"),
        ("!!bool maybe", "'maybe' is not a valid !!bool value"),
    ],
)
def test_tags_outside_plain_yaml_types_are_refused_with_file_line_and_key(
    value: str, fragment: str
) -> None:
    err = error(BASE.replace("model: m}", f"model: m, args: {{x: {value}}}}}"))
    assert (err.line, err.key) == (2, "servers.vllm.args.x")
    assert fragment in err.message
    assert str(err).startswith("spec.yaml:2: servers.vllm.args.x: ")


def test_tags_of_plain_types_are_kept() -> None:
    spec = load(BASE.replace("model: m}", "model: m, args: {a: !!str 1, b: !!float 2}}"))
    assert spec.servers["vllm"].args == {"a": "1", "b": 2.0}


def test_dates_stay_the_text_written() -> None:
    # a JSON body cannot carry a date object, and a command line takes the text anyway
    spec = load(BASE.replace("requests: 2}", "requests: 2, extra_body: {since: 2024-01-01}}"))
    assert spec.scenarios["s"].load.extra_body == {"since": "2024-01-01"}


# --- merge keys and x- anchors ----------------------------------------------------------------


MERGED = """\
x-vllm: &vllm {backend: vllm, model: m, args: {max_model_len: 4096}, device: cpu}
x-fast: &fast {parallel: 4, requests: 8}
servers:
  short: {<<: *vllm}
  long:
    <<: *vllm
    args: {max_model_len: 32768}
  two: {<<: [{backend: hf, model: first}, *vllm]}
datasets:
  rand: {format: random, input_tokens: 8}
scenarios:
  s:
    dataset: rand
    load: {<<: *fast, requests: 2}
"""


def test_merge_keys_bring_in_an_anchored_mapping_and_own_keys_win() -> None:
    spec = load(MERGED)
    assert spec.servers["short"].args == {"max_model_len": 4096}
    assert spec.servers["long"].args == {"max_model_len": 32768}
    assert spec.servers["long"].device == "cpu"
    # of several merged mappings, the first listed wins
    assert (spec.servers["two"].backend, spec.servers["two"].model) == ("hf", "first")
    load_ = spec.scenarios["s"].load
    assert (load_.parallel, load_.requests) == (4, 2)


def test_merged_keys_are_checked_like_written_ones() -> None:
    err = error(MERGED.replace("{parallel: 4,", "{paralel: 4,"))
    assert (err.line, err.key) == (2, "scenarios.s.load.paralel")
    assert err.fix == "Did you mean 'parallel'?"


@pytest.mark.parametrize("value", ["3", "[*fast, 3]", "[]"])
def test_a_merge_key_takes_mappings_only(value: str) -> None:
    err = error(MERGED.replace("{<<: *fast, requests: 2}", f"{{<<: {value}, requests: 2}}"))
    assert (err.line, err.key) == (14, "scenarios.s.load.<<")
    assert "a merge key takes a mapping or a list of mappings" in err.message


def test_a_second_merge_key_is_a_duplicate() -> None:
    err = error(MERGED.replace("    <<: *vllm\n", "    <<: *vllm\n    <<: *vllm\n"))
    assert (err.line, err.key) == (7, "servers.long.<<")
    assert "duplicate key (first written at line 6)" in err.message


def test_x_keys_are_allowed_at_the_top_level_only() -> None:
    err = error(MERGED.replace("    dataset: rand\n", "    dataset: rand\n    x-note: 1\n"))
    assert (err.line, err.key, err.message) == (14, "scenarios.s.x-note", "unknown key")


# --- nested ${...} defaults -----------------------------------------------------------------------


def test_defaults_may_nest_and_are_read_only_when_taken() -> None:
    assert substitute("${A:-${B:-x}}", {}) == "x"
    assert substitute("${A:-${B:-x}}", {"B": "b"}) == "b"
    assert substitute("${A:-${B:-x}}/q", {"A": "a"}) == "a/q"
    assert substitute("${A:-${B}}", {"A": "a"}) == "a"  # B unset, but its default is not taken
    assert substitute("${A:-pre-${B:-x}-post}", {}) == "pre-x-post"
    with pytest.raises(KeyError):
        substitute("${A:-${B}}", {})
    with pytest.raises(ValueError, match="unterminated"):
        substitute("${A:-${B:-x}", {})
    with pytest.raises(ValueError, match=re.escape("invalid variable reference '${A-x}'")):
        substitute("${A-x}", {})


def test_nested_defaults_in_flow_collections() -> None:
    spec = load(BASE.replace("{parallel: 1,", "{parallel: ${P:-${Q:-3}},"), {"Q": "5"})
    assert spec.scenarios["s"].load.parallel == 5
    err = error(BASE.replace("{parallel: 1,", "{parallel: ${P:-${Q}},"))
    assert (err.line, err.key) == (8, "scenarios.s.load.parallel")
    assert err.message == "environment variable Q is not set"


# --- values accepted before, failing only at run time ---------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "fragment"),
    [
        ("parallel: 1,", "rate: .inf,", 8, "scenarios.s.load.rate", "expected a finite number"),
        ("parallel: 1,", "rate: 20000,", 8, "scenarios.s.load.rate", "at most 10,000 req/s"),
        (
            "parallel: 1,",
            "rate: 1e5 req/s,",
            8,
            "scenarios.s.load.rate",
            "at most 10,000 req/s",
        ),
        (
            "parallel: 1,",
            "parallel: 1000000,",
            8,
            "scenarios.s.load.parallel",
            "must be at most 10000, got 1000000",
        ),
        (
            "requests: 2}",
            "requests: 2, burstiness: .inf}",
            8,
            "scenarios.s.load.burstiness",
            "expected a finite number",
        ),
        (
            "requests: 2}",
            'requests: 2, duration: "5"}',
            8,
            "scenarios.s.load.duration",
            "got the string '5' without a time unit",
        ),
        (
            "requests: 2}",
            "requests: 2, extra_body: {penalty: .inf}}",
            8,
            "scenarios.s.load.extra_body.penalty",
            "JSON has no infinity or NaN",
        ),
        (
            "requests: 2}",
            'requests: 2, headers: {X-Note: "a\\nInjected: 1"}}',
            8,
            "scenarios.s.load.headers.X-Note",
            "the control character '\\n'",
        ),
        (
            "requests: 2}",
            "requests: 2, headers: {X-Note: 你好}}",
            8,
            "scenarios.s.load.headers.X-Note",
            "holds '你', which an HTTP header cannot carry (Latin-1 text only)",
        ),
        (
            "requests: 2}",
            "requests: 2, headers: {X Note: a}}",
            8,
            "scenarios.s.load.headers.X Note",
            "'X Note' is not an HTTP header name",
        ),
        (
            "requests: 2}",
            "requests: 2, headers: {content-length: 3}}",
            8,
            "scenarios.s.load.headers.content-length",
            "the client writes content-length itself",
        ),
        (
            "{backend: vllm, model: m}",
            "{backend: external, base_url: 'http://h:99999'}",
            2,
            "servers.vllm.base_url",
            "has no valid port",
        ),
        (
            "{backend: vllm, model: m}",
            "{backend: external, base_url: 'http://:8000'}",
            2,
            "servers.vllm.base_url",
            "is not an http(s) URL",
        ),
    ],
)
def test_values_that_would_fail_at_run_time_are_collection_errors(
    old: str, new: str, line: int, key: str, fragment: str
) -> None:
    err = error(BASE.replace(old, new, 1))
    assert (err.line, err.key) == (line, key), str(err)
    assert fragment in err.message, str(err)


def test_a_quoted_duration_says_how_to_write_it() -> None:
    err = error(BASE.replace("requests: 2}", 'requests: 2, duration: "5"}'))
    assert err.fix == 'Remove the quotes for seconds (duration: 5), or add a unit: duration: "5 s".'
    spec = load(BASE.replace("requests: 2}", 'requests: 2, duration: "5 s"}'))
    assert spec.scenarios["s"].load.duration == 5.0


def test_headers_within_http_rules_are_kept() -> None:
    spec = load(BASE.replace("requests: 2}", "requests: 2, headers: {X-Team: café, X-N: 3}}"))
    assert spec.scenarios["s"].load.headers == {"X-Team": "café", "X-N": "3"}


@pytest.mark.parametrize("name", ["my server", "a::b", "x[1]"])
def test_server_names_must_survive_in_test_ids(name: str) -> None:
    err = error(BASE.replace("  vllm:", f"  '{name}':").replace("\n    load", "\n    load"))
    assert (err.line, err.key) == (2, f"servers.{name}")
    assert "server names may hold letters, digits" in err.message


def test_where_each_dataset_is_defined_is_kept() -> None:
    assert load(BASE).dataset_lines == {"rand": 4}


# --- one schema: the Python API checks what a spec checks ---------------------------------------

# (key, the value in Python, the same value written in YAML)
SAME_IN_PYTHON_AND_YAML: list[tuple[str, object, str]] = [
    ("parallel", 10**6, "1000000"),
    ("parallel", "ten", "ten"),
    ("parallel", "4", "'4'"),
    ("parallel", 1.5, "1.5"),
    ("parallel", True, "true"),
    ("parallel", None, "null"),
    ("rate", float("inf"), ".inf"),
    ("rate", 20000, "20000"),
    ("rate", "1e5 req/s", "1e5 req/s"),
    ("rate", "5 tok/s", "5 tok/s"),
    ("rate", 0, "0"),
    ("burstiness", float("inf"), ".inf"),
    ("duration", "5", '"5"'),
    ("duration", "5 GiB", "5 GiB"),
    ("duration", [5], "[5]"),
    ("top_p", 2, "2"),
    ("api", "responses", "responses"),
    ("arrival", "burst", "burst"),
    ("stream", "yes", "'yes'"),
    ("warmup", -1, "-1"),
    ("max_tokens", 0, "0"),
    ("stop", [["a"]], "[[a]]"),
    ("stop", {"a": 1}, "{a: 1}"),
    ("headers", ["a"], "[a]"),
    ("headers", {"X-Note": "a\nInjected: 1"}, '{X-Note: "a\\nInjected: 1"}'),
    ("headers", {"X Note": "a"}, "{X Note: a}"),
    ("headers", {"content-length": "3"}, "{content-length: 3}"),
    ("headers", {"X-Note": "你好"}, "{X-Note: 你好}"),
    ("headers", {"X-On": True}, "{X-On: true}"),
    ("extra_body", {"penalty": float("inf")}, "{penalty: .inf}"),
    ("extra_body", {"a": [1, float("nan")]}, "{a: [1, .nan]}"),
    ("extra_body", [1], "[1]"),
    ("max_response_bytes", "8 tok/s", "8 tok/s"),
    ("max_response_bytes", 0, "0"),
    ("max_consecutive_timeouts", 0, "0"),
    ("failure_budget", 0.5, "0.5"),
    ("failure_budget", "0%", "0%"),
    ("temprature", 0, "0"),
]


@pytest.mark.parametrize(("key", "python", "yaml"), SAME_IN_PYTHON_AND_YAML)
def test_a_python_load_mapping_gets_the_checks_and_messages_of_a_spec_load(
    key: str, python: object, yaml: str
) -> None:
    shape = {} if key in ("parallel", "rate") else {"parallel": 1}
    with pytest.raises(ConfigError) as excinfo:
        load_config({**shape, "requests": 2, key: python})
    in_python = excinfo.value
    written = "{requests: 2" + ("" if not shape else ", parallel: 1") + f", {key}: {yaml}}}"
    in_spec = error(BASE.replace("{parallel: 1, requests: 2}", written))

    assert (in_python.message, in_python.fix, in_python.choices) == (
        in_spec.message,
        in_spec.fix,
        in_spec.choices,
    )
    assert in_spec.key == f"scenarios.s.load.{in_python.key}"
    # "where" is the argument instead of file:line
    assert str(in_python).startswith(f"run_workload(load=...): {in_python.key}: ")
    assert str(in_spec).startswith(f"spec.yaml:8: {in_spec.key}: ")
    assert str(in_python).removeprefix("run_workload(load=...): ") == str(in_spec).removeprefix(
        "spec.yaml:8: scenarios.s.load."
    )


def test_a_python_load_mapping_takes_the_values_a_spec_writes() -> None:
    config = load_config(
        {
            "rate": "5 req/s",
            "parallel": 8,
            "duration": "30 s",
            "requests": 100,
            "max_response_bytes": "8 MiB",
            "failure_budget": "10%",
            "stop": "END",
            "headers": {"X-N": 3},
            "max_tokens": None,
        }
    )
    assert config.failure_budget == pytest.approx(0.1)
    assert replace(config, failure_budget=None) == LoadConfig(
        rate=5.0,
        parallel=8,
        duration=30.0,
        requests=100,
        max_response_bytes=8 * 2**20,
        stop=("END",),
        headers={"X-N": "3"},
        max_tokens=None,
    )
    assert load_config({"parallel": 2, "requests": 3, "stop": ("a", "b")}).stop == ("a", "b")


def test_a_python_load_mapping_needs_a_shape_as_a_spec_load_does() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config({"requests": 2}, where="my_bench(load=...)")
    assert str(excinfo.value) == (
        "my_bench(load=...): needs 'parallel' (concurrent users) or 'rate' (requests per "
        "second). Add e.g. parallel: 10."
    )


@pytest.mark.parametrize(
    ("load", "fragment"),
    [
        ({"extra_body": {"ids": {1, 2}}}, "extra_body.ids: set cannot be sent: JSON holds"),
        ({1: 2}, "key 1 is not a string"),
        ([("parallel", 1)], "expected a mapping of keys, got a list"),
    ],
)
def test_python_values_a_spec_cannot_hold_are_refused_too(load: Any, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(load)


def test_run_workload_checks_its_load_before_sending_anything() -> None:
    nowhere = Endpoint("http://127.0.0.1:9", "m", "external")  # nothing listens there
    with pytest.raises(ConfigError) as excinfo:
        run_workload(nowhere, ["hi"], {"rate": float("inf")})
    assert str(excinfo.value) == (
        "run_workload(load=...): rate: expected a finite number, got inf. "
        "Write a number, e.g. rate: 1.0."
    )
    with pytest.raises(ConfigError, match="Did you mean 'parallel'"):
        run_workload(nowhere, ["hi"], {"paralel": 2})


def test_server_and_dataset_mappings_are_checked_like_spec_sections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        server_config({"backend": "vllm", "model": "m", "port": 70000}, where="factory(...)")
    assert str(excinfo.value) == "factory(...): port: must be at most 65535, got 70000."
    with pytest.raises(ConfigError, match="missing required key 'base_url' for backend external"):
        server_config({"backend": "external"})
    assert server_config(
        {"backend": "external", "base_url": "http://h:1/", "metrics": "auto"}, name="svc"
    ) == ServerConfig(name="svc", backend="external", base_url="http://h:1")

    with pytest.raises(ConfigError) as excinfo:
        dataset_config({"format": "openqa", "path": "nope.jsonl"}, base_dir=tmp_path)
    assert excinfo.value.message == f"dataset file {str(tmp_path / 'nope.jsonl')!r} does not exist"
    assert excinfo.value.fix == f"Relative paths are taken from {tmp_path}."
    (tmp_path / "q.jsonl").write_text("{}\n", encoding="utf-8")
    assert dataset_config(
        {"format": "jsonl", "path": "q.jsonl", "field": "p"}, name="q", base_dir=tmp_path
    ) == DatasetConfig(name="q", format="jsonl", path=str(tmp_path / "q.jsonl"), field="p")


# --- one place to add a key: the reference follows the dataclasses --------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_every_config_field_but_the_name_is_a_spec_key() -> None:
    # a field without its spec_key metadata could be neither written in a spec nor documented
    for cls, keys in (
        (ServerConfig, SERVER_KEYS),
        (DatasetConfig, DATASET_KEYS),
        (LoadConfig, LOAD_KEYS),
    ):
        assert [f.name for f in fields(cls) if f.name != "name"] == list(keys_of(cls))
        assert list(keys) == list(keys_of(cls))


def test_the_reference_key_tables_are_those_the_config_dataclasses_declare() -> None:
    diff = drift(ROOT)
    assert not diff, f"run python -m pytest_llmslo.schema_docs --write\n{diff}"


def test_a_reference_table_row_holds_the_kind_default_and_meaning_of_its_key() -> None:
    rows = key_table(LoadConfig).splitlines()
    assert rows[0] == "| key | type | default | meaning |"
    assert (
        "| `parallel` | integer 1-10,000 | none | closed loop: this many concurrent users |" in rows
    )
    assert (
        "| `arrival` | `poisson` \\| `constant` \\| `gamma` | `poisson` | "
        "open-loop arrival schedule |" in rows
    )
    assert (
        "| `stream` | boolean | `true` | stream the answer (needed for TTFT, TPOT, ITL) |" in rows
    )


def _documented_keys(heading: str) -> list[str]:
    text = (ROOT / "docs" / "spec-reference.md").read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    table = section[section.index("| key |") :].split("\n\n")[0]
    return [line.split("`")[1] for line in table.splitlines()[2:]]


@pytest.mark.parametrize(
    ("heading", "keys"),
    [
        ("## Top level", TOP_KEYS),
        ("## `defaults`", DEFAULTS_KEYS),
        ("## `scenarios.<name>`", SCENARIO_KEYS),
    ],
)
def test_the_reference_lists_every_spec_level_key(heading: str, keys: tuple[str, ...]) -> None:
    assert _documented_keys(heading) == list(keys)
