"""The key tables of the spec reference, rendered from the config dataclasses' declarations.

Each table sits between marker comments; ``--write`` rewrites them from ``config.py``, ``--check``
fails (and shows the difference) when the file no longer matches, as the unit tests do:

    python -m pytest_llmslo.schema_docs --check
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from pytest_llmslo.config import (
    CapacityConfig,
    DatasetConfig,
    LoadConfig,
    ServerConfig,
    VerdictsConfig,
)
from pytest_llmslo.kinds import KEY, default_text

REFERENCE = "docs/spec-reference.md"
TABLES: dict[str, type] = {
    "keys-servers": ServerConfig,
    "keys-datasets": DatasetConfig,
    "keys-load": LoadConfig,
    "keys-verdicts": VerdictsConfig,
    "keys-capacity": CapacityConfig,
}
COMMAND = "python -m pytest_llmslo.schema_docs --write"


class DocsError(ValueError):
    """A reference file whose generated table cannot be found or replaced."""


def begin_marker(table: str) -> str:
    return f"<!-- begin generated table {table}: edit pytest_llmslo/config.py, then {COMMAND} -->"


def end_marker(table: str) -> str:
    return f"<!-- end generated table {table} -->"


def key_table(cls: type) -> str:
    """The markdown table of a section's keys (key, type, default, meaning), in field order."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in fields(cls):
        key = f.metadata.get(KEY)
        if key is not None:
            kind = key.type or key.kind.doc
            lines.append(f"| `{f.name}` | {kind} | {key.default or default_text(f)} | {key.doc} |")
    return "\n".join(lines)


def replace_tables(text: str, where: str) -> str:
    """``text`` with every key table between its markers rendered anew."""
    for table, cls in TABLES.items():
        begin, end = begin_marker(table), end_marker(table)
        if text.count(begin) != 1 or text.count(end) != 1:
            raise DocsError(
                f"{where}: needs exactly one pair of lines {begin!r} ... {end!r} around the "
                f"{table} table (found {text.count(begin)} and {text.count(end)}); put them "
                f"back around the table and run {COMMAND}"
            )
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = f"{head}{begin}\n{key_table(cls)}\n{end}{tail}"
    return text


def drift(root: Path) -> str:
    """A unified diff of the reference against its tables rendered anew; "" when they match."""
    current = (root / REFERENCE).read_text(encoding="utf-8")
    updated = replace_tables(current, REFERENCE)
    return "".join(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            updated.splitlines(keepends=True),
            fromfile=f"{REFERENCE} (as written)",
            tofile=f"{REFERENCE} (from pytest_llmslo/config.py)",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_llmslo.schema_docs", description=__doc__.splitlines()[0]
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="fail when a table is out of date")
    mode.add_argument("--write", action="store_true", help="rewrite the tables in place")
    parser.add_argument(
        "--root", type=Path, default=Path.cwd(), help="repository root (default: here)"
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            diff = drift(args.root)
            if diff:
                sys.stdout.write(diff)
                print(f"spec key tables are out of date: run {COMMAND}", file=sys.stderr)
                return 1
            return 0
        path = args.root / REFERENCE
        current = path.read_text(encoding="utf-8")
        updated = replace_tables(current, REFERENCE)
        if updated != current:
            path.write_text(updated, encoding="utf-8")
            print(f"rewrote the spec key tables of {REFERENCE}")
        return 0
    except (OSError, DocsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
