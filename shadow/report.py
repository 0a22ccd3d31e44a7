"""The shadow report behind ``GET /_edge/shadow``: JSON, and a small HTML page.

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

Fields are sorted by mismatch count (then noise count, then name). :func:`render_html`
renders such a report as one self-contained page (inline CSS, no scripts, no external
assets); every value from a body, a request or a key goes through :func:`html.escape`.
Both take a ``route`` filter.

Bodies, field paths and route names come from clients and old shopping, so they may hold
anything a Python ``str`` can: lone surrogates (which no UTF-8 encoder accepts; one such
example made the page answer 500 until it left the store) and control characters. Both
renderers show them as their ``\\uXXXX`` escape: :func:`render_json` returns a report
any strict JSON encoder serialises (surrogates escaped, other types as text), and
:func:`render_html` also escapes control characters and markup in whatever report it is
handed.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from shadow.noise import DiffStats
from shadow.rounding import SIZES
from shadow.sizes import DEFAULT_WINDOW_SECONDS, SizeStats
from shadow.store import ExampleStore

__all__ = ["render_html", "render_json"]

# Outcomes of a shadowed request; the first three are comparisons made (both sides answered).
COMPARED = ("match", "rounding", "mismatch")
OUTCOMES = (*COMPARED, "error", "skipped")
MAX_EXAMPLES = 5
HTML_BODY_CHARS = 4000
# Deeper than any report's own structure; a deeper value from a body is shown as text.
_MAX_DEPTH = 32

_SURROGATES = re.compile(r"[\ud800-\udfff]")
# C0 and C1 controls but tab, newline and carriage return, plus surrogates.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _as_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _printable(text: str) -> str:
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
    return _jsonable(repr(value)[:HTML_BODY_CHARS])


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
                "verdict": stats.verdict(name, field),
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


# --- HTML ---------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.mismatch{color:#b00020;font-weight:600}.noise{color:#8a6d00}.ok{color:#1b7a1b}
tr.noise td{background:#fffbe6}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:.5em;max-height:24em;overflow:auto;white-space:pre-wrap;word-break:break-all}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:.8em}details{margin:.4em 0 .8em 1em}
.muted{color:#777}
"""


