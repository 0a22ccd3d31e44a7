"""The shadow diff page: ``GET /_edge/shadow`` as HTML, for an engineer reviewing a route.

:func:`render_html` turns a :func:`shadow.report.render_json` report into one self-contained
page (inline CSS, no scripts, no external assets):

* without a route, an **index**: each shadowed route with its compared count, the rate of
  requests that differ beyond rounding and of those that differ only by rounding, and a link
  to its page;
* with a route, per field the rounding / beyond counts and rates since start and over the
  report's window, ``max |Δ|``, and a link to the examples differing at that field
  (``&field=...``); then the examples, :data:`EXAMPLES_PER_PAGE` a page (``&page=N``, prev /
  next links). Each example opens with the list of differing paths (legacy value, new value,
  ``|Δ|``, rounding / beyond), then the two bodies side by side under ``legacy`` and ``new``
  (the primary one badged) with the lines at the differing paths in ``<mark>`` and only a few
  lines of context around them, so the differences are on screen without scrolling inside the
  example; then the request (method, path, allow-listed headers, the body pretty-printed; the
  store already dropped secrets, :func:`shadow.store.summarise_request`).

The page stays under :data:`PAGE_LIMIT` bytes whatever the examples hold: every shown text is
cut to a byte budget, and a page that still comes out larger is rendered again with smaller
budgets. Every value from a body, a request, a field or a route name goes through
:func:`html.escape` (after control characters and lone surrogates become ``\\uXXXX``).

Known limit: with ``unordered_lists`` the diff's list indexes are those of the sorted lists,
so a highlighted line may sit on another item than the one that differs.

Pure: a function from report data to ``str``, standard library only (plus :mod:`shadow`).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from shadow.fields import parse_path
from shadow.report import COMPARED, printable
from shadow.rounding import BEYOND, ROUNDING, classify, unit_for
from shadow.sizes import DEFAULT_WINDOW_SECONDS

__all__ = ["EXAMPLES_PER_PAGE", "PAGE_LIMIT", "render_html"]

EXAMPLES_PER_PAGE = 5
PAGE_LIMIT = 100 * 1024
MAX_FIELD_ROWS = 25
MAX_DIFF_ROWS = 12
CONTEXT_LINES = 3
# Lines shown of a body none of whose lines is at a differing path (a status diff, a cut body).
HEAD_LINES = 30
# Byte budgets of one example's parts at scale 1 (render_html halves them when a page is too big).
PANE_BYTES = 6000
REQUEST_BYTES = 2500
CELL_BYTES = 240
FIELD_BYTES = 300

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.2em;margin-top:1.5em;border-bottom:1px solid #ccc}
h3{font-size:1.05em;margin:.2em 0}h4{font-size:.95em;margin:.3em 0}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.mismatch,.beyond{color:#b00020;font-weight:600}.noise{color:#8a6d00}.ok,.rounding{color:#1b7a1b}
tr.noise td{background:#fffbe6}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:.4em;margin:.2em 0;white-space:pre-wrap;word-break:break-all}
pre mark,mark.diff{background:#ffe08a;display:inline-block;width:100%}
.gap{color:#888;font-style:italic}
.example{border:1px solid #bbb;border-radius:4px;padding:.6em;margin:1em 0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:.8em}
table.fields th{font-size:.85em}
.side h4{font-size:1.05em}.primary{background:#1b4f9c;color:#fff;border-radius:3px;padding:0 .4em;font-size:.85em}
.pager a,.pager span{margin-right:1em}.muted{color:#777}
"""


# --- small helpers -------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(printable(str(value)), quote=True)


