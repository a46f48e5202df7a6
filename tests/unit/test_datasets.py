"""Reading every dataset format, filtering, sampling, random prompts and every error branch."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_llmslo.config import DatasetConfig
from pytest_llmslo.datasets import (
    DatasetError,
    RandomPromptMaker,
    load_prompts,
    read_rows,
    read_spec_datasets,
)
from pytest_llmslo.spec import SpecError, load_spec
from pytest_llmslo.tokens import Tokenizer, open_tokenizer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return open_tokenizer(str(tiny_model_dir))


def config(fmt: Any, path: str | Path | None = None, **kwargs: Any) -> DatasetConfig:
    return DatasetConfig(
        name="data", format=fmt, path=None if path is None else str(path), **kwargs
    )


def fixture(fmt: Any, name: str, **kwargs: Any) -> DatasetConfig:
    return config(fmt, FIXTURES / name, **kwargs)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, value: Any) -> Path:
    return write(path, json.dumps(value, ensure_ascii=False))


# --- every format, on the committed fixtures -----------------------------------------------


def test_openqa_reads_questions_and_ignores_answers(tokenizer: Tokenizer) -> None:
    prompts = load_prompts(fixture("openqa", "open_qa.jsonl"), tokenizer=tokenizer)
    assert len(prompts) == 44
    assert prompts[0].text == "为什么天空是蓝色的\uff1f"  # ends with a full-width question mark
    assert prompts[-1].text == "Why do we have leap years?"
    assert [p.index for p in prompts] == list(range(44))
    assert all(p.messages is None for p in prompts)
    assert all(p.input_tokens == tokenizer.count(p.as_text()) > 0 for p in prompts)


def test_openqa_without_tokenizer_leaves_counts_unset() -> None:
    prompts = load_prompts(fixture("openqa", "open_qa.jsonl"))
    assert len(prompts) == 44
    assert all(p.input_tokens is None for p in prompts)


def test_longalpaca_prompts_are_long_documents_with_a_question(tokenizer: Tokenizer) -> None:
    prompts = load_prompts(fixture("longalpaca", "longalpaca.json"), tokenizer=tokenizer)
    assert len(prompts) == 8
    for prompt in prompts:
        assert prompt.text is not None
        assert "\nQuestion: What is the default value of" in prompt.text
        assert prompt.input_tokens is not None and prompt.input_tokens > 5000


def test_longalpaca_fixture_is_reproducible_from_its_script() -> None:
    script = FIXTURES / "make_fixtures.py"
    check = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "up to date" in check.stdout
    assert (FIXTURES / "longalpaca.json").stat().st_size < 1_000_000


def test_line_by_line_skips_blank_lines() -> None:
    prompts = load_prompts(fixture("line_by_line", "lines.txt"))
    assert len(prompts) == 31
    assert prompts[0].text == (
        "Explain the difference between a process and a thread in two sentences."
    )
    assert all(p.text and p.text == p.text.strip() for p in prompts)


def test_sharegpt_takes_the_first_human_turn(tokenizer: Tokenizer) -> None:
    prompts = load_prompts(fixture("sharegpt", "sharegpt.json"), tokenizer=tokenizer)
    items = json.loads((FIXTURES / "sharegpt.json").read_text(encoding="utf-8"))
    assert len(prompts) == len(items) == 21
    first = items[0]["conversations"]
    assert prompts[0].text == first[0]["value"]
    assert all(p.input_tokens == tokenizer.count(p.as_text()) > 0 for p in prompts)
    by_text = {p.text: p for p in prompts}
    # a system turn first, and a conversation the assistant opened: the human turn is the prompt
    assert "Convert 100 degrees Fahrenheit to Celsius." in by_text
    assert "Tell me a fun fact about octopuses." in by_text
    # no reply follows: still a prompt
    assert "Explain the Pomodoro technique in one sentence." in by_text
    assert any(p.text and "生日" in p.text for p in prompts)


def test_sharegpt_without_tokenizer_has_no_token_counts() -> None:
    prompts = load_prompts(fixture("sharegpt", "sharegpt.json"))
    assert len(prompts) == 21
    assert all(p.input_tokens is None for p in prompts)


@pytest.mark.parametrize("key", ["conversation", "items"])
def test_sharegpt_accepts_other_turn_keys(tmp_path: Path, key: str) -> None:
    path = write_json(
        tmp_path / "s.json",
        [{key: [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}],
    )
    assert [p.text for p in load_prompts(config("sharegpt", path))] == ["hi"]


def test_sharegpt_skips_conversations_without_a_human_turn(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "s.json",
        [
            {"conversations": []},
            {"conversations": [{"from": "gpt", "value": "only me"}]},
            {"conversations": [{"from": "human", "value": "  "}, {"from": "human", "value": "q"}]},
        ],
    )
    assert [p.text for p in load_prompts(config("sharegpt", path))] == ["q"]


def test_jsonl_mixes_prompt_and_messages_rows(tokenizer: Tokenizer) -> None:
    prompts = load_prompts(fixture("jsonl", "prompts.jsonl"), tokenizer=tokenizer)
    assert len(prompts) == 12
    assert prompts[0].text == "Explain what time to first token measures in an LLM service."
    assert prompts[0].messages is None
    assert prompts[1].text is None
    assert prompts[1].messages == (
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three causes of high tail latency."},
    )
    assert prompts[1].input_tokens == tokenizer.count(
        "You are a concise assistant.\nName three causes of high tail latency."
    )
    assert sum(p.messages is not None for p in prompts) == 6


def test_jsonl_reads_the_named_field(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.jsonl",
        '{"q": "first", "prompt": "ignored"}\n{"q": [{"role": "user", "content": "second"}]}\n',
    )
    prompts = load_prompts(config("jsonl", path, field="q"))
    assert prompts[0].text == "first"
    assert prompts[1].as_messages() == [{"role": "user", "content": "second"}]


# --- paths ---------------------------------------------------------------------------------


def test_relative_path_resolves_against_base_dir_then_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    write(spec_dir / "a.txt", "from the spec directory\n")
    write(tmp_path / "a.txt", "from the current directory\n")
    write(tmp_path / "b.txt", "only in the current directory\n")
    monkeypatch.chdir(tmp_path)
    got = load_prompts(config("line_by_line", "a.txt"), base_dir=spec_dir)
    assert got[0].text == "from the spec directory"
    got = load_prompts(config("line_by_line", "b.txt"), base_dir=spec_dir)
    assert got[0].text == "only in the current directory"


def test_missing_file_names_every_place_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as caught:
        load_prompts(config("openqa", "data/open_qa.jsonl"), base_dir=tmp_path / "spec")
    message = str(caught.value)
    assert "dataset 'data' (data/open_qa.jsonl)" in message
    assert str(tmp_path / "spec" / "data" / "open_qa.jsonl") in message
    assert str(tmp_path / "data" / "open_qa.jsonl") in message
    assert "fix path" in message
    assert isinstance(caught.value, ValueError)
    assert caught.value.path == "data/open_qa.jsonl"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a regular file"):
        load_prompts(config("line_by_line", tmp_path))


def test_file_format_without_path() -> None:
    with pytest.raises(DatasetError, match="no path is given; add `path:`"):
        load_prompts(config("openqa"))


# --- errors in the files -------------------------------------------------------------------


def test_openqa_bad_json_line_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "q.jsonl", '{"question": "a"}\n\n{"question": "b",,}\n')
    with pytest.raises(DatasetError) as caught:
        load_prompts(config("openqa", path))
    assert caught.value.line == 3
    assert f"({path}, line 3): invalid JSON" in str(caught.value)
    assert "fix or delete that line" in str(caught.value)


def test_openqa_given_a_json_list(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"is a JSON list.*use format longalpaca or sharegpt"):
        load_prompts(config("openqa", FIXTURES / "sharegpt.json"))
    one_line = write_json(tmp_path / "l.json", [{"question": "a"}])
    with pytest.raises(DatasetError, match="found a list; use format longalpaca or sharegpt"):
        load_prompts(config("openqa", one_line))


def test_openqa_line_without_question(tmp_path: Path) -> None:
    path = write(tmp_path / "q.jsonl", '{"question": "a"}\n{"title": "b"}\n')
    with pytest.raises(DatasetError) as caught:
        load_prompts(config("openqa", path))
    assert caught.value.line == 2
    assert "no non-empty string `question` (keys: title)" in str(caught.value)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", '{"prompt": "a"}\n"just a string"\n')
    with pytest.raises(DatasetError, match="line 2\\): expected a JSON object, found a string"):
        load_prompts(config("jsonl", path))


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"text": "a"}, "no `prompt` or `messages` key \\(keys: text\\)"),
        ({"prompt": " "}, "`prompt` is an empty string"),
        ({"prompt": 3}, "`prompt` is a number"),
        ({"messages": []}, "`messages` is a list"),
        ({"messages": [{"role": "user"}]}, "`messages`\\[0\\] is an object, not a message"),
        ({"messages": ["hi"]}, "`messages`\\[0\\] is a string, not a message"),
    ],
)
def test_jsonl_bad_rows(tmp_path: Path, row: dict[str, Any], problem: str) -> None:
    path = write(tmp_path / "p.jsonl", '{"prompt": "fine"}\n' + json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match=f"line 2\\): {problem}"):
        load_prompts(config("jsonl", path))


def test_longalpaca_given_json_lines() -> None:
    with pytest.raises(DatasetError) as caught:
        load_prompts(config("longalpaca", FIXTURES / "open_qa.jsonl"))
    assert "looks like JSON Lines" in str(caught.value)
    assert "use format openqa or jsonl" in str(caught.value)
    assert caught.value.line == 2


def test_longalpaca_wrong_shapes(tmp_path: Path) -> None:
    not_list = write_json(tmp_path / "o.json", {"instruction": "a"})
    with pytest.raises(DatasetError, match=r"expected a JSON list .* found an object"):
        load_prompts(config("longalpaca", not_list))
    no_instruction = write_json(tmp_path / "n.json", [{"instruction": "a"}, {"output": "b"}])
    with pytest.raises(DatasetError, match="item 1 has no non-empty string `instruction`"):
        load_prompts(config("longalpaca", no_instruction))
    broken = write(tmp_path / "b.json", '[{"instruction": "a"},\n {"instruction": }]')
    with pytest.raises(DatasetError, match="line 2\\): invalid JSON"):
        load_prompts(config("longalpaca", broken))


def test_sharegpt_wrong_shapes(tmp_path: Path) -> None:
    no_turns = write_json(tmp_path / "t.json", [{"id": "x", "text": "hi"}])
    with pytest.raises(DatasetError, match="item 0 has no list under conversations"):
        load_prompts(config("sharegpt", no_turns))
    bad_turn = write_json(tmp_path / "b.json", [{"conversations": [{"role": "user"}]}])
    with pytest.raises(DatasetError, match="item 0, turn 0 is keys: role"):
        load_prompts(config("sharegpt", bad_turn))
    nobody = write_json(tmp_path / "n.json", [{"conversations": [{"from": "gpt", "value": "x"}]}])
    with pytest.raises(DatasetError, match="none of the 1 conversations has a non-empty human"):
        load_prompts(config("sharegpt", nobody))


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "e.txt", "\n\n")
    with pytest.raises(DatasetError, match="the file holds no prompts"):
        load_prompts(config("line_by_line", path))


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"not UTF-8 text.*re-encode the file as UTF-8"):
        load_prompts(config("line_by_line", path))


# --- filters -------------------------------------------------------------------------------


def test_filters_need_a_tokenizer() -> None:
    with pytest.raises(DatasetError, match="need the model's tokenizer"):
        load_prompts(fixture("openqa", "open_qa.jsonl", max_prompt_tokens=20))


def test_filters_keep_prompts_in_range(tokenizer: Tokenizer) -> None:
    every = load_prompts(fixture("openqa", "open_qa.jsonl"), tokenizer=tokenizer)
    counts = sorted(p.input_tokens or 0 for p in every)
    low, high = counts[10], counts[30]
    kept = load_prompts(
        fixture("openqa", "open_qa.jsonl", min_prompt_tokens=low, max_prompt_tokens=high),
        tokenizer=tokenizer,
    )
    assert kept
    assert [p.index for p in kept] == list(range(len(kept)))
    assert all(low <= (p.input_tokens or 0) <= high for p in kept)
    assert len(kept) == sum(low <= c <= high for c in counts)


def test_empty_after_filter(tokenizer: Tokenizer) -> None:
    with pytest.raises(DatasetError) as caught:
        load_prompts(
            fixture("openqa", "open_qa.jsonl", min_prompt_tokens=5000), tokenizer=tokenizer
        )
    assert "no prompt of 44 has between 5000 and any tokens" in str(caught.value)
    assert "widen min_prompt_tokens/max_prompt_tokens" in str(caught.value)


def test_inverted_bounds(tokenizer: Tokenizer) -> None:
    with pytest.raises(DatasetError, match="min_prompt_tokens 50 is above max_prompt_tokens 10"):
        load_prompts(
            fixture("openqa", "open_qa.jsonl", min_prompt_tokens=50, max_prompt_tokens=10),
            tokenizer=tokenizer,
        )


# --- sampling ------------------------------------------------------------------------------


def test_sample_is_reproducible_and_without_replacement() -> None:
    base = fixture("openqa", "open_qa.jsonl", sample=10, seed=7)
    first = load_prompts(base)
    again = load_prompts(base)
    other = load_prompts(replace(base, seed=8))
    assert first == again
    assert len(first) == 10 and len({p.text for p in first}) == 10
    assert [p.index for p in first] == list(range(10))
    assert [p.text for p in first] != [p.text for p in other]
    every = [p.text for p in load_prompts(fixture("openqa", "open_qa.jsonl"))]
    assert {p.text for p in first} <= set(every)
    # a seeded shuffle, not the file's order
    assert [p.text for p in first] != every[:10]


def test_sample_applies_after_filters(tokenizer: Tokenizer) -> None:
    cfg = fixture("openqa", "open_qa.jsonl", sample=5, seed=1, max_prompt_tokens=25)
    prompts = load_prompts(cfg, tokenizer=tokenizer)
    assert len(prompts) == 5
    assert all((p.input_tokens or 0) <= 25 for p in prompts)
    assert prompts == load_prompts(cfg, tokenizer=tokenizer)


def test_sample_larger_than_dataset() -> None:
    with pytest.raises(DatasetError, match="sample asks for 50 prompts but the file holds only 44"):
        load_prompts(fixture("openqa", "open_qa.jsonl", sample=50))


def test_sample_must_be_positive() -> None:
    with pytest.raises(DatasetError, match="sample is 0"):
        load_prompts(fixture("openqa", "open_qa.jsonl", sample=0))


# --- random --------------------------------------------------------------------------------


def test_random_needs_a_tokenizer() -> None:
    with pytest.raises(DatasetError, match="format random needs the model's tokenizer"):
        load_prompts(config("random", input_tokens=32, count=4))


def test_random_needs_input_tokens(tokenizer: Tokenizer) -> None:
    with pytest.raises(DatasetError, match="needs a positive input_tokens"):
        load_prompts(config("random", count=4), tokenizer=tokenizer)


@pytest.mark.parametrize("length", [1, 2, 17, 128, 1024])
def test_random_prompts_have_exact_length_after_round_trip(
    tokenizer: Tokenizer, length: int
) -> None:
    prompts = load_prompts(config("random", input_tokens=length, count=8), tokenizer=tokenizer)
    assert len(prompts) == 8
    for prompt in prompts:
        assert prompt.text is not None
        assert prompt.input_tokens == length
        # the server re-tokenizes the text it receives
        assert len(tokenizer.encode(prompt.text)) == length
        assert "\ufffd" not in prompt.text


def test_random_is_seeded(tokenizer: Tokenizer) -> None:
    cfg = config("random", input_tokens=64, count=3, seed=5)
    assert load_prompts(cfg, tokenizer=tokenizer) == load_prompts(cfg, tokenizer=tokenizer)
    other = load_prompts(replace(cfg, seed=6), tokenizer=tokenizer)
    assert other != load_prompts(cfg, tokenizer=tokenizer)


def test_random_count_defaults_to_sample_then_100(tokenizer: Tokenizer) -> None:
    assert len(load_prompts(config("random", input_tokens=4, sample=7), tokenizer=tokenizer)) == 7
    assert len(load_prompts(config("random", input_tokens=4), tokenizer=tokenizer)) == 100


def test_random_maker_gives_up_on_a_tokenizer_without_plain_text() -> None:
    class ControlOnly:
        name = "control-only"
        vocab_size = 4

        def encode(self, text: str) -> list[int]:
            return [ord(c) % 4 for c in text]

        def decode(self, ids: Any) -> str:
            return "".join(chr(i) for i in ids)

        def count(self, text: str) -> int:
            return len(text)

    with pytest.raises(ValueError, match="yields no token that decodes to plain text"):
        RandomPromptMaker(ControlOnly()).make(3)


# --- read and checked before any server starts ----------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content", "extra", "problem"),
    [
        ("line_by_line", b"\n\n", {}, "the file holds no prompts"),
        ("line_by_line", "café\n".encode("latin-1"), {}, "the file is not UTF-8 text"),
        ("openqa", b'{"question": "a"}\n{"question": \n', {}, "invalid JSON"),
        ("line_by_line", b"a\nb\n", {"sample": 3}, "sample asks for 3 prompts but the file holds"),
        ("longalpaca", b'{"instruction": "a"}', {}, "expected a JSON list"),
    ],
)
def test_reading_rows_checks_all_that_needs_no_tokenizer(
    tmp_path: Path, fmt: Any, content: bytes, extra: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "data"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=problem):
        read_rows(config(fmt, path, **extra))


def test_prompts_are_made_from_the_rows_read_before_even_if_the_file_changed(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "p.txt", "first\nsecond\nthird\n")
    rows = read_rows(config("line_by_line", path, sample=2, seed=3))
    assert len(rows) == 3
    write(path, "changed\n")
    kept = load_prompts(config("line_by_line", path, sample=2, seed=3), rows=rows)
    assert {p.text for p in kept} <= {"first", "second", "third"} and len(kept) == 2
    # the same sample as reading the file itself would have drawn
    write(path, "first\nsecond\nthird\n")
    fresh = load_prompts(config("line_by_line", path, sample=2, seed=3))
    assert [p.text for p in kept] == [p.text for p in fresh]


SPEC = """\
servers:
  svc: {backend: external, base_url: "http://127.0.0.1:9", model: m}
