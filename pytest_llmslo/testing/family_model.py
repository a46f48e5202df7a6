"""Build a tiny offline model of a mainstream family (``builtin:tiny-<family>``) that answers
every chat prompt with a fixed, known script.

Random weights make servers do real work, but their text is noise that seldom ends: a test could
not check that a stream stops at the family's end-of-turn token, that reasoning comes before the
answer, or that counted tokens match the server's. So the weights are random except for a few
directions that script the answer. The residual stream of a scripted token is one reserved
hidden dimension, far larger than what the random layers add; the output row of the token that
must follow reads that dimension alone. The model therefore answers the end of a chat prompt
(``<|start_header_id|>assistant<|end_header_id|>\\n\\n``, ``[/INST]``, ...) with the script's
tokens, then its end-of-turn token, whatever the sampling settings: the margin is tens of
logits. Qwen3 first reasons: ``<think>``, a few words, ``</think>``, then the answer. Every
other context gets the random, visible-text-only noise of ``builtin:tiny``.

``llmslo_script.json`` in the model directory records the script (texts, token counts per
prompt ending) for the tests that check servers against it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_llmslo.testing import tokenizer_train
from pytest_llmslo.testing.families import (
    FAMILIES,
    HEAD_DIM,
    HIDDEN_SIZE,
    INTERMEDIATE_SIZE,
    MAX_POSITIONS,
    NUM_HEADS,
    NUM_KV_HEADS,
    NUM_LAYERS,
    TARGET_VOCAB,
    Family,
    family,
    model_config,
)
from pytest_llmslo.testing.tiny_model import (
    _dump_json,
    _require_deps,
    build_atomically,
    default_cache_dir,
)

# Bump when the bytes written change, so caches built by an older version are not reused.
BUILDER_VERSION = 2
SCRIPT_FILE = "llmslo_script.json"
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors",
    SCRIPT_FILE,
)

# Words the script is made of, in order of preference; those that are one token (with their
# leading space) in the family's tokenizer are used. Chinese ones first, so that every answer
# streams multi-byte text.
ANSWER_WORDS = ("你好", "世界", "the", "model", "answer", "is", "quick", "and", "fast", "服务")
REASONING_WORDS = ("explain", "question", "first", "what", "how", "why", "time", "语言")
ANSWER_LENGTH = 8
REASONING_LENGTH = 6

EMBED_SCALE = 50.0  # a scripted token's reserved dimension, against ~0.05 from each layer
SCRIPT_LOGIT = 5.0  # output weight on that dimension: ~55 logits after the final norm
NOISE_STD = 0.02


@dataclass(frozen=True)
class Script:
    """What the model answers: token ids of its reasoning and answer, and who follows whom."""

    reasoning: tuple[int, ...]
    answer: tuple[int, ...]
    transitions: dict[int, int]  # predecessor token id -> the id the model emits after it
    generated: dict[str, int]  # prompt tail -> tokens generated up to and with end-of-turn


def default_model_dir(key: str, seed: int = 0) -> Path:
    return default_cache_dir() / "models" / f"tiny-{key}-s{seed}-v{BUILDER_VERSION}"


def build_family_model(key: str, out_dir: Path | None = None, *, seed: int = 0) -> Path:
    """Build (or reuse) the tiny model of family ``key`` and return its directory."""
    fam = family(key)
    target = Path(out_dir) if out_dir is not None else default_model_dir(key, seed)

    def write(staging: Path) -> None:
        _require_deps()
        _write_model(staging, fam, seed)

    files = (*MODEL_FILES, *fam.code)
    return build_atomically(target, files, write, what=f"tiny {fam.title} model")


def read_script(model_dir: Path) -> dict[str, Any]:
    """The script a family model answers with (see the module docstring)."""
    data: dict[str, Any] = json.loads((model_dir / SCRIPT_FILE).read_text("utf-8"))
    return data


# -- the script -------------------------------------------------------------------------------


def make_script(fam: Family, tok: Any) -> Script:
    """Choose the script's tokens and chain them after each of the family's prompt endings."""

    def single(word: str) -> int | None:
        ids = tok.encode(" " + word, add_special_tokens=False).ids
        return ids[0] if len(ids) == 1 else None

    def pick(words: tuple[str, ...], count: int, taken: set[int]) -> tuple[int, ...]:
        chosen: list[int] = []
        for word in words:
            token = single(word)
            if token is not None and token not in taken and token not in chosen:
                chosen.append(token)
            if len(chosen) == count:
                break
        if len(chosen) < count:
            raise RuntimeError(f"{fam.key}: too few single-token words for its script")
        _check_round_trip(fam, tok, chosen)
        return tuple(chosen)

    answer = pick(ANSWER_WORDS, ANSWER_LENGTH, set())
    reasoning = pick(REASONING_WORDS, REASONING_LENGTH, set(answer)) if fam.think else ()
    end = tok.token_to_id(fam.end_of_turn)
    answer_chain = [*answer, end]
    chains: dict[str, list[int]] = {"answer": answer_chain}
    if fam.think:
        think_open, think_close = (tok.token_to_id(t) for t in fam.think)
        chains["reasoning"] = [think_open, *reasoning, think_close, *answer_chain]
    transitions: dict[int, int] = {}

    def link(before: int, after: int) -> None:
        if transitions.get(before, after) != after:
            raise RuntimeError(f"{fam.key}: token {before} would need two successors")
        transitions[before] = after

    generated: dict[str, int] = {}
    for tail, phase in fam.starts:
        chain = chains[phase]
        start = tok.encode(tail, add_special_tokens=False).ids[-1]
        if start in chain:
            raise RuntimeError(f"{fam.key}: the prompt ending {tail!r} is part of the script")
        link(start, chain[0])
        for before, after in itertools.pairwise(chain):
            link(before, after)
        generated[tail] = len(chain)
    return Script(reasoning, answer, transitions, generated)


def _check_round_trip(fam: Family, tok: Any, ids: list[int]) -> None:
    # the server streams decoded text; counting it again must give back the same tokens
    text = tok.decode(ids)
    again = tok.encode(text, add_special_tokens=False).ids
    if again != ids:
        raise RuntimeError(f"{fam.key}: script text {text!r} re-tokenizes differently")


# -- weights ----------------------------------------------------------------------------------


def scripted_embeddings(
    vocab: int, visible: np.ndarray, script: Script, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Input embeddings and output rows: random noise, plus one reserved dimension per link."""
    links = list(script.transitions.items())
    reserved = len(links)
    embed = rng.standard_normal((vocab, HIDDEN_SIZE)).astype(np.float32)
    # as in builtin:tiny: visible tokens win in random contexts, fragments and specials do not
    row_scale = np.where(visible, 10.0, 0.1).astype(np.float32)[:, None]
    head = (rng.standard_normal((vocab, HIDDEN_SIZE)) * NOISE_STD).astype(np.float32) * row_scale
    embed[:, :reserved] = 0.0
    head[:, :reserved] = 0.0
    for dim, (before, _) in enumerate(links):
        embed[before] = 0.0
        embed[before, dim] = EMBED_SCALE
    for dim, (_, after) in enumerate(links):
        # a scripted token is emitted only where the script calls for it
        head[after, reserved:] = 0.0
        head[after, dim] = SCRIPT_LOGIT
    return embed, head


