"""Prompts for a load run, read from dataset files in the supported formats or made at random.

Formats (``DatasetConfig.format``):

- ``openqa``: HC3 ``open_qa.jsonl``, one JSON object a line; the prompt is ``question``.
- ``longalpaca``: LongAlpaca-12k, a JSON list of objects; the prompt is ``instruction``.
- ``line_by_line``: a text file, one prompt a line; blank lines are skipped.
- ``sharegpt``: a JSON list of objects whose ``conversations`` (or ``conversation``, ``items``)
  is a list of ``{"from": "human"|"gpt"|"system", "value": ...}`` turns. The prompt is the first
  non-empty human turn, as vLLM's benchmark takes it. Conversations without a human turn are
  skipped (real ShareGPT dumps have some); a file where every conversation is skipped is an
  error.
- ``jsonl``: one JSON object a line with ``prompt`` (a string) or ``messages`` (a list of
  ``{"role", "content"}``), or the field named by ``DatasetConfig.field`` (either shape).
- ``random``: ``count`` prompts of exactly ``input_tokens`` tokens with the model's tokenizer,
  seeded; decoding then re-encoding gives exactly that many tokens, as the server will see.

``read_rows`` reads a file and checks what needs no tokenizer: that it exists, decodes, parses and
holds at least ``sample`` prompts. Then ``load_prompts``, in this order: with ``sample``, the
prompts are shuffled with ``seed`` and the first ``sample`` that pass the token filters are kept (a
uniform sample without replacement of the filtered set, reproducible for a given file and seed);
without it, every prompt that passes is kept in file order. ``input_tokens`` is set when a
tokenizer is given; it counts the prompt's text (the messages' contents for chat rows) without
special tokens or chat template.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmslo.config import DatasetConfig
from pytest_llmslo.records import Prompt
from pytest_llmslo.tokens import Tokenizer

if TYPE_CHECKING:
    from pytest_llmslo.spec import Spec

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("openqa", "longalpaca", "line_by_line", "sharegpt", "random", "jsonl")
DEFAULT_RANDOM_COUNT = 100
_SHAREGPT_TURNS = ("conversations", "conversation", "items")
_HUMAN = ("human", "user")
_RANDOM_ATTEMPTS = 16  # fresh starts
_RANDOM_ROUNDS = 16  # decode, re-encode and adjust, per start


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file, the problem and the fix."""

    def __init__(
        self,
        dataset: str,
        problem: str,
        fix: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
    ) -> None:
        where = f"dataset {dataset!r}"
        if path is not None:
            where += f" ({path}{f', line {line}' if line is not None else ''})"
        super().__init__(f"{where}: {problem}; {fix}")
        self.dataset = dataset
        self.path = None if path is None else str(path)
        self.line = line
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True)
class _Entry:
    """A prompt as read from the file, before counting, filtering and sampling."""

    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None


@dataclass(frozen=True)
class DatasetRows:
    """A dataset file's prompts as read and checked, before token counting, filtering, sampling.

    Reading checks all that needs no tokenizer (the file exists, decodes, parses, holds prompts,
    at least ``sample`` of them), so the plugin reads at collection, before any server starts, and
    the run sends these rows rather than reading the file again.
    """

    path: Path
    entries: tuple[_Entry, ...]

    def __len__(self) -> int:
        return len(self.entries)


def read_rows(config: DatasetConfig, base_dir: Path | None = None) -> DatasetRows:
    """The file of a file-format dataset, read and checked; raises DatasetError."""
    if config.format == "random":
        raise DatasetError(
            config.name,
            "format random reads no file",
            "make its prompts with load_prompts and the model's tokenizer",
        )
    path = resolve_path(config, base_dir)
    entries = tuple(_read_entries(config, path))
    if not entries:
        raise DatasetError(
            config.name,
            "the file holds no prompts",
            "point path at a non-empty dataset file",
            path=path,
        )
    if config.sample is not None and config.sample > len(entries):
        raise DatasetError(
            config.name,
            f"sample asks for {config.sample} prompts but the file holds only {len(entries)}",
            f"lower sample to at most {len(entries)}, or remove it to keep all",
            path=path,
        )
    return DatasetRows(path, entries)


