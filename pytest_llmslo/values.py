"""A configuration value together with where it was written, and the checks every key shares.

A ``Value`` is either a node of a spec file (``spec.py``) or an entry of a Python mapping
(``PyValue``, for ``run_workload(load=...)``). The readers here (a string, an integer in bounds, a
duration, one of some choices, ...) and the kinds built on them (``kinds.py``) see only a
``Value``, so a spec and the Python API get the same checks and the same messages; only "where"
differs: ``file:line: key`` against ``run_workload(load=...): key``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from pytest_llmslo.units import UnitError, parse_duration

DOCS = "docs/spec-reference.md"
Shape = Literal["scalar", "list", "mapping"]


def render_error(
    where: str, key: str, message: str, choices: Sequence[str], choices_label: str, fix: str
) -> str:
    """``where: key: message. Valid choices: a, b. Fix.``, the one shape of every config error."""
    text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
    if choices:
        text += f". {choices_label}: " + ", ".join(choices)
    text += "." if not text.endswith(".") else ""
    if fix:
        text += f" {fix}"
    return text


class ConfigError(ValueError):
    """Configuration given in Python that cannot be used: where (the argument), the key, what,
    the valid choices and the fix, as a spec's ``SpecError`` says them."""

    def __init__(
        self,
        where: str,
        key: str,
        message: str,
        *,
        choices: Sequence[str] = (),
        fix: str = "",
        choices_label: str = "Valid choices",
    ) -> None:
        self.where = where
        self.key = key
        self.message = message
        self.choices = tuple(choices)
        self.fix = fix
        self.choices_label = choices_label
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return render_error(
            self.where, self.key, self.message, self.choices, self.choices_label, self.fix
        )


class Site(Protocol):
    """A place errors can point at: a key, or a whole section."""

    @property
    def path(self) -> str:
        """The dotted key (``scenarios.s.load.parallel``); "" for a whole Python mapping."""
        ...

    def error(
        self,
        message: str,
        *,
        path: str | None = None,
        choices: Sequence[str] = (),
        choices_label: str = "Valid choices",
        fix: str = "",
    ) -> Exception:
        """An error at this place (``path`` names a part of it); the caller raises it."""
        ...


class Value(Site, Protocol):
    """A value and where it was written, as a kind reads it."""

    @property
    def key(self) -> str:
        """The key it was written under; an item of a list has its list's key."""
        ...

    def shape(self) -> Shape: ...

    def scalar(self) -> Any:
        """The value of a scalar (str, int, float, bool or None); an error for a collection."""
        ...

    def items(self) -> list[Value]:
        """The items of a list (call when ``shape()`` is "list")."""
        ...

    def entries(self) -> dict[str, Value]:
        """The entries of a mapping; an error for anything else."""
        ...

    def plain(self) -> Any:
        """Any value as plain Python: dicts, lists and scalars."""
        ...

    def describe(self) -> str:
        """What the value is, for "expected X, got ..." (``a string ('x')``, ``a list``)."""
        ...

    def key_error(
        self,
        message: str,
        *,
        path: str | None = None,
        choices: Sequence[str] = (),
        choices_label: str = "Valid choices",
        fix: str = "",
    ) -> Exception:
        """An error at the key rather than its value (they differ for a block value in YAML)."""
        ...

    def looks_typed(self, text: str) -> bool:
        """Whether ``text`` written without quotes would be a number, boolean or null."""
        ...

    def looks_number(self, text: str) -> bool:
        """Whether ``text`` written without quotes would be a number."""
        ...


# --- reading values -------------------------------------------------------------------------------


def type_name(value: object) -> str:
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
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def wrong_type(value: Value, got: object, expected: str, example: str) -> Exception:
    shown = f" {got!r}" if isinstance(got, str | int | float) else ""
    fix = f"Write e.g. {value.key}: {example}."
    if isinstance(got, str) and expected != "a string" and value.looks_typed(got):
        fix = f"Remove the quotes around {got!r}: quoted values are strings."
    return value.error(f"expected {expected}, got {type_name(got)}{shown}", fix=fix)


def did_you_mean(word: str, choices: Sequence[str], cutoff: float) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f"Did you mean {close[0]!r}?" if close else ""


def unknown_key_fix(key: str, allowed: Sequence[str]) -> str:
    return did_you_mean(key, allowed, 0.6) or f"See {DOCS}."


def read_string(value: Value, *, allow_empty: bool = False) -> str:
    got = value.scalar()
    if not isinstance(got, str):
        raise wrong_type(value, got, "a string", '"text"')
    if not allow_empty and not got.strip():
        raise value.error("must not be empty")
    return got


def read_bool(value: Value) -> bool:
    got = value.scalar()
    if not isinstance(got, bool):
        raise wrong_type(value, got, "true or false", "true")
    return got


