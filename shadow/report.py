"""The shadow report behind ``GET /_edge/shadow``: the JSON (the HTML page is shadow/page.py).

:func:`render_json` joins the per-route request counters kept by the edge
(``{route: {outcome: n}}``, outcomes ``match``, ``rounding``, ``mismatch`` (beyond rounding),
``error``, ``skipped``), the field statistics (:class:`shadow.noise.DiffStats`), the sizes of
the differences (:class:`shadow.sizes.SizeStats`: per field ``sizes`` ``{"rounding": n,
"beyond": n}``, ``max_abs_delta`` as a Decimal string, ``beyond_rate`` / ``rounding_rate``
since start and the same over ``window`` — the last 60 s unless asked otherwise) and the
examples (:class:`shadow.store.ExampleStore`; values in their ``diff`` are keyed by the side
that produced them, ``legacy`` / ``new``, and ``primary_side`` says which one served)::

    {"generated_at": "...", "rule": {"relative": 0.2, "absolute": 0.0003},
     "store": {"bytes_used", "max_bytes", "per_field", "stored", "dropped"}, "meta": {...},
     "routes": {"calc_price": {
         "requests": {"match": 90, "mismatch": 8, "error": 2, "skipped": 0, "total": 100},
         "rates": {"match": 0.9, "mismatch": 0.08, "error": 0.02, "skipped": 0.0},
         "compared": 98, "noise_samples": 10,
         "fields": [{"field": "data.summary.total", "mismatches": 8, "noise": 0,
                     "mismatch_rate": 0.0816, "noise_rate": 0.0, "verdict": "mismatch",
                     "examples": [...]}, ...]}}}

Fields are sorted by mismatch count (then noise count, then name). The HTML diff page
(an index of routes, a page per route, examples paged) is :func:`shadow.page.render_html`,
which renders such a report.

Bodies, field paths and route names come from clients and old shopping, so they may hold
anything a Python ``str`` can: lone surrogates (which no UTF-8 encoder accepts; one such
example made the page answer 500 until it left the store) and control characters. Both
renderers show them as their ``\\uXXXX`` escape: :func:`render_json` returns a report
any strict JSON encoder serialises (surrogates escaped, other types as text), and
:func:`printable` gives the HTML page the same escapes for control characters.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any

from shadow.noise import DiffStats
from shadow.rounding import SIZES
from shadow.sizes import DEFAULT_WINDOW_SECONDS, SizeStats
from shadow.store import ExampleStore

__all__ = ["COMPARED", "OUTCOMES", "printable", "render_json"]

# Outcomes of a shadowed request; the first three are comparisons made (both sides answered).
COMPARED = ("match", "rounding", "mismatch")
OUTCOMES = (*COMPARED, "error", "skipped")
MAX_EXAMPLES = 5
# A value of a type JSON lacks is shown as its repr, cut to this many characters.
REPR_CHARS = 4000
# Deeper than any report's own structure; a deeper value from a body is shown as text.
_MAX_DEPTH = 32

_SURROGATES = re.compile(r"[\ud800-\udfff]")
# C0 and C1 controls but tab, newline and carriage return, plus surrogates.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _as_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates written as ``\\uXXXX``."""
    return _UNPRINTABLE.sub(_as_escape, text)


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON types whose strings all encode as UTF-8."""
    if isinstance(value, str):
        return _SURROGATES.sub(_as_escape, value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {_jsonable(str(k)): _jsonable(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [_jsonable(v, depth + 1) for v in value]
    return _jsonable(repr(value)[:REPR_CHARS])


def _verdict(noise_verdict: str, by_size: dict[str, int]) -> str:
    """The noise rule's verdict, with a real field whose every difference was within rounding
    called ``rounding``: expected, shown, but not the red "mismatch" an engineer must chase."""
    if noise_verdict == "mismatch" and by_size.get("beyond", 0) == 0 and by_size.get("rounding", 0) > 0:
        return "rounding"
    return noise_verdict


def _rate(n: int, total: int) -> float:
    return round(n / total, 6) if total else 0.0


def render_json(
    stats: DiffStats,
    store: ExampleStore,
    counters: Mapping[str, Mapping[str, int]],
    *,
    route: str | None = None,
    meta: Mapping[str, Any] | None = None,
    max_examples: int = MAX_EXAMPLES,
    sizes: SizeStats | None = None,
    window: float = DEFAULT_WINDOW_SECONDS,
) -> dict[str, Any]:
    """The report as a JSON-serialisable dict (see the module docstring)."""
    sizes = sizes if sizes is not None else SizeStats()
    names = set(counters) | set(stats.routes()) | set(store.routes())
    if route is not None:
        names &= {route}
    routes: dict[str, Any] = {}
    for name in sorted(names):
        outcomes = {o: 0 for o in OUTCOMES}
        for outcome, n in (counters.get(name) or {}).items():
            outcomes[str(outcome)] = int(n)
        total = sum(outcomes.values())
        fields: list[dict[str, Any]] = []
        compared_all = sizes.compared(name)
        compared_recent, recent = sizes.window(name, window)
        for field in sorted(set(stats.fields(name)) | set(store.fields(name))):
            s = stats.field_stats(name, field)
            by_size = sizes.counts(name, field)
            recent_sizes = recent.get(field) or dict.fromkeys(SIZES, 0)
            delta = sizes.max_abs_delta(name, field)
            fields.append({
                "field": field, "mismatches": s.mismatches, "noise": s.noise,
                "mismatch_rate": round(s.mismatch_rate, 6), "noise_rate": round(s.noise_rate, 6),
                "verdict": _verdict(stats.verdict(name, field), by_size),
                "sizes": by_size,
                "max_abs_delta": str(delta) if delta is not None else None,
                "beyond_rate": _rate(by_size["beyond"], compared_all),
                "rounding_rate": _rate(by_size["rounding"], compared_all),
                "window": {"seconds": window, "compared": compared_recent, **recent_sizes,
                           "beyond_rate": _rate(recent_sizes["beyond"], compared_recent),
                           "rounding_rate": _rate(recent_sizes["rounding"], compared_recent)},
                "examples": store.examples(name, field)[:max_examples],
            })
        fields.sort(key=lambda f: (-f["mismatches"], -f["noise"], f["field"]))
        compared, noise_samples = stats.route_counts(name)
        routes[name] = {
            "requests": {**outcomes, "total": total},
            "rates": {o: _rate(n, total) for o, n in outcomes.items()},
            "compared": compared, "noise_samples": noise_samples,
            "fields": fields,
        }
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rule": {"relative": stats.rule.relative, "absolute": stats.rule.absolute},
        "store": store.summary(),
        "meta": dict(meta or {}),
        "routes": routes,
    }
    result: dict[str, Any] = _jsonable(report)
    return result
