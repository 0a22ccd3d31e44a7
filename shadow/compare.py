"""Comparing the primary's and the shadow's answers.

:func:`compare` takes both status codes and raw bodies and the route's
:class:`~shadow.normalise.CompareRules`, and returns a :class:`Comparison`. Cheapest
checks first, deepdiff last:

1. **status**: different status codes → ``fields == ("status",)`` and the bodies are not
   diffed (an error envelope against a success body would only list every field as
   changed). Whether a 5xx shadow counts as ``error`` rather than ``mismatch`` is the
   caller's call (``Comparison.diff["status"]`` carries both codes).
2. **identical bytes** → equal, nothing parsed.
3. **JSON parse** (numbers straight to ``Decimal``). If either body is not JSON, the raw
   bytes are compared; different → field ``"body"``.
4. **normalise** both (:func:`shadow.normalise.normalise`), then, with a tolerance, absorb
   numbers that are within it: one parallel walk over both trees replaces each shadow number
   with the primary number at the same position when ``|a - b| <= tolerance`` (exact
   Decimal arithmetic, inclusive; deepdiff's ``math_epsilon`` goes through float
   ``math.isclose`` and would call ``96.07`` vs ``96.08`` 0.010000000000005 apart).
5. **fast path**: ``==`` on the normalised trees (C speed). Equal → done, deepdiff never runs.
6. **deepdiff** (``view="tree"``, ``threshold_to_diff_deeper=0`` so it always descends to the
   leaf that differs instead of reporting a whole object as changed) only for unequal
   documents. Its tree gives the field paths (``Comparison.fields``, normalised with
   :func:`shadow.fields.field_from_parts`) and a bounded JSON-safe ``diff`` summary.
   Bodies larger than ``max_diff_bytes`` are not deepdiffed (``fields == ("$",)``): the
   worker stays bounded in time.

Cost measured on this machine (``test_deepdiff_cost_on_a_calc_price_body`` in
tests/unit/test_shadow_compare.py measures it again): on a ~0.9 KB calc_price body with one
changed amount, deepdiff alone takes ~2.7 ms (median of 5 x 200 runs), the whole unequal
``compare`` ~3.7 ms; the fast path on equal bodies (parse + normalise + ``==``) ~0.2 ms.

:data:`DEEPDIFF_CALLS` counts deepdiff invocations (for tests and a metric).

Pure: standard library + deepdiff.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from collections.abc import Mapping
from decimal import Decimal, localcontext
from typing import Any

from deepdiff import DeepDiff
from deepdiff.helper import NotPresent

from shadow.fields import field_from_parts
from shadow.normalise import CompareRules, normalise
from shadow.rounding import BEYOND, ROUNDING, classify, unit_for

__all__ = ["DEEPDIFF_CALLS", "Comparison", "compare", "deepdiff_calls", "summarise_diff"]

MAX_DIFF_ENTRIES = 50
MAX_VALUE_CHARS = 200
MAX_PATH_CHARS = 300
DEFAULT_MAX_DIFF_BYTES = 512 * 1024

#: Number of times deepdiff ran in this process (module-level, for tests and metrics).
DEEPDIFF_CALLS = 0


def deepdiff_calls() -> int:
    return DEEPDIFF_CALLS


@dataclass(frozen=True)
class Comparison:
    """The outcome of one comparison.

    ``equal``: the answers match under the rules. ``fields``: sorted, de-duplicated field
    paths that differ (``"status"``, ``"body"`` for non-JSON bodies, ``"$"`` when the whole
    body differs or was too large to diff, else paths like ``data.items[*].tariff``).
    ``diff``: JSON-serialisable bounded summary (``None`` when equal). ``error``: set
    when the comparison itself failed (e.g. a body nested too deep); then ``equal`` is
    False and ``fields`` is empty. ``deepdiff_used``: whether deepdiff ran.
    ``sizes``: per field, ``"rounding"`` when every difference in it is numeric and within
    the rounding unit of the body's currency, else ``"beyond"`` (:mod:`shadow.rounding`).
    ``max_deltas``: per field with numeric differences, the largest ``|a - b|``.
    ``unit``: the rounding unit used for ``sizes`` (so the diff page sizes its rows alike).
    """

    equal: bool
    fields: tuple[str, ...] = ()
    diff: dict[str, Any] | None = None
    error: str | None = None
    deepdiff_used: bool = False
    sizes: dict[str, str] = field(default_factory=dict)
    max_deltas: dict[str, Decimal] = field(default_factory=dict)
    unit: Decimal | None = None  # the rounding unit the sizes were judged with, when deepdiff ran

    def beyond(self) -> bool:
        """Whether at least one difference is beyond rounding (or the comparison failed)."""
        return not self.equal and (self.error is not None or any(s != ROUNDING for s in self.sizes.values())
                                   or any(f not in self.sizes for f in self.fields))


EQUAL = Comparison(equal=True)


def _clip(s: str, limit: int = MAX_VALUE_CHARS) -> str:
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _show(value: Any) -> str:
    """A value as a short string: numbers and strings as themselves, the rest as JSON."""
    if isinstance(value, Decimal):
        return _clip(str(value))
    if isinstance(value, str):
        return _clip(value)
    try:
        text = json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return _clip(text)


def _parse(body: bytes) -> tuple[bool, Any]:
    if not body:
        return False, None
    try:
        return True, json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError; int-digits limit
        return False, None


def _text(body: bytes) -> str:
    return _clip(body[: MAX_VALUE_CHARS * 4].decode("utf-8", "replace"))


def _absorb(a: Any, b: Any, tol: Decimal) -> Any:
    """``b`` with each number within ``tol`` of ``a``'s number at the same place replaced by it."""
    if type(a) is Decimal and type(b) is Decimal:
        return a if a != b and abs(a - b) <= tol else b
    if type(a) is dict and type(b) is dict:
        return {k: (_absorb(a[k], v, tol) if k in a else v) for k, v in b.items()}
    if type(a) is list and type(b) is list:
        n = len(a)
        return [_absorb(a[i], v, tol) if i < n else v for i, v in enumerate(b)]
    return b


