"""The load engine against real vLLM (its CPU build) serving the tiny model."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pytest_llmslo.config import DatasetConfig, LoadConfig
from pytest_llmslo.datasets import load_prompts
from pytest_llmslo.load import run_load
from pytest_llmslo.records import Prompt
from pytest_llmslo.servers import Server
from pytest_llmslo.tokens import load_tokenizer

pytestmark = pytest.mark.e2e
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"

QUESTIONS = [
    "What is the capital of France?",
    "Explain quantum computing in one sentence.",
    "How does a large language model answer a question?",
    "Write a short story about time.",
    "什么是大语言模型？",
    "请用一句话解释量子计算。",
    "北京是哪个国家的首都？",
    "你好，请介绍一下你自己。",
]


def simple_prompts() -> list[Prompt]:
    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "model", "token", "stream", "模型", "令牌", "数据"]
    noise = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 24))) for _ in range(8)]
    return [Prompt(index=i, text=text) for i, text in enumerate(QUESTIONS + noise)]


def dataset_prompts(name: str, model_dir: Path) -> list[Prompt]:
    tokenizer = load_tokenizer(str(model_dir))
    if name == "openqa":
        config = DatasetConfig(name, "openqa", path=str(FIXTURES / "open_qa.jsonl"))
    else:
        config = DatasetConfig(name, "random", input_tokens=48, count=20)
    return load_prompts(config, tokenizer=tokenizer)


@pytest.mark.parametrize("dataset", ["openqa", "random"])
def test_fifty_requests_at_parallel_four(
    vllm_server: Server, tiny_model_dir: Path, dataset: str
) -> None:
    endpoint = vllm_server.endpoint
    assert endpoint is not None
    config = LoadConfig(
        parallel=4, requests=50, warmup=2, max_tokens=24, ignore_eos=True, temperature=0.0
    )
    prompts = dataset_prompts(dataset, tiny_model_dir)
    result = run_load(endpoint, prompts, config)
    measured = result.measured
    assert len(measured) == 50
    assert result.interrupted is None
    for record in measured:
        assert record.ok, f"request {record.index}: {record.error} {record.error_message}"
        assert record.http_status == 200
        # ignore_eos reaches vLLM, so every answer is exactly max_tokens long, per its usage
        assert (record.output_tokens, record.token_source) == (24, "usage")
        assert record.input_tokens is not None and record.input_tokens > 0
        if dataset == "random":  # exact prompt length, plus the chat template's tokens
            assert record.input_tokens >= 48
        assert record.first_chunk_at is not None and record.first_content_at is not None
        assert record.sent_at <= record.first_chunk_at <= record.first_content_at
        assert record.first_content_at <= record.end_at
        assert 1 <= len(record.content_times) <= 24
        assert list(record.content_times) == sorted(record.content_times)
        assert record.finish_reason == "length"
        assert record.extra["response_id"]
    assert result.window_start < result.window_end
    # vLLM's streams take the bulk decoder; without it the client ingests about half as much
    assert result.decoded_by == {"bulk": len(result.records)}


@pytest.mark.parametrize("stream", [True, False])
def test_completions_api(vllm_server: Server, stream: bool) -> None:
    endpoint = vllm_server.endpoint
    assert endpoint is not None
    config = LoadConfig(
        api="completions", stream=stream, parallel=2, requests=4, max_tokens=8, ignore_eos=True
    )
    result = run_load(endpoint, simple_prompts(), config)
    assert result.decoded_by == {"bulk" if stream else "json": len(result.records)}
    for record in result.records:
        assert record.ok, record.error_message
        assert (record.output_tokens, record.token_source) == (8, "usage")
        assert record.first_content_at is not None
        assert record.first_content_at <= record.end_at
