"""Normalising a JSON document before comparison.

:func:`normalise` returns a new tree in which

* **ignored paths are gone.** ``CompareRules.ignore`` holds paths as written in
  routing.yaml, deepdiff style (``"root['data']['server_time']"``) or field style
  (``"data.server_time"``); ``[*]`` matches any child (any list index, any object key),
  so ``"root['data']['items'][*]['name']"`` drops ``name`` from every item.
  Ignores are applied before list sorting, so ``[3]`` means the fourth item as sent.
* **numbers are** :class:`~decimal.Decimal`: ints, floats (via ``repr``, so ``96.07`` is
  ``Decimal('96.07')``, not the binary float's expansion) and *numeric strings*. A string
  is numeric when it matches ``-?(0|[1-9]\\d*)(\\.\\d+)?`` and is at most 64 characters:
  ``"96.07"``, ``"1040"``, ``"-0.5"``, ``"0.50"`` are numbers; ``"007"``, ``"01234"`` (ids,
  postal codes, zero-padded codes) stay strings, so ``"007"`` vs ``"7"`` is still a
  difference; ``"1e5"``, ``"+1"``, ``" 1"``, ``"1."`` stay strings too. Hence
  ``"96.07" == 96.07 == "96.070"`` after normalisation (Decimal equality ignores
  trailing zeros). ``bool`` stays ``bool`` (``True`` is not ``1``). Non-finite floats
  (``NaN``, which never equals itself) become the strings ``"NaN"``/``"Infinity"``/``"-Infinity"``.
* **lists are sorted** when ``unordered_lists`` is set, by a canonical string key of the
  normalised item (numbers by their normalised Decimal form, so ``"1.50"`` and ``1.5``
  sort alike). Otherwise list order is significant.

**Tolerance is not applied here.** Rounding both sides to the tolerance would misclassify
values that straddle a rounding boundary (``1.005`` vs ``1.014`` with tolerance ``0.01``:
9 thousandths apart, yet they round to ``1.01`` and ``1.01``… while ``1.004`` vs ``1.006``,
2 thousandths apart, round to ``1.00`` and ``1.01``). ``compare`` applies it instead, as
``|a - b| <= tolerance`` between the two numbers at the same position (inclusive: with
``0.01``, ``96.07`` vs ``96.08`` is equal). A known limit: with ``unordered_lists`` and a
tolerance, items whose sort keys differ only within the tolerance may sort differently on
each side.

Pure: standard library only (plus :mod:`shadow.fields`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from shadow.fields import WILDCARD, PathPart, parse_path

__all__ = ["CompareRules", "compile_ignore", "is_numeric_string", "normalise", "sort_key"]

_NUMERIC = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?\Z")
_MAX_NUMERIC_CHARS = 64


@dataclass(frozen=True)
class CompareRules:
    """Per-route comparison rules (routing.yaml ``shadow:`` block).

    ``tolerance`` may be given as ``Decimal``, ``str``, ``int`` or ``float``; it is stored as
    ``Decimal`` (floats through ``str``: ``0.01`` → ``Decimal('0.01')``). ``ignore`` may be
    any iterable of paths; it is stored as a tuple. Every ignore path is parsed at
    construction: a bad one raises ``ValueError`` naming it. Picklable (usable with a
    process pool).
    """

    ignore: tuple[str, ...] = ()
    tolerance: Decimal | None = None
    unordered_lists: bool = False

    def __post_init__(self) -> None:
        ignore = self.ignore
        if isinstance(ignore, str):
            ignore = (ignore,)
        object.__setattr__(self, "ignore", tuple(ignore))
        tol = self.tolerance
        if tol is not None:
            if isinstance(tol, bool):
                raise ValueError("tolerance must be a number")
            try:
                tol = tol if isinstance(tol, Decimal) else Decimal(str(tol))
            except InvalidOperation as exc:
                raise ValueError(f"tolerance {self.tolerance!r} is not a number") from exc
            if not tol.is_finite() or tol < 0:
                raise ValueError(f"tolerance must be a finite number >= 0, got {self.tolerance!r}")
            object.__setattr__(self, "tolerance", tol)
        if not isinstance(self.unordered_lists, bool):
            raise ValueError("unordered_lists must be true or false")
        compile_ignore(self.ignore)  # validate now, cached for later

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None) -> CompareRules:
        """From a routing.yaml ``shadow:`` mapping; keys other than ignore / tolerance /
        unordered_lists (e.g. ``percent``) are left to the caller."""
        block = block or {}
        ignore = block.get("ignore") or ()
        if isinstance(ignore, str) or not isinstance(ignore, Iterable):
            raise ValueError("ignore must be a list of paths")
        return cls(ignore=tuple(ignore), tolerance=block.get("tolerance"),
                   unordered_lists=bool(block.get("unordered_lists", False)))


@lru_cache(maxsize=512)
def compile_ignore(ignore: tuple[str, ...]) -> tuple[tuple[PathPart, ...], ...]:
    """Parse ignore paths once (cached by the tuple). An empty path (``root``) is rejected:
    ignoring the whole body would make every comparison equal."""
    out = []
    for path in ignore:
        parts = parse_path(path)
        if not parts:
            raise ValueError(f"ignore path {path!r} names the whole body")
        out.append(parts)
    return tuple(out)


def is_numeric_string(s: str) -> bool:
    return len(s) <= _MAX_NUMERIC_CHARS and _NUMERIC.match(s) is not None


_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _number(x: Any) -> Any:
    if isinstance(x, float):
        if math.isfinite(x):
            return Decimal(repr(x))
        return "NaN" if x != x else _NON_FINITE[x]
    if isinstance(x, Decimal):
        if x.is_finite():
            return x
        return "NaN" if x.is_nan() else ("Infinity" if x > 0 else "-Infinity")
    return Decimal(x)  # int


def normalise(doc: Any, rules: CompareRules = CompareRules()) -> Any:
    """The normalised copy of ``doc`` (a parsed JSON value); see the module docstring."""
    patterns = compile_ignore(rules.ignore) if rules.ignore else ()
    return _norm(doc, patterns, rules.unordered_lists)


def _children(patterns: tuple[tuple[PathPart, ...], ...], key: str | int) -> tuple[bool, tuple[tuple[PathPart, ...], ...]]:
    """(drop this child?, the patterns still active below it)."""
    below = []
    is_index = isinstance(key, int)
    for p in patterns:
        head = p[0]
        if head is WILDCARD or (head == key and isinstance(head, int) == is_index):
            if len(p) == 1:
                return True, ()
            below.append(p[1:])
    return False, tuple(below)


def _norm(x: Any, patterns: tuple[tuple[PathPart, ...], ...], unordered: bool) -> Any:
    t = type(x)
    if t is str:
        return Decimal(x) if is_numeric_string(x) else x
    if x is None or t is bool:
        return x
    if t is int or t is float or t is Decimal:
        return _number(x)
    if isinstance(x, Mapping):
        if not patterns:
            return {k: _norm(v, (), unordered) for k, v in x.items()}
        out = {}
        for k, v in x.items():
            drop, below = _children(patterns, k)
            if not drop:
                out[k] = _norm(v, below, unordered)
        return out
    if isinstance(x, (list, tuple)):
        if not patterns:
            items = [_norm(v, (), unordered) for v in x]
        else:
            items = []
            for i, v in enumerate(x):
                drop, below = _children(patterns, i)
                if not drop:
                    items.append(_norm(v, below, unordered))
        if unordered and len(items) > 1:
            items.sort(key=sort_key)
        return items
    if isinstance(x, bool):
        return x
    if isinstance(x, (int, float, Decimal)):
        return _number(x)
    if isinstance(x, str):
        return _norm(str(x), patterns, unordered)
    return x  # not a JSON type: left as is


def sort_key(x: Any) -> str:
    """A canonical string of a *normalised* value: equal values give equal keys, and values
    of different types never collide (a type tag leads)."""
    if x is None:
        return "n"
    if x is True:
        return "t"
    if x is False:
        return "f"
    if isinstance(x, Decimal):
        if x == 0:
            return "d0"
        return "d" + str(x.normalize())
    if isinstance(x, str):
        return "s" + repr(x)
    if isinstance(x, Mapping):
        return "{" + ",".join(repr(str(k)) + ":" + sort_key(x[k]) for k in sorted(x, key=str)) + "}"
    if isinstance(x, list):
        return "[" + ",".join(sort_key(v) for v in x) + "]"
    return "?" + repr(x)