def _e(value: Any) -> str:
    return html.escape(_printable(str(value)), quote=True)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _pct(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _e(f"{value:.2%}")
    return ""


def _pre(value: Any, limit: int = HTML_BODY_CHARS) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
        except (TypeError, ValueError, RecursionError):
            text = repr(value)
    if len(text) > limit:
        text = text[:limit] + f"\n… [{len(text) - limit} more characters]"
    return f"<pre>{_e(text)}</pre>"


def _example_html(i: int, ex: Mapping[str, Any]) -> str:
    primary = _map(ex.get("primary"))
    shadow = _map(ex.get("shadow"))
    title = (f"example {i + 1}: request {_e(ex.get('request_id', '?'))} · {_e(ex.get('kind', 'shadow'))}"
             f" · primary: {_e(ex.get('primary_side', primary.get('side', '?')))} · {_e(ex.get('at', ''))}")
    return (
        f"<details><summary>{title}</summary>"
        f"<p>request</p>{_pre(ex.get('request'))}"
        f"<div class=pair><div><p>primary ({_e(primary.get('side', '?'))}) status {_e(primary.get('status', '?'))}</p>"
        f"{_pre(primary.get('body', ''))}</div>"
        f"<div><p>{'second primary' if ex.get('kind') == 'noise' else 'shadow'} ({_e(shadow.get('side', '?'))}) "
        f"status {_e(shadow.get('status', '?'))}</p>{_pre(shadow.get('body', ''))}</div></div>"
        f"<p>diff (values labelled by the side that answered them)</p>{_pre(ex.get('diff'))}"
        + (f"<p>sizes</p>{_pre(ex.get('sizes'))}" if ex.get("sizes") else "")
        + "</details>"
    )


def render_html(report: Mapping[str, Any], route: str | None = None) -> str:
    """One self-contained HTML page for a :func:`render_json` report."""
    report = _map(report)
    routes = _map(report.get("routes"))
    if route is not None:
        routes = {k: v for k, v in routes.items() if k == route}
    rule = _map(report.get("rule"))
    store = _map(report.get("store"))
    out = [
        "<!doctype html><html><head><meta charset=utf-8>",
        f"<title>Shadow diffs{' · ' + _e(route) if route else ''}</title><style>{_CSS}</style></head><body>",
        f"<h1>Shadow diffs{' · ' + _e(route) if route else ''}</h1>",
        f"<p class=muted>generated {_e(report.get('generated_at', ''))} · a field is a mismatch when its "
        f"mismatch rate exceeds its noise rate by more than {_e(rule.get('absolute', '?'))} and by more than "
        f"{_e(rule.get('relative', '?'))} × its mismatch rate · examples: {_e(store.get('bytes_used', 0))} of "
        f"{_e(store.get('max_bytes', '?'))} bytes, {_e(store.get('dropped', 0))} dropped</p>",
    ]
    if not routes:
        out.append("<p>No shadowed routes yet.</p>")
    for name, r in routes.items():
        r = _map(r)
        req = _map(r.get("requests"))
        rates = _map(r.get("rates"))
        out.append(f"<h2 id=\"route-{_e(name)}\">{_e(name)}</h2>")
        out.append("<table><tr><th>requests</th>" + "".join(f"<th>{_e(o)}</th>" for o in req) + "</tr><tr><td>count</td>"
                   + "".join(f"<td class=num>{_e(n)}</td>" for n in req.values()) + "</tr><tr><td>rate</td>"
                   + "".join(f"<td class=num>{_pct(rates.get(o))}</td>" for o in req)
                   + "</tr></table>")
        out.append(f"<p class=muted>compared {_e(r.get('compared', 0))} · noise samples {_e(r.get('noise_samples', 0))}</p>")
        fields = [_map(f) for f in _list(r.get("fields"))]
        if not fields:
            out.append("<p>No differing fields.</p>")
            continue
        out.append("<table><tr><th>field</th><th>verdict</th><th>mismatches</th><th>rate</th>"
                   "<th>rounding</th><th>beyond</th><th>max |Δ|</th><th>beyond rate (window)</th>"
                   "<th>noise</th><th>noise rate</th><th>examples</th></tr>")
        for f in fields:
            verdict = str(f.get("verdict", ""))
            css = verdict if verdict in ("mismatch", "noise", "ok") else ""
            m_rate = _pct(f.get("mismatch_rate"))
            sizes = _map(f.get("sizes"))
            window = _map(f.get("window"))
            n_rate = _pct(f.get("noise_rate"))
            out.append(
                f"<tr class={css}><td><code>{_e(f.get('field', ''))}</code></td><td class={css}>{_e(verdict)}</td>"
                f"<td class=num>{_e(f.get('mismatches', 0))}</td><td class=num>{m_rate}</td>"
                f"<td class=num>{_e(sizes.get('rounding', 0))}</td><td class=num>{_e(sizes.get('beyond', 0))}</td>"
                f"<td class=num>{_e(f.get('max_abs_delta') or '')}</td>"
                f"<td class=num>{_pct(window.get('beyond_rate'))} ({_e(window.get('seconds', ''))} s)</td>"
                f"<td class=num>{_e(f.get('noise', 0))}</td><td class=num>{n_rate}</td>"
                f"<td class=num>{len(_list(f.get('examples')))}</td></tr>"
            )
        out.append("</table>")
        for f in fields:
            examples = [_map(ex) for ex in _list(f.get("examples"))[:MAX_EXAMPLES]]
            if not examples:
                continue
            noise = " <span class=noise>(noise)</span>" if f.get("verdict") == "noise" else ""
            out.append(f"<h3><code>{_e(f.get('field', ''))}</code>{noise}</h3>")
            out.extend(_example_html(i, ex) for i, ex in enumerate(examples))
    out.append("</body></html>")
    return "".join(out)