def load_prompts(
    config: DatasetConfig,
    *,
    tokenizer: Tokenizer | None = None,
    base_dir: Path | None = None,
    rows: DatasetRows | None = None,
) -> list[Prompt]:
    """The prompts of ``config``, filtered and sampled as it asks; raises DatasetError.

    ``rows`` are the file as read before (``read_rows``); without them the file is read now.
    """
    filters = config.min_prompt_tokens is not None or config.max_prompt_tokens is not None
    if filters and tokenizer is None:
        raise DatasetError(
            config.name,
            "min_prompt_tokens/max_prompt_tokens need the model's tokenizer to count tokens, "
            "and none is available",
            "make the model's tokenizer available locally (a model directory with "
            "tokenizer.json, or the model in the Hugging Face cache) or remove the filters",
        )
    if (
        config.min_prompt_tokens is not None
        and config.max_prompt_tokens is not None
        and config.min_prompt_tokens > config.max_prompt_tokens
    ):
        raise DatasetError(
            config.name,
            f"min_prompt_tokens {config.min_prompt_tokens} is above max_prompt_tokens "
            f"{config.max_prompt_tokens}, so no prompt can pass",
            "swap or widen the bounds",
        )
    if config.sample is not None and config.sample < 1:
        raise DatasetError(
            config.name, f"sample is {config.sample}", "give a positive sample or remove it"
        )

    path: Path | None = None
    if config.format == "random":
        entries = _random_entries(config, tokenizer)
    else:
        if rows is None:
            rows = read_rows(config, base_dir)
        path, entries = rows.path, list(rows.entries)

    order = list(range(len(entries)))
    if config.sample is not None:
        random.Random(config.seed).shuffle(order)
    wanted = config.sample

    prompts: list[Prompt] = []
    for position in order:
        entry = entries[position]
        input_tokens = None
        if tokenizer is not None:
            input_tokens = tokenizer.count(_entry_text(entry))
        if not _passes(config, input_tokens):
            continue
        prompts.append(
            Prompt(
                index=len(prompts),
                text=entry.text,
                messages=entry.messages,
                input_tokens=input_tokens,
            )
        )
        if wanted is not None and len(prompts) == wanted:
            break

    if not prompts:
        raise DatasetError(
            config.name,
            f"no prompt of {len(entries)} has between {config.min_prompt_tokens or 0} and "
            f"{config.max_prompt_tokens if config.max_prompt_tokens is not None else 'any'} tokens",
            "widen min_prompt_tokens/max_prompt_tokens or use a dataset with prompts in range",
            path=path,
        )
    if wanted is not None and len(prompts) < wanted:
        after = " after filtering" if filters else ""
        raise DatasetError(
            config.name,
            f"sample asks for {wanted} prompts but only {len(prompts)} remain{after}",
            f"lower sample to at most {len(prompts)}, remove it to keep all, or widen the filters",
            path=path,
        )
    return prompts


def resolve_path(config: DatasetConfig, base_dir: Path | None = None) -> Path:
    """The dataset file: absolute as given, else relative to ``base_dir``, then to the CWD."""
    if not config.path:
        raise DatasetError(
            config.name,
            f"format {config.format!r} reads a file but no path is given",
            "add `path:` with the dataset file",
        )
    given = Path(config.path).expanduser()
    candidates = [given] if given.is_absolute() else []
    if not given.is_absolute():
        if base_dir is not None:
            candidates.append(base_dir / given)
        candidates.append(Path.cwd() / given)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
        if candidate.exists():
            raise DatasetError(
                config.name,
                "the path is not a regular file",
                "point path at the dataset file itself",
                path=candidate,
            )
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise DatasetError(
        config.name,
        f"file not found (looked at {tried})",
        "fix path (relative paths resolve against the spec file's directory, then the current "
        "directory) or download the dataset there",
        path=config.path,
    )


def _passes(config: DatasetConfig, input_tokens: int | None) -> bool:
    if input_tokens is None:
        return True
    if config.min_prompt_tokens is not None and input_tokens < config.min_prompt_tokens:
        return False
    return config.max_prompt_tokens is None or input_tokens <= config.max_prompt_tokens


def _entry_text(entry: _Entry) -> str:
    if entry.text is not None:
        return entry.text
    return "\n".join(m["content"] for m in entry.messages or ())


