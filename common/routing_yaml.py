"""routing.yaml's YAML, read with bounds: one pass over the parser's events into plain values with lines.

A routing table is a few hundred small values, so this reader refuses what only makes a file
slow, huge or ambiguous, instead of trying to survive it:

- anchors and aliases (``&a`` / ``*a``): a 2.7 KB alias bomb expands to millions of values;
- nesting deeper than ``MAX_DEPTH`` and more than ``MAX_VALUES`` values (built with an explicit
  stack, so even 20,000 ``[`` cannot reach Python's recursion limit);
- explicit tags (``!!python/…``, ``!!int "05"``): nothing in routing.yaml needs one;
- YAML 1.1 numbers that read as something other than what ops typed: ``017`` (octal 15),
  ``05``, ``1:30`` (base 60: 90), ``0x1f``, ``.nan``, ``.inf`` and numbers too long to be meant.

Each refusal is a :class:`RoutingError` naming the key and the line. Together with the file size
cap (common/routing_file.py) this bounds the time and memory of any parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml
from yaml.resolver import Resolver

MAX_DEPTH = 32  # routing.yaml itself nests 5 deep (routes.NAME.shadow.ignore[i])
MAX_VALUES = 20_000  # ~300 in the repo's file; bounds a parse to ~0.2 s
MAX_NUMBER_CHARS = 40

# libyaml's parser when PyYAML has it (events ~20× faster than the pure-Python one); same events either way.
_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESOLVER = Resolver()
_TAG = "tag:yaml.org,2002:"
_DECIMAL_INT = re.compile(r"[-+]?(?:0|[1-9](?:_?[0-9])*)")
_DIGITS = re.compile(r"[-+]?[0-9][0-9_]*")


class RoutingError(ValueError):
    """routing.yaml was rejected; the message names the key and the line."""


@dataclass(frozen=True, slots=True)
class Node:
    """A plain value (dict of Nodes, list of Nodes, str, int, Decimal, bool or None) and its 1-based line."""

    value: Any
    line: int


def fail(where: str, node: Node | None, message: str) -> RoutingError:
    line = node.line if node is not None else 0
    return RoutingError(f"{where} (line {line}): {message}" if line else f"{where}: {message}")


def _at(where: str, line: int, message: str) -> RoutingError:
    return fail(where or "routing.yaml", Node(None, line), message)


@dataclass(slots=True)
class _Open:
    """A mapping or sequence being filled: where it sits, its line, and the key awaiting a value."""

    where: str
    line: int
    items: dict[str, Node] | list[Node]
    key: str | None = None
    key_line: int = 0
    keys: set[str] = field(default_factory=set)


def _number(where: str, line: int, text: str, tag: str) -> int | Decimal:
    if len(text) > MAX_NUMBER_CHARS:
        raise _at(where, line, f"a number of {len(text)} characters is not a routing value")
    if tag == "int":
        if _DECIMAL_INT.fullmatch(text):
            return int(text.replace("_", ""))
        if ":" in text:
            raise _at(where, line, f"{text} is a base-60 number in YAML 1.1 (not what it looks like): quote it")
        if re.fullmatch(r"[-+]?0[0-9_]+", text):
            raise _at(where, line, f"{text} has a leading 0, which YAML 1.1 reads as octal: write it without the 0s, or quote it")
        raise _at(where, line, f"{text} is not a plain decimal number (hex, octal and binary are not used here)")
    try:
        value = Decimal(text.replace("_", ""))
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        raise _at(where, line, f"{text} is not a finite decimal number")
    return value


def _line(event: yaml.Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0


def _scalar(where: str, event: yaml.ScalarEvent) -> Any:
    line = _line(event)
    text = event.value
    if event.implicit[0]:
        # A plain digit string with a leading 0 means different things in YAML 1.1 (017 → 15, 08 → "08"): always ask.
        if _DIGITS.fullmatch(text) and not _DECIMAL_INT.fullmatch(text):
            return _number(where, line, text, "int")
        tag = _RESOLVER.resolve(yaml.ScalarNode, text, event.implicit).removeprefix(_TAG)
    else:
        tag = "str"
    if tag in ("int", "float"):
        return _number(where, line, text, tag)
    if tag == "bool":
        return text.lower() in ("true", "yes", "on")
    if tag == "null":
        return None
    return text


def _check_event(where: str, event: yaml.Event) -> None:
    line = _line(event)
    if isinstance(event, yaml.AliasEvent):
        raise _at(where, line, f"YAML aliases (*{getattr(event, 'anchor', '')}) are not allowed in routing.yaml: write the value out")
    anchor = getattr(event, "anchor", None)
    if anchor:
        raise _at(where, line, f"YAML anchors (&{anchor}) are not allowed in routing.yaml: write the value out")
    tag = getattr(event, "tag", None)
    if tag not in (None, "!"):
        raise _at(where, line, f"YAML tags ({tag}) are not allowed in routing.yaml")


def _syntax_error(text: str, exc: yaml.YAMLError, stack: list[_Open]) -> RoutingError:
    mark = getattr(exc, "problem_mark", None)
    line = f" (line {mark.line + 1})" if mark is not None else ""
    lines = text.splitlines()
    hint = ""
    if mark is not None and mark.line < len(lines) and "path:" in lines[mark.line]:
        hint = ' (a path with {params} inside {...} flow style must be quoted: path: "/a/{id}")'
    where = "routing.yaml"
    if stack:  # the key being read when the parser gave up
        top = stack[-1]
        where = f"{top.where}.{top.key}".lstrip(".") if isinstance(top.items, dict) and top.key is not None else top.where or where
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line, for the log and /_edge/routes
    return RoutingError(f"{where}{line}: not valid YAML: {problem}{hint}")


def read_document(text: str) -> Node | None:
    """The one YAML document of ``text`` as Nodes (None when it is empty), or RoutingError."""
    loader = _Loader(text)
    stack: list[_Open] = []
    try:
        return _build(loader, stack)
    except yaml.YAMLError as exc:
        raise _syntax_error(text, exc, stack) from None
    finally:
        loader.dispose()


def _build(loader: Any, stack: list[_Open]) -> Node | None:
    root: Node | None = None
    documents = 0
    values = 0
    while loader.check_event():
        event = loader.get_event()
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise _at("", _line(event), "more than one YAML document (---): routing.yaml is one")
            continue
        if isinstance(event, yaml.StreamStartEvent | yaml.StreamEndEvent | yaml.DocumentEndEvent):
            continue
        top = stack[-1] if stack else None
        if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            done = stack.pop()
            node = Node(done.items, done.line)
        else:
            line = _line(event)
            if top is not None and isinstance(top.items, dict) and top.key is None:
                # The next event is a key: only a plain scalar will do.
                _check_event(top.where, event)
                if not isinstance(event, yaml.ScalarEvent):
                    raise _at(top.where, line, "keys must be plain strings")
                key = str(event.value)
                sub = f"{top.where}.{key}" if top.where else key
                if key in top.keys:
                    raise _at(sub, line, "duplicate key")
                top.key, top.key_line = key, line
                top.keys.add(key)
                continue
            if top is None:
                where = ""
            elif isinstance(top.items, dict):
                where = f"{top.where}.{top.key}" if top.where else str(top.key)
            else:
                where = f"{top.where}[{len(top.items)}]"
            _check_event(where, event)
            values += 1
            if values > MAX_VALUES:
                raise _at(where, line, f"more than {MAX_VALUES} values: this is not a routing table")
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise _at(where, line, f"nested deeper than {MAX_DEPTH} levels")
                stack.append(_Open(where, line, {} if isinstance(event, yaml.MappingStartEvent) else []))
                continue
            node = Node(_scalar(where, event), line)
        parent = stack[-1] if stack else None
        if parent is None:
            root = node
        elif isinstance(parent.items, dict):
            assert parent.key is not None
            parent.items[parent.key] = node
            parent.key = None
        else:
            parent.items.append(node)
    return root
