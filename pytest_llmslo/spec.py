"""The YAML spec: strict schema, ``${VAR}`` substitution and conversion to typed configuration.

The keys of servers, datasets and load, and their checks, come from the config dataclasses
(``schema.py``); this module walks a spec's YAML nodes, hands each section to the schema as
``Value``s that point back at their file and line, and reads the scenarios that combine them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pytest_llmslo.capacity import CAPACITY_METRICS, METRIC_OF
from pytest_llmslo.config import (
    APIS,
    ARRIVALS,
    BACKENDS,
    FORMATS,
    CapacityConfig,
    DatasetConfig,
    LoadConfig,
    ServerConfig,
    VerdictsConfig,
)
from pytest_llmslo.kinds import MAX_PARALLEL, MAX_RATE, Context, http_url_problem
from pytest_llmslo.schema import (
    CAPACITY_KEYS,
    DATASET_KEYS,
    LOAD_KEYS,
    SERVER_KEYS,
    VERDICTS_KEYS,
    read_capacity,
    read_dataset,
    read_load,
    read_server,
    read_verdicts,
)
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
from pytest_llmslo.values import (
    DOCS,
    Shape,
    Value,
    did_you_mean,
    read_bool,
    read_number,
    read_string,
    read_string_list,
    render_error,
    type_name,
    unknown_key_fix,
)

if TYPE_CHECKING:
    from pytest_llmslo.datasets import DatasetRows

# names other modules and users import from here
__all__ = [
    "APIS",
    "ARRIVALS",
    "BACKENDS",
    "DATASET_KEYS",
    "DEFAULT_PERCENTILES",
    "DOCS",
    "FORMATS",
    "LOAD_KEYS",
    "MAX_PARALLEL",
    "MAX_RATE",
    "SERVER_KEYS",
    "Scenario",
    "Spec",
    "SpecError",
    "http_url_problem",
    "load_spec",
]

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)


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
        return render_error(
            where, self.key, self.message, self.choices, self.choices_label, self.fix
        )

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
    # confidence of the intervals and the inconclusive policy (`verdicts:`)
    verdicts: VerdictsConfig = field(default_factory=VerdictsConfig)
    # a capacity search over `parallel` or `rate` (`capacity:`); None: one run of `load`
    capacity: CapacityConfig | None = None
    # its servers run together, each under the whole load at the same time (`side_by_side:`),
    # instead of one after another
    side_by_side: bool = False

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
                f"expected a mapping of {what}, got {self.describe(node)}",
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
                raise self.error(
                    line,
                    dotted,
                    "unknown key",
                    choices=list(allowed),
                    choices_label="Valid keys",
                    fix=unknown_key_fix(key, allowed),
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
                f"a merge key takes a mapping or a list of mappings, got {self.describe(node)}",
                fix="Write <<: *name, where &name marks a mapping, or <<: [*a, *b].",
            )
        return list(sources)

    def describe(self, node: Node) -> str:
        if isinstance(node, ScalarNode):
            value = self.scalar_raw(node, "")
            return f"{type_name(value)} ({node.value!r})" if value is not None else "null"
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
        tag = self.plain_tag(substituted)
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

    def plain_tag(self, text: str) -> str:
        """The tag YAML gives ``text`` written as a plain scalar (int, float, bool, null, str)."""
        tag: str = self._constructor.resolve(  # type: ignore[no-untyped-call]
            ScalarNode, text, (True, False)
        )
        return tag


class _Node:
    """A spec value as the schema reads it (``kinds.Value``): its node, key path and line."""

    def __init__(self, reader: _Reader, entry: _Entry) -> None:
        self._reader = reader
        self._entry = entry

    @property
    def key(self) -> str:
        return self._entry.key

    @property
    def path(self) -> str:
        return self._entry.path

    def shape(self) -> Shape:
        node = self._entry.node
        if isinstance(node, MappingNode):
            return "mapping"
        return "list" if isinstance(node, SequenceNode) else "scalar"

    def scalar(self) -> Any:
        return self._reader.scalar(self._entry)

    def items(self) -> list[Value]:
        entry = self._entry
        return [
            _Node(self._reader, _Entry(entry.key, node, f"{entry.path}[{i}]", _line(node)))
            for i, node in enumerate(entry.node.value)
        ]

    def entries(self) -> dict[str, Value]:
        return _values(self._reader, self._reader.mapping(self._entry.node, self.path, None))

    def plain(self) -> Any:
        return self._reader.value(self._entry.node, self.path)

    def describe(self) -> str:
        return self._reader.describe(self._entry.node)

    def error(
        self,
        message: str,
        *,
        path: str | None = None,
        choices: Sequence[str] = (),
        choices_label: str = "Valid choices",
        fix: str = "",
    ) -> SpecError:
        return self._reader.error(
            self._entry.node,
            path or self.path,
            message,
            choices=choices,
            choices_label=choices_label,
            fix=fix,
        )

    def key_error(
        self,
        message: str,
        *,
        path: str | None = None,
        choices: Sequence[str] = (),
        choices_label: str = "Valid choices",
        fix: str = "",
    ) -> SpecError:
        return self._reader.error(
            self._entry.line,
            path or self.path,
            message,
            choices=choices,
            choices_label=choices_label,
            fix=fix,
        )

    def looks_typed(self, text: str) -> bool:
        return self._reader.plain_tag(text) != STR_TAG

    def looks_number(self, text: str) -> bool:
        return self._reader.plain_tag(text.strip()) in (_INT_TAG, _FLOAT_TAG)


class _Site:
    """A section of a spec as a place for errors: the line of its key and its dotted path."""

    def __init__(self, reader: _Reader, line: int, path: str) -> None:
        self._reader = reader
        self._line = line
        self.path = path

    def error(
        self,
        message: str,
        *,
        path: str | None = None,
        choices: Sequence[str] = (),
        choices_label: str = "Valid choices",
        fix: str = "",
    ) -> SpecError:
        return self._reader.error(
            self._line,
            path or self.path,
            message,
            choices=choices,
            choices_label=choices_label,
            fix=fix,
        )


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _values(reader: _Reader, entries: Mapping[str, _Entry]) -> dict[str, Value]:
    return {key: _Node(reader, entry) for key, entry in entries.items()}


# --- sections -------------------------------------------------------------------------------------

TOP_KEYS = ("version", "verdicts", "defaults", "servers", "datasets", "scenarios")
DEFAULTS_KEYS = ("load", "slo", "request_slo", "percentiles", "verdicts")
SCENARIO_KEYS = (
    "servers",
    "dataset",
    "load",
    "server_load",
    "slo",
    "request_slo",
    "percentiles",
    "verdicts",
    "capacity",
    "side_by_side",
)
# scenario and server names are parts of test ids (spec.yaml::scenario::server::objective)
_SCENARIO_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


def _server(reader: _Reader, name: str, node: Node, line: int) -> ServerConfig:
    path = f"servers.{name}"
    entries = reader.mapping(node, path, SERVER_KEYS)
    return read_server(name, _values(reader, entries), _Site(reader, line, path))


def _dataset(reader: _Reader, name: str, node: Node, line: int) -> DatasetConfig:
    path = f"datasets.{name}"
    entries = reader.mapping(node, path, DATASET_KEYS)
    ctx = Context(base_dir=reader.path.resolve().parent, base_name="the spec file's directory")
    return read_dataset(name, _values(reader, entries), _Site(reader, line, path), ctx)


def _load(
    reader: _Reader,
    entries: Mapping[str, _Entry],
    scenario_path: str,
    line: int,
    varied: str | None = None,
) -> LoadConfig:
    site = _Site(reader, line, f"{scenario_path}.load")
    return read_load(_values(reader, entries), site, varied=varied)


def _capacity(reader: _Reader, entry: _Entry) -> CapacityConfig:
    entries = reader.mapping(entry.node, entry.path, CAPACITY_KEYS)
    return read_capacity(_values(reader, entries), _Site(reader, entry.line, entry.path))


def _side_by_side(
    reader: _Reader,
    entries: Mapping[str, _Entry],
    servers: Sequence[str],
    capacity: CapacityConfig | None,
) -> bool:
    """`side_by_side: true`: the scenario's servers (two or more) run at the same time."""
    if "side_by_side" not in entries:
        return False
    written = _Node(reader, entries["side_by_side"])
    wanted = read_bool(written)
    if wanted and len(servers) < 2:
        raise written.error(
            f"runs servers side by side, and this scenario has one ({servers[0]!r})",
            fix="List two or more servers under its servers:, or remove side_by_side.",
        )
    if wanted and capacity is not None:
        raise written.error(
            "a capacity search varies the load of one server at a time",
            fix="Search each server's capacity in a scenario of its own, or remove side_by_side.",
        )
    return wanted