def read_int(value: Value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    got = value.scalar()
    if isinstance(got, bool) or not isinstance(got, int):
        raise wrong_type(value, got, "an integer", str(minimum or 1))
    _check_range(value, got, minimum, maximum)
    return got


def read_number(
    value: Value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
) -> float:
    got = value.scalar()
    if isinstance(got, bool) or not isinstance(got, int | float) or math.isnan(got):
        raise wrong_type(value, got, "a number", "1.0")
    if math.isinf(got):
        raise value.error(
            f"expected a finite number, got {got!r}", fix=f"Write a number, e.g. {value.key}: 1.0."
        )
    if positive and got <= 0:
        raise value.error(f"must be above 0, got {got!r}")
    _check_range(value, got, minimum, maximum)
    return float(got)


def _check_range(value: Value, got: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and got < minimum:
        raise value.error(f"must be at least {minimum}, got {got!r}")
    if maximum is not None and got > maximum:
        raise value.error(f"must be at most {maximum}, got {got!r}")


def read_duration(value: Value) -> float:
    got = value.scalar()
    if isinstance(got, str) and value.looks_number(got):
        # as everywhere in a spec, quotes make text, and text needs its unit
        raise value.error(
            f"expected a duration, got the string {got!r} without a time unit",
            fix=f"Remove the quotes for seconds ({value.key}: {got.strip()}), or add a "
            f'unit: {value.key}: "{got.strip()} s".',
        )
    try:
        seconds = parse_duration(got)
    except UnitError as error:
        raise value.error(error.message, fix=error.fix) from None
    if seconds <= 0:
        raise value.error(f"must be above 0 s, got {got!r}")
    return seconds


def read_choice(value: Value, choices: Sequence[str], what: str) -> str:
    got = read_string(value)
    if got not in choices:
        raise value.error(
            f"unknown {what} {got!r}",
            choices=list(choices),
            choices_label=f"Valid {what}s",
            fix=did_you_mean(got, choices, 0.5),
        )
    return got


def read_string_list(value: Value) -> list[tuple[str, Value]]:
    """Strings of a list (numbers are taken as their text), each with where it was written."""
    if value.shape() != "list":
        raise value.error(
            f"expected a list, got {value.describe()}",
            fix=f'Write e.g. {value.key}: ["a", "b"].',
        )
    result = []
    for item in value.items():
        got = item.scalar()
        if isinstance(got, bool) or not isinstance(got, str | int | float):
            raise wrong_type(item, got, "a string", '"text"')
        result.append((str(got), item))
    return result


def read_string_map(value: Value) -> dict[str, str]:
    """A mapping of strings to strings (numbers are taken as their text; booleans are not)."""
    result = {}
    for key, sub in value.entries().items():
        got = sub.scalar()
        if isinstance(got, bool) or not isinstance(got, str | int | float):
            raise wrong_type(sub, got, "a string", '"value"')
        result[key] = str(got)
    return result


# --- values written in Python ---------------------------------------------------------------------

# text that YAML would type as a number, boolean or null: quoting it there makes a string, which is
# what a Python string holding it looks like too
_NUMBER = re.compile(
    r"[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?|[-+]?\.inf|\.nan", re.I
)
_TYPED = re.compile(r"true|false|yes|no|on|off|null|~", re.I)


class PyValue:
    """A value given in Python (``run_workload(load={...})``), located by its key path."""

    def __init__(self, data: Any, *, where: str, key: str = "", path: str = "") -> None:
        self.data = data
        self.where = where
        self._key = key
        self._path = path

    @property
    def key(self) -> str:
        return self._key

    @property
    def path(self) -> str:
        return self._path

    def shape(self) -> Shape:
        if isinstance(self.data, Mapping):
            return "mapping"
        if isinstance(self.data, list | tuple):
            return "list"
        return "scalar"

    def scalar(self) -> Any:
        if self.shape() != "scalar":
            raise self.error(
                f"expected a single value, got {self.describe()}",
                fix=f"See {DOCS} for the type of this key.",
            )
        return self.data

    def items(self) -> list[Value]:
        return [
            PyValue(item, where=self.where, key=self._key, path=f"{self._path}[{i}]")
            for i, item in enumerate(self.data)
        ]

    def entries(self, allowed: Sequence[str] | None = None) -> dict[str, Value]:
        """The entries of a mapping; with ``allowed``, other keys are errors."""
        if not isinstance(self.data, Mapping):
            raise self.error(
                f"expected a mapping of keys, got {self.describe()}",
                fix=f"See {DOCS} for the shape of this section.",
            )
        result: dict[str, Value] = {}
        for key, item in self.data.items():
            path = f"{self._path}.{key}" if self._path else str(key)
            if not isinstance(key, str):
                raise self.error(f"key {key!r} is not a string", fix="Use strings as keys.")
            if allowed is not None and key not in allowed:
                raise self.error(
                    "unknown key",
                    path=path,
                    choices=list(allowed),
                    choices_label="Valid keys",
                    fix=unknown_key_fix(key, allowed),
                )
            result[key] = PyValue(item, where=self.where, key=key, path=path)
        return result

    def plain(self) -> Any:
        if self.shape() == "mapping":
            return {key: value.plain() for key, value in self.entries().items()}
        if self.shape() == "list":
            return [item.plain() for item in self.items()]
        return self.data

    def describe(self) -> str:
        if self.shape() != "scalar":
            return "a list" if self.shape() == "list" else "a mapping"
        return "null" if self.data is None else f"{type_name(self.data)} ({str(self.data)!r})"

    def error(
        self,
        message: str,
        *,
        path: str | None = None,
        choices: Sequence[str] = (),
        choices_label: str = "Valid choices",
        fix: str = "",
    ) -> Exception:
        return ConfigError(
            self.where,
            self._path if path is None else path,
            message,
            choices=choices,
            choices_label=choices_label,
            fix=fix,
        )

    key_error = error

    def looks_typed(self, text: str) -> bool:
        return bool(_NUMBER.fullmatch(text) or _TYPED.fullmatch(text))

    def looks_number(self, text: str) -> bool:
        return bool(_NUMBER.fullmatch(text.strip()))
