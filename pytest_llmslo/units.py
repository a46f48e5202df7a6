"""Strict parsing of quantities (times, rates, ratios, memory, counts) into canonical units."""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass


class UnitKind(str, enum.Enum):
    """What a quantity measures; each kind has one canonical unit that values are stored in."""

    TIME = "time"
    TOKEN_RATE = "token rate"
    REQUEST_RATE = "request rate"
    RATIO = "ratio"
    MEMORY = "memory"
    COUNT = "count"
    FACTOR = "factor"  # how many times another value (a growth): 2x, 1.5, 150%

    def __str__(self) -> str:
        return self.value


CANONICAL_UNIT: dict[UnitKind, str] = {
    UnitKind.TIME: "s",
    UnitKind.TOKEN_RATE: "tok/s",
    UnitKind.REQUEST_RATE: "req/s",
    UnitKind.RATIO: "",  # a fraction in [0, 1]
    UnitKind.MEMORY: "B",
    UnitKind.COUNT: "",
    UnitKind.FACTOR: "",
}

# factor from the written unit to the canonical one
UNITS: dict[UnitKind, dict[str, float]] = {
    UnitKind.TIME: {
        "us": 1e-6,
        "\u00b5s": 1e-6,
        "\u03bcs": 1e-6,
        "ms": 1e-3,
        "s": 1.0,
        "min": 60.0,
    },
    UnitKind.TOKEN_RATE: {"tok/s": 1.0, "tokens/s": 1.0},
    UnitKind.REQUEST_RATE: {"req/s": 1.0, "requests/s": 1.0},
    UnitKind.RATIO: {"%": 0.01},
    UnitKind.MEMORY: {
        "B": 1.0,
        "KB": 1e3,
        "MB": 1e6,
        "GB": 1e9,
        "TB": 1e12,
        "KiB": 2.0**10,
        "MiB": 2.0**20,
        "GiB": 2.0**30,
        "TiB": 2.0**40,
    },
    UnitKind.COUNT: {},
    UnitKind.FACTOR: {"x": 1.0, "%": 0.01},
}

# A bare number is ambiguous for times (ms or s?) and memory (bytes or GiB?), so those need a unit.
BARE_NUMBER_ALLOWED: dict[UnitKind, bool] = {
    UnitKind.TIME: False,
    UnitKind.TOKEN_RATE: True,
    UnitKind.REQUEST_RATE: True,
    UnitKind.RATIO: True,
    UnitKind.MEMORY: False,
    UnitKind.COUNT: True,
    UnitKind.FACTOR: True,
}

_QUANTITY = re.compile(r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>.*)")


class UnitError(ValueError):
    """A quantity that does not parse; ``fix`` says how to write it instead."""

    def __init__(self, message: str, *, fix: str = "") -> None:
        super().__init__(f"{message}. {fix}" if fix else message)
        self.message = message
        self.fix = fix


@dataclass(frozen=True)
class Quantity:
    """A parsed quantity: ``value`` in the canonical unit of its kind, ``unit`` as written."""

    value: float
    unit: str
    kind: UnitKind


def expected_units(kind: UnitKind) -> str:
    """The units a kind accepts, for error messages (``"us, µs, ms, s or min"``)."""
    names = [
        u for u in UNITS[kind] if u != "\u03bcs"
    ]  # the Greek mu reads the same as the micro sign
    if BARE_NUMBER_ALLOWED[kind]:
        names.append("a bare number" if kind is not UnitKind.COUNT else "a bare integer")
    if kind is UnitKind.RATIO:
        names[-1] = "a bare fraction between 0 and 1"
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


def kind_of_unit(unit: str) -> UnitKind | None:
    """Which kind a written unit belongs to, or None when no kind knows it."""
    for kind, units in UNITS.items():
        if unit in units:
            return kind
    return None


def _example(kind: UnitKind) -> str:
    return {
        UnitKind.TIME: "500 ms",
        UnitKind.TOKEN_RATE: "1000 tok/s",
        UnitKind.REQUEST_RATE: "5 req/s",
        UnitKind.RATIO: "1% or 0.01",
        UnitKind.MEMORY: "24 GiB",
        UnitKind.COUNT: "0",
        UnitKind.FACTOR: "2x",
    }[kind]


def parse_quantity(text: str, kind: UnitKind, *, integer: bool = False) -> Quantity:
    """Parse ``text`` (``"500 ms"``, ``"1%"``, ``"24 GiB"``) as a non-negative quantity of ``kind``.

    ``integer`` requires a whole number (counts of discrete things).
    """
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        raise UnitError(
            f"{text.strip()!r} is not a number with a unit",
            fix=f"Write a {kind} like '{_example(kind)}'",
        )
    number = float(match["number"])
    unit = match["unit"].strip()
    if not math.isfinite(number):
        raise UnitError(
            f"{text.strip()!r} is not finite", fix=f"Write a {kind} like '{_example(kind)}'"
        )
    if number < 0:
        raise UnitError(
            f"{text.strip()!r} is negative; every measured quantity is zero or more",
            fix=f"Write a {kind} like '{_example(kind)}'",
        )
    units = UNITS[kind]
    if unit == "":
        if not BARE_NUMBER_ALLOWED[kind]:
            raise UnitError(
                f"{text.strip()!r} has no unit, and a bare number is ambiguous for a {kind}",
                fix=f"Add a unit: {expected_units(kind)} (e.g. '{_example(kind)}')",
            )
        if kind is UnitKind.RATIO and number > 1:
            raise UnitError(
                f"{text.strip()!r} is not a fraction between 0 and 1",
                fix=f"Write '{match['number']}%' for a percentage, or a fraction like 0.01",
            )
        if integer and not number.is_integer():
            raise UnitError(
                f"{text.strip()!r} is not a whole number, and a {kind} counts whole things",
                fix="Write an integer like '0' or '10'",
            )
        return Quantity(value=number, unit="", kind=kind)
    if unit not in units:
        other = kind_of_unit(unit)
        if other is not None:
            raise UnitError(
                f"{text.strip()!r} is a {other}, not a {kind}",
                fix=f"Use a {kind} unit: {expected_units(kind)}",
            )
        near = [u for u in units if u.lower() == unit.lower()]
        hint = f"Did you mean '{near[0]}'? " if near else ""
        raise UnitError(
            f"unknown unit {unit!r} in {text.strip()!r}",
            fix=f"{hint}Valid units for a {kind}: {expected_units(kind)}",
        )
    value = number * units[unit]
    if kind is UnitKind.RATIO and value > 1:
        raise UnitError(f"{text.strip()!r} is more than 100%", fix="Write a percentage up to 100%")
    return Quantity(value=value, unit=unit, kind=kind)


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string with a time unit (``"30s"``, ``"10 min"``).

    A bare number is fine here, unlike in objectives: configuration keys are documented in seconds.
    """
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a duration", fix="Write seconds like 600 or '10 min'")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise UnitError(
                f"{value!r} is not a duration", fix="Write seconds like 600 or '10 min'"
            )
        return float(value)
    if isinstance(value, str):
        stripped = value.strip()
        match = _QUANTITY.fullmatch(stripped)
        if match is not None and match["unit"].strip() == "":
            return parse_duration(float(match["number"]))
        return parse_quantity(stripped, UnitKind.TIME).value
    raise UnitError(f"{value!r} is not a duration", fix="Write seconds like 600 or '10 min'")
