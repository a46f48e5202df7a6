"""Loading the model's tokenizer from local files only, and why it is unavailable otherwise."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from pytest_llmslo import tokens
from pytest_llmslo.tokens import (
    FastTokenizer,
    TokenizerUnavailable,
    hub_cache_dir,
    load_tokenizer,
    open_tokenizer,
)

SAMPLE = "How fast is the first token? 首个 token 有多快"


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def test_local_directory_loads_tokenizer_json(tiny_model_dir: Path) -> None:
    tokenizer = open_tokenizer(str(tiny_model_dir))
    assert isinstance(tokenizer, FastTokenizer)
    assert tokenizer.name == str(tiny_model_dir)
    ids = tokenizer.encode(SAMPLE)
    assert len(ids) == tokenizer.count(SAMPLE) > 0
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == SAMPLE


def test_counts_leave_out_special_tokens(tiny_model_dir: Path) -> None:
    tokenizer = open_tokenizer(str(tiny_model_dir))
    # the chat template's markers are special: a count is of the text alone
    assert tokenizer.decode(tokenizer.encode("<|im_start|>user\nhi<|im_end|>")) == "user\nhi"
    assert tokenizer.count("") == 0


def test_tokenizer_json_file_is_accepted(tiny_model_dir: Path) -> None:
    tokenizer = open_tokenizer(str(tiny_model_dir / "tokenizer.json"))
    assert tokenizer.encode(SAMPLE) == open_tokenizer(str(tiny_model_dir)).encode(SAMPLE)


@pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed"
)
def test_transformers_reads_directory_without_tokenizers_library(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = open_tokenizer(str(tiny_model_dir))
    real_installed = tokens._installed
    monkeypatch.setattr(
        tokens, "_installed", lambda name: name != "tokenizers" and real_installed(name)
    )
    slow = open_tokenizer(str(tiny_model_dir))
    assert isinstance(slow, tokens.TransformersTokenizer)
    assert slow.encode(SAMPLE) == fast.encode(SAMPLE)
    assert slow.count(SAMPLE) == fast.count(SAMPLE)
    assert slow.decode(slow.encode(SAMPLE)) == SAMPLE
    assert slow.vocab_size == fast.vocab_size


def test_directory_without_tokenizer_is_unavailable_with_reason(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TokenizerUnavailable) as caught:
        open_tokenizer(str(tmp_path))
    assert caught.value.model == str(tmp_path)
    assert "has no tokenizer.json" in caught.value.reason
    assert load_tokenizer(str(tmp_path)) is None


def test_missing_local_path_is_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "nowhere"
    with pytest.raises(TokenizerUnavailable, match="is not a directory"):
        open_tokenizer(str(missing))
    assert load_tokenizer(str(missing)) is None


def test_empty_model_name_is_unavailable() -> None:
    with pytest.raises(TokenizerUnavailable, match="no model given"):
        open_tokenizer("")


def test_uncached_hub_id_is_unavailable_and_nothing_is_downloaded(empty_hub: Path) -> None:
    with pytest.raises(TokenizerUnavailable) as caught:
        open_tokenizer("nobody-here/no-such-model")
    assert "nothing is downloaded" in caught.value.reason
    assert str(empty_hub) in caught.value.reason
    assert load_tokenizer("nobody-here/no-such-model") is None
    assert list(empty_hub.iterdir()) == []


def test_hub_id_found_in_the_cache(tiny_model_dir: Path, empty_hub: Path) -> None:
    repo = empty_hub / "models--someone--tiny"
    for commit in ("aaa", "bbb"):
        (repo / "snapshots" / commit).mkdir(parents=True)
    shutil.copy(tiny_model_dir / "tokenizer.json", repo / "snapshots" / "bbb" / "tokenizer.json")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("bbb\n", encoding="utf-8")
    tokenizer = open_tokenizer("someone/tiny")
    assert isinstance(tokenizer, FastTokenizer)
    assert tokenizer.name == "someone/tiny"
    assert tokenizer.path == repo / "snapshots" / "bbb" / "tokenizer.json"
    assert tokenizer.count(SAMPLE) == open_tokenizer(str(tiny_model_dir)).count(SAMPLE)


def test_hub_cache_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "direct"))
    assert hub_cache_dir() == tmp_path / "direct"
