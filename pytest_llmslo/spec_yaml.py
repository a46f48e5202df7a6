"""Spec YAML as nodes: safe composition within limits, the tags a spec may use, ``${VAR}`` text.

PyYAML's safe composer takes any input it can parse: an alias bomb of a few hundred bytes expands
to billions of values when the spec is walked, deep nesting overflows the recursion limit, and tags
such as ``!!python/name`` or ``!!binary`` make values that no JSON body or command line can hold.
This composer refuses those where they are written, with the line and the dotted key, so the spec
reader that walks the nodes afterwards stays small and safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.tokens import ScalarToken

from pytest_llmslo.kinds import VAR_NAME

# a spec is a few levels deep (scenarios.x.load.extra_body.<a JSON schema>); PyYAML's composer
# recurses three frames a level, so this also keeps far from Python's recursion limit
MAX_DEPTH = 64
# values that aliases may add to the document, counted as if every alias were written out: sharing
# a load or an args mapping among scenarios costs hundreds, an alias bomb billions
MAX_ALIAS_VALUES = 10_000
MERGE_TAG = "tag:yaml.org,2002:merge"
STR_TAG = "tag:yaml.org,2002:str"
TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# explicit tags a spec may write: YAML's JSON-like types; others build objects no request can carry
ALLOWED_TAGS = {
    f"tag:yaml.org,2002:{name}": f"!!{name}"
    for name in ("str", "int", "float", "bool", "null", "seq", "map")
}
_BREAKS = "\0 \t\r\n\x85\u2028\u2029"


@dataclass
class Refused(Exception):
    """Input the composer will not take: where it is, what is wrong and how to fix it."""

    line: int
    key: str
    message: str
    fix: str = ""


class SpecLoader(yaml.SafeLoader):
    """SafeLoader with ``${VAR}`` kept whole in plain scalars and limits on what it composes.

    Plain YAML ends a flow-context scalar at ``{``, so ``{path: ${DATA}/x.jsonl}`` would not parse;
    this scanner consumes a ``${...}`` reference whole, nested defaults included. Dates stay text:
    a spec value goes into a JSON body or onto a command line, where a date object cannot.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._labels: list[str | None] = []  # the dotted key of the node being composed
        self._open_anchors: set[str] = set()  # anchors of collections still being composed
        self._sizes: dict[int, int] = {}  # id(node) -> values it holds with aliases written out
        self._alias_values = 0

    # --- scanning -------------------------------------------------------------------------------

    def scan_plain(self) -> ScalarToken:
        chunks: list[Any] = []
        start_mark = self.get_mark()
        end_mark = start_mark
        indent = self.indent + 1
        spaces: list[Any] | None = []
        while True:
            length = 0
            if self.peek() == "#":
                break
            while True:
                ch = self.peek(length)
                if ch == "$" and self.peek(length + 1) == "{":
                    end = self._reference_end(length)
                    if end is not None:
                        length = end
                        continue
                if (
                    ch in _BREAKS
                    or (
                        ch == ":"
                        and self.peek(length + 1) in _BREAKS + (",[]{}" if self.flow_level else "")
                    )
                    or (self.flow_level and ch in ",?[]{}")
                ):
                    break
                length += 1
            if length == 0:
                break
            self.allow_simple_key = False
            chunks.extend(spaces or ())
            chunks.append(self.prefix(length))
            self.forward(length)
            end_mark = self.get_mark()
            spaces = self.scan_plain_spaces(indent, start_mark)
            if not spaces or self.peek() == "#" or (not self.flow_level and self.column < indent):
                break
        return ScalarToken("".join(chunks), True, start_mark, end_mark)

    def _reference_end(self, start: int) -> int | None:
        """Just past the ``}`` that closes the ``${`` at ``start`` (nesting counted), or None."""
        depth, at = 0, start
        while True:
            ch = self.peek(at)
            if ch in _BREAKS:
                return None
            if ch == "$" and self.peek(at + 1) == "{":
                depth, at = depth + 1, at + 2
                continue
            at += 1
            if ch == "}":
                depth -= 1
                if depth == 0:
                    return at

    # --- composing ------------------------------------------------------------------------------

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        label = _label(index)
        if isinstance(event, AliasEvent):
            self._check_alias(event.anchor or "", event.start_mark, label)
            alias: Node = super().compose_node(parent, index)  # type: ignore[assignment]
            return alias
        if isinstance(event, ScalarEvent | CollectionStartEvent):
            self._check_tag(event.tag, event.start_mark, label)
        if len(self._labels) >= MAX_DEPTH:
            key = self._key(label)
            raise Refused(
                event.start_mark.line + 1,
                key if len(key) <= 60 else key[:57] + "...",
                f"nested more than {MAX_DEPTH} levels deep",
                fix="A spec needs a few levels; flatten this value.",
            )
        anchor = getattr(event, "anchor", None)
        self._labels.append(label)
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            node: Node = super().compose_node(parent, index)  # type: ignore[assignment]
        finally:
            self._labels.pop()
            self._open_anchors.discard(anchor or "")
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in _children(node))
        return node

    def _check_alias(self, anchor: str, mark: Any, label: str | None) -> None:
        target = self.anchors.get(anchor)
        if target is None:
            return  # PyYAML's own "found undefined alias" follows
        if anchor in self._open_anchors:
            raise Refused(
                mark.line + 1,
                self._key(label),
                f"alias *{anchor} refers to a value that contains it, which never ends",
                fix=f"Refer to &{anchor} only outside the value it names.",
            )
        self._alias_values += self._sizes[id(target)]
        if self._alias_values > MAX_ALIAS_VALUES:
            raise Refused(
                mark.line + 1,
                self._key(label),
                f"aliases expand to more than {MAX_ALIAS_VALUES:,} values (at *{anchor})",
                fix="Aliases are for sharing a few settings; write large values out once.",
            )

    def _check_tag(self, tag: str | None, mark: Any, label: str | None) -> None:
        if tag is None or tag == "!" or tag in ALLOWED_TAGS:
            return
        shown = "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:") else tag
        raise Refused(
            mark.line + 1,
            self._key(label),
            f"YAML tag {shown} is not allowed",
            fix="Spec values are plain strings, numbers, booleans, null, lists and mappings; "
            "remove the tag (quote the value to keep it as text). Allowed tags: "
            + ", ".join(ALLOWED_TAGS.values())
            + ".",
        )

    def _key(self, label: str | None) -> str:
        key = ""
        for part in [*self._labels, label]:
            if part is None:
                continue
            key += part if part.startswith("[") or not key else f".{part}"
        return key


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _label(index: Any) -> str | None:
    """How a node's position reads in a dotted key: a mapping's key, a list's ``[i]``."""
    if isinstance(index, ScalarNode):
        return str(index.value)
    if isinstance(index, int):
        return f"[{index}]"
    return None


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def compose(text: str) -> Node | None:
    """The node tree of ``text``; raises Refused past the limits, yaml.YAMLError on bad YAML."""
    loader = SpecLoader(text)
    try:
        node: Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