def compare(
    primary_status: int,
    primary_body: bytes,
    shadow_status: int,
    shadow_body: bytes,
    rules: CompareRules = CompareRules(),
    *,
    max_diff_bytes: int = DEFAULT_MAX_DIFF_BYTES,
    sides: tuple[str, str] = ("old", "new"),
    units: Mapping[str, Decimal] | None = None,
) -> Comparison:
    """Compare two answers; never raises (a failure is ``Comparison(error=...)``).

    ``sides`` names the primary's and the shadow's values in ``diff`` (the edge passes the
    sides, ``("new", "legacy")`` when the new side was primary, so a value is always
    labelled by who produced it, never by who was serving). ``units``: per currency, the largest
    difference sized as rounding (:func:`shadow.rounding.rounding_units`), else its minor unit."""
    try:
        return _compare(primary_status, primary_body, shadow_status, shadow_body, rules, max_diff_bytes, sides, units)
    except RecursionError:
        return Comparison(equal=False, error="body nested too deeply to compare")
    except Exception as exc:  # a bug or a deepdiff failure must not kill the worker
        return Comparison(equal=False, error=_clip(f"{type(exc).__name__}: {exc}"))


def _compare(primary_status: int, primary_body: bytes, shadow_status: int, shadow_body: bytes,
             rules: CompareRules, max_diff_bytes: int, sides: tuple[str, str],
             units: Mapping[str, Decimal] | None) -> Comparison:
    p, s = sides
    if primary_status != shadow_status:
        return Comparison(equal=False, fields=("status",), sizes={"status": BEYOND},
                          diff={"status": {p: str(primary_status), s: str(shadow_status)}})
    primary_body = bytes(primary_body or b"")
    shadow_body = bytes(shadow_body or b"")
    if primary_body == shadow_body:
        return EQUAL
    ok_a, a = _parse(primary_body)
    ok_b, b = _parse(shadow_body)
    if not (ok_a and ok_b):
        return Comparison(equal=False, fields=("body",), sizes={"body": BEYOND},
                          diff={"body": {p: _text(primary_body), s: _text(shadow_body),
                                         f"{p}_json": ok_a, f"{s}_json": ok_b}})
    a = normalise(a, rules)
    b = normalise(b, rules)
    if rules.tolerance is not None:
        with localcontext() as ctx:
            ctx.prec = 100
            b = _absorb(a, b, rules.tolerance)
    if a == b:
        return EQUAL
    if max(len(primary_body), len(shadow_body)) > max_diff_bytes:
        return Comparison(equal=False, fields=("$",), sizes={"$": BEYOND},
                          diff={"skipped": f"bodies of {len(primary_body)} and {len(shadow_body)} bytes "
                                           f"are over the {max_diff_bytes}-byte deepdiff limit"})
    global DEEPDIFF_CALLS
    DEEPDIFF_CALLS += 1
    tree = DeepDiff(a, b, view="tree", threshold_to_diff_deeper=0)
    unit = unit_for(a, b, units)
    sizes: dict[str, str] = {}
    deltas: dict[str, Decimal] = {}
    with localcontext() as ctx:
        ctx.prec = 100  # exact deltas whatever the numbers' lengths
        for report_type, levels in tree.items():
            for level in levels:
                name = field_from_parts(level.path(output_format="list"))
                if report_type == "values_changed":
                    size, delta = classify(level.t1, level.t2, unit)
                else:
                    size, delta = BEYOND, None
                if sizes.get(name) != BEYOND:
                    sizes[name] = size
                if delta is not None and delta > deltas.get(name, -1):
                    deltas[name] = delta
    if not sizes:  # normalised trees differ but deepdiff saw nothing (should not happen)
        sizes["$"] = BEYOND
    return Comparison(equal=False, fields=tuple(sorted(sizes)), diff=summarise_diff(tree, sides=sides),
                      deepdiff_used=True, sizes=sizes, max_deltas=deltas, unit=unit)


def summarise_diff(tree: Any, max_entries: int = MAX_DIFF_ENTRIES,
                   sides: tuple[str, str] = ("old", "new")) -> dict[str, Any]:
    """A deepdiff tree view → ``{report_type: {path: {sides[0]: ..., sides[1]: ...}}}``, JSON-safe,
    at most ``max_entries`` entries (``"omitted": n`` counts the rest), values as strings
    of at most 200 characters, paths at most 300."""
    out: dict[str, Any] = {}
    shown = omitted = 0
    for report_type in sorted(tree):
        for level in tree[report_type]:
            if shown >= max_entries:
                omitted += 1
                continue
            entry: dict[str, str] = {}
            if not isinstance(level.t1, NotPresent):
                entry[sides[0]] = _show(level.t1)
            if not isinstance(level.t2, NotPresent):
                entry[sides[1]] = _show(level.t2)
            if report_type == "type_changes":
                entry[f"{sides[0]}_type"] = type(level.t1).__name__
                entry[f"{sides[1]}_type"] = type(level.t2).__name__
            out.setdefault(report_type, {})[_clip(level.path(), MAX_PATH_CHARS)] = entry
            shown += 1
    if omitted:
        out["omitted"] = omitted
    return out
