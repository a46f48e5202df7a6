"""Build a tiny Qwen2-architecture model with random weights, offline, for tests and the CPU demo.

The tokenizer is a byte-level BPE trained here on a synthetic English and Chinese corpus, so no
hub access is needed; the weights are written with ``safetensors.numpy``, so no torch either.
The architecture is the smallest one vLLM's CPU attention accepts (head_dim 64).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Bump when the bytes written change, so caches built by an older version are not reused.
BUILDER_VERSION = 2

HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 2
NUM_HEADS = 2
NUM_KV_HEADS = 1
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS  # 64: vLLM's CPU attention rejects smaller head sizes
MAX_POSITIONS = 16384
TARGET_VOCAB = 1000

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
)

_ENGLISH = (  # noqa: SIM905 - a word list reads better as text
    "the quick brown fox jumps over lazy dog model server latency token stream batch throughput "
    "memory request answer question explain quantum computing deploy inference engine cache "
    "what is how does why can you please write a short story about time first output per "
    "second user assistant system hello world language large test service objective level "
    "and or not with from into this that it is are was be have has do does of in on at to for"
).split()
_CHINESE = (  # noqa: SIM905
    "你好 世界 解释 一下 量子 计算 推理 服务 模型 显存 吞吐 并发 请求 延迟 问题 回答 什么 "
    "如何 为什么 请 写 一个 故事 关于 时间 首个 输出 每秒 用户 助手 系统 语言 测试 目标 "
    "的 是 在 和 了 我 你 他 我们 可以 这个 那个 中国 北京 上海 学习 机器 数据"
).split()
# full-width punctuation on purpose: Chinese text uses it
_PUNCTUATION = (". ", ", ", "? ", "! ", "\u3002", "\uff0c", "\uff1f", "\n", ": ", "0", "42", "2024")


class TinyModelDepsMissing(ImportError):
    """The optional packages that build the tiny model are not installed."""


def default_cache_dir() -> Path:
    """``$LLMSLO_CACHE``, else ``~/.cache/pytest-llmslo``."""
    env = os.environ.get("LLMSLO_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "pytest-llmslo"


def default_model_dir(seed: int = 0) -> Path:
    return default_cache_dir() / "models" / f"tiny-qwen2-s{seed}-v{BUILDER_VERSION}"


def is_complete(model_dir: Path) -> bool:
    return _has_all(model_dir, MODEL_FILES)


def build_tiny_model(out_dir: Path | None = None, *, seed: int = 0) -> Path:
    """Build (or reuse) the tiny model directory and return its path.

    Built into a temporary sibling and renamed into place, so concurrent builders (pytest-xdist
    workers) never see half a model; the same seed always gives the same bytes.
    """
    target = Path(out_dir) if out_dir is not None else default_model_dir(seed)

    def write(staging: Path) -> None:
        tokenizers_mod, save_numpy = _require_deps()
        _write_model(staging, seed, tokenizers_mod, save_numpy)

    return build_atomically(target, MODEL_FILES, write, what="tiny model")


def build_atomically(
    target: Path, files: Sequence[str], write: Callable[[Path], None], *, what: str
) -> Path:
    """Reuse ``target`` when it holds every one of ``files``, else ``write`` it, atomically.

    ``write`` fills a temporary sibling directory, which is then renamed into place: concurrent
    builders never see half a model, and the one that loses the race keeps the winner's copy.
    """
    target = target.expanduser().absolute()
    if _has_all(target, files):
        return target
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(
            f"{target} exists but is not a complete {what} "
            f"(it needs {', '.join(files)}): remove it or choose another output directory"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(staging)
        # mkdtemp creates 0700; a shared cache must be readable by other users' servers
        staging.chmod(0o755)
        for name in files:
            (staging / name).chmod(0o644)
        try:
            # rename over an empty directory succeeds; over a complete one it fails, and
            # then another builder got there first with identical bytes
            os.rename(staging, target)
        except OSError:
            if not _has_all(target, files):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _has_all(model_dir: Path, files: Sequence[str]) -> bool:
    return all((model_dir / name).is_file() for name in files)


def _require_deps() -> tuple[Any, Any]:
    try:
        import tokenizers
        from safetensors import numpy as safetensors_numpy
    except ImportError as exc:
        raise TinyModelDepsMissing(
            f"building the tiny test model needs the packages 'tokenizers' and 'safetensors' "
            f"({exc}); install them with: pip install 'pytest-llmslo[tiny]'"
        ) from exc
    return tokenizers, safetensors_numpy.save_file


def _corpus() -> list[str]:
    # Fixed, seed-independent corpus: the tokenizer is the same for every seed.
    rng = random.Random(20241126)
    lines = []
    for _ in range(3000):
        words = []
        for _ in range(rng.randint(8, 30)):
            pool = _CHINESE if rng.random() < 0.4 else _ENGLISH
            words.append(rng.choice(pool))
            if rng.random() < 0.1:
                words.append(rng.choice(_PUNCTUATION))
        lines.append(" ".join(words))
    return lines


def _train_tokenizer(tokenizers: Any) -> Any:
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def _visible_tokens(tok: Any) -> np.ndarray:
    """Which tokens decode to whole, non-blank text (not specials, byte fragments, whitespace)."""
    vocab = tok.get_vocab_size()
    mask = np.zeros(vocab, dtype=bool)
    for token_id in range(vocab):
        text = tok.decode([token_id], skip_special_tokens=True)
        mask[token_id] = bool(text.strip()) and "\ufffd" not in text
    return mask


def _weights(seed: int, visible: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    vocab = len(visible)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    q_out = NUM_HEADS * HEAD_DIM
    kv_out = NUM_KV_HEADS * HEAD_DIM
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(vocab, HIDDEN_SIZE)}
    for i in range(NUM_LAYERS):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = np.ones(HIDDEN_SIZE, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN_SIZE, np.float32)
        tensors[p + "self_attn.q_proj.weight"] = normal(q_out, HIDDEN_SIZE)
        tensors[p + "self_attn.q_proj.bias"] = normal(q_out)
        tensors[p + "self_attn.k_proj.weight"] = normal(kv_out, HIDDEN_SIZE)
        tensors[p + "self_attn.k_proj.bias"] = normal(kv_out)
        tensors[p + "self_attn.v_proj.weight"] = normal(kv_out, HIDDEN_SIZE)
        tensors[p + "self_attn.v_proj.bias"] = normal(kv_out)
        tensors[p + "self_attn.o_proj.weight"] = normal(HIDDEN_SIZE, q_out)
        tensors[p + "mlp.gate_proj.weight"] = normal(INTERMEDIATE_SIZE, HIDDEN_SIZE)
        tensors[p + "mlp.up_proj.weight"] = normal(INTERMEDIATE_SIZE, HIDDEN_SIZE)
        tensors[p + "mlp.down_proj.weight"] = normal(HIDDEN_SIZE, INTERMEDIATE_SIZE)
    tensors["model.norm.weight"] = np.ones(HIDDEN_SIZE, np.float32)
    # With uniform random logits, greedy decoding picks newlines or half a UTF-8 character,
    # which servers strip or hold back, so answers arrive empty. Large output rows for visible
    # tokens and tiny ones for the rest make every answer visible text; EOS stays unlikely.
    row_scale = np.where(visible, 10.0, 0.1).astype(np.float32)[:, None]
    tensors["lm_head.weight"] = normal(vocab, HIDDEN_SIZE) * row_scale
    return tensors


def _dump_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", "utf-8")


def _write_model(out: Path, seed: int, tokenizers: Any, save_numpy: Any) -> None:
    tok = _train_tokenizer(tokenizers)
    vocab = tok.get_vocab_size()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", "utf-8")
    _dump_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": IM_END,
            "pad_token": ENDOFTEXT,
            "unk_token": None,
            "model_max_length": MAX_POSITIONS,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _dump_json(
        out / "config.json",
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": vocab,
            "hidden_size": HIDDEN_SIZE,
            "intermediate_size": INTERMEDIATE_SIZE,
            "num_hidden_layers": NUM_LAYERS,
            "num_attention_heads": NUM_HEADS,
            "num_key_value_heads": NUM_KV_HEADS,
            "head_dim": HEAD_DIM,
            "hidden_act": "silu",
            "max_position_embeddings": MAX_POSITIONS,
            "max_window_layers": NUM_LAYERS,
            "use_sliding_window": False,
            "sliding_window": None,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "initializer_range": 0.02,
            "attention_dropout": 0.0,
            "tie_word_embeddings": False,
            "use_cache": True,
            "torch_dtype": "float32",
            "bos_token_id": ids[ENDOFTEXT],
            "eos_token_id": ids[IM_END],
            "pad_token_id": ids[ENDOFTEXT],
        },
    )
    _dump_json(
        out / "generation_config.json",
        {
            "bos_token_id": ids[ENDOFTEXT],
            "eos_token_id": [ids[IM_END], ids[ENDOFTEXT]],
            "pad_token_id": ids[ENDOFTEXT],
        },
    )
    save_numpy(
        _weights(seed, _visible_tokens(tok)),
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_llmslo.testing.tiny_model",
        description="Build the tiny offline Qwen2-architecture test model and print its path.",
    )
    parser.add_argument(
        "out", nargs="?", type=Path, help="output directory (default: the cache directory)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ns = parser.parse_args(argv)
    try:
        path = build_tiny_model(ns.out, seed=ns.seed)
    except (ImportError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
