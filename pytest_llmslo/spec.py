"""The YAML spec: strict schema, ``${VAR}`` substitution and conversion to typed configuration."""

from __future__ import annotations

import difflib
import math
import os
import re
import typing
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pytest_llmslo.config import (
    ApiKind,
    Arrival,
    Backend,
    DatasetConfig,
    DatasetFormat,
    LoadConfig,
    ServerConfig,
)
from pytest_llmslo.models import builtin_models, is_builtin
from pytest_llmslo.slo import (
    Objective,
    ObjectiveError,
    derive_request_objectives,
    parse_objective,
    parse_request_objective,
)
from pytest_llmslo.spec_yaml import (
    ALLOWED_TAGS,
    MERGE_TAG,
    STR_TAG,
    Refused,
    SpecLoader,
    compose,
    substitute,
)
from pytest_llmslo.spec_yaml import VAR_NAME as _VAR_NAME
from pytest_llmslo.units import UnitError, UnitKind, parse_duration, parse_quantity

if TYPE_CHECKING:
    from pytest_llmslo.datasets import DatasetRows

BACKENDS: tuple[str, ...] = typing.get_args(Backend)
FORMATS: tuple[str, ...] = typing.get_args(DatasetFormat)
ARRIVALS: tuple[str, ...] = typing.get_args(Arrival)
APIS: tuple[str, ...] = typing.get_args(ApiKind)
DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)
DOCS = "docs/spec-reference.md"