datasets:
  rand: {format: random, input_tokens: 8}
  lines: {format: line_by_line, path: prompts.txt, sample: 5}
scenarios:
  s: {dataset: lines, load: {parallel: 1, requests: 1}}
  r: {dataset: rand, load: {parallel: 1, requests: 1}}
"""


def test_a_specs_dataset_files_are_read_with_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "prompts.txt", "a\nb\nc\nd\ne\nf\n")
    (tmp_path / "spec.yaml").write_text(SPEC, encoding="utf-8")
    spec = read_spec_datasets(load_spec(tmp_path / "spec.yaml", env={}))
    assert set(spec.rows) == {"lines"}  # random prompts need the model's tokenizer: at run time
    assert len(spec.rows["lines"]) == 6


@pytest.mark.parametrize(
    ("content", "problem", "fix"),
    [
        (b"", "the file holds no prompts (prompts.txt)", "Point path at a non-empty"),
        (
            b"a\n\xff\n",
            "the file is not UTF-8 text (invalid start byte at byte 2) (prompts.txt)",
            "Re-encode",
        ),
        (
            b"a\nb\n",
            "sample asks for 5 prompts but the file holds only 2 (prompts.txt)",
            "Lower sample",
        ),
    ],
)
def test_a_bad_dataset_file_is_a_spec_error_naming_spec_dataset_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, problem: str, fix: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_bytes(content)
    (tmp_path / "spec.yaml").write_text(SPEC, encoding="utf-8")
    with pytest.raises(SpecError) as excinfo:
        read_spec_datasets(load_spec(tmp_path / "spec.yaml", env={}))
    err = excinfo.value
    assert (err.path, err.line, err.key) == (tmp_path / "spec.yaml", 5, "datasets.lines")
    assert err.message == problem
    assert err.fix.startswith(fix)
    assert str(err).startswith(f"spec.yaml:5: datasets.lines: {problem}")


def test_a_malformed_line_is_named_with_its_line_in_the_data_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "q.jsonl", '{"question": "a"}\n{"question": "b"\n')
    (tmp_path / "spec.yaml").write_text(
        SPEC.replace(
            "format: line_by_line, path: prompts.txt, sample: 5", "format: openqa, path: q.jsonl"
        ),
        encoding="utf-8",
    )
    with pytest.raises(SpecError) as excinfo:
        read_spec_datasets(load_spec(tmp_path / "spec.yaml", env={}))
    assert "(q.jsonl, line 2)" in excinfo.value.message