def visible_tokens(tok: Any) -> np.ndarray:
    """Tokens that decode to printable, non-blank text: what the noise of random contexts uses.

    Control characters are left out too (unlike ``builtin:tiny``): a NUL in a streamed answer
    is legal JSON but trips up the people reading it.
    """
    vocab = tok.get_vocab_size()
    mask = np.zeros(vocab, dtype=bool)
    for token_id in range(vocab):
        text = tok.decode([token_id], skip_special_tokens=True)
        mask[token_id] = bool(text.strip()) and text.isprintable() and "\ufffd" not in text
    return mask


def _layer_tensors(fam: Family, normal: Callable[..., np.ndarray]) -> dict[str, np.ndarray]:
    ones = np.ones(HIDDEN_SIZE, np.float32)
    q_out, kv_out = NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM
    tensors: dict[str, np.ndarray] = {}
    for i in range(NUM_LAYERS):
        if fam.layout == "chatglm":
            p = f"transformer.encoder.layers.{i}."
            tensors[p + "input_layernorm.weight"] = ones
            tensors[p + "post_attention_layernorm.weight"] = ones
            qkv = q_out + 2 * kv_out
            tensors[p + "self_attention.query_key_value.weight"] = normal(qkv, HIDDEN_SIZE)
            tensors[p + "self_attention.query_key_value.bias"] = normal(qkv)
            tensors[p + "self_attention.dense.weight"] = normal(HIDDEN_SIZE, q_out)
            tensors[p + "mlp.dense_h_to_4h.weight"] = normal(2 * INTERMEDIATE_SIZE, HIDDEN_SIZE)
            tensors[p + "mlp.dense_4h_to_h.weight"] = normal(HIDDEN_SIZE, INTERMEDIATE_SIZE)
            continue
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = ones
        tensors[p + "post_attention_layernorm.weight"] = ones
        if fam.layout == "baichuan":
            # Baichuan 2's fused projection, without grouped-query attention
            tensors[p + "self_attn.W_pack.weight"] = normal(3 * HIDDEN_SIZE, HIDDEN_SIZE)
        else:
            tensors[p + "self_attn.q_proj.weight"] = normal(q_out, HIDDEN_SIZE)
            tensors[p + "self_attn.k_proj.weight"] = normal(kv_out, HIDDEN_SIZE)
            tensors[p + "self_attn.v_proj.weight"] = normal(kv_out, HIDDEN_SIZE)
            if fam.config.get("attention_bias"):
                tensors[p + "self_attn.q_proj.bias"] = normal(q_out)
                tensors[p + "self_attn.k_proj.bias"] = normal(kv_out)
                tensors[p + "self_attn.v_proj.bias"] = normal(kv_out)
        if fam.model_type == "qwen3":
            tensors[p + "self_attn.q_norm.weight"] = np.ones(HEAD_DIM, np.float32)
            tensors[p + "self_attn.k_norm.weight"] = np.ones(HEAD_DIM, np.float32)
        tensors[p + "self_attn.o_proj.weight"] = normal(HIDDEN_SIZE, q_out)
        if fam.model_type == "glm4":
            tensors[p + "mlp.gate_up_proj.weight"] = normal(2 * INTERMEDIATE_SIZE, HIDDEN_SIZE)
            # GLM-4 normalises each sub-layer's output before adding it to the residual stream:
            # small gains keep that stream dominated by the token embedding the script relies on
            tensors[p + "post_self_attn_layernorm.weight"] = ones * 0.05
            tensors[p + "post_mlp_layernorm.weight"] = ones * 0.05
        else:
            tensors[p + "mlp.gate_proj.weight"] = normal(INTERMEDIATE_SIZE, HIDDEN_SIZE)
            tensors[p + "mlp.up_proj.weight"] = normal(INTERMEDIATE_SIZE, HIDDEN_SIZE)
        tensors[p + "mlp.down_proj.weight"] = normal(HIDDEN_SIZE, INTERMEDIATE_SIZE)
    return tensors


