"""edgectl's side of the admin API: a small blocking HTTP client and the status/shadow reports.

Blocking urllib is enough for a command that makes two or three calls and exits; proxies are
switched off because the admin port is loopback or an internal address, never via a proxy.
The admin token is sent only to a loopback address or over https (``--insecure-token`` to send it
anyway), and redirects are not followed, so a wrong ``--admin`` URL can't collect it.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from prometheus_client.parser import text_string_to_metric_families

from shadow.report import COMPARED

DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"
BACKENDS = ("legacy", "new")


class AdminUnreachable(Exception):
    """Nothing answered at the admin URL (refused, timed out, bad address)."""


class ReportError(Exception):
    """The admin API answered something edgectl cannot use; the message says what."""


class TokenNotSent(Exception):
    """The admin token would travel in clear text to another machine; the message says what to do."""


def token_may_go_to(base_url: str) -> bool:
    """https anywhere, plain http only to this machine (a loopback address or ``localhost``)."""
    parts = urlsplit(base_url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower()
    if parts.scheme != "http" or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would re-send the Authorization header to wherever a 3xx points.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True, slots=True)
class AdminResponse:
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ReportError(f"the admin API answered {self.status} with a body that is not JSON") from None


class AdminClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 5.0, *, insecure_token: bool = False) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._insecure_token = insecure_token
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())

    def check_token_destination(self) -> None:
        """Raise TokenNotSent when a write would carry the token over plain http to another machine."""
        if self._token and not self._insecure_token and not token_may_go_to(self.base_url):
            raise TokenNotSent(
                f"not sending EDGE_ADMIN_TOKEN to {self.base_url}: plain http to another machine would expose it "
                "(use https or a loopback address, or pass --insecure-token to send it anyway)"
            )

    def get(self, path: str, **query: str) -> AdminResponse:
        url = f"{self.base_url}{path}" + (f"?{urlencode(query)}" if query else "")
        return self._send(urllib.request.Request(url, method="GET"))

    def post(self, path: str) -> AdminResponse:
        request = urllib.request.Request(f"{self.base_url}{path}", data=b"", method="POST")
        self.check_token_destination()
        if self._token:  # only writes need it; GETs don't carry the secret around
            request.add_header("Authorization", f"Bearer {self._token}")
        return self._send(request)

    def _send(self, request: urllib.request.Request) -> AdminResponse:
        try:
            with self._opener.open(request, timeout=self._timeout) as resp:
                return AdminResponse(resp.status, resp.read())
        except urllib.error.HTTPError as exc:  # an answer, just not a 2xx one
            return AdminResponse(exc.code, exc.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminUnreachable(f"admin API at {self.base_url} is unreachable ({reason})") from None


# --- status --------------------------------------------------------------------------------------


@dataclass(slots=True)
class RouteStats:
    requests: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # backend → count
    server_errors: float = 0.0  # responses with status 5xx, any backend
    upstream_errors: float = 0.0
    shadow: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # outcome → count

    @property
    def total(self) -> float:
        return sum(self.requests.values())


@dataclass(frozen=True, slots=True)
class MetricsSummary:
    routes: Mapping[str, RouteStats]
    has_shadow: bool  # edge_shadow_requests_total is exported (edges before shadow support don't)


def count_sample(stats: dict[str, RouteStats], name: str, labels: Mapping[str, str], value: float) -> None:
    """One sample of the edge's counters into the since-start table (other names and route-less samples: nothing)."""
    route = labels.get("route")
    if route is None:
        return
    if name == "edge_requests_total":
        stats[route].requests[labels.get("backend", "?")] += value
        if labels.get("status_class") == "5xx":
            stats[route].server_errors += value
    elif name == "edge_upstream_errors_total":
        stats[route].upstream_errors += value
    elif name == "edge_shadow_requests_total":
        stats[route].shadow[labels.get("outcome", "?")] += value


def summarise_metrics(text: str) -> MetricsSummary:
    stats: dict[str, RouteStats] = defaultdict(RouteStats)
    has_shadow = False
    try:
        for family in text_string_to_metric_families(text):
            has_shadow |= family.name == "edge_shadow_requests"
            for s in family.samples:
                count_sample(stats, s.name, s.labels, s.value)
    except ValueError as exc:
        raise ReportError(f"GET /metrics is not Prometheus text: {exc}") from None
    return MetricsSummary(dict(stats), has_shadow)


