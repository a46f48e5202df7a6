"""Tiny models of mainstream families: conventions, deterministic builds, scripted answers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_llmslo.config import ServerConfig
from pytest_llmslo.models import builtin_models, resolve_model
from pytest_llmslo.records import Endpoint
from pytest_llmslo.session import tokenizer_for
from pytest_llmslo.testing import family_model
from pytest_llmslo.testing.families import FAMILIES, Family, family, runs_on
from pytest_llmslo.testing.family_model import (
    MODEL_FILES,
    build_family_model,
    family_weights,
    make_script,
    read_script,
    visible_tokens,
)
from pytest_llmslo.testing.tokenizer_train import train
from pytest_llmslo.tokens import open_tokenizer

pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parents[2]
# what transformers itself implements; the others need a checkpoint's own code there
TRANSFORMERS_NATIVE = [k for k, f in FAMILIES.items() if "hf" in runs_on(f)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {key: build_family_model(key, root / key) for key in FAMILIES}


def tokenizer_of(fam: Family) -> Any:
    return train(fam.style, fam.specials, 1000, fam.bos)


def test_same_seed_gives_the_same_bytes_and_the_cache_is_reused(
    tmp_path: Path, built: dict[str, Path]
) -> None:
    again = build_family_model("glm4", tmp_path / "again")
    for name in MODEL_FILES:
        assert (again / name).read_bytes() == (built["glm4"] / name).read_bytes(), name
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert build_family_model("glm4", tmp_path / "again") == again
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    other = build_family_model("glm4", tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()


@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_files_carry_the_family_conventions(built: dict[str, Path], key: str) -> None:
    fam = family(key)
    model_dir = built[key]
    config = json.loads((model_dir / "config.json").read_text())
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    generation = json.loads((model_dir / "generation_config.json").read_text())
    vocab = json.loads((model_dir / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    assert config["architectures"] == [fam.architecture]
    assert config["model_type"] == fam.model_type
    assert config.get("vocab_size", config.get("padded_vocab_size")) >= len(ids)
    # vLLM's CPU attention needs head_dim 64
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert tok_config["chat_template"] == fam.chat_template
    assert tok_config["eos_token"] == fam.eos
    # every stop token is a single special token, and the script's end is among them
    assert generation["eos_token_id"] == [ids[t] for t in fam.stop_tokens]
    assert fam.end_of_turn in fam.stop_tokens
    for name in fam.code:
        assert "class " in (model_dir / name).read_text()


@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_chat_template_ends_with_the_prompt_the_script_answers(key: str) -> None:
    jinja2 = pytest.importorskip("jinja2")
    fam = family(key)
    template = jinja2.Environment().from_string(fam.chat_template)
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "你好, explain"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "and again?"},
    ]
    specials = {"bos_token": fam.bos or "", "eos_token": fam.eos}
    rendered = template.render(messages=messages, add_generation_prompt=True, **specials)
    tails = [tail for tail, _ in fam.starts]
    assert rendered.endswith(tails[0])
    assert "be brief" in rendered and "an answer" in rendered
    if fam.think:
        off = template.render(
            messages=messages, add_generation_prompt=True, enable_thinking=False, **specials
        )
        assert off.endswith(tails[1]) and "</think>" in off


@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_script_is_chained_from_every_prompt_ending(key: str) -> None:
    fam = family(key)
    tok = tokenizer_of(fam)
    script = make_script(fam, tok)
    end = tok.token_to_id(fam.end_of_turn)
    for tail, phase in fam.starts:
        token = tok.encode(tail, add_special_tokens=False).ids[-1]
        emitted: list[int] = []
        while token != end and len(emitted) < 50:
            token = script.transitions[token]
            emitted.append(token)
        expected = [*script.answer, end]
        if phase == "reasoning":
            assert fam.think is not None
            opening, closing = (tok.token_to_id(t) for t in fam.think)
            expected = [opening, *script.reasoning, closing, *expected]
        assert emitted == expected
        assert script.generated[tail] == len(expected)
    # the streamed text counts back to the same tokens
    text = tok.decode(list(script.answer))
    assert len(tok.encode(text, add_special_tokens=False).ids) == len(script.answer)


@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_output_rows_pick_the_script_with_a_wide_margin(key: str) -> None:
    """The logits of the embedding alone, as the final norm sees it (the random layers add
    a few percent, which the e2e matrix covers): the scripted successor wins by tens."""
    fam = family(key)
    tok = tokenizer_of(fam)
    script = make_script(fam, tok)
    visible = visible_tokens(tok)
    tensors = family_weights(fam, 0, visible, script)
    embed_key = next(k for k in tensors if "embed" in k)
    head_key = next(k for k in tensors if k.endswith(("lm_head.weight", "output_layer.weight")))
    embed, head = tensors[embed_key], tensors[head_key]

    def logits(token: int) -> np.ndarray:
        hidden = embed[token] / np.sqrt(np.mean(embed[token] ** 2))
        return np.asarray(head @ hidden)

    for before, after in script.transitions.items():
        scores = np.sort(logits(before))
        assert int(np.argmax(logits(before))) == after
        assert scores[-1] - scores[-2] > 20
    end = tok.token_to_id(fam.end_of_turn)
    unscripted = [t for t in range(len(visible)) if t not in script.transitions]
    picks = {int(np.argmax(logits(t))) for t in unscripted}
    # elsewhere the model writes visible noise and does not end its turn
    assert end not in picks and all(visible[p] for p in picks)


@pytest.mark.parametrize("key", TRANSFORMERS_NATIVE)
def test_transformers_generates_the_script_even_when_sampling(
    built: dict[str, Path], key: str
) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model_dir = built[key]
    script = read_script(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "你好, explain the model"},
    ]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=40, do_sample=True, temperature=1.0)
    generated = out[0, inputs["input_ids"].shape[1] :].tolist()
    text = tokenizer.decode(generated, skip_special_tokens=False)
    fam = family(key)
    tail = fam.starts[0][0]
    assert len(generated) == script["generated_tokens"][tail]
    assert text.endswith(script["answer_text"] + fam.end_of_turn)
    if fam.think:
        opening, closing = fam.think
        assert text == opening + script["reasoning_text"] + closing + script["answer_text"] + (
            fam.end_of_turn
        )


def test_builtin_ids_resolve_to_built_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMSLO_CACHE", str(tmp_path))
    assert builtin_models()[0] == "builtin:tiny"
    assert "builtin:tiny-qwen3" in builtin_models() and "builtin:tiny-llama3" in builtin_models()
    vllm = resolve_model(ServerConfig(name="v", backend="vllm", model="builtin:tiny-llama3"))
    hf = resolve_model(ServerConfig(name="h", backend="hf", model="builtin:tiny-llama3"))
    assert vllm.model == hf.model == str(family_model.default_model_dir("llama3"))
    assert Path(vllm.model).is_relative_to(tmp_path)
    assert read_script(Path(vllm.model))["family"] == "llama3"
    # transformers serve answers only to the path it loaded; vLLM takes a short name
    assert (vllm.served_model_name, hf.served_model_name) == ("tiny-llama3", None)
    with pytest.raises(ValueError, match=r"unknown built-in model 'builtin:tiny-llama2'.*known"):
        resolve_model(ServerConfig(name="x", backend="vllm", model="builtin:tiny-llama2"))


def test_a_family_id_names_the_tokenizer_of_an_external_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMSLO_CACHE", str(tmp_path))
    config = ServerConfig(
        name="svc", backend="external", base_url="http://h:1", tokenizer="builtin:tiny-glm4"
    )
    named = tokenizer_for(config, Endpoint("http://h:1", "glm", "external"))
    assert named == str(family_model.default_model_dir("glm4"))
    assert open_tokenizer(named).count("你好 世界") == 2


def test_cli_builds_and_prints_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert family_model.main(["mistral", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert family_model.main(["mistral", str(tmp_path / "taken")]) == 2
    assert "not a complete tiny Mistral model" in capsys.readouterr().err


def test_unknown_family_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: llama3, qwen3"):
        family("llama2")


def test_readme_matrix_has_a_row_per_family_and_a_reason_in_every_no_cell() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Model families") :]
    section = section[: section.index("\n## ")]
    rows = [line for line in section.splitlines() if line.startswith("| `builtin:tiny-")]
    # cells split on the pipes that are not escaped (`<\|eot_id\|>` inside a cell)
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    by_id = {cells[0].strip("`"): cells for cells in split}
    assert sorted(by_id) == sorted(f"builtin:tiny-{key}" for key in FAMILIES)
    for key, fam in FAMILIES.items():
        cells = by_id[f"builtin:tiny-{key}"]
        vllm_cell, hf_cell = cells[2], cells[3]
        for backend, cell in (("vllm", vllm_cell), ("hf", hf_cell)):
            if backend in fam.refused:
                assert cell.startswith("no:") and fam.refused[backend] in cell, (key, backend)
            else:
                assert cell.startswith("yes"), (key, backend)
