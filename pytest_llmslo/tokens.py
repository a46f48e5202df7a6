"""The model's own tokenizer, loaded from local files only, for counting and building prompts.

Token counts are never estimated from characters: either the model's tokenizer is available on
this machine or there is no count, and :class:`TokenizerUnavailable` says why.

Lookup order for ``open_tokenizer(model)``:

1. ``model`` is a local directory (or a ``tokenizer.json`` file): its ``tokenizer.json`` is read
   with the ``tokenizers`` library (extra ``[tiny]``); without that file or that library,
   ``transformers.AutoTokenizer`` reads the directory.
2. ``model`` is a hub id: the Hugging Face cache (``HF_HUB_CACHE``, ``HF_HOME``/hub or
   ``~/.cache/huggingface/hub``) is searched for a snapshot with ``tokenizer.json``; failing that,
   ``transformers.AutoTokenizer`` is asked with ``local_files_only=True``. Nothing is downloaded.

Counts are of the text alone: no special tokens and no chat template, which the server adds.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol


class TokenizerUnavailable(RuntimeError):
    """The model's tokenizer cannot be loaded from this machine; the message says why."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"no tokenizer for {model!r}: {reason}")
        self.model = model
        self.reason = reason


class Tokenizer(Protocol):
    """What the project needs from a tokenizer; encode and count leave out special tokens."""

    @property
    def name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def count(self, text: str) -> int: ...


class FastTokenizer:
    """A ``tokenizers`` tokenizer read from a ``tokenizer.json`` file (no torch needed)."""

    def __init__(self, path: Path, name: str | None = None) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self._inner: Any = RustTokenizer.from_file(str(path))
        self.path = path
        self._name = name or str(path.parent)
        # get_vocab_size rebuilds the vocabulary on every call (about 20 ms for Qwen's 151k tokens)
        self._vocab_size = int(self._inner.get_vocab_size(with_added_tokens=True))

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        return list(self._inner.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._inner.decode(list(ids), skip_special_tokens=True))

    def count(self, text: str) -> int:
        return len(self._inner.encode(text, add_special_tokens=False).ids)

    def __repr__(self) -> str:
        return f"FastTokenizer({self._name!r})"


class TransformersTokenizer:
    """A tokenizer loaded by ``transformers.AutoTokenizer`` from local files only."""

    def __init__(self, model: str) -> None:
        from transformers import AutoTokenizer

        self._inner: Any = AutoTokenizer.from_pretrained(model, local_files_only=True)
        self._name = model
        self._vocab_size = len(self._inner)  # computed anew on every len(); cache it

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        return list(self._inner.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._inner.decode(list(ids), skip_special_tokens=True))

    def count(self, text: str) -> int:
        return len(self._inner.encode(text, add_special_tokens=False))

    def __repr__(self) -> str:
        return f"TransformersTokenizer({self._name!r})"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def hub_cache_dir() -> Path:
    """Where the Hugging Face hub cache lives, following its own environment variables."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _cached_tokenizer_json(model: str) -> Path | None:
    """The ``tokenizer.json`` of a hub id in the local cache, preferring the ``main`` snapshot."""
    repo = hub_cache_dir() / ("models--" + model.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        preferred = snapshots / ref.read_text(encoding="utf-8").strip() / "tokenizer.json"
        if preferred.is_file():
            return preferred
    for snapshot in sorted(snapshots.iterdir()):
        candidate = snapshot / "tokenizer.json"
        if candidate.is_file():
            return candidate
    return None


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or "\\" in model


def _from_transformers(model: str, where: str) -> Tokenizer:
    if not _installed("transformers"):
        raise TokenizerUnavailable(
            model,
            f"{where}, and transformers is not installed to read other tokenizer formats; "
            "install the [tiny] extra (tokenizers) with a tokenizer.json, or install transformers",
        )
    try:
        return TransformersTokenizer(model)
    except Exception as exc:  # transformers raises OSError, ValueError and more for missing files
        raise TokenizerUnavailable(
            model, f"{where}, and transformers could not load it offline ({exc})"
        ) from exc


def open_tokenizer(model: str) -> Tokenizer:
    """The tokenizer of ``model`` (local directory or cached hub id), or TokenizerUnavailable."""
    if not model:
        raise TokenizerUnavailable(model, "no model given; name a local directory or a hub id")
    path = Path(model).expanduser()
    has_fast = _installed("tokenizers")
    if path.is_file() and path.name == "tokenizer.json":
        if not has_fast:
            raise TokenizerUnavailable(
                model, "reading tokenizer.json needs the tokenizers library (extra [tiny])"
            )
        return FastTokenizer(path, name=str(path.parent))
    if path.is_dir():
        tokenizer_json = path / "tokenizer.json"
        if tokenizer_json.is_file() and has_fast:
            return FastTokenizer(tokenizer_json, name=model)
        where = (
            f"{path} has a tokenizer.json but the tokenizers library is not installed"
            if tokenizer_json.is_file()
            else f"{path} has no tokenizer.json"
        )
        return _from_transformers(str(path), where)
    if _looks_like_path(model) or path.exists():
        raise TokenizerUnavailable(
            model, f"{path} is not a directory; point model at the directory holding the model"
        )
    cached = _cached_tokenizer_json(model)
    if cached is not None and has_fast:
        return FastTokenizer(cached, name=model)
    where = (
        f"{model!r} is not a local directory and has no tokenizer.json in the Hugging Face cache "
        f"({hub_cache_dir()}); nothing is downloaded: fetch the model beforehand or point model "
        "at a local directory"
    )
    if not (hub_cache_dir() / ("models--" + model.replace("/", "--"))).is_dir():
        # importing transformers takes seconds: only worth it when the hub cache has the model
        raise TokenizerUnavailable(model, where)
    return _from_transformers(model, where)


def load_tokenizer(model: str) -> Tokenizer | None:
    """The tokenizer of ``model``, or None when it is not on this machine (see open_tokenizer)."""
    try:
        return open_tokenizer(model)
    except TokenizerUnavailable:
        return None
