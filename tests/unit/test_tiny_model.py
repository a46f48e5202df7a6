"""The tiny offline model: deterministic, cached atomically, loadable by transformers."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from pytest_llmslo.testing import tiny_model
from pytest_llmslo.testing.tiny_model import MODEL_FILES, build_tiny_model


def file_bytes(model_dir: Path) -> dict[str, bytes]:
    return {name: (model_dir / name).read_bytes() for name in MODEL_FILES}


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", seed=3)
    second = build_tiny_model(tmp_path / "b", seed=3)
    assert sorted(p.name for p in first.iterdir()) == sorted(MODEL_FILES)
    assert file_bytes(first) == file_bytes(second)

    other = file_bytes(build_tiny_model(tmp_path / "c", seed=4))
    assert other["model.safetensors"] != file_bytes(first)["model.safetensors"]
    assert other["tokenizer.json"] == file_bytes(first)["tokenizer.json"]


def test_config_fits_vllm_cpu(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tok = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert config["max_position_embeddings"] >= 16384
    vocab = len(tok["model"]["vocab"])
    assert 400 <= vocab <= 1000
    assert config["vocab_size"] == vocab
    assert (tiny_model_dir / "model.safetensors").stat().st_size < 4_000_000


def test_existing_model_is_reused(tmp_path: Path) -> None:
    target = build_tiny_model(tmp_path / "m")
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "m") == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp


def test_concurrent_builders_all_get_a_whole_model(tmp_path: Path) -> None:
    target = tmp_path / "shared"
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(build_tiny_model(target, seed=1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [target] * 4
    assert tiny_model.is_complete(target)
    # no staging directory is left behind
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]


def test_default_dir_follows_the_cache_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMSLO_CACHE", str(tmp_path))
    path = build_tiny_model(seed=7)
    assert path == tmp_path / "models" / f"tiny-qwen2-s7-v{tiny_model.BUILDER_VERSION}"
    assert tiny_model.is_complete(path)


def test_refuses_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a complete tiny model"):
        build_tiny_model(tmp_path)


def test_missing_optional_packages_name_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"pip install 'pytest-llmslo\[tiny\]'"):
        build_tiny_model(tmp_path / "m")


def test_cli_prints_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tiny_model.main([str(tmp_path / "cli"), "--seed", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert tiny_model.is_complete(tmp_path / "cli")


def test_loads_with_transformers_and_generates(tiny_model_dir: Path) -> None:
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    messages = [{"role": "user", "content": "你好 世界, explain quantum computing"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>user\n你好 世界, explain quantum computing<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    ids = tokenizer(text, return_tensors="pt")
    # trained merges: whole words, Chinese ones included, are single tokens
    assert ids["input_ids"].shape[1] <= 16
    assert tokenizer.decode(ids["input_ids"][0]) == text

    out = model.generate(**ids, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5