def _read_entries(config: DatasetConfig, path: Path) -> Iterator[_Entry]:
    if config.format == "openqa":
        return _read_openqa(config, path)
    if config.format == "jsonl":
        return _read_jsonl(config, path)
    if config.format == "line_by_line":
        return _read_lines(config, path)
    if config.format == "longalpaca":
        return _read_longalpaca(config, path)
    if config.format == "sharegpt":
        return _read_sharegpt(config, path)
    raise DatasetError(
        config.name,
        f"unknown format {config.format!r}",
        f"use one of {', '.join(FORMATS)}",
        path=path,
    )


def _open_text(config: DatasetConfig, path: Path) -> Any:
    try:
        return path.open(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(
            config.name, f"cannot open the file ({exc})", "check its permissions", path=path
        ) from exc


def _json_lines(config: DatasetConfig, path: Path, shape: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line, read one line at a time."""
    with _open_text(config, path) as handle:
        try:
            for number, line in enumerate(handle, start=1):
                stripped = line.strip()
                if not stripped:
                    continue
                try:
                    value = json.loads(stripped)
                except json.JSONDecodeError as exc:
                    if number == 1 and stripped.startswith("["):
                        raise DatasetError(
                            config.name,
                            f"the file is a JSON list, but format {config.format!r} expects "
                            f"one JSON object per line ({shape})",
                            "use format longalpaca or sharegpt for a JSON list, or convert the "
                            "file to JSON Lines",
                            path=path,
                            line=number,
                        ) from exc
                    raise DatasetError(
                        config.name,
                        f"invalid JSON ({exc.msg} at column {exc.colno})",
                        f"fix or delete that line; format {config.format!r} expects one JSON "
                        f"object per line ({shape})",
                        path=path,
                        line=number,
                    ) from exc
                if not isinstance(value, dict):
                    hint = (
                        "use format longalpaca or sharegpt for a JSON list"
                        if number == 1 and isinstance(value, list)
                        else f"each line must be one JSON object ({shape})"
                    )
                    raise DatasetError(
                        config.name,
                        f"expected a JSON object, found {_kind(value)}",
                        hint,
                        path=path,
                        line=number,
                    )
                yield number, value
        except UnicodeDecodeError as exc:
            raise DatasetError(
                config.name,
                f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})",
                "re-encode the file as UTF-8",
                path=path,
            ) from exc


def _read_openqa(config: DatasetConfig, path: Path) -> Iterator[_Entry]:
    shape = 'HC3 open_qa.jsonl: {"question": ..., "human_answers": [...], ...}'
    for number, row in _json_lines(config, path, shape):
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            keys = ", ".join(sorted(row)) or "none"
            raise DatasetError(
                config.name,
                f"no non-empty string `question` (keys: {keys})",
                "give every line a `question`, or use format jsonl with `field:` naming the "
                "prompt's key",
                path=path,
                line=number,
            )
        yield _Entry(text=question)


def _read_jsonl(config: DatasetConfig, path: Path) -> Iterator[_Entry]:
    fields = (config.field,) if config.field else ("prompt", "messages")
    shape = " or ".join(f"`{f}`" for f in fields)
    for number, row in _json_lines(config, path, f"with {shape}"):
        key = next((f for f in fields if f in row), None)
        if key is None:
            keys = ", ".join(sorted(row)) or "none"
            raise DatasetError(
                config.name,
                f"no {shape} key (keys: {keys})",
                "add the field to every line, or set `field:` to the key that holds the prompt",
                path=path,
                line=number,
            )
        yield _jsonl_entry(config, path, number, key, row[key])


def _jsonl_entry(config: DatasetConfig, path: Path, line: int, key: str, value: Any) -> _Entry:
    if isinstance(value, str):
        if not value.strip():
            raise DatasetError(
                config.name,
                f"`{key}` is an empty string",
                "remove the line or give it a prompt",
                path=path,
                line=line,
            )
        return _Entry(text=value)
    if isinstance(value, list) and value:
        messages: list[dict[str, str]] = []
        for i, message in enumerate(value):
            if (
                not isinstance(message, dict)
                or not isinstance(message.get("role"), str)
                or not isinstance(message.get("content"), str)
            ):
                raise DatasetError(
                    config.name,
                    f"`{key}`[{i}] is {_kind(message)}, not a message "
                    '{"role": "...", "content": "..."} with string role and content',
                    "give every message a string role and content",
                    path=path,
                    line=line,
                )
            messages.append({"role": message["role"], "content": message["content"]})
        return _Entry(messages=tuple(messages))
    raise DatasetError(
        config.name,
        f"`{key}` is {_kind(value)}",
        "make it a prompt string or a non-empty list of {role, content} messages",
        path=path,
        line=line,
    )


def _read_lines(config: DatasetConfig, path: Path) -> Iterator[_Entry]:
    with _open_text(config, path) as handle:
        try:
            for line in handle:
                text = line.strip()
                if text:
                    yield _Entry(text=text)
        except UnicodeDecodeError as exc:
            raise DatasetError(
                config.name,
                f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})",
                "re-encode the file as UTF-8",
                path=path,
            ) from exc


def _load_json_list(config: DatasetConfig, path: Path, shape: str) -> list[Any]:
    with _open_text(config, path) as handle:
        try:
            value = json.load(handle)
        except UnicodeDecodeError as exc:
            raise DatasetError(
                config.name,
                f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})",
                "re-encode the file as UTF-8",
                path=path,
            ) from exc
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":
                raise DatasetError(
                    config.name,
                    f"the file holds several JSON values (line {exc.lineno}): it looks like "
                    f"JSON Lines, but format {config.format!r} expects one JSON list ({shape})",
                    "use format openqa or jsonl for a file with one JSON object per line",
                    path=path,
                    line=exc.lineno,
                ) from exc
            raise DatasetError(
                config.name,
                f"invalid JSON ({exc.msg} at column {exc.colno})",
                f"fix the file; format {config.format!r} expects one JSON list ({shape})",
                path=path,
                line=exc.lineno,
            ) from exc
    if not isinstance(value, list):
        raise DatasetError(
            config.name,
            f"expected a JSON list ({shape}), found {_kind(value)}",
            "give a file whose top level is a list of objects",
            path=path,
        )
    return value


def _read_longalpaca(config: DatasetConfig, path: Path) -> Iterator[_Entry]:
    shape = 'LongAlpaca: [{"instruction": ..., "output": ..., "file": ...}, ...]'
    for i, item in enumerate(_load_json_list(config, path, shape)):
        instruction = item.get("instruction") if isinstance(item, dict) else None
        if not isinstance(instruction, str) or not instruction.strip():
            raise DatasetError(
                config.name,
                f"item {i} has no non-empty string `instruction` ({_describe(item)})",
                f"give every item an `instruction` ({shape})",
                path=path,
            )
        yield _Entry(text=instruction)


def _read_sharegpt(config: DatasetConfig, path: Path) -> Iterator[_Entry]:
    shape = 'ShareGPT: [{"conversations": [{"from": "human", "value": ...}, ...]}, ...]'
    skipped = 0
    items = _load_json_list(config, path, shape)
    for i, item in enumerate(items):
        turns = _sharegpt_turns(item)
        if turns is None:
            raise DatasetError(
                config.name,
                f"item {i} has no list under {', '.join(_SHAREGPT_TURNS)} ({_describe(item)})",
                f"give every item its turns ({shape})",
                path=path,
            )
        entry = _first_human_turn(config, path, i, turns)
        if entry is None:
            skipped += 1
            continue
        yield entry
    if skipped:
        log.info("dataset %r: skipped %d conversations without a human turn", config.name, skipped)
    if skipped and skipped == len(items):
        raise DatasetError(
            config.name,
            f"none of the {len(items)} conversations has a non-empty human turn",
            'give conversations a turn with "from": "human"',
            path=path,
        )


def _sharegpt_turns(item: Any) -> list[Any] | None:
    if not isinstance(item, dict):
        return None
    for key in _SHAREGPT_TURNS:
        turns = item.get(key)
        if isinstance(turns, list):
            return turns
    return None


def _first_human_turn(
    config: DatasetConfig, path: Path, item: int, turns: Sequence[Any]
) -> _Entry | None:
    """The first non-empty human turn; None when the conversation has none."""
    for t, turn in enumerate(turns):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("from"), str)
            or not isinstance(turn.get("value"), str)
        ):
            raise DatasetError(
                config.name,
                f"item {item}, turn {t} is {_describe(turn)}, not "
                '{"from": "human"|"gpt"|"system", "value": "..."}',
                "give every turn a string `from` and `value`",
                path=path,
            )
    for turn in turns:
        if turn["from"].lower() in _HUMAN and turn["value"].strip():
            return _Entry(text=turn["value"])
    return None


def _random_entries(config: DatasetConfig, tokenizer: Tokenizer | None) -> list[_Entry]:
    if tokenizer is None:
        raise DatasetError(
            config.name,
            "format random needs the model's tokenizer to make prompts of exact length, and "
            "none is available",
            "make the model's tokenizer available locally (a model directory with "
            "tokenizer.json, or the model in the Hugging Face cache) or use a dataset file",
        )
    if config.input_tokens is None or config.input_tokens < 1:
        raise DatasetError(
            config.name,
            f"format random needs a positive input_tokens (got {config.input_tokens})",
            "add `input_tokens: N`, the exact prompt length in tokens",
        )
    count = config.count or config.sample or DEFAULT_RANDOM_COUNT
    maker = RandomPromptMaker(tokenizer, seed=config.seed)
    try:
        return [_Entry(text=maker.make(config.input_tokens)) for _ in range(count)]
    except ValueError as exc:
        raise DatasetError(
            config.name,
            str(exc),
            "try another seed or input_tokens, or check that the tokenizer matches the model",
        ) from exc


class RandomPromptMaker:
    """Texts of exactly N tokens for one tokenizer, reproducible from a seed.

    Random token ids rarely survive decode then encode unchanged (neighbours merge, partial UTF-8
    bytes decode to U+FFFD), so the text is re-encoded and trimmed or extended until its own
    encoding has exactly N tokens: what the server, which re-tokenizes, will count.
    """

    def __init__(self, tokenizer: Tokenizer, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)
        self._usable: dict[int, bool] = {}

    def _usable_id(self) -> int:
        """A random id that decodes on its own to clean, non-empty text (no special tokens)."""
        for _ in range(10_000):
            candidate = self.rng.randrange(self.tokenizer.vocab_size)
            usable = self._usable.get(candidate)
            if usable is None:
                text = self.tokenizer.decode([candidate])
                # control characters are legal but make prompts unreadable in logs and reports
                usable = (
                    bool(text.strip())
                    and "\ufffd" not in text
                    and all(ch.isprintable() or ch in " \n" for ch in text)
                )
                self._usable[candidate] = usable
            if usable:
                return candidate
        raise ValueError(
            f"the tokenizer {self.tokenizer.name!r} yields no token that decodes to plain text"
        )

    def make(self, length: int) -> str:
        for _ in range(_RANDOM_ATTEMPTS):
            ids = [self._usable_id() for _ in range(length)]
            for _ in range(_RANDOM_ROUNDS):
                text = self.tokenizer.decode(ids)
                encoded = self.tokenizer.encode(text)
                if len(encoded) == length:
                    return text
                if len(encoded) > length:
                    ids = encoded[:length]
                    # a cut inside a multi-byte character leaves bytes that decode to U+FFFD,
                    # which re-encodes longer every time: cut back to a whole character
                    while ids and "\ufffd" in self.tokenizer.decode(ids):
                        ids.pop()
                if len(ids) < length:
                    ids += [self._usable_id() for _ in range(length - len(ids))]
        raise ValueError(
            f"could not make a text of exactly {length} tokens with {self.tokenizer.name!r} "
            f"in {_RANDOM_ATTEMPTS} attempts"
        )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "keys: " + (", ".join(sorted(str(k) for k in value)) or "none")
    return _kind(value)


def read_spec_datasets(spec: Spec) -> Spec:
    """``spec`` with the files of its scenarios' datasets read and checked (``read_rows``).

    Done at collection: a bad file is a spec error naming the spec, the dataset and the file
    before any server starts, and the run sends the rows checked here. Token filters and format
    random need the model's tokenizer and are applied when the scenario runs.
    """
    from pytest_llmslo.spec import SpecError  # here: reading prompts alone needs no YAML

    rows: dict[str, DatasetRows] = {}
    for name in dict.fromkeys(scenario.dataset for scenario in spec.scenarios.values()):
        config = spec.datasets[name]
        if config.format == "random":
            continue
        try:
            rows[name] = read_rows(config, base_dir=spec.path.parent)
        except DatasetError as exc:
            where = _relative(exc.path or "") + (f", line {exc.line}" if exc.line else "")
            raise SpecError(
                spec.path,
                spec.dataset_lines.get(name),
                f"datasets.{name}",
                f"{exc.problem} ({where})",
                fix=exc.fix[:1].upper() + exc.fix[1:] + ".",
            ) from None
    return replace(spec, rows=rows)


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return path