def _fit(value: Any, budget: int) -> str:
    """``value`` escaped, cut so that its UTF-8 size stays within ``budget`` bytes."""
    text = printable(str(value))
    out = html.escape(text, quote=True)
    if len(out.encode("utf-8")) <= budget:
        return out
    parts: list[str] = []
    used = len("…".encode("utf-8"))
    for ch in text:
        piece = html.escape(ch, quote=True)
        size = len(piece.encode("utf-8"))
        if used + size > budget:
            break
        parts.append(piece)
        used += size
    return "".join(parts) + "…"


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _pct(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return _e(f"{value:.2%}")
    return ""


def _rate(n: int, total: int) -> float:
    return n / total if total else 0.0


def _href(**params: Any) -> str:
    """A link relative to the page itself (``?…``), so it works behind any host or prefix."""
    query = {"format": "html", **{k: str(v) for k, v in params.items() if v is not None}}
    # A lone surrogate has no UTF-8 form: its link carries the \\uXXXX spelling instead of failing.
    return _e("?" + urlencode(query, errors="backslashreplace"))


def _window_param(window: float | None) -> str | None:
    return None if window is None or window == DEFAULT_WINDOW_SECONDS else f"{window:g}"


def _head(title: str) -> list[str]:
    return ["<!doctype html><html><head><meta charset=utf-8>",
            f"<title>{title}</title><style>{_CSS}</style></head><body>"]


# --- the index -----------------------------------------------------------------------------------

def _index(report: Mapping[str, Any], window: str | None) -> str:
    routes = _map(report.get("routes"))
    out = _head("Shadow diffs")
    out.append("<h1>Shadow diffs</h1>")
    out.append(f"<p class=muted>generated {_e(report.get('generated_at', ''))} · one row per shadowed route; "
               "rates are of the requests compared (both sides answered) · "
               f"<a href=\"{_e('?format=json')}\">JSON</a></p>")
    if not routes:
        out.append("<p>No shadowed routes yet.</p>")
    else:
        out.append("<table class=routes><tr><th>route</th><th>compared</th><th>beyond rounding</th>"
                   "<th>mismatch rate</th><th>rounding only</th><th>rounding rate</th><th>errors</th>"
                   "<th>skipped</th><th>fields differing</th></tr>")
        for name, r in routes.items():
            r = _map(r)
            req = _map(r.get("requests"))
            compared = sum(_int(req.get(o)) for o in COMPARED)
            mismatch, rounding = _int(req.get("mismatch")), _int(req.get("rounding"))
            css = "mismatch" if mismatch else ("rounding" if rounding else "ok")
            out.append(
                f"<tr class=route><td><a class=route-link href=\"{_href(route=name, window=window)}\">{_fit(name, FIELD_BYTES)}</a></td>"
                f"<td class=num>{compared}</td><td class=\"num {css}\">{mismatch}</td>"
                f"<td class=\"num {css}\">{_pct(_rate(mismatch, compared))}</td>"
                f"<td class=num>{rounding}</td><td class=num>{_pct(_rate(rounding, compared))}</td>"
                f"<td class=num>{_int(req.get('error'))}</td><td class=num>{_int(req.get('skipped'))}</td>"
                f"<td class=num>{len(_list(r.get('fields')))}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "".join(out)


# --- one example ---------------------------------------------------------------------------------

Parts = tuple[Any, ...]


def _pretty(value: Any, path: Parts = (), depth: int = 0, lead: str = "") -> list[tuple[Parts, str]]:
    """``json.dumps(value, indent=2)``'s lines, each with the path of the value it shows."""
    pad = "  " * depth
    if isinstance(value, dict) and value:
        out = [(path, f"{pad}{lead}{{")]
        items = list(value.items())
        for i, (k, v) in enumerate(items):
            child = _pretty(v, (*path, str(k)), depth + 1, json.dumps(str(k), ensure_ascii=False) + ": ")
            if i < len(items) - 1:
                child[-1] = (child[-1][0], child[-1][1] + ",")
            out.extend(child)
        out.append((path, f"{pad}}}"))
        return out
    if isinstance(value, list) and value:
        out = [(path, f"{pad}{lead}[")]
        for i, v in enumerate(value):
            child = _pretty(v, (*path, i), depth + 1)
            if i < len(value) - 1:
                child[-1] = (child[-1][0], child[-1][1] + ",")
            out.extend(child)
        out.append((path, f"{pad}]"))
        return out
    return [(path, pad + lead + json.dumps(value, ensure_ascii=False))]


def _stored_unit(ex: Mapping[str, Any]) -> Decimal | None:
    stored = ex.get("rounding_unit")
    try:
        return Decimal(stored) if isinstance(stored, str) else None
    except InvalidOperation:
        return None


def _parse(text: Any) -> tuple[bool, Any]:
    if not isinstance(text, str):
        return False, None
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        return False, None


def _under(path: Parts, marks: Sequence[Parts]) -> bool:
    return any(path[: len(m)] == m for m in marks)


def _pane(body: Any, marks: Sequence[Parts], budget: int) -> tuple[str, int]:
    """A body as ``<pre>``: the lines at ``marks`` in ``<mark>``, a few lines of context, the
    rest folded; ``(html, number of marked lines)``."""
    ok, doc = _parse(body)
    lines: list[tuple[Parts | None, str]]
    if ok:
        try:
            lines = list(_pretty(doc))
        except RecursionError:
            ok = False
    if not ok:
        lines = [(None, line) for line in str(body if body is not None else "").split("\n")]
    marked = {i for i, (p, _) in enumerate(lines) if p is not None and _under(p, marks)}
    keep: set[int] = set()
    for i in marked:
        keep.update(range(max(0, i - CONTEXT_LINES), min(len(lines), i + CONTEXT_LINES + 1)))
    if not marked:
        keep = set(range(min(len(lines), HEAD_LINES)))
    out: list[str] = []
    used = 0
    skipped = 0
    cut = False
    for i, (_, text) in enumerate(lines):
        if i not in keep:
            skipped += 1
            continue
        if skipped:
            out.append(f"<span class=gap>  … {skipped} unchanged line{'s' if skipped > 1 else ''}</span>\n")
            skipped = 0
        piece = _fit(text, max(budget - used, 0) or 1)
        line = f"<mark class=diff>{piece}</mark>\n" if i in marked else piece + "\n"
        used += len(line.encode("utf-8"))
        if used > budget:
            cut = True
            break
        out.append(line)
    if cut:
        out.append("<span class=gap>  … cut to keep the page small (the JSON report has the whole body)</span>\n")
    elif skipped:
        out.append(f"<span class=gap>  … {skipped} more line{'s' if skipped > 1 else ''}</span>\n")
    return f"<pre class=body>{''.join(out)}</pre>", len(marked)


def _decimal(value: Any) -> Decimal | None:
    if not isinstance(value, str):
        return None
    try:
        d = Decimal(value)
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _diff_rows(diff: Any, left: str, right: str, unit: Decimal) -> tuple[list[dict[str, Any]], int]:
    """The example's ``diff`` as rows ``{path, parts, left, right, delta, size}``, and how many
    the diff itself left out."""
    rows: list[dict[str, Any]] = []
    omitted = 0
    for kind, entries in _map(diff).items():
        if kind == "omitted":
            omitted += _int(entries)
            continue
        entries = _map(entries)
        if kind in ("status", "body") or not entries or not all(isinstance(v, Mapping) for v in entries.values()):
            # Not a path → values table: a status or non-JSON body difference, a skipped diff, an error.
            rows.append({"path": kind, "parts": None, "kind": kind, "delta": None, "size": BEYOND,
                         "left": entries.get(left, entries.get("old", "")) if entries else _map(diff).get(kind),
                         "right": entries.get(right, "") if entries else ""})
            continue
        for path, values in entries.items():
            values = _map(values)
            a = values.get(left, values.get("old"))
            b = values.get(right)
            size, delta = BEYOND, None
            if kind == "values_changed":
                da, db = _decimal(a), _decimal(b)
                if da is not None and db is not None:
                    size, delta = classify(da, db, unit)
            try:
                parts: Parts | None = parse_path(str(path))
            except ValueError:
                parts = None
            rows.append({"path": path, "parts": parts, "kind": kind, "left": a, "right": b, "delta": delta, "size": size})
    return rows, omitted


def _value_cell(value: Any, budget: int) -> str:
    # A path added or removed has no value on one side: say so rather than show an empty string.
    if value is None:
        return "<td class=muted>(absent)</td>"
    return f"<td><code>{_fit(value, budget)}</code></td>"


def _request_line(req: Any, budget: int) -> str:
    if not isinstance(req, Mapping):
        return ""
    line = f"{req.get('method', '?')} {req.get('path', '')}"
    return f" · <code>{_fit(line, budget)}</code>"


def _request(req: Any, budget: int) -> str:
    if not isinstance(req, Mapping):
        return f"<pre class=request>{_fit(req if req is not None else '', budget)}</pre>"
    first = f"{req.get('method', '?')} {req.get('path', '')}" + (f"?{req['query']}" if req.get("query") else "")
    lines = [first]
    lines += [f"{k}: {v}" for k, v in _map(req.get("headers")).items()]
    body = req.get("body")
    if body is not None:
        ok, doc = _parse(body)
        if ok:
            try:
                body = json.dumps(doc, indent=2, ensure_ascii=False)
            except (ValueError, RecursionError):
                pass
        lines += ["", str(body)]
    return f"<pre class=request>{_fit(chr(10).join(lines), budget)}</pre>"


def _example(n: int, ex: Mapping[str, Any], fields: Sequence[str], route: str, window: str | None, scale: float) -> str:
    primary, shadow = _map(ex.get("primary")), _map(ex.get("shadow"))
    primary_side = str(ex.get("primary_side", primary.get("side", "?")))
    noise = ex.get("kind") == "noise"
    if noise:
        # Both answers come from the primary side: first call on the left, second on the right.
        left_body, right_body = primary, shadow
        left_key, right_key = primary_side, f"{primary_side}_again"
        left_label, right_label = f"{primary_side} (1st call)", f"{primary_side} (2nd call)"
    else:
        legacy_first = primary.get("side", primary_side) != "new"
        left_body, right_body = (primary, shadow) if legacy_first else (shadow, primary)
        left_key, right_key = "legacy", "new"
        left_label, right_label = "legacy", "new"
    ok_l, doc_l = _parse(left_body.get("body"))
    ok_r, doc_r = _parse(right_body.get("body"))
    # The unit the comparison judged with (it knew the forex table); an older example: the minor unit.
    unit = _stored_unit(ex) or unit_for(doc_l if ok_l else None, doc_r if ok_r else None)
    rows, omitted = _diff_rows(ex.get("diff"), left_key, right_key, unit)
    marks = [r["parts"] for r in rows if r["parts"] is not None]
    cell = max(int(CELL_BYTES * scale), 24)

    out = [f"<section class=example id=\"ex-{n}\">",
           f"<h3>example {n} · request <code>{_fit(ex.get('request_id', '?'), cell)}</code> · {_e(ex.get('kind', 'shadow'))}"
           f" · primary: <strong class=primary-side>{_e(primary_side)}</strong> · {_e(ex.get('at', ''))}"
           f"{_request_line(ex.get('request'), cell)}</h3>"]
    if fields:
        links = ", ".join(f"<a href=\"{_href(route=route, field=f, window=window)}#examples\"><code>{_fit(f, cell)}</code></a>"
                          for f in fields[:MAX_DIFF_ROWS])
        out.append(f"<p>differs at field{'s' if len(fields) > 1 else ''}: {links}</p>")
    out.append(f"<div class=top><table class=diffs><tr><th>differing path</th><th>{_e(left_label)}</th><th>{_e(right_label)}</th>"
               "<th>|Δ|</th><th>size</th></tr>")
    for r in rows[:MAX_DIFF_ROWS]:
        out.append(f"<tr class=\"diff-row {r['size']}\"><td><mark class=diff><code>{_fit(r['path'], cell)}</code></mark></td>"
                   f"{_value_cell(r['left'], cell)}{_value_cell(r['right'], cell)}"
                   f"<td class=num>{_e(r['delta']) if r['delta'] is not None else ''}</td>"
                   f"<td class=\"size {r['size']}\">{_e(r['size'])}</td></tr>")
    more = len(rows) - min(len(rows), MAX_DIFF_ROWS) + omitted
    if more:
        out.append(f"<tr><td colspan=5 class=muted>… {more} more differing paths</td></tr>")
    if not rows:
        out.append("<tr><td colspan=5 class=muted>no diff recorded</td></tr>")
    out.append("</table>")
    out.append("</div>")
    panes = []
    for label, side_key, body in ((left_label, left_key, left_body), (right_label, right_key, right_body)):
        badge = " <span class=primary>primary</span>" if (not noise and side_key == primary_side) or (noise and side_key == left_key) else " <span class=muted>shadow</span>"
        pane, _ = _pane(body.get("body", ""), marks, int(PANE_BYTES * scale))
        panes.append(f"<div class=\"side {_e(side_key)}\"><h4><span class=side-label>{_e(label)}</span>{badge}"
                     f" · status {_e(body.get('status', '?'))}</h4>{pane}</div>")
    out.append(f"<div class=pair>{''.join(panes)}</div>")
    # The request last: the differences and the two bodies are what the first screen is for.
    out.append(f"<div class=req><h4>request</h4>{_request(ex.get('request'), int(REQUEST_BYTES * scale))}</div></section>")
    return "".join(out)


# --- one route -----------------------------------------------------------------------------------

def _examples_of(fields: Sequence[Mapping[str, Any]], only: str | None) -> list[tuple[Mapping[str, Any], list[str]]]:
    """The route's examples once each (an example is stored under every field it differs at),
    in field order, with the fields each one differs at; only those of ``only`` when given."""
    seen: dict[tuple[str, ...], tuple[Mapping[str, Any], list[str]]] = {}
    for f in fields:
        name = str(f.get("field", ""))
        for ex in _list(f.get("examples")):
            ex = _map(ex)
            key = tuple(str(ex.get(k, "")) for k in ("request_id", "kind", "at", "primary_side"))
            entry = seen.setdefault(key, (ex, []))
            entry[1].append(name)
    found = list(seen.values())
    if only is not None:
        found = [e for e in found if only in e[1]]
    return found


def _route_page(report: Mapping[str, Any], route: str, field: str | None, page: int, window: str | None,
                scale: float) -> str:
    routes = _map(report.get("routes"))
    title = f"Shadow diffs · {_fit(route, FIELD_BYTES)}"
    out = _head(title)
    out.append(f"<p><a class=index-link href=\"{_href(window=window)}\">← all routes</a></p><h1>{title}</h1>")
    if route not in routes:
        out.append("<p>This route has no shadow results (not shadowed, or nothing compared yet).</p></body></html>")
        return "".join(out)
    r = _map(routes[route])
    req = _map(r.get("requests"))
    compared = sum(_int(req.get(o)) for o in COMPARED)
    fields = [_map(f) for f in _list(r.get("fields"))]
    seconds = next((_map(f.get("window")).get("seconds") for f in fields if _map(f.get("window"))), None)
    seconds_text = f"{seconds:g}" if isinstance(seconds, (int, float)) else "?"
    out.append(f"<p class=muted>generated {_e(report.get('generated_at', ''))} · compared {compared} requests: "
               f"<span class=mismatch>{_int(req.get('mismatch'))} beyond rounding</span> "
               f"({_pct(_rate(_int(req.get('mismatch')), compared))}), "
               f"<span class=rounding>{_int(req.get('rounding'))} rounding only</span> "
               f"({_pct(_rate(_int(req.get('rounding')), compared))}), {_int(req.get('match'))} equal · "
               f"errors {_int(req.get('error'))} · skipped {_int(req.get('skipped'))} · "
               f"window {_e(seconds_text)} s (<code>&amp;window=</code> seconds) · "
               f"<a href=\"{_e('?' + urlencode({'format': 'json', 'route': route}, errors='backslashreplace'))}\">JSON with whole bodies</a></p>")

    out.append("<h2>Fields</h2>")
    if not fields:
        out.append("<p>No differing fields.</p>")
    else:
        out.append(f"<table class=fields><tr><th rowspan=2>field</th><th rowspan=2>verdict</th>"
                   f"<th colspan=4>since start</th><th colspan=5>last {_e(seconds_text)} s</th>"
                   "<th rowspan=2>max |Δ|</th><th rowspan=2>noise rate</th><th rowspan=2>examples</th></tr>"
                   "<tr><th>rounding</th><th>beyond</th><th>rounding rate</th><th>beyond rate</th>"
                   "<th>compared</th><th>rounding</th><th>beyond</th><th>rounding rate</th><th>beyond rate</th></tr>")
        rows = max(int(MAX_FIELD_ROWS * scale), 3)
        for f in fields[:rows]:
            name = str(f.get("field", ""))
            verdict = str(f.get("verdict", ""))
            css = verdict if verdict in ("mismatch", "noise", "ok", "rounding") else ""
            sizes, win = _map(f.get("sizes")), _map(f.get("window"))
            current = " class=current" if name == field else ""
            n_examples = len(_list(f.get("examples")))
            link = (f"<a href=\"{_href(route=route, field=name, window=window)}#examples\">{n_examples} →</a>"
                    if n_examples else "0")
            out.append(
                f"<tr class=\"field {css}\"{current}><td><a class=field-link href=\"{_href(route=route, field=name, window=window)}#examples\">"
                f"<code>{_fit(name, FIELD_BYTES)}</code></a></td><td class={css}>{_e(verdict)}</td>"
                f"<td class=\"num rounding\">{_int(sizes.get(ROUNDING))}</td><td class=\"num beyond\">{_int(sizes.get(BEYOND))}</td>"
                f"<td class=num>{_pct(f.get('rounding_rate'))}</td><td class=num>{_pct(f.get('beyond_rate'))}</td>"
                f"<td class=num>{_int(win.get('compared'))}</td><td class=\"num rounding\">{_int(win.get(ROUNDING))}</td>"
                f"<td class=\"num beyond\">{_int(win.get(BEYOND))}</td><td class=num>{_pct(win.get('rounding_rate'))}</td>"
                f"<td class=num>{_pct(win.get('beyond_rate'))}</td>"
                f"<td class=\"num max-delta\">{_fit(f.get('max_abs_delta') or '', CELL_BYTES)}</td>"
                f"<td class=num>{_pct(f.get('noise_rate'))}</td><td class=num>{link}</td></tr>")
        if len(fields) > rows:
            out.append(f"<tr><td colspan=14 class=muted>… {len(fields) - rows} more fields with fewer differences "
                       "(the JSON report lists them; <code>&amp;field=</code> shows the examples of any)</td></tr>")
        out.append("</table>")

    examples = _examples_of(fields, field)
    pages = max(1, math.ceil(len(examples) / EXAMPLES_PER_PAGE))
    page = min(max(page, 1), pages)
    first = (page - 1) * EXAMPLES_PER_PAGE
    shown = examples[first:first + EXAMPLES_PER_PAGE]
    where = f" differing at <code>{_fit(field, FIELD_BYTES)}</code>" if field is not None else ""
    out.append(f"<h2 id=examples>Examples{where}</h2>")
    nav = [f"<p class=pager>examples {first + 1 if shown else 0}–{first + len(shown)} of {len(examples)} · page {page} of {pages}"]
    if page > 1:
        nav.append(f" <a rel=prev class=prev href=\"{_href(route=route, field=field, window=window, page=page - 1)}#examples\">← previous</a>")
    if page < pages:
        nav.append(f" <a rel=next class=next href=\"{_href(route=route, field=field, window=window, page=page + 1)}#examples\">next →</a>")
    if field is not None:
        nav.append(f" <a href=\"{_href(route=route, window=window)}#examples\">all fields</a>")
    nav.append("</p>")
    out.extend(nav)
    if not shown:
        out.append("<p>No examples stored.</p>")
    for i, (ex, differs_at) in enumerate(shown):
        out.append(_example(first + i + 1, ex, differs_at, route, window, scale))
    if shown:
        out.extend(nav)
    out.append("</body></html>")
    return "".join(out)


def render_html(report: Mapping[str, Any], route: str | None = None, *, field: str | None = None, page: int = 1,
                window: float | None = None) -> str:
    """The page for a :func:`shadow.report.render_json` report: the index of routes when
    ``route`` is None, else that route's page (examples of ``field`` only when given, page
    ``page``). ``window`` (seconds) is carried on the links when not the default."""
    report = _map(report)
    w = _window_param(window)
    if route is None:
        return _index(report, w)
    for scale in _scales():
        text = _route_page(report, route, field, page, w, scale)
        if len(text.encode("utf-8")) < PAGE_LIMIT:
            return text
    return text


def _scales() -> Iterator[float]:
    # Budgets shrink until the page fits; at 1/16 an example is a few hundred bytes.
    yield from (1.0, 0.5, 0.25, 0.125, 0.0625)