class SpecError(Exception):
    """A spec that cannot be used: where (file, line, dotted key), what, the choices and the fix."""

    def __init__(
        self,
        path: Path | str,
        line: int | None,
        key: str,
        message: str,
        *,
        choices: Sequence[str] = (),
        fix: str = "",
        choices_label: str = "Valid choices",
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.key = key
        self.message = message
        self.choices = tuple(choices)
        self.fix = fix
        self.choices_label = choices_label
        super().__init__(self._render())

    def _render(self) -> str:
        where = _display_path(self.path) + (f":{self.line}" if self.line is not None else "")
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        if self.choices:
            text += f". {self.choices_label}: " + ", ".join(self.choices)
        text += "." if not text.endswith(".") else ""
        if self.fix:
            text += f" {self.fix}"
        return text

    def __str__(self) -> str:
        return self._render()


def _display_path(path: Path) -> str:
    # relative to the working directory reads like pytest's own locations
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


@dataclass(frozen=True)
class Scenario:
    """One workload against one or more servers, with the objectives it must meet."""

    name: str
    servers: tuple[str, ...]
    dataset: str
    load: LoadConfig
    objectives: tuple[Objective, ...]
    request_slo: tuple[Objective, ...]  # per-request objectives that decide goodput
    percentiles: tuple[float, ...]
    line: int
    # per-server load overrides (e.g. fewer requests for a slow backend), merged over `load`
    server_loads: dict[str, LoadConfig] = field(default_factory=dict)

    def load_for(self, server: str) -> LoadConfig:
        return self.server_loads.get(server, self.load)


@dataclass(frozen=True)
class Spec:
    """A whole spec file, validated."""

    path: Path
    servers: dict[str, ServerConfig]
    datasets: dict[str, DatasetConfig]
    scenarios: dict[str, Scenario]
    # the line of each `datasets.<name>`, for errors found later in its file
    dataset_lines: dict[str, int] = field(default_factory=dict)
    # dataset files as read and checked at collection: the run sends these very prompts
    rows: dict[str, DatasetRows] = field(default_factory=dict)


# --- reading nodes --------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _node_kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return "a scalar"


@dataclass(frozen=True)
class _Entry:
    """A key of a mapping with its value node and the dotted path it was written at."""

    key: str
    node: Node
    path: str
    line: int


class _Reader:
    """Walks the composed YAML nodes, substituting variables and raising SpecError with marks."""

    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self._constructor = SpecLoader("")

    def error(
        self, node_or_line: Node | int | None, key: str, message: str, **kw: Any
    ) -> SpecError:
        if isinstance(node_or_line, Node):
            line: int | None = node_or_line.start_mark.line + 1
        else:
            line = node_or_line
        return SpecError(self.path, line, key, message, **kw)

    def mapping(
        self,
        node: Node,
        path: str,
        allowed: Sequence[str] | None,
        *,
        what: str = "keys",
        extensions: bool = False,
    ) -> dict[str, _Entry]:
        """Entries of a mapping node; duplicate keys fail, so do keys missing from ``allowed``
        (keys that start with ``x-`` too, unless ``extensions``)."""
        if not isinstance(node, MappingNode):
            raise self.error(
                node,
                path,
                f"expected a mapping of {what}, got {self._describe(node)}",
                fix=f"See {DOCS} for the shape of this section.",
            )
        entries: dict[str, _Entry] = {}
        inherited: dict[str, _Entry] = {}  # from merge keys: the mapping's own keys win
        merge_line: int | None = None
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == MERGE_TAG:
                line = key_node.start_mark.line + 1
                if merge_line is not None:
                    raise self.error(
                        line,
                        f"{path}.<<" if path else "<<",
                        f"duplicate key (first written at line {merge_line})",
                        fix="Merge several mappings with one key: <<: [*a, *b].",
                    )
                merge_line = line
                for source in self._merge_sources(value_node, path):
                    for key, entry in self.mapping(source, path, allowed, what=what).items():
                        inherited.setdefault(key, entry)  # the first mapping listed wins
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag != STR_TAG:
                shown = key_node.value if isinstance(key_node, ScalarNode) else _node_kind(key_node)
                raise self.error(
                    key_node,
                    path,
                    f"key {shown!r} is not a string",
                    fix="Write keys as plain words; quote them if they look like numbers.",
                )
            key = key_node.value
            dotted = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in entries:
                raise self.error(
                    line,
                    dotted,
                    f"duplicate key (first written at line {entries[key].line})",
                    fix="Keep one of them; YAML would silently drop the first.",
                )
            if (
                allowed is not None
                and key not in allowed
                and not (extensions and key.startswith("x-"))
            ):
                close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
                raise self.error(
                    line,
                    dotted,
                    "unknown key",
                    choices=list(allowed),
                    choices_label="Valid keys",
                    fix=f"Did you mean {close[0]!r}?" if close else f"See {DOCS}.",
                )
            entries[key] = _Entry(key, value_node, dotted, line)
        return {**inherited, **entries}

    def _merge_sources(self, node: Node, path: str) -> list[MappingNode]:
        """The mappings a merge key (``<<: *base`` or ``<<: [*a, *b]``) brings in."""
        sources = node.value if isinstance(node, SequenceNode) else [node]
        if not sources or not all(isinstance(source, MappingNode) for source in sources):
            raise self.error(
                node,
                f"{path}.<<" if path else "<<",
                f"a merge key takes a mapping or a list of mappings, got {self._describe(node)}",
                fix="Write <<: *name, where &name marks a mapping, or <<: [*a, *b].",
            )
        return list(sources)

    def _describe(self, node: Node) -> str:
        if isinstance(node, ScalarNode):
            value = self.scalar_raw(node, "")
            return f"{_type_name(value)} ({node.value!r})" if value is not None else "null"
        return _node_kind(node)

    def scalar_raw(self, node: ScalarNode, path: str) -> Any:
        """The value of a scalar after ``${VAR}`` substitution, typed as YAML would type it."""
        text = node.value
        if "$" not in text:
            return self._construct(node, path)
        try:
            substituted = substitute(text, self.env)
        except KeyError as missing:
            name = missing.args[0]
            raise self.error(
                node,
                path,
                f"environment variable {name} is not set",
                fix=f"Set {name}, or give a default: ${{{name}:-value}}.",
            ) from None
        except ValueError as bad:
            raise self.error(node, path, str(bad)) from None
        if node.style is not None:  # quoted or block scalars stay strings
            return substituted
        # A plain scalar is typed after substitution, so `requests: ${N:-100}` is an integer.
        tag = self._plain_tag(substituted)
        return self._construct(ScalarNode(tag, substituted, node.start_mark), path)

    def _construct(self, node: ScalarNode, path: str) -> Any:
        if node.tag == MERGE_TAG:  # `<<` merges only as a key; as a value it is text
            return node.value
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, KeyError, TypeError, OverflowError):
            # an explicit tag on text of another type: `!!int abc`
            shown = ALLOWED_TAGS.get(node.tag, node.tag)
            raise self.error(
                node,
                path,
                f"{node.value!r} is not a valid {shown} value",
                fix=f"Remove the tag {shown}, or write a value of that type.",
            ) from None

    def value(self, node: Node, path: str) -> Any:
        """Any YAML value as plain Python (for free-form sections like server args)."""
        if isinstance(node, ScalarNode):
            return self.scalar_raw(node, path)
        if isinstance(node, SequenceNode):
            return [self.value(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            return {
                e.key: self.value(e.node, e.path) for e in self.mapping(node, path, None).values()
            }
        raise self.error(node, path, f"unsupported YAML node {_node_kind(node)}")

    def scalar(self, entry: _Entry) -> Any:
        if not isinstance(entry.node, ScalarNode):
            raise self.error(
                entry.node,
                entry.path,
                f"expected a single value, got {_node_kind(entry.node)}",
                fix=f"See {DOCS} for the type of this key.",
            )
        return self.scalar_raw(entry.node, entry.path)

    def _plain_tag(self, text: str) -> str:
        """The tag YAML gives ``text`` written as a plain scalar (int, float, bool, null, str)."""
        tag: str = self._constructor.resolve(  # type: ignore[no-untyped-call]
            ScalarNode, text, (True, False)
        )
        return tag

    def _wrong_type(self, entry: _Entry, value: object, expected: str, example: str) -> SpecError:
        shown = f" {value!r}" if isinstance(value, str | int | float) else ""
        fix = f"Write e.g. {entry.key}: {example}."
        looks_typed = isinstance(value, str) and self._plain_tag(value) != "tag:yaml.org,2002:str"
        if looks_typed and expected != "a string":
            fix = f"Remove the quotes around {value!r}: quoted values are strings."
        return self.error(
            entry.node, entry.path, f"expected {expected}, got {_type_name(value)}{shown}", fix=fix
        )

    def string(self, entry: _Entry, *, allow_empty: bool = False) -> str:
        value = self.scalar(entry)
        if not isinstance(value, str):
            raise self._wrong_type(entry, value, "a string", '"text"')
        if not allow_empty and not value.strip():
            raise self.error(entry.node, entry.path, "must not be empty")
        return value

    def boolean(self, entry: _Entry) -> bool:
        value = self.scalar(entry)
        if not isinstance(value, bool):
            raise self._wrong_type(entry, value, "true or false", "true")
        return value

    def integer(
        self, entry: _Entry, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self.scalar(entry)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong_type(entry, value, "an integer", str(minimum or 1))
        self._check_range(entry, value, minimum, maximum)
        return value

    def number(
        self,
        entry: _Entry,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
    ) -> float:
        value = self.scalar(entry)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self._wrong_type(entry, value, "a number", "1.0")
        if math.isinf(value):
            raise self.error(
                entry.node,
                entry.path,
                f"expected a finite number, got {value!r}",
                fix=f"Write a number, e.g. {entry.key}: 1.0.",
            )
        if positive and value <= 0:
            raise self.error(entry.node, entry.path, f"must be above 0, got {value!r}")
        self._check_range(entry, value, minimum, maximum)
        return float(value)

    def _check_range(
        self, entry: _Entry, value: float, minimum: float | None, maximum: float | None
    ) -> None:
        if minimum is not None and value < minimum:
            raise self.error(entry.node, entry.path, f"must be at least {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            raise self.error(entry.node, entry.path, f"must be at most {maximum}, got {value!r}")

    def duration(self, entry: _Entry) -> float:
        value = self.scalar(entry)
        if isinstance(value, str) and self._plain_tag(value.strip()) in (_INT_TAG, _FLOAT_TAG):
            # as everywhere in a spec, quotes make text, and text needs its unit
            raise self.error(
                entry.node,
                entry.path,
                f"expected a duration, got the string {value!r} without a time unit",
                fix=f"Remove the quotes for seconds ({entry.key}: {value.strip()}), or add a "
                f'unit: {entry.key}: "{value.strip()} s".',
            )
        try:
            seconds = parse_duration(value)
        except UnitError as error:
            raise self.error(entry.node, entry.path, error.message, fix=error.fix) from None
        if seconds <= 0:
            raise self.error(entry.node, entry.path, f"must be above 0 s, got {value!r}")
        return seconds

    def choice(self, entry: _Entry, choices: Sequence[str], what: str) -> str:
        value = self.string(entry)
        if value not in choices:
            close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
            raise self.error(
                entry.node,
                entry.path,
                f"unknown {what} {value!r}",
                choices=list(choices),
                choices_label=f"Valid {what}s",
                fix=f"Did you mean {close[0]!r}?" if close else "",
            )
        return value

    def string_list(self, entry: _Entry) -> list[tuple[str, Node, str]]:
        """Strings of a list (numbers are taken as their text); each with its node and path."""
        if not isinstance(entry.node, SequenceNode):
            raise self.error(
                entry.node,
                entry.path,
                f"expected a list, got {self._describe(entry.node)}",
                fix=f'Write e.g. {entry.key}: ["a", "b"].',
            )
        items = []
        for i, node in enumerate(entry.node.value):
            item = _Entry(entry.key, node, f"{entry.path}[{i}]", node.start_mark.line + 1)
            value = self.scalar(item)
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise self._wrong_type(item, value, "a string", '"text"')
            items.append((str(value), node, item.path))
        return items

    def string_map(self, entry: _Entry) -> dict[str, str]:
        """A mapping of strings to strings (numbers are taken as their text; booleans are not)."""
        result = {}
        for sub in self.mapping(entry.node, entry.path, None).values():
            value = self.scalar(sub)
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise self._wrong_type(sub, value, "a string", '"value"')
            result[sub.key] = str(value)
        return result


# --- sections -------------------------------------------------------------------------------------

TOP_KEYS = ("version", "defaults", "servers", "datasets", "scenarios")
DEFAULTS_KEYS = ("load", "slo", "request_slo", "percentiles")
SERVER_KEYS = (
    "backend",
    "model",
    "served_model_name",
    "args",
    "extra_args",
    "env",
    "startup_timeout",
    "gpu_ids",
    "device",
    "host",
    "port",
    "base_url",
    "api_key_env",
    "stop_timeout",
    "skip_if_missing",
    "tokenizer",
    "metrics",
)
DATASET_KEYS = (
    "format",
    "path",
    "sample",
    "seed",
    "min_prompt_tokens",
    "max_prompt_tokens",
    "input_tokens",
    "count",
    "field",
)
LOAD_KEYS = (
    "api",
    "stream",
    "include_usage",
    "parallel",
    "rate",
    "arrival",
    "burstiness",
    "requests",
    "duration",
    "warmup",
    "max_tokens",
    "min_tokens",
    "ignore_eos",
    "temperature",
    "top_p",
    "seed",
    "request_seed",
    "stop",
    "extra_body",
    "headers",
    "connect_timeout",
    "read_timeout",
    "total_timeout",
    "max_response_bytes",
    "max_consecutive_timeouts",
    "failure_budget",
)
SCENARIO_KEYS = (
    "servers",
    "dataset",
    "load",
    "server_load",
    "slo",
    "request_slo",
    "percentiles",
)
_DEVICE = re.compile(r"auto|cpu|cuda(?::\d+)?")
# scenario and server names are parts of test ids (spec.yaml::scenario::server::objective)
_SCENARIO_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# One client process: each user holds a connection and the engine ingests about 125k chunks/s on
# one core (docs/load-engine.md), so 10,000 users streaming over 12 chunks/s each already outrun
# it, and sending 10,000 requests a second leaves it no time to read the answers.
MAX_PARALLEL = 10_000
MAX_RATE = 10_000.0
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
_CLIENT_HEADERS = ("host", "content-length", "content-type", "transfer-encoding")


def _server(reader: _Reader, name: str, node: Node, line: int) -> ServerConfig:
    path = f"servers.{name}"
    entries = reader.mapping(node, path, SERVER_KEYS)
    if "backend" not in entries:
        raise reader.error(
            line,
            path,
            "missing required key 'backend'",
            choices=BACKENDS,
            choices_label="Valid backends",
            fix="Add backend: vllm (or hf, external).",
        )
    backend = reader.choice(entries["backend"], BACKENDS, "backend")
    kw: dict[str, Any] = {}
    for key, entry in entries.items():
        if key == "backend":
            continue
        if key == "model":
            # an external server's empty model means: the first one its /v1/models lists
            kw[key] = reader.string(entry, allow_empty=backend == "external").strip()
            if is_builtin(kw[key]):
                _builtin_model(reader, entry, kw[key], backend)
        elif key in ("served_model_name", "host"):
            kw[key] = reader.string(entry)
        elif key == "tokenizer":
            kw[key] = _tokenizer(reader, entry)
        elif key == "metrics":
            kw[key] = _metrics_mode(reader, entry, backend)
        elif key == "args":
            args = reader.value(entry.node, entry.path)
            if not isinstance(args, dict):
                raise reader._wrong_type(entry, args, "a mapping", "{max_model_len: 4096}")
            for arg in args:
                if arg.startswith("-"):
                    raise reader.error(
                        entry.node,
                        f"{entry.path}.{arg}",
                        "argument names are written without leading dashes",
                        fix=f"Write {arg.lstrip('-').replace('-', '_')}: ..., or put the flag "
                        "in extra_args.",
                    )
            kw["args"] = args
        elif key == "extra_args":
            kw["extra_args"] = tuple(text for text, _, _ in reader.string_list(entry))
        elif key == "env":
            kw["env"] = reader.string_map(entry)
        elif key in ("startup_timeout", "stop_timeout"):
            kw[key] = reader.duration(entry)
        elif key == "skip_if_missing":
            kw[key] = reader.boolean(entry)
        elif key == "gpu_ids":
            if not isinstance(entry.node, SequenceNode):
                raise reader.error(
                    entry.node,
                    entry.path,
                    f"expected a list of GPU indices, got {reader._describe(entry.node)}",
                    fix="Write e.g. gpu_ids: [0] or gpu_ids: [0, 1].",
                )
            ids = []
            for i, item in enumerate(entry.node.value):
                sub = _Entry(key, item, f"{entry.path}[{i}]", item.start_mark.line + 1)
                ids.append(reader.integer(sub, minimum=0))
            kw["gpu_ids"] = tuple(ids)
        elif key == "device":
            device = reader.string(entry)
            if not _DEVICE.fullmatch(device):
                raise reader.error(
                    entry.node,
                    entry.path,
                    f"unknown device {device!r}",
                    choices=("auto", "cpu", "cuda", "cuda:N"),
                    choices_label="Valid devices",
                )
            kw["device"] = device
        elif key == "port":
            kw["port"] = reader.integer(entry, minimum=1, maximum=65535)
        elif key == "base_url":
            url = reader.string(entry)
            problem = http_url_problem(url)
            if problem is not None:
                raise reader.error(
                    entry.node,
                    entry.path,
                    problem,
                    fix="Write e.g. base_url: http://host:8000 (without /v1).",
                )
            kw["base_url"] = url.rstrip("/")
        elif key == "api_key_env":
            var = reader.string(entry)
            if not _VAR_NAME.fullmatch(var):
                raise reader.error(
                    entry.node,
                    entry.path,
                    f"{var!r} is not an environment variable name",
                    fix="Write the variable's name, e.g. api_key_env: PROD_KEY, not its value.",
                )
            kw["api_key_env"] = var
    if backend == "external":
        if "base_url" not in kw:
            raise reader.error(
                line,
                path,
                "missing required key 'base_url' for backend external",
                fix="Add base_url: http://host:port of the running service.",
            )
    else:
        if "model" not in kw:
            raise reader.error(
                line,
                path,
                f"missing required key 'model' for backend {backend}",
                fix="Add model: a hub id or a local model directory.",
            )
        if "base_url" in kw:
            raise reader.error(
                entries["base_url"].line,
                f"{path}.base_url",
                f"base_url is for backend external; backend {backend} starts its own server",
                fix="Remove base_url, or set backend: external.",
            )
    return ServerConfig(name=name, backend=backend, **kw)  # type: ignore[arg-type]


def _builtin_model(reader: _Reader, entry: _Entry, model: str, backend: str) -> None:
    """A ``builtin:`` model id must be one of ours, and served by a server the plugin starts."""
    known = builtin_models()
    if model not in known:
        close = difflib.get_close_matches(model, known, n=1, cutoff=0.6)
        raise reader.error(
            entry.node,
            entry.path,
            f"unknown built-in model {model!r}",
            choices=known,
            choices_label="Built-in models",
            fix=(f"Did you mean {close[0]!r}? " if close else "")
            + "Or name a hub id or a local model directory.",
        )
    if backend == "external":
        raise reader.error(
            entry.node,
            entry.path,
            "a built-in model is served by a server the plugin starts, not by an external one",
            fix="Set backend: vllm or hf, or name the model the external service serves.",
        )


def _tokenizer(reader: _Reader, entry: _Entry) -> str:
    """A tokenizer: a ``builtin:`` model, a hub id, or a local directory that must exist."""
    value = reader.string(entry).strip()
    if is_builtin(value):
        _builtin_model(reader, entry, value, "")
    elif value.startswith(("/", "./", "../", "~")):
        where = Path(value).expanduser()
        if not where.is_dir() and not (where.is_file() and where.name == "tokenizer.json"):
            raise reader.error(
                entry.node,
                entry.path,
                f"tokenizer directory {value!r} does not exist",
                fix="Point it at the model directory holding tokenizer.json (relative paths are "
                "taken from the working directory, as for model), or give a hub id.",
            )
    return value


def _metrics_mode(reader: _Reader, entry: _Entry, backend: str) -> bool | None:
    value = reader.scalar(entry)
    if value == "auto":
        return None
    if not isinstance(value, bool):
        raise reader.error(
            entry.node,
            entry.path,
            f"expected true, false or auto, got {value!r}",
            fix="Write metrics: auto (scrape /metrics when served), true (require it) or false.",
        )
    if value and backend == "hf":
        raise reader.error(
            entry.node,
            entry.path,
            "transformers serve has no /metrics endpoint",
            fix="Remove metrics, or set it to auto or false.",
        )
    return value


_FILE_FORMATS = tuple(f for f in FORMATS if f != "random")


def _dataset(reader: _Reader, name: str, node: Node, line: int) -> DatasetConfig:
    path = f"datasets.{name}"
    entries = reader.mapping(node, path, DATASET_KEYS)
    if "format" not in entries:
        raise reader.error(
            line,
            path,
            "missing required key 'format'",
            choices=FORMATS,
            choices_label="Valid formats",
        )
    fmt = reader.choice(entries["format"], FORMATS, "format")
    kw: dict[str, Any] = {}
    for key, entry in entries.items():
        if key == "format":
            continue
        if key == "path":
            if fmt == "random":
                raise reader.error(
                    entry.line,
                    entry.path,
                    "format random makes its own prompts and reads no file",
                    fix="Remove path, or pick a file format: " + ", ".join(_FILE_FORMATS) + ".",
                )
            raw = reader.string(entry)
            resolved = Path(raw).expanduser()
            if not resolved.is_absolute():
                resolved = reader.path.resolve().parent / resolved
            if not resolved.is_file():
                raise reader.error(
                    entry.node,
                    entry.path,
                    f"dataset file {str(resolved)!r} does not exist",
                    fix="Relative paths are taken from the spec file's directory.",
                )
            kw["path"] = str(resolved)
        elif key == "field":
            if fmt != "jsonl":
                raise reader.error(
                    entry.line,
                    entry.path,
                    f"field applies to format jsonl only, not {fmt}",
                    fix="Remove field.",
                )
            kw["field"] = reader.string(entry)
        elif key == "seed":
            kw["seed"] = reader.integer(entry)
        else:
            kw[key] = reader.integer(entry, minimum=1)
    if fmt == "random":
        if "input_tokens" not in kw:
            raise reader.error(
                line,
                path,
                "missing required key 'input_tokens' for format random",
                fix="Add input_tokens: the prompt length in tokens, e.g. 128.",
            )
    elif "path" not in kw:
        raise reader.error(
            line,
            path,
            f"missing required key 'path' for format {fmt}",
            fix="Add path: the dataset file, relative to the spec file's directory.",
        )
    low, high = kw.get("min_prompt_tokens"), kw.get("max_prompt_tokens")
    if low is not None and high is not None and low > high:
        raise reader.error(
            entries["max_prompt_tokens"].line,
            f"{path}.max_prompt_tokens",
            f"max_prompt_tokens ({high}) is below min_prompt_tokens ({low})",
        )
    return DatasetConfig(name=name, format=fmt, **kw)  # type: ignore[arg-type]


def http_url_problem(url: str) -> str | None:
    """What makes ``url`` unusable as a server's base URL, or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return f"{url!r} has no valid port: ports are 1-65535"
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        return f"{url!r} holds whitespace or control characters"
    return None


def _headers(reader: _Reader, entry: _Entry) -> dict[str, str]:
    """Headers as the client writes them: token names, values on one line in Latin-1."""
    headers = reader.string_map(entry)
    entries = reader.mapping(entry.node, entry.path, None)
    for name, value in headers.items():
        sub = entries[name]
        if not _HEADER_NAME.fullmatch(name):
            raise reader.error(
                sub.line,
                sub.path,
                f"{name!r} is not an HTTP header name",
                fix="Header names are letters, digits and -, e.g. X-Request-Source.",
            )
        if name.lower() in _CLIENT_HEADERS:
            raise reader.error(
                sub.line,
                sub.path,
                f"the client writes {name} itself",
                fix="Remove this header.",
            )
        control = next((ch for ch in value if ch != "\t" and not 32 <= ord(ch) != 127), None)
        if control is not None:
            raise reader.error(
                sub.node,
                sub.path,
                f"the value holds the control character {control!r}: a line break would end "
                "the header and start another",
                fix="Write the value on one line (a block scalar | or > ends with a line break).",
            )
        try:
            value.encode("latin-1")
        except UnicodeEncodeError as error:
            raise reader.error(
                sub.node,
                sub.path,
                f"the value holds {value[error.start]!r}, which an HTTP header cannot carry "
                "(Latin-1 text only)",
                fix="Use ASCII text, or encode the value (e.g. percent-encoding) as the server "
                "expects.",
            ) from None
    return headers


def _check_json(reader: _Reader, entry: _Entry, value: Any, path: str) -> None:
    """``extra_body`` goes out as JSON, which has no infinity or NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        raise reader.error(
            entry.node,
            path,
            f"{value!r} cannot be sent: JSON has no infinity or NaN",
            fix="Write a finite number, or quote the value to send it as text.",
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _check_json(reader, entry, item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(reader, entry, item, f"{path}[{i}]")


def _load(
    reader: _Reader, entries: Mapping[str, _Entry], scenario_path: str, line: int
) -> LoadConfig:
    kw: dict[str, Any] = {}
    for key, entry in entries.items():
        if key == "api":
            kw[key] = reader.choice(entry, APIS, "api")
        elif key == "arrival":
            kw[key] = reader.choice(entry, ARRIVALS, "arrival")
        elif key in ("stream", "include_usage", "request_seed"):
            kw[key] = reader.boolean(entry)
        elif key == "ignore_eos":
            kw[key] = None if reader.scalar(entry) is None else reader.boolean(entry)
        elif key == "parallel":
            kw[key] = reader.integer(entry, minimum=1, maximum=MAX_PARALLEL)
        elif key == "requests":
            kw[key] = reader.integer(entry, minimum=1)
        elif key in ("warmup", "min_tokens"):
            kw[key] = reader.integer(entry, minimum=0)
        elif key == "seed":
            kw[key] = reader.integer(entry)
        elif key == "max_tokens":
            kw[key] = None if reader.scalar(entry) is None else reader.integer(entry, minimum=1)
        elif key == "rate":
            value = reader.scalar(entry)
            if isinstance(value, str):
                try:
                    kw[key] = parse_quantity(value, UnitKind.REQUEST_RATE).value
                except UnitError as error:
                    raise reader.error(
                        entry.node, entry.path, error.message, fix=error.fix
                    ) from None
                if kw[key] <= 0:
                    raise reader.error(entry.node, entry.path, f"must be above 0, got {value!r}")
            else:
                kw[key] = reader.number(entry, positive=True)
            if kw[key] > MAX_RATE:
                raise reader.error(
                    entry.node,
                    entry.path,
                    f"must be at most {MAX_RATE:,.0f} req/s, got {value!r}",
                    fix="One client process cannot send faster than that; see the load limits "
                    f"in {DOCS}.",
                )
        elif key == "burstiness":
            kw[key] = reader.number(entry, positive=True)
        elif key == "temperature":
            kw[key] = reader.number(entry, minimum=0)
        elif key == "top_p":
            kw[key] = reader.number(entry, positive=True, maximum=1)
        elif key in ("duration", "connect_timeout", "read_timeout", "total_timeout"):
            kw[key] = reader.duration(entry)
        elif key == "stop":
            if isinstance(entry.node, ScalarNode):
                kw[key] = (reader.string(entry, allow_empty=True),)
            else:
                kw[key] = tuple(text for text, _, _ in reader.string_list(entry))
        elif key == "extra_body":
            body = reader.value(entry.node, entry.path)
            if not isinstance(body, dict):
                raise reader._wrong_type(entry, body, "a mapping", "{repetition_penalty: 1.0}")
            _check_json(reader, entry, body, entry.path)
            kw[key] = body
        elif key == "headers":
            kw[key] = _headers(reader, entry)
        elif key in ("max_response_bytes", "max_consecutive_timeouts", "failure_budget"):
            kw[key] = _stop_limit(reader, entry)
    load_path = f"{scenario_path}.load"
    budget = kw.get("failure_budget")
    if isinstance(budget, float) and kw.get("requests") is None:
        raise reader.error(
            entries["failure_budget"].node,
            entries["failure_budget"].path,
            "a percentage budget is a share of 'requests', and this load sets only 'duration'",
            fix="Give a count of failed requests instead, e.g. failure_budget: 10.",
        )
    if kw.get("parallel") is None and kw.get("rate") is None:
        raise reader.error(
            line,
            load_path,
            "needs 'parallel' (concurrent users) or 'rate' (requests per second)",
            fix="Add e.g. parallel: 10.",
        )
    if kw.get("requests") is None and kw.get("duration") is None:
        raise reader.error(
            line,
            load_path,
            "needs 'requests' (how many to measure) or 'duration' (how long)",
            fix="Add e.g. requests: 100 or duration: 60s.",
        )
    return LoadConfig(**kw)


def _stop_limit(reader: _Reader, entry: _Entry) -> int | float | None:
    """max_response_bytes (bytes or a memory size), max_consecutive_timeouts (a count or null),
    failure_budget (a count, a percentage of `requests`, or null)."""
    value = reader.scalar(entry)
    key = entry.key
    if value is None and key != "max_response_bytes":
        return None  # never stop for this reason
    if key == "max_response_bytes":
        if isinstance(value, str):
            try:
                size = parse_quantity(value, UnitKind.MEMORY).value
            except UnitError as error:
                raise reader.error(entry.node, entry.path, error.message, fix=error.fix) from None
            if size < 1:
                raise reader.error(entry.node, entry.path, f"must be at least 1 B, got {value!r}")
            return int(size)
        return reader.integer(entry, minimum=1)
    if key == "failure_budget" and isinstance(value, str):
        try:
            share = parse_quantity(value, UnitKind.RATIO)
        except UnitError as error:
            raise reader.error(entry.node, entry.path, error.message, fix=error.fix) from None
        if share.unit != "%" or share.value <= 0:
            raise reader.error(
                entry.node,
                entry.path,
                f"expected a count of failed requests or a percentage above 0, got {value!r}",
                fix="Write e.g. failure_budget: 10 (requests) or failure_budget: 5%.",
            )
        return float(share.value)
    if key == "failure_budget" and isinstance(value, float):
        raise reader.error(
            entry.node,
            entry.path,
            f"expected a count of failed requests or a percentage, got {value!r}",
            fix=f"Write a share of the requests as a percentage, e.g. {value * 100:g}%.",
        )
    return reader.integer(entry, minimum=1 if key == "max_consecutive_timeouts" else 0)


def _objectives(
    reader: _Reader,
    entries: Mapping[str, _Entry],
    parse: Callable[..., Objective],
) -> tuple[Objective, ...]:
    objectives = []
    for metric, entry in entries.items():
        value = reader.scalar(entry)
        if value is None:  # a scenario removes an objective it inherited from defaults
            continue
        if not isinstance(value, str):
            raise reader.error(
                entry.node,
                entry.path,
                f"objective {value!r} has no operator",
                fix=f'Write it as a quoted string, e.g. {metric}: "<= {value}".',
            )
        try:
            objectives.append(parse(metric, value, line=entry.node.start_mark.line + 1))
        except ObjectiveError as error:
            raise reader.error(
                entry.line,
                entry.path,
                error.message,
                choices=error.choices,
                choices_label="Valid metrics",
                fix=error.fix,
            ) from None
    return tuple(objectives)


def _percentiles(reader: _Reader, entry: _Entry) -> tuple[float, ...]:
    if not isinstance(entry.node, SequenceNode) or not entry.node.value:
        raise reader.error(
            entry.node,
            entry.path,
            "expected a non-empty list of percentiles",
            fix="Write e.g. percentiles: [50, 90, 95, 99, 99.9].",
        )
    values: list[float] = []
    for i, node in enumerate(entry.node.value):
        item = _Entry(entry.key, node, f"{entry.path}[{i}]", node.start_mark.line + 1)
        value = reader.number(item)
        if not 0 < value <= 100:
            raise reader.error(
                node, item.path, f"percentile {value:g} is out of range; use 0 < p <= 100"
            )
        if value in values:
            raise reader.error(node, item.path, f"percentile {value:g} is listed twice")
        values.append(value)
    return tuple(values)


def _merged(
    reader: _Reader,
    defaults: Mapping[str, _Entry],
    scenario: Mapping[str, _Entry],
    section: str,
    allowed: Sequence[str] | None,
) -> dict[str, _Entry]:
    """Entries of ``section`` from defaults, overridden key by key by the scenario's own."""
    merged: dict[str, _Entry] = {}
    for source in (defaults, scenario):
        if section in source:
            merged.update(reader.mapping(source[section].node, source[section].path, allowed))
    return merged


def _scenario(
    reader: _Reader,
    name: str,
    node: Node,
    line: int,
    defaults: Mapping[str, _Entry],
    servers: Mapping[str, ServerConfig],
    datasets: Mapping[str, DatasetConfig],
) -> Scenario:
    path = f"scenarios.{name}"
    if not _SCENARIO_NAME.fullmatch(name):
        raise reader.error(
            line,
            path,
            "scenario names may hold letters, digits, '_', '-' and '.' only",
            fix="Rename it, e.g. openqa-c10; the name appears in test ids.",
        )
    entries = reader.mapping(node, path, SCENARIO_KEYS)

    if "servers" in entries:
        entry = entries["servers"]
        if isinstance(entry.node, ScalarNode):
            names: list[tuple[str, Node, str]] = [(reader.string(entry), entry.node, entry.path)]
        else:
            names = reader.string_list(entry)
        if not names:
            raise reader.error(
                entry.node,
                entry.path,
                "lists no server",
                choices=list(servers),
                choices_label="Defined servers",
            )
        chosen: list[str] = []
        for server, server_node, server_path in names:
            if server not in servers:
                close = difflib.get_close_matches(server, list(servers), n=1, cutoff=0.5)
                raise reader.error(
                    server_node,
                    server_path,
                    f"unknown server {server!r}",
                    choices=list(servers),
                    choices_label="Defined servers",
                    fix=f"Did you mean {close[0]!r}?" if close else "Define it under servers:.",
                )
            if server in chosen:
                raise reader.error(server_node, server_path, f"server {server!r} is listed twice")
            chosen.append(server)
        server_names = tuple(chosen)
    else:
        server_names = tuple(servers)

    if "dataset" not in entries:
        raise reader.error(
            line,
            path,
            "missing required key 'dataset'",
            choices=list(datasets),
            choices_label="Defined datasets",
        )
    dataset = reader.string(entries["dataset"])
    if dataset not in datasets:
        close = difflib.get_close_matches(dataset, list(datasets), n=1, cutoff=0.5)
        raise reader.error(
            entries["dataset"].node,
            entries["dataset"].path,
            f"unknown dataset {dataset!r}",
            choices=list(datasets),
            choices_label="Defined datasets",
            fix=f"Did you mean {close[0]!r}?" if close else "Define it under datasets:.",
        )

    load_entries = _merged(reader, defaults, entries, "load", LOAD_KEYS)
    load_line = entries["load"].line if "load" in entries else line
    load = _load(reader, load_entries, path, load_line)
    server_loads: dict[str, LoadConfig] = {}
    if "server_load" in entries:
        section = entries["server_load"]
        for server, override in reader.mapping(section.node, section.path, None).items():
            if server not in server_names:
                raise reader.error(
                    override.node,
                    override.path,
                    f"server {server!r} does not run this scenario",
                    choices=server_names,
                    choices_label="Servers of this scenario",
                )
            merged = dict(load_entries)
            merged.update(reader.mapping(override.node, override.path, LOAD_KEYS))
            server_loads[server] = _load(reader, merged, path, override.line)

    objectives = _objectives(
        reader, _merged(reader, defaults, entries, "slo", None), parse_objective
    )
    if "request_slo" in entries or "request_slo" in defaults:
        request_slo = _objectives(
            reader,
            _merged(reader, defaults, entries, "request_slo", None),
            parse_request_objective,
        )
    else:
        request_slo = derive_request_objectives(objectives)
    goodput = [o for o in objectives if o.metric in ("goodput", "goodput_ratio")]
    if goodput and not request_slo:
        raise reader.error(
            goodput[0].line,
            f"{path}.slo.{goodput[0].metric}",
            "goodput counts requests that meet per-request objectives, and this scenario has none",
            fix='Add request_slo: {ttft: "<= 2 s"} (ttft, ttfat, tpot, e2e, itl), or an slo '
            "bound on a ttft/ttfat/tpot/e2e/itl percentile to derive them from.",
        )

    if "percentiles" in entries:
        percentiles = _percentiles(reader, entries["percentiles"])
    elif "percentiles" in defaults:
        percentiles = _percentiles(reader, defaults["percentiles"])
    else:
        percentiles = DEFAULT_PERCENTILES

    return Scenario(
        name=name,
        servers=server_names,
        dataset=dataset,
        load=load,
        server_loads=server_loads,
        objectives=objectives,
        request_slo=request_slo,
        percentiles=percentiles,
        line=line,
    )


def _compose(path: Path) -> Node | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError(
            path, None, "", f"cannot read the spec: {error.strerror or error}"
        ) from None
    except UnicodeDecodeError as error:
        raise SpecError(path, None, "", f"not UTF-8 text: {error.reason}") from None
    try:
        return compose(text)
    except Refused as refused:
        raise SpecError(path, refused.line, refused.key, refused.message, fix=refused.fix) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = error.problem or error.context or "invalid YAML"
        raise SpecError(
            path,
            line,
            "",
            f"YAML syntax error: {problem}",
            fix="Check indentation, colons and quotes on this line and the one before.",
        ) from None
    except yaml.YAMLError as error:
        raise SpecError(path, None, "", f"YAML error: {error}") from None


def _section(
    reader: _Reader, entries: Mapping[str, _Entry], key: str, what: str
) -> Iterator[_Entry]:
    if key not in entries:
        raise reader.error(
            1,
            key,
            f"missing required section '{key}'",
            fix=f"Add {key}: with at least one {what}; see {DOCS}.",
        )
    items = reader.mapping(entries[key].node, key, None, what=what + "s")
    if not items:
        raise reader.error(
            entries[key].node, key, f"defines no {what}", fix=f"Add at least one {what}."
        )
    yield from items.values()


def load_spec(path: Path, env: Mapping[str, str] | None = None) -> Spec:
    """Read and validate a spec file; SpecError says where and what is wrong, and how to fix it.

    ``env`` supplies ``${VAR}`` values (default: the process environment).
    """
    path = Path(path)
    reader = _Reader(path, os.environ if env is None else env)
    root = _compose(path)
    if root is None or (isinstance(root, ScalarNode) and root.value == ""):
        raise SpecError(
            path,
            None,
            "",
            "the spec is empty",
            fix=f"Add servers, datasets and scenarios; see {DOCS}.",
        )
    # top-level `x-` keys hold anchors for merge keys (`x-vllm: &vllm {...}`), as in Compose files
    top = {
        key: entry
        for key, entry in reader.mapping(root, "", TOP_KEYS, extensions=True).items()
        if not key.startswith("x-")
    }

    if "version" in top:
        version = reader.scalar(top["version"])
        if version != 1 or isinstance(version, bool):
            raise reader.error(
                top["version"].node,
                "version",
                f"unsupported spec version {version!r}",
                choices=("1",),
                choices_label="Supported versions",
            )

    defaults: dict[str, _Entry] = {}
    if "defaults" in top:
        defaults = reader.mapping(top["defaults"].node, "defaults", DEFAULTS_KEYS)
        # Check each default section's keys even if no scenario would inherit them.
        for section in ("load", "slo", "request_slo"):
            if section in defaults:
                reader.mapping(
                    defaults[section].node,
                    defaults[section].path,
                    LOAD_KEYS if section == "load" else None,
                )
        if "percentiles" in defaults:
            _percentiles(reader, defaults["percentiles"])

    servers = {
        e.key: _server(reader, e.key, e.node, e.line)
        for e in _section(reader, top, "servers", "server")
        if _check_server_name(reader, e)
    }
    dataset_entries = list(_section(reader, top, "datasets", "dataset"))
    datasets = {e.key: _dataset(reader, e.key, e.node, e.line) for e in dataset_entries}
    scenarios = {
        e.key: _scenario(reader, e.key, e.node, e.line, defaults, servers, datasets)
        for e in _section(reader, top, "scenarios", "scenario")
    }
    return Spec(
        path=path,
        servers=servers,
        datasets=datasets,
        scenarios=scenarios,
        dataset_lines={e.key: e.line for e in dataset_entries},
    )


def _check_server_name(reader: _Reader, entry: _Entry) -> bool:
    if not _SCENARIO_NAME.fullmatch(entry.key):
        raise reader.error(
            entry.line,
            entry.path,
            "server names may hold letters, digits, '_', '-' and '.' only",
            fix="Rename it, e.g. vllm-a; the name appears in test ids.",
        )
    return True
