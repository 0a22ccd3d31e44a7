"""Field paths: parsing deepdiff / routing.yaml paths, and metric-friendly field names.

Two spellings of a path into a JSON document exist here:

* the **deepdiff** form, used in routing.yaml ``ignore`` lists and in deepdiff's output:
  ``root['data']['items'][3]['tariff']`` (``root`` alone is the whole document); ``[*]``
  stands for "any child" (any list index or any object key) in ignore patterns;
* the **field** form, used as the ``field`` label of the shadow metrics and in reports:
  ``data.items[*].tariff``. List indexes always become ``[*]`` (otherwise every index of
  every list would be its own label); the whole body is ``$``. Keys that are not plain
  identifiers are written ``["odd key"]`` (JSON-quoted), every key is cut to
  :data:`MAX_KEY_CHARS` characters and the whole field to :data:`MAX_FIELD_CHARS`.

Even with indexes folded, keys can come from data (a map keyed by ids, a response with
random keys), so :class:`FieldLimiter` caps the number of distinct field labels per route:
once a route has ``max_fields`` of them, any new field is labelled ``"other"``.

Pure: standard library only.
"""

from __future__ import annotations

import ast
import json
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Union

__all__ = [
    "MAX_FIELD_CHARS", "MAX_KEY_CHARS", "OTHER", "RESERVED_FIELDS", "WILDCARD",
    "FieldLimiter", "PathPart", "field_from_parts", "normalise_path", "parse_path",
]

MAX_KEY_CHARS = 64
MAX_FIELD_CHARS = 256
OTHER = "other"
#: Field names compare.py produces that are not paths into the body.
RESERVED_FIELDS = frozenset({"status", "body", "$"})


