"""The metric tables of the README and the spec reference, rendered from the catalogue.

The tables sit between marker comments; `--write` rewrites them from `catalogue.py`, `--check`
fails (and shows the difference) when a file no longer matches, as the unit tests do:

    python -m pytest_llmslo.catalogue_docs --check
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pytest_llmslo.catalogue import METRICS, Metric, MetricKind, select
from pytest_llmslo.records import ErrorCategory

# which generated tables each file holds, by path from the repository root
DOCS: dict[str, tuple[str, ...]] = {
    "README.md": ("metrics",),
    "docs/spec-reference.md": ("distributions", "scalars", "request-metrics", "intervals"),
}
COMMAND = "python -m pytest_llmslo.catalogue_docs --write"


class DocsError(ValueError):
    """A documentation file whose generated table cannot be found or replaced."""


def begin_marker(table: str) -> str:
    return (
        f"<!-- begin generated table {table}: edit pytest_llmslo/catalogue.py, then {COMMAND} -->"
    )


def end_marker(table: str) -> str:
    return f"<!-- end generated table {table} -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fill(text: str) -> str:
    # lists that live in code elsewhere, so that the docs follow them
    per_request = "/".join(m.name for m in METRICS if m.per_request)
    categories = ", ".join(f"`{c.value}`" for c in ErrorCategory)
    return text.replace("{per_request}", per_request).replace("{failure_categories}", categories)


def _readme_rows() -> list[list[str]]:
    # neighbours sharing a DocGroup share a row; the others have one each
    rows: list[list[str]] = []
    members: list[Metric] = []
    for metric in METRICS:
        if members and metric.group is not None and metric.group is members[0].group:
            members.append(metric)
            continue
        if members:
            rows.append(_readme_row(members))
        members = [metric]
    rows.append(_readme_row(members))
    return rows


def _readme_row(members: list[Metric]) -> list[str]:
    group = members[0].group
    text = members[0].definition if group is None else group.text
    kinds = dict.fromkeys(str(m.unit) for m in members)  # ordered, without repeats
    return [
        ", ".join(f"`{m.name}`" for m in members),
        ", ".join(kinds),
        _fill(text),
    ]


def _metrics() -> str:
    return _table(("metric", "kind", "definition"), _readme_rows())


def _distributions() -> str:
    rows = [
        (f"`{m.name}`", str(m.unit), m.definition) for m in select(kind=MetricKind.DISTRIBUTION)
    ]
    return _table(("distribution", "kind", "meaning"), rows)


def _scalars() -> str:
    rows = [
        (f"`{m.name}`", str(m.unit), str(m.producer), m.definition)
        for m in select(kind=MetricKind.SCALAR)
    ]
    return _table(("scalar", "kind", "from", "meaning"), rows)


def _request_metrics() -> str:
    rows = [(f"`{m.name}`", str(m.unit), m.per_request) for m in METRICS if m.per_request]
    return _table(("key", "kind", "bounds"), rows)


def _intervals() -> str:
    # metrics grouped by the interval their verdicts are drawn with (Metric.interval_method)
    methods: dict[str, list[str]] = {}
    for m in METRICS:
        methods.setdefault(str(m.interval_method), []).append(f"`{m.name}`")
    return _table(("interval", "metrics"), [(k, ", ".join(v)) for k, v in methods.items()])


TABLES: dict[str, Callable[[], str]] = {
    "metrics": _metrics,
    "distributions": _distributions,
    "scalars": _scalars,
    "request-metrics": _request_metrics,
    "intervals": _intervals,
}


def replace_table(text: str, table: str, where: str) -> str:
    """`text` with the generated `table` between its markers rendered anew."""
    begin, end = begin_marker(table), end_marker(table)
    if text.count(begin) != 1 or text.count(end) != 1:
        raise DocsError(
            f"{where}: needs exactly one pair of lines {begin!r} ... {end!r} around the "
            f"{table} table (found {text.count(begin)} and {text.count(end)}); put them back "
            f"around the table and run {COMMAND}"
        )
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    if not tail.startswith("\n") and tail:
        raise DocsError(f"{where}: {end!r} must end its line")
    return f"{head}{begin}\n{TABLES[table]()}\n{end}{tail}"


def render(root: Path, path: str) -> tuple[str, str]:
    """(current text, text with every generated table of `path` rendered anew)."""
    current = (root / path).read_text(encoding="utf-8")
    updated = current
    for table in DOCS[path]:
        updated = replace_table(updated, table, path)
    return current, updated


def drift(root: Path) -> list[str]:
    """A unified diff for each file whose tables differ from the catalogue; empty when none do."""
    diffs = []
    for path in DOCS:
        current, updated = render(root, path)
        if current != updated:
            diffs.append(
                "".join(
                    difflib.unified_diff(
                        current.splitlines(keepends=True),
                        updated.splitlines(keepends=True),
                        fromfile=f"{path} (as written)",
                        tofile=f"{path} (from the catalogue)",
                    )
                )
            )
    return diffs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_llmslo.catalogue_docs", description=__doc__.splitlines()[0]
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
            diffs = drift(args.root)
            for diff in diffs:
                sys.stdout.write(diff)
            if diffs:
                print(f"metric tables are out of date: run {COMMAND}", file=sys.stderr)
                return 1
            return 0
        for path in DOCS:
            current, updated = render(args.root, path)
            if current != updated:
                (args.root / path).write_text(updated, encoding="utf-8")
                print(f"rewrote the metric tables of {path}")
        return 0
    except (OSError, DocsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