def _count(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _percent_text(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def _route_row(name: str, spec: Mapping[str, Any] | None, st: RouteStats, has_shadow: bool) -> list[str]:
    shadow = (spec or {}).get("shadow") or {}
    row = [
        name,
        _percent_text(spec["new_percent"]) if spec else "-",
        _percent_text(shadow.get("percent")) if spec else "-",
        ("yes" if spec["writes"] else "no") if spec and "writes" in spec else "-",  # Prometheus doesn't know it
        *(_count(st.requests.get(b, 0.0)) for b in BACKENDS),
        f"{100 * st.server_errors / st.total:.2f}%" if st.total else "-",
        _count(st.upstream_errors),
    ]
    if has_shadow:
        # A rounding-only comparison was made too: it belongs in the denominator, not the numerator.
        compared = sum(st.shadow.get(o, 0.0) for o in COMPARED)
        row.append(f"{_count(st.shadow.get('mismatch', 0.0))}/{_count(compared)}")
    return row


def _when(at: Any) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S") if isinstance(at, int | float) else "?"


def _rate(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{100 * value:.2f}%"


def _ms(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{1000 * value:.1f}ms"


def _share(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.1f}"


def _rates_table(live: Mapping[str, Any], routes: Mapping[str, Any]) -> list[str]:
    per_route: Mapping[str, Any] = live.get("routes") or {}
    header = ["route", "side", "req/s", "4xx", "409 price_changed", "5xx", "p50", "p99",
              "new% set/observed", "shadow mismatch", "verdict"]
    rows = []
    names = [*[n for n in routes if n in per_route], *sorted(n for n in per_route if n not in routes)]
    for name in names:
        entry = per_route[name]
        set_share = entry.get("set_new_percent")
        for i, backend in enumerate(BACKENDS):
            side = entry.get(backend) or {}
            rows.append([
                name if i == 0 else "", backend, f"{side.get('req_per_s', 0.0):.2f}",
                _rate(side.get("4xx_rate")), _rate(side.get("price_changed_rate")), _rate(side.get("5xx_rate")),
                _ms(side.get("p50_seconds")), _ms(side.get("p99_seconds")),
                (f"{_percent_text(set_share)}/{_share(entry.get('observed_new_percent'))}" if i == 0 else ""),
                (_rate((entry.get("shadow") or {}).get("mismatch_rate")) if i == 0 else ""),
                str(entry.get("verdict", "?")) if i == 1 else "",
            ])
    source = f", from {live['source']}" if live.get("source") else ""
    return [f"live, last {live.get('window_seconds', '?')} s (asked {live.get('asked_window_seconds', '?')} s){source}:",
            *_table(header, rows)]


def _consumer_lines(described: Mapping[str, Any]) -> list[str]:
    consumers = described.get("consumers")
    if not isinstance(consumers, Mapping):
        return []
    lines = ["consumers (who applies each event type):"]
    for event, owner in consumers.items():
        shown = f"{owner['new_percent']:g}% new" if isinstance(owner, Mapping) and "new_percent" in owner else str(owner)
        lines.append(f"  {event}  {shown}")
    if len(lines) == 1:
        lines.append("  none listed: old shopping applies every event type")
    return lines


def status_json(described: Mapping[str, Any], metrics: MetricsSummary, live: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "source": described.get("source", "admin"),
        "hash": described.get("hash"),
        "routes": described.get("routes"),
        "consumers": described.get("consumers"),
        "since_start": {
            name: {"requests": dict(st.requests), "5xx": st.server_errors, "upstream_errors": st.upstream_errors,
                   "shadow": dict(st.shadow)}
            for name, st in metrics.routes.items()
        },
        "live": live,
    }


def _table_lines(described: Mapping[str, Any]) -> list[str]:
    """Which routing table is in force: the edge's /_edge/routes, or where the numbers came from instead."""
    if described.get("source"):
        # Prometheus has the set shares (edge_route_new_percent), not the file, its hash or the reloads.
        return [f"source        {described['source']}  (routing file, hash, reloads, consumers: edgectl status --admin URL)"]
    last = described.get("last_reload") or {}
    reload_text = "ok" if last.get("ok") else "REJECTED"
    if last.get("ok"):
        reload_text += " (changed)" if last.get("changed") else " (no change)"
    lines = [
        f"routing file  {described.get('file', '?')}",
        f"hash          {described.get('hash', '?')}  (loaded {_when(described.get('loaded_at'))})",
        f"last reload   {reload_text} at {_when(last.get('at'))}",
    ]
    if last.get("error"):
        lines.append(f"reload error  {last['error']}  (the edge keeps the table above)")
    return lines


def render_status(described: Mapping[str, Any], metrics: MetricsSummary, live: Mapping[str, Any] | None = None) -> str:
    """The routing table in force next to live traffic, errors and shadow mismatches per route."""
    lines = _table_lines(described)
    routes: Mapping[str, Any] = described.get("routes") or {}
    header = ["route", "new%", "shadow%", "writes", "req legacy", "req new", "5xx rate", "upstream errors"]
    if metrics.has_shadow:
        header.append("shadow mismatch/compared")
    names = [*routes, *sorted(n for n in metrics.routes if n not in routes)]  # passthrough last
    rows = [_route_row(n, routes.get(n), metrics.routes.get(n, RouteStats()), metrics.has_shadow) for n in names]
    totals = RouteStats()
    for st in metrics.routes.values():
        for backend, count in st.requests.items():
            totals.requests[backend] += count
        totals.server_errors += st.server_errors
        totals.upstream_errors += st.upstream_errors
        for outcome, count in st.shadow.items():
            totals.shadow[outcome] += count
    rows.append(["TOTAL", "", "", "", *_route_row("", None, totals, metrics.has_shadow)[4:]])
    since = "since each edge started, summed over the edges scraped:" if described.get("source") else "since the edge started:"
    out = [*lines, "", since, *_table(header, rows)]
    if live is not None:
        out += ["", *_rates_table(live, routes)]
    else:
        out += ["", "live rates: not available (this edge has no /_edge/rates)"]
    consumers = _consumer_lines(described)
    if consumers:
        out += ["", *consumers]
    return "\n".join(out)


# --- shadow --------------------------------------------------------------------------------------
# GET /_edge/shadow?route=R answers shadow.report.render_json: routes[R] = {requests: {outcome: n},
# compared, noise_samples, fields: [{field, mismatches, noise, verdict, sizes: {rounding, beyond}, max_abs_delta,
# examples: [{primary_side, diff (values keyed legacy / new), …}]}]}.


def _example_text(example: Any, limit: int) -> str:
    shown = example.get("diff", example) if isinstance(example, Mapping) else example
    text = json.dumps(shown, ensure_ascii=False, sort_keys=True, default=str)
    primary = _example_primary(example)
    if primary:
        # Values in the diff are keyed by side (legacy / new); this says which one was serving.
        text = f"(primary {primary}) {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _example_primary(example: Any) -> str | None:
    if not isinstance(example, Mapping):
        return None
    side = example.get("primary_side")
    if side is None and isinstance(example.get("primary"), Mapping):
        side = example["primary"].get("side")
    return str(side) if side is not None else None


def render_shadow(data: Any, route: str, top: int = 10, example_chars: int = 400) -> str:
    if not isinstance(data, Mapping) or not isinstance(data.get("routes"), Mapping):
        raise ReportError("GET /_edge/shadow answered something that is not a shadow report")
    report = data["routes"].get(route)
    if not isinstance(report, Mapping):
        return f"{route}: no shadow comparisons recorded"
    requests = report.get("requests") or {}
    lines = [
        f"{route}: shadow report",
        "requests: " + ", ".join(f"{k}={_count(v)}" for k, v in requests.items() if isinstance(v, int | float)),
        f"compared: {_count(report.get('compared', 0))}, noise samples: {_count(report.get('noise_samples', 0))}",
    ]
    fields = sorted(
        (f for f in report.get("fields") or [] if isinstance(f, Mapping)),
        key=lambda f: (f.get("verdict") != "mismatch", -(f.get("mismatches") or 0), str(f.get("field"))),
    )
    if not fields:
        lines.append("no differing fields")
        return "\n".join(lines)
    lines.append(f"differing fields (top {min(top, len(fields))} of {len(fields)}; noise = differs between two calls to the same side):")
    lines.append("sizes: rounding = within one USD cent in the body's currency, at least one minor unit (expected), beyond = a real difference")
    pad = f"  {'':>10}  {'':>8}  {'':>6}  {'':>10}  {'':>6}  {'':8}"
    lines.append(f"  {'mismatches':>10}  {'rounding':>8}  {'beyond':>6}  {'max |Δ|':>10}  {'noise':>6}  {'verdict':8}  field")
    for f in fields[:top]:
        sizes = f.get("sizes")
        sizes = sizes if isinstance(sizes, Mapping) else {}
        delta = f.get("max_abs_delta")
        lines.append(
            f"  {_count(f.get('mismatches', 0)):>10}  {_count(sizes.get('rounding', 0)):>8}  {_count(sizes.get('beyond', 0)):>6}"
            f"  {str(delta) if delta is not None else '-':>10}  {_count(f.get('noise', 0)):>6}  {str(f.get('verdict', '?')):8}  {f.get('field')}")
        examples = f.get("examples") or []
        if examples:
            lines.append(f"{pad}  e.g. {_example_text(examples[0], example_chars)}")
    return "\n".join(lines)
