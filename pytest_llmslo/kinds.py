"""What each configuration key accepts: its kind (checks, messages, reference text) and metadata.

Each key of ``ServerConfig``, ``DatasetConfig`` and ``LoadConfig`` names its kind in its field's
metadata (``config.py``: ``field(metadata=spec_key(Integer(minimum=1), "meaning"))``). A kind
reads a located ``Value`` (``values.py``), so a spec and a Python mapping are checked alike, and
gives the type column of the key's row in docs/spec-reference.md.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from pytest_llmslo.units import UnitError, UnitKind, parse_quantity
from pytest_llmslo.values import (
    DOCS,
    Value,
    did_you_mean,
    read_bool,
    read_choice,
    read_duration,
    read_int,
    read_number,
    read_string,
    read_string_list,
    read_string_map,
    wrong_type,
)

# One client process: each user holds a connection and the engine ingests about 125k chunks/s on
# one core (docs/load-engine.md), so 10,000 users streaming over 12 chunks/s each already outrun
# it, and sending 10,000 requests a second leaves it no time to read the answers.
MAX_PARALLEL = 10_000
MAX_RATE = 10_000.0
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEVICE = re.compile(r"auto|cpu|cuda(?::\d+)?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
_CLIENT_HEADERS = ("host", "content-length", "content-type", "transfer-encoding")


# client processes one load may spread over; more than a host's cores only adds contention
MAX_WORKERS = 256
# a scenario that needs more rounds than this to decide needs a longer round instead
MAX_ROUNDS = 50


@dataclass(frozen=True)
class Context:
    """What a key's check may depend on beyond its own value."""

    # keys of the section read before the others: a server's backend, a dataset's format
    section: Mapping[str, Any] = field(default_factory=dict)
    base_dir: Path | None = None  # where relative dataset paths start (None: the working dir)
    base_name: str = "the working directory"  # ... as the fix of a missing file names it


class Kind(Protocol):
    """How one key is read and documented."""

    @property
    def doc(self) -> str:
        """The type column of the key's row in the reference."""
        ...

    def read(self, value: Value, ctx: Context) -> Any: ...


@dataclass(frozen=True)
class Key:
    """A spec key: its kind and its row in docs/spec-reference.md."""

    kind: Kind
    doc: str  # the meaning column
    default: str | None = None  # the default column, where the field's default does not say it
    type: str | None = None  # the type column, where the kind's does not say it


KEY = "pytest_llmslo.key"


def spec_key(
    kind: Kind, doc: str, *, default: str | None = None, type: str | None = None
) -> dict[str, Key]:
    """Field metadata that makes a config field a spec key: ``field(metadata=spec_key(...))``."""
    return {KEY: Key(kind, doc, default, type)}


def keys_of(cls: type) -> dict[str, Key]:
    """The spec keys of a config dataclass, in declaration order."""
    return {f.name: f.metadata[KEY] for f in fields(cls) if KEY in f.metadata}


def default_text(f: Field[Any]) -> str:
    """A field's default as the reference writes it (``required``, ``none``, ``true``, `600`)."""
    if f.default_factory is not MISSING:
        value: Any = f.default_factory()
    elif f.default is MISSING:
        return "required"
    else:
        value = f.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list):
        return "`[]`" if not value else f"`{list(value)}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


# --- kinds ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    allow_empty: bool = False
    doc: str = "string"

    def read(self, value: Value, ctx: Context) -> str:
        return read_string(value, allow_empty=self.allow_empty)


@dataclass(frozen=True)
class Flag:
    nullable: bool = False  # null: leave it to the server

    @property
    def doc(self) -> str:
        return "boolean"

    def read(self, value: Value, ctx: Context) -> bool | None:
        if self.nullable and value.scalar() is None:
            return None
        return read_bool(value)


