"""`edgectl status --prometheus URL`: the status data read from Prometheus instead of the edges' admin APIs.

The second source of the same report: :func:`read_status` answers the ``(described, summary, live)`` triple
the admin source builds from ``/_edge/routes``, ``/metrics`` and ``/_edge/rates``, so
:func:`proxy.edgectl_admin.render_status`, :func:`~proxy.edgectl_admin.status_json` and the verdict
(:func:`proxy.rates.route_entry`) are shared. Every number comes from PromQL instant queries
(``GET /api/v1/query``), all evaluated at one instant (Prometheus's own clock, read first), summed over every
edge Prometheus scrapes: the fleet, not one edge. What only an edge knows (routing file, hash, reloads,
shadow percentages, writes, consumers) is not in Prometheus and is shown as unknown.

A rate needs two samples inside the window, so a window shorter than twice the edges' scrape interval is
refused (it would read as "no traffic"). Prometheus's ``increase()`` extrapolates to the window's edges and
does not count a series' first sample, so its numbers are close to, not equal to, the admin source's.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from proxy.edgectl_admin import BACKENDS, MetricsSummary, ReportError, RouteStats, count_sample
from proxy.rates import SideCounts, route_entry

REQUESTS = "edge_requests_total"
DURATION_BUCKET = "edge_request_duration_seconds_bucket"
PRICE_CHANGED = "edge_price_changed_total"
SHADOW = "edge_shadow_requests_total"
UPSTREAM_ERRORS = "edge_upstream_errors_total"
NEW_PERCENT = "edge_route_new_percent"
QUANTILES = {"p50_seconds": 0.5, "p99_seconds": 0.99}


class PrometheusUnreachable(Exception):
    """Nothing answered at the Prometheus URL (refused, timed out, bad address)."""


def promql_duration(seconds: float) -> str:
    """A PromQL range: whole seconds as ``60s``, anything finer in milliseconds (``1500ms``)."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def current(metric: str) -> str:
    """`metric`'s series that were in their target's latest scrape.

    A plain selector also returns, for 5 minutes (the lookback), the last sample of a series its target
    no longer exports, when Prometheus wrote no staleness marker for it: after Prometheus itself
    restarted on the same data (`make observe` again), an edge restarted meanwhile showed the previous
    run's 5xx in the since-start table. A series is current when its last sample is from the target's
    last scrape (`timestamp(up)`, the same instant for every series of one scrape)."""
    return f"{metric} and (timestamp({metric}) >= on(job, instance) group_left() (timestamp(up) - 0.5))"


@dataclass(frozen=True, slots=True)
class Queries:
    """The PromQL behind one status report; ``window`` is a PromQL duration."""

    window: str

    @property
    def requests(self) -> str:
        return f"sum by (route, backend, status_class) (increase({REQUESTS}[{self.window}]))"

    @property
    def price_changed(self) -> str:
        return f"sum by (route, backend) (increase({PRICE_CHANGED}[{self.window}]))"

    def quantile(self, q: float) -> str:
        return f"histogram_quantile({q:g}, sum by (route, backend, le) (rate({DURATION_BUCKET}[{self.window}])))"

    @property
    def shadow(self) -> str:
        return f"sum by (route, outcome) (increase({SHADOW}[{self.window}]))"

    # Several edges may disagree for a moment while a change rolls out; the highest share is the one to watch.
    new_percent = f"max by (route) ({current(NEW_PERCENT)})"
    # Since-start counters: summed over the edges Prometheus scrapes, each since its own start.
    requests_total = f"sum by (route, backend, status_class) ({current(REQUESTS)})"
    upstream_errors_total = f"sum by (route) ({current(UPSTREAM_ERRORS)})"
    shadow_total = f"sum by (route, outcome) ({current(SHADOW)})"
    # Targets exporting the edge's counters: their scrape interval bounds the shortest honest window.
    edge_jobs = f"count by (job) ({REQUESTS})"


class PrometheusClient:
    """Blocking instant queries against Prometheus's HTTP API; errors become one-line exceptions."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        # No proxies, as for the admin API: Prometheus is an internal address.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.base_url}{path}" + (f"?{urlencode(params)}" if params else "")
        try:
            with self._opener.open(urllib.request.Request(url, method="GET"), timeout=self._timeout) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:  # Prometheus answers its errors as JSON with a 4xx/5xx
            status, body = exc.code, exc.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusUnreachable(f"Prometheus at {self.base_url} is unreachable ({reason})") from None
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "status" not in answer:
            raise ReportError(f"{self.base_url}{path} answered {status} with something that is not Prometheus's API "
                              "(is --prometheus the Prometheus server's base URL?)")
        if answer["status"] != "success":
            what = params.get("query", path)
            raise ReportError(f"Prometheus at {self.base_url} refused {what!r}: {answer.get('errorType', status)}: "
                              f"{answer.get('error', '?')}")
        return answer.get("data")

    def query(self, expr: str, at: float | None = None) -> Any:
        """The ``data`` of an instant query: ``{"resultType": …, "result": …}``."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self._get("/api/v1/query", **params)
        if not isinstance(data, dict) or "result" not in data:
            raise ReportError(f"Prometheus at {self.base_url} answered {expr!r} without a result")
        return data

    def vector(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        """An instant vector as (labels, value) pairs; NaN (0/0, an empty histogram) stays NaN."""
        data = self.query(expr, at)
        if data.get("resultType") != "vector":
            raise ReportError(f"Prometheus answered {expr!r} with a {data.get('resultType')}, not a vector")
        try:
            return [(dict(s["metric"]), float(s["value"][1])) for s in data["result"]]
        except (KeyError, IndexError, TypeError, ValueError):
            raise ReportError(f"Prometheus answered {expr!r} with samples edgectl cannot read") from None

    def now(self) -> float:
        """Prometheus's clock: every query of one report is evaluated at this instant."""
        data = self.query("time()")
        try:
            return float(data["result"][0])
        except (KeyError, IndexError, TypeError, ValueError):
            raise ReportError(f"Prometheus at {self.base_url} answered time() with something unexpected") from None

    def scrape_intervals(self, jobs: Iterable[str]) -> list[float]:
        """Seconds between scrapes of the active targets of ``jobs`` (empty if this Prometheus doesn't say)."""
        wanted = set(jobs)
        data = self._get("/api/v1/targets", state="active")
        targets = data.get("activeTargets") if isinstance(data, dict) else None
        out = []
        for target in targets if isinstance(targets, list) else []:
            if not isinstance(target, dict) or (target.get("labels") or {}).get("job") not in wanted:
                continue
            seconds = parse_duration(str(target.get("scrapeInterval", "")))
            if seconds is not None:
                out.append(seconds)
        return out


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}