# --- ${VAR} substitution --------------------------------------------------------------------------


def substitute(text: str, env: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal ``$``.

    ``:-`` takes the default when the variable is unset or empty, as in the shell, and a default
    may hold references itself (``${A:-${B:-x}}``), read only when it is taken. Raises KeyError
    naming a variable that is unset without a default, ValueError on a malformed reference.
    """
    value, _ = _expand(text, 0, env, evaluate=True, nested=False)
    return value


def _expand(
    text: str, at: int, env: Mapping[str, str], *, evaluate: bool, nested: bool
) -> tuple[str, int]:
    """The text from ``at`` with references replaced, and where it ended: the end of ``text``, or
    the ``}`` that closes the default being read (``nested``)."""
    out: list[str] = []
    while at < len(text):
        if nested and text[at] == "}":
            return "".join(out), at
        if text.startswith("$$", at):
            out.append("$")
            at += 2
        elif text.startswith("${", at):
            value, at = _reference(text, at, env, evaluate=evaluate)
            out.append(value)
        else:
            out.append(text[at])
            at += 1
    if nested:
        raise ValueError(f"unterminated '${{' in {text!r}: close it with '}}'")
    return "".join(out), at


def _reference(text: str, start: int, env: Mapping[str, str], *, evaluate: bool) -> tuple[str, int]:
    """The value of the reference at ``start`` and the index just past its closing brace."""
    close = text.find("}", start)
    if close == -1:
        raise ValueError(f"unterminated '${{' in {text!r}: close it with '}}'")
    name = VAR_NAME.match(text, start + 2)
    after = name.end() if name is not None else start + 2
    if name is None or not (text.startswith("}", after) or text.startswith(":-", after)):
        raise ValueError(
            f"invalid variable reference {text[start : close + 1]!r} in {text!r}: write "
            "${NAME} or ${NAME:-default} with a name of letters, digits and underscores"
        )
    value = env.get(name.group())
    if text.startswith("}", after):
        if evaluate and value is None:
            raise KeyError(name.group())
        return value or "", after + 1
    use_default = value is None or value == ""
    default, end = _expand(text, after + 2, env, evaluate=evaluate and use_default, nested=True)
    return (default if use_default else value or ""), end + 1