def family_weights(
    fam: Family, seed: int, visible: np.ndarray, script: Script
) -> dict[str, np.ndarray]:
    """Every tensor of the family's checkpoint layout, float32."""
    rng = np.random.default_rng(seed)
    embed, head = scripted_embeddings(len(visible), visible, script, rng)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * NOISE_STD).astype(np.float32)

    tensors = _layer_tensors(fam, normal)
    final_norm = np.ones(HIDDEN_SIZE, np.float32)
    if fam.layout == "chatglm":
        tensors["transformer.embedding.word_embeddings.weight"] = embed
        tensors["transformer.encoder.final_layernorm.weight"] = final_norm
        tensors["transformer.output_layer.weight"] = head
    else:
        tensors["model.embed_tokens.weight"] = embed
        tensors["model.norm.weight"] = final_norm
        tensors["lm_head.weight"] = head
    return tensors


# -- files ------------------------------------------------------------------------------------


def _write_model(out: Path, fam: Family, seed: int) -> None:
    from safetensors.numpy import save_file

    tok = tokenizer_train.train(fam.style, fam.specials, TARGET_VOCAB, fam.bos)
    vocab = tok.get_vocab_size()

    def token_id(text: str) -> int:
        found = tok.token_to_id(text)
        if found is None:
            raise RuntimeError(f"{fam.key}: {text!r} is not in its tokenizer")
        return int(found)

    script = make_script(fam, tok)
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", "utf-8")
    roles = {"bos_token": fam.bos, "eos_token": fam.eos, "pad_token": fam.pad, "unk_token": fam.unk}
    _dump_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **roles,
            "add_bos_token": fam.bos is not None,
            "model_max_length": MAX_POSITIONS,
            "clean_up_tokenization_spaces": False,
            "chat_template": fam.chat_template,
        },
    )
    for name, source in fam.code.items():
        (out / name).write_text(source, "utf-8")
    _dump_json(out / "special_tokens_map.json", {k: v for k, v in roles.items() if v is not None})
    _dump_json(out / "config.json", model_config(fam, vocab, token_id))
    generation: dict[str, Any] = {"eos_token_id": [token_id(t) for t in fam.stop_tokens]}
    if fam.bos is not None:
        generation["bos_token_id"] = token_id(fam.bos)
    if fam.pad is not None:
        generation["pad_token_id"] = token_id(fam.pad)
    _dump_json(out / "generation_config.json", generation)
    save_file(
        family_weights(fam, seed, visible_tokens(tok), script),
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
    _dump_json(
        out / SCRIPT_FILE,
        {
            "family": fam.key,
            "title": fam.title,
            "answer_text": tok.decode(list(script.answer)),
            "answer_tokens": len(script.answer),
            "reasoning_text": tok.decode(list(script.reasoning)),
            "reasoning_tokens": len(script.reasoning),
            "think": list(fam.think) if fam.think else None,
            "end_of_turn": fam.end_of_turn,
            # tokens generated per prompt ending, markers and end-of-turn token included
            "generated_tokens": script.generated,
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_llmslo.testing.family_model",
        description="Build a tiny offline model of a mainstream family and print its path.",
    )
    parser.add_argument("family", choices=sorted(FAMILIES), help="which family")
    parser.add_argument(
        "out", nargs="?", type=Path, help="output directory (default: the cache directory)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ns = parser.parse_args(argv)
    try:
        path = build_family_model(ns.family, ns.out, seed=ns.seed)
    except (ImportError, FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