def parse_duration(text: str) -> float | None:
    """A Prometheus duration (``15s``, ``1m30s``, ``500ms``) in seconds; None if it isn't one."""
    total, number, i = 0.0, "", 0
    if not text:
        return None
    while i < len(text):
        ch = text[i]
        if ch.isdigit():
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        if not number or unit not in _UNITS:
            return None
        total += int(number) * _UNITS[unit]
        number, i = "", i + len(unit)
    return None if number else total


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def check_window(client: PrometheusClient, window: float, at: float) -> None:
    """Refuse a window that can't hold two scrapes of every edge: its rates would read as no traffic."""
    jobs = {labels.get("job", "") for labels, _ in client.vector(Queries.edge_jobs, at)}
    intervals = client.scrape_intervals(jobs) if jobs else []
    if intervals and window < 2 * max(intervals):
        longest = max(intervals)
        raise ReportError(
            f"a {window:g} s window is shorter than two scrapes of the edge ({longest:g} s apart): a rate needs two "
            f"samples; use --window {2 * longest:g} or more"
        )


def read_status(client: PrometheusClient, window: float) -> tuple[dict[str, Any], MetricsSummary, dict[str, Any]]:
    """``(described, summary, live)`` as the admin source builds them, from Prometheus."""
    at = client.now()
    check_window(client, window, at)
    q = Queries(promql_duration(window))
    set_percent = {labels["route"]: value for labels, value in client.vector(q.new_percent, at) if "route" in labels}
    described: dict[str, Any] = {
        "source": f"prometheus {client.base_url}",
        "routes": {name: {"new_percent": percent} for name, percent in sorted(set_percent.items())},
    }
    live = live_rates(
        window,
        set_percent,
        requests=client.vector(q.requests, at),
        price_changed=client.vector(q.price_changed, at),
        quantiles={key: client.vector(q.quantile(value), at) for key, value in QUANTILES.items()},
        shadow=client.vector(q.shadow, at),
    )
    live["evaluated_at"] = at
    live["source"] = described["source"]
    summary = since_start(
        client.vector(q.requests_total, at), client.vector(q.upstream_errors_total, at), client.vector(q.shadow_total, at),
    )
    return described, summary, live


Vector = list[tuple[dict[str, str], float]]


def live_rates(
    window: float, set_percent: Mapping[str, float], *, requests: Vector, price_changed: Vector,
    quantiles: Mapping[str, Vector], shadow: Vector,
) -> dict[str, Any]:
    """The ``/_edge/rates`` answer's shape (proxy.rates.rates) from the queries' results."""
    sides: dict[str, dict[str, SideCounts]] = defaultdict(lambda: {b: SideCounts() for b in BACKENDS})
    for labels, value in requests:
        side = _side(sides, labels)
        if side is not None and math.isfinite(value):
            side.add_requests(labels.get("status_class"), value)
    for labels, value in price_changed:
        side = _side(sides, labels)
        if side is not None and math.isfinite(value):
            side.price_changed += value
    for key, vector in quantiles.items():
        for labels, value in vector:
            side = _side(sides, labels)
            if side is not None:
                setattr(side, key, _finite(value))  # NaN: no request in the window
    outcomes: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in shadow:
        if "route" in labels and math.isfinite(value):
            outcomes[labels["route"]][labels.get("outcome", "?")] += value
    routes = {
        route: route_entry(set_percent.get(route), sides[route], outcomes[route], window)
        for route in sorted({*sides, *outcomes, *set_percent})
    }
    return {"window_seconds": window, "asked_window_seconds": window, "routes": routes}


def _side(sides: dict[str, dict[str, SideCounts]], labels: Mapping[str, str]) -> SideCounts | None:
    route, backend = labels.get("route"), labels.get("backend")
    if route is None or backend not in BACKENDS:
        return None
    return sides[route][backend]


def since_start(requests: Vector, upstream_errors: Vector, shadow: Vector) -> MetricsSummary:
    """The since-start table's counts, as summarise_metrics reads them from one edge's /metrics."""
    stats: dict[str, RouteStats] = defaultdict(RouteStats)
    for name, vector in ((REQUESTS, requests), (UPSTREAM_ERRORS, upstream_errors), (SHADOW, shadow)):
        for labels, value in vector:
            count_sample(stats, name, labels, value)
    return MetricsSummary(dict(stats), has_shadow=bool(shadow))