def _check_capacity(
    reader: _Reader,
    path: str,
    entries: Mapping[str, _Entry],
    capacity: CapacityConfig | None,
    loads: Sequence[LoadConfig],
    objectives: Sequence[Objective],
) -> None:
    """A capacity search's load and objectives fit what it varies; a capacity objective needs
    a search."""
    for objective in objectives:
        if objective.metric not in CAPACITY_METRICS:
            continue
        where = f"{path}.slo.{objective.metric}"
        if capacity is None:
            raise reader.error(
                objective.line,
                where,
                f"{objective.metric} is the answer of a capacity search, and this scenario has "
                "none",
                fix="Add capacity: {vary: parallel, start: 1, max: 64, budget: 10 min} to the "
                f"scenario, or remove the objective (a default one with {objective.metric}: null).",
            )
        if objective.metric != METRIC_OF[capacity.vary]:
            raise reader.error(
                objective.line,
                where,
                f"this scenario's capacity search varies {capacity.vary}, so it answers "
                f"{METRIC_OF[capacity.vary]}, not {objective.metric}",
                fix=f"Gate {METRIC_OF[capacity.vary]}, or vary the other load.",
            )
    if capacity is None:
        return
    vary = reader.mapping(entries["capacity"].node, entries["capacity"].path, CAPACITY_KEYS)["vary"]
    for load in loads:
        if capacity.vary == "rate" and load.parallel is not None and load.rate is None:
            raise reader.error(
                vary.node,
                vary.path,
                "vary: rate needs an open-loop load, and this scenario's load is closed-loop "
                f"(parallel {load.parallel}, no rate)",
                fix="Set vary: parallel to search over concurrent users, or give the load a "
                "rate (parallel then caps the requests in flight).",
            )
        if capacity.vary == "parallel" and load.rate is not None:
            raise reader.error(
                vary.node,
                vary.path,
                "vary: parallel needs a closed-loop load, and this scenario's load is open-loop "
                f"(rate {load.rate:g} req/s): parallel would only cap the requests in flight",
                fix="Set vary: rate to search over request rates, or remove rate from the load.",
            )


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
        item = _Entry(entry.key, node, f"{entry.path}[{i}]", _line(node))
        value = read_number(_Node(reader, item))
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
        listed = _Node(reader, entry)
        if listed.shape() == "scalar":
            names: list[tuple[str, Value]] = [(read_string(listed), listed)]
        else:
            names = read_string_list(listed)
        if not names:
            raise reader.error(
                entry.node,
                entry.path,
                "lists no server",
                choices=list(servers),
                choices_label="Defined servers",
            )
        chosen: list[str] = []
        for server, where in names:
            if server not in servers:
                raise where.error(
                    f"unknown server {server!r}",
                    choices=list(servers),
                    choices_label="Defined servers",
                    fix=did_you_mean(server, list(servers), 0.5) or "Define it under servers:.",
                )
            if server in chosen:
                raise where.error(f"server {server!r} is listed twice")
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
    written = _Node(reader, entries["dataset"])
    dataset = read_string(written)
    if dataset not in datasets:
        raise written.error(
            f"unknown dataset {dataset!r}",
            choices=list(datasets),
            choices_label="Defined datasets",
            fix=did_you_mean(dataset, list(datasets), 0.5) or "Define it under datasets:.",
        )

    capacity: CapacityConfig | None = None
    if "capacity" in entries:
        capacity = _capacity(reader, entries["capacity"])
    load_entries = _merged(reader, defaults, entries, "load", LOAD_KEYS)
    load_line = entries["load"].line if "load" in entries else line
    varied = capacity.vary if capacity is not None else None
    load = _load(reader, load_entries, path, load_line, varied)
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
            server_loads[server] = _load(reader, merged, path, override.line, varied)

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

    verdicts = read_verdicts(
        _values(reader, _merged(reader, defaults, entries, "verdicts", VERDICTS_KEYS))
    )
    _check_capacity(reader, path, entries, capacity, (load, *server_loads.values()), objectives)
    side_by_side = _side_by_side(reader, entries, server_names, capacity)

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
        verdicts=verdicts,
        capacity=capacity,
        side_by_side=side_by_side,
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
    if "verdicts" in top:
        # the top-level section is the defaults' own, written where a reader looks first
        if "verdicts" in defaults:
            raise reader.error(
                defaults["verdicts"].line,
                "defaults.verdicts",
                "verdicts is set both at the top level and under defaults",
                fix="Keep one of the two.",
            )
        defaults["verdicts"] = top["verdicts"]
    if "verdicts" in defaults:
        # checked even if no scenario would inherit it
        verdicts_entry = defaults["verdicts"]
        entries = reader.mapping(verdicts_entry.node, verdicts_entry.path, VERDICTS_KEYS)
        read_verdicts(_values(reader, entries))

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