@dataclass(frozen=True)
class Integer:
    minimum: int | None = None
    maximum: int | None = None
    nullable: bool = False

    @property
    def doc(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            text = f"integer {self.minimum}-{self.maximum}"
        elif self.minimum is not None:
            text = f"integer >= {self.minimum}"
        else:
            text = "integer"
        return f"{text} or `null`" if self.nullable else text

    def read(self, value: Value, ctx: Context) -> int | None:
        if self.nullable and value.scalar() is None:
            return None
        return read_int(value, minimum=self.minimum, maximum=self.maximum)


@dataclass(frozen=True)
class Number:
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False

    @property
    def doc(self) -> str:
        if self.positive and self.maximum is not None:
            return f"number in (0, {self.maximum:g}]"
        if self.positive:
            return "number > 0"
        if self.minimum is not None:
            return f"number >= {self.minimum:g}"
        return "number"

    def read(self, value: Value, ctx: Context) -> float:
        return read_number(
            value, minimum=self.minimum, maximum=self.maximum, positive=self.positive
        )


@dataclass(frozen=True)
class Duration:
    doc: str = "duration"

    def read(self, value: Value, ctx: Context) -> float:
        return read_duration(value)


@dataclass(frozen=True)
class Choice:
    choices: tuple[str, ...]
    what: str  # "backend": "unknown backend 'x'. Valid backends: ..."

    @property
    def doc(self) -> str:
        return " \\| ".join(f"`{c}`" for c in self.choices)

    def read(self, value: Value, ctx: Context) -> str:
        return read_choice(value, self.choices, self.what)


@dataclass(frozen=True)
class Strings:
    """A list of strings; with ``one``, a single string too."""

    one: bool = False

    @property
    def doc(self) -> str:
        return "string or list of strings" if self.one else "list of strings"

    def read(self, value: Value, ctx: Context) -> tuple[str, ...]:
        if self.one and value.shape() == "scalar":
            return (read_string(value, allow_empty=True),)
        return tuple(text for text, _ in read_string_list(value))


@dataclass(frozen=True)
class StringMap:
    doc: str = "mapping string -> string"

    def read(self, value: Value, ctx: Context) -> dict[str, str]:
        return read_string_map(value)


@dataclass(frozen=True)
class Headers:
    """HTTP headers as the client writes them: token names, one line of Latin-1 each."""

    doc: str = "mapping string -> string"

    def read(self, value: Value, ctx: Context) -> dict[str, str]:
        headers = read_string_map(value)
        entries = value.entries()
        for name, text in headers.items():
            sub = entries[name]
            if not _HEADER_NAME.fullmatch(name):
                raise sub.key_error(
                    f"{name!r} is not an HTTP header name",
                    fix="Header names are letters, digits and -, e.g. X-Request-Source.",
                )
            if name.lower() in _CLIENT_HEADERS:
                raise sub.key_error(f"the client writes {name} itself", fix="Remove this header.")
            control = next((ch for ch in text if ch != "\t" and not 32 <= ord(ch) != 127), None)
            if control is not None:
                raise sub.error(
                    f"the value holds the control character {control!r}: a line break would end "
                    "the header and start another",
                    fix="Write the value on one line (a block scalar | or > ends with a line "
                    "break).",
                )
            try:
                text.encode("latin-1")
            except UnicodeEncodeError as error:
                raise sub.error(
                    f"the value holds {text[error.start]!r}, which an HTTP header cannot carry "
                    "(Latin-1 text only)",
                    fix="Use ASCII text, or encode the value (e.g. percent-encoding) as the "
                    "server expects.",
                ) from None
        return headers


@dataclass(frozen=True)
class JsonBody:
    """A mapping merged into every request body: JSON values only, finite numbers."""

    doc: str = "mapping"

    def read(self, value: Value, ctx: Context) -> dict[str, Any]:
        body = value.plain()
        if not isinstance(body, dict):
            raise wrong_type(value, body, "a mapping", "{repetition_penalty: 1.0}")
        _check_json(value, body, value.path)
        return body


def _check_json(value: Value, item: Any, path: str) -> None:
    """The body goes out as JSON, which has no infinity or NaN (and no other types)."""
    if isinstance(item, float) and not math.isfinite(item):
        raise value.error(
            f"{item!r} cannot be sent: JSON has no infinity or NaN",
            path=path,
            fix="Write a finite number, or quote the value to send it as text.",
        )
    if isinstance(item, dict):
        for key, sub in item.items():
            _check_json(value, sub, f"{path}.{key}")
    elif isinstance(item, list):
        for i, sub in enumerate(item):
            _check_json(value, sub, f"{path}[{i}]")
    elif item is not None and not isinstance(item, str | int | float | bool):
        raise value.error(
            f"{type(item).__name__} cannot be sent: JSON holds text, numbers, booleans, null, "
            "lists and mappings",
            path=path,
            fix="Convert the value to one of those.",
        )


@dataclass(frozen=True)
class ServerArgs:
    """Backend options, names without dashes (``max_model_len: 4096`` -> ``--max-model-len``)."""

    doc: str = "mapping"

    def read(self, value: Value, ctx: Context) -> dict[str, Any]:
        args = value.plain()
        if not isinstance(args, dict):
            raise wrong_type(value, args, "a mapping", "{max_model_len: 4096}")
        for arg in args:
            if arg.startswith("-"):
                raise value.error(
                    "argument names are written without leading dashes",
                    path=f"{value.path}.{arg}",
                    fix=f"Write {arg.lstrip('-').replace('-', '_')}: ..., or put the flag in "
                    "extra_args.",
                )
        return args


@dataclass(frozen=True)
class GpuIds:
    doc: str = "list of integers >= 0"

    def read(self, value: Value, ctx: Context) -> tuple[int, ...]:
        if value.shape() != "list":
            raise value.error(
                f"expected a list of GPU indices, got {value.describe()}",
                fix="Write e.g. gpu_ids: [0] or gpu_ids: [0, 1].",
            )
        return tuple(read_int(item, minimum=0) for item in value.items())


@dataclass(frozen=True)
class Device:
    doc: str = "`auto` \\| `cpu` \\| `cuda` \\| `cuda:N`"

    def read(self, value: Value, ctx: Context) -> str:
        device = read_string(value)
        if not _DEVICE.fullmatch(device):
            raise value.error(
                f"unknown device {device!r}",
                choices=("auto", "cpu", "cuda", "cuda:N"),
                choices_label="Valid devices",
            )
        return device


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


@dataclass(frozen=True)
class BaseUrl:
    doc: str = "`http(s)://` URL with a host and, if given, a port 1-65535"

    def read(self, value: Value, ctx: Context) -> str:
        url = read_string(value)
        problem = http_url_problem(url)
        if problem is not None:
            raise value.error(problem, fix="Write e.g. base_url: http://host:8000 (without /v1).")
        return url.rstrip("/")


@dataclass(frozen=True)
class EnvName:
    doc: str = "variable name"

    def read(self, value: Value, ctx: Context) -> str:
        var = read_string(value)
        if not VAR_NAME.fullmatch(var):
            raise value.error(
                f"{var!r} is not an environment variable name",
                fix="Write the variable's name, e.g. api_key_env: PROD_KEY, not its value.",
            )
        return var


def _is_builtin(model: str) -> bool:
    from pytest_llmslo.models import is_builtin  # models imports config, which imports this

    return is_builtin(model)


def _builtin_model(value: Value, model: str, backend: str) -> None:
    """A ``builtin:`` model id must be one of ours, and served by a server the plugin starts."""
    from pytest_llmslo.models import builtin_models

    known = builtin_models()
    if model not in known:
        close = did_you_mean(model, known, 0.6)
        raise value.error(
            f"unknown built-in model {model!r}",
            choices=known,
            choices_label="Built-in models",
            fix=(f"{close} " if close else "") + "Or name a hub id or a local model directory.",
        )
    if backend == "external":
        raise value.error(
            "a built-in model is served by a server the plugin starts, not by an external one",
            fix="Set backend: vllm or hf, or name the model the external service serves.",
        )


@dataclass(frozen=True)
class ModelName:
    """A hub id, a local directory or a ``builtin:`` model; an external server may leave it
    empty (the first model its /v1/models lists)."""

    doc: str = "string"

    def read(self, value: Value, ctx: Context) -> str:
        backend = ctx.section.get("backend", "")
        model = read_string(value, allow_empty=backend == "external").strip()
        if _is_builtin(model):
            _builtin_model(value, model, backend)
        return model


@dataclass(frozen=True)
class TokenizerName:
    """A ``builtin:`` model, a hub id, or a local directory that must exist."""

    doc: str = "string"

    def read(self, value: Value, ctx: Context) -> str:
        name = read_string(value).strip()
        if _is_builtin(name):
            _builtin_model(value, name, "")
        elif name.startswith(("/", "./", "../", "~")):
            where = Path(name).expanduser()
            if not where.is_dir() and not (where.is_file() and where.name == "tokenizer.json"):
                raise value.error(
                    f"tokenizer directory {name!r} does not exist",
                    fix="Point it at the model directory holding tokenizer.json (relative paths "
                    "are taken from the working directory, as for model), or give a hub id.",
                )
        return name


@dataclass(frozen=True)
class MetricsMode:
    doc: str = "`auto` \\| `true` \\| `false`"

    def read(self, value: Value, ctx: Context) -> bool | None:
        got = value.scalar()
        if got == "auto":
            return None
        if not isinstance(got, bool):
            raise value.error(
                f"expected true, false or auto, got {got!r}",
                fix="Write metrics: auto (scrape /metrics when served), true (require it) or "
                "false.",
            )
        if got and ctx.section.get("backend") == "hf":
            raise value.error(
                "transformers serve has no /metrics endpoint",
                fix="Remove metrics, or set it to auto or false.",
            )
        return got


@dataclass(frozen=True)
class DatasetPath:
    """A dataset file that must exist; relative to the spec file's directory (``ctx``)."""

    file_formats: tuple[str, ...]  # the formats that read a file
    doc: str = "string"

    def read(self, value: Value, ctx: Context) -> str:
        if ctx.section.get("format") not in self.file_formats:
            raise value.key_error(
                "format random makes its own prompts and reads no file",
                fix="Remove path, or pick a file format: " + ", ".join(self.file_formats) + ".",
            )
        resolved = Path(read_string(value)).expanduser()
        if not resolved.is_absolute():
            resolved = (ctx.base_dir or Path.cwd()) / resolved
        if not resolved.is_file():
            raise value.error(
                f"dataset file {str(resolved)!r} does not exist",
                fix=f"Relative paths are taken from {ctx.base_name}.",
            )
        return str(resolved)


@dataclass(frozen=True)
class JsonlField:
    doc: str = "string"

    def read(self, value: Value, ctx: Context) -> str:
        fmt = ctx.section.get("format")
        if fmt != "jsonl":
            raise value.key_error(
                f"field applies to format jsonl only, not {fmt}", fix="Remove field."
            )
        return read_string(value)


@dataclass(frozen=True)
class Rate:
    """Requests per second: a number or ``"5 req/s"``, at most what one client can send."""

    doc: str = f'number > 0, or `"5 req/s"`; at most {MAX_RATE:,.0f} req/s'

    def read(self, value: Value, ctx: Context) -> float:
        got = value.scalar()
        if isinstance(got, str):
            try:
                rate = parse_quantity(got, UnitKind.REQUEST_RATE).value
            except UnitError as error:
                raise value.error(error.message, fix=error.fix) from None
            if rate <= 0:
                raise value.error(f"must be above 0, got {got!r}")
        else:
            rate = read_number(value, positive=True)
        if rate > MAX_RATE:
            raise value.error(
                f"must be at most {MAX_RATE:,.0f} req/s, got {got!r}",
                fix=f"One client process cannot send faster than that; see the load limits in "
                f"{DOCS}.",
            )
        return rate


@dataclass(frozen=True)
class ByteSize:
    """Bytes: an integer, or a memory size (``"64 MiB"``)."""

    doc: str = 'integer (bytes) or a memory size (`"64 MiB"`)'

    def read(self, value: Value, ctx: Context) -> int:
        got = value.scalar()
        if isinstance(got, str):
            try:
                size = parse_quantity(got, UnitKind.MEMORY).value
            except UnitError as error:
                raise value.error(error.message, fix=error.fix) from None
            if size < 1:
                raise value.error(f"must be at least 1 B, got {got!r}")
            return int(size)
        return read_int(value, minimum=1)


@dataclass(frozen=True)
class WorkerCount:
    """Client processes for one load: a count, or ``auto`` (stored as 0)."""

    doc: str = "integer >= 1, or `auto`"

    def read(self, value: Value, ctx: Context) -> int:
        if value.scalar() == "auto":
            return 0
        if isinstance(value.scalar(), str):
            raise value.error(
                f"expected a number of client processes or 'auto', got {value.scalar()!r}",
                fix="Write e.g. workers: 4, or workers: auto.",
            )
        return read_int(value, minimum=1, maximum=MAX_WORKERS)


@dataclass(frozen=True)
class RoundLimits:
    """How many rounds a scenario runs: ``N`` (exactly N) or ``{min: N, max: M}``."""

    doc: str = "integer >= 1, or `{min: N, max: M}` with 1 <= N <= M"

    def read(self, value: Value, ctx: Context) -> tuple[int, int]:
        if value.shape() != "mapping":
            exactly = read_int(value, minimum=1, maximum=MAX_ROUNDS)
            return exactly, exactly
        entries = value.entries()
        unknown = sorted(set(entries) - {"min", "max"})
        if unknown:
            raise entries[unknown[0]].key_error(
                f"unknown key {unknown[0]!r}", choices=("min", "max")
            )
        low = read_int(entries["min"], minimum=1, maximum=MAX_ROUNDS) if "min" in entries else 1
        high = read_int(entries["max"], minimum=1, maximum=MAX_ROUNDS) if "max" in entries else low
        if high < low:
            raise value.error(
                f"max ({high}) is below min ({low})",
                fix="Write e.g. rounds: {min: 1, max: 5}: at least min rounds, at most max.",
            )
        return low, high


@dataclass(frozen=True)
class FailureBudget:
    """Failed requests a run may have: a count, a percentage of ``requests``, or null."""

    doc: str = 'integer >= 0, a percentage of `requests` (`"5%"`), or `null`'

    def read(self, value: Value, ctx: Context) -> int | float | None:
        got = value.scalar()
        if got is None:
            return None  # never stop for this reason
        if isinstance(got, str):
            try:
                share = parse_quantity(got, UnitKind.RATIO)
            except UnitError as error:
                raise value.error(error.message, fix=error.fix) from None
            if share.unit != "%" or share.value <= 0:
                raise value.error(
                    f"expected a count of failed requests or a percentage above 0, got {got!r}",
                    fix="Write e.g. failure_budget: 10 (requests) or failure_budget: 5%.",
                )
            return float(share.value)
        if isinstance(got, float):
            raise value.error(
                f"expected a count of failed requests or a percentage, got {got!r}",
                fix=f"Write a share of the requests as a percentage, e.g. {got * 100:g}%.",
            )
        return read_int(value, minimum=0)


# --- capacity search (`capacity:`): keys whose meaning depends on `vary` ----------------------


@dataclass(frozen=True)
class LoadLevel:
    """A load a capacity search tries: concurrent users (`vary: parallel`) or requests per second
    (`vary: rate`); ``ctx.section["vary"]`` says which."""

    doc: str = (
        f'integer 1-{MAX_PARALLEL:,} (`vary: parallel`); a rate, `4` or `"4 req/s"` (`vary: rate`)'
    )

    def read(self, value: Value, ctx: Context) -> float:
        if ctx.section.get("vary") == "rate":
            return Rate().read(value, ctx)
        return float(read_int(value, minimum=1, maximum=MAX_PARALLEL))


@dataclass(frozen=True)
class SearchResolution:
    """When a capacity search's bisection stops: a step of users (`vary: parallel`), or a
    fraction of the load (`vary: rate`: ``"10%"`` or ``0.1``)."""

    doc: str = "integer >= 1 (`vary: parallel`); a percentage or fraction in (0, 1) (`vary: rate`)"

    def read(self, value: Value, ctx: Context) -> float:
        if ctx.section.get("vary") != "rate":
            return float(read_int(value, minimum=1))
        got = value.scalar()
        if isinstance(got, str):
            try:
                share = parse_quantity(got, UnitKind.RATIO).value
            except UnitError as error:
                raise value.error(error.message, fix=error.fix) from None
        else:
            share = read_number(value)
        if not 0 < share < 1:
            raise value.error(
                f"a rate search's resolution is a share of the load in (0, 1), got {got!r}",
                fix="Write e.g. resolution: 10% (bisection stops when the failing rate is within "
                "10% of the passing one).",
            )
        return share