class _Wildcard:
    """The ``[*]`` path part: matches any list index (and any object key)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "*"

    def __reduce__(self) -> str:  # pickles by reference: stays the singleton in a process pool
        return "WILDCARD"


WILDCARD = _Wildcard()

PathPart = Union[str, int, _Wildcard]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")
# deepdiff form: root followed by [...] parts
_DD_PART = re.compile(
    r"""\[\s*(?:
        (?P<idx>\d+)
      | (?P<star>\*)
      | (?P<sq>'(?:[^'\\]|\\.)*')
      | (?P<dq>"(?:[^"\\]|\\.)*")
    )\s*\]""",
    re.VERBOSE,
)
# field form: data.items[*].tariff, ["odd key"], $ for the root
_FIELD_PART = re.compile(
    r"""(?:
        (?P<dot>\.)?(?P<ident>[A-Za-z_][A-Za-z0-9_\-]*)
      | \[(?P<idx>\d+)\]
      | \[(?P<star>\*)\]
      | \[(?P<dq>"(?:[^"\\]|\\.)*")\]
      | \[(?P<sq>'(?:[^'\\]|\\.)*')\]
    )""",
    re.VERBOSE,
)


def parse_path(path: str) -> tuple[PathPart, ...]:
    """``root['data']['items'][*]['name']`` or ``data.items[*].name`` → ``('data', 'items', WILDCARD, 'name')``.

    Integers are list indexes, :data:`WILDCARD` is ``[*]``. ``root`` / ``$`` → ``()``.
    Raises :class:`ValueError` naming the position of anything it cannot read (so a bad
    ignore path in routing.yaml is rejected with a message, not silently ignored).
    """
    if not isinstance(path, str):
        raise ValueError(f"path must be a string, got {type(path).__name__}")
    s = path.strip()
    if _is_deepdiff(s):
        return _parse_deepdiff(s, path)
    return _parse_field(s, path)


def _is_deepdiff(s: str) -> bool:
    return s == "root" or s.startswith("root[")


def _parse_deepdiff(s: str, original: str) -> tuple[PathPart, ...]:
    parts: list[PathPart] = []
    pos = len("root")
    while pos < len(s):
        m = _DD_PART.match(s, pos)
        if m is None:
            raise ValueError(f"bad path {original!r}: cannot read {s[pos:pos + 20]!r} at character {pos}")
        if m.group("idx") is not None:
            parts.append(int(m.group("idx")))
        elif m.group("star") is not None:
            parts.append(WILDCARD)
        else:
            literal = m.group("sq") or m.group("dq")
            try:
                key = ast.literal_eval(literal)
            except (ValueError, SyntaxError) as exc:
                raise ValueError(f"bad path {original!r}: bad quoted key {literal!r}") from exc
            parts.append(str(key))
        pos = m.end()
    return tuple(parts)


def _parse_field(s: str, original: str) -> tuple[PathPart, ...]:
    if s.startswith("$"):
        s = s[1:]
    parts: list[PathPart] = []
    pos = 0
    while pos < len(s):
        m = _FIELD_PART.match(s, pos)
        if m is None or (m.group("ident") is not None and m.group("dot") is None and parts):
            raise ValueError(f"bad path {original!r}: cannot read {s[pos:pos + 20]!r} at character {pos}")
        if m.group("ident") is not None:
            parts.append(m.group("ident"))
        elif m.group("idx") is not None:
            parts.append(int(m.group("idx")))
        elif m.group("star") is not None:
            parts.append(WILDCARD)
        elif m.group("dq") is not None:
            try:
                parts.append(str(json.loads(m.group("dq"))))
            except ValueError as exc:
                raise ValueError(f"bad path {original!r}: bad quoted key {m.group('dq')!r}") from exc
        else:
            try:
                parts.append(str(ast.literal_eval(m.group("sq"))))
            except (ValueError, SyntaxError) as exc:
                raise ValueError(f"bad path {original!r}: bad quoted key {m.group('sq')!r}") from exc
        pos = m.end()
    return tuple(parts)


def field_from_parts(parts: Sequence[object]) -> str:
    """Path parts (as from ``DeepDiff(view='tree')`` levels' ``path(output_format='list')``) → field label."""
    if not parts:
        return "$"
    out: list[str] = []
    for part in parts:
        if part is WILDCARD or (isinstance(part, int) and not isinstance(part, bool)):
            out.append("[*]")
            continue
        key = str(part)[:MAX_KEY_CHARS]
        if _IDENT.match(key):
            out.append(f".{key}" if out else key)
        else:
            out.append("[" + json.dumps(key, ensure_ascii=False) + "]")
    field = "".join(out)
    if len(field) > MAX_FIELD_CHARS:
        field = field[: MAX_FIELD_CHARS - 1] + "…"
    return field


_INDEX = re.compile(r"\[\d+\]")


def normalise_path(path: str) -> str:
    """deepdiff path → metric field: ``root['data']['items'][3]['tariff']`` → ``data.items[*].tariff``.

    ``root`` → ``$``. Strings that are already fields (``data.total``, ``status``) come back
    unchanged (indexes folded). A path that cannot be parsed (deepdiff writes a key holding
    both quote characters unescaped) is folded leniently rather than raising.
    """
    try:
        return field_from_parts(parse_path(path))
    except ValueError:
        s = path.strip()
        if _is_deepdiff(s):
            s = s[len("root"):] or "$"
        s = _INDEX.sub("[*]", s)
        return s if len(s) <= MAX_FIELD_CHARS else s[: MAX_FIELD_CHARS - 1] + "…"


class FieldLimiter:
    """Bounded field labels per route: the first ``max_fields`` distinct fields keep their
    name, later new ones become ``"other"``.

    The reserved fields (``status``, ``body``, ``$`` by default; they are not body paths
    and there are only a few) always keep their name and do not use up the budget, so a
    route with random keys still reports status mismatches by name. Labels per route are
    therefore at most ``max_fields + 1 + len(reserved)``. Routes themselves are capped
    at ``max_routes`` (they come from routing.yaml; the cap is a safety net), extra routes
    share the route ``"other"``: use :meth:`route` to map a route name before labelling.

    Thread-safe (a lock around the per-route sets).
    """

    def __init__(self, max_fields: int = 200, *, max_routes: int = 1000,
                 reserved: Iterable[str] = RESERVED_FIELDS) -> None:
        if max_fields < 0:
            raise ValueError("max_fields must be >= 0")
        self.max_fields = max_fields
        self.max_routes = max_routes
        self.reserved = frozenset(reserved)
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self.overflowed = 0  # labels answered "other" (fields) since start

    def route(self, route: str) -> str:
        with self._lock:
            if route in self._seen or len(self._seen) < self.max_routes:
                self._seen.setdefault(route, set())
                return route
            self._seen.setdefault(OTHER, set())
            return OTHER

    def label(self, route: str, field: str) -> str:
        if field in self.reserved or field == OTHER:
            return field
        with self._lock:
            seen = self._seen.get(route)
            if seen is None:
                if len(self._seen) >= self.max_routes:
                    seen = self._seen.setdefault(OTHER, set())
                else:
                    seen = self._seen[route] = set()
            if field in seen:
                return field
            if len(seen) < self.max_fields:
                seen.add(field)
                return field
            self.overflowed += 1
            return OTHER

    def fields(self, route: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._seen.get(route, ()))

    def reset(self, route: str | None = None) -> None:
        with self._lock:
            if route is None:
                self._seen.clear()
            else:
                self._seen.pop(route, None)
