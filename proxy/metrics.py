"""The edge's Prometheus metrics. Names and labels are a contract (shared/spec/edge.md).

Label values stay bounded: routes come from routing.yaml, unmatched paths are
``passthrough``, methods outside the known set are ``OTHER``.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from proxy.routing import HTTP_METHODS

_METHODS = frozenset(HTTP_METHODS)
# Why a request was refused before routing (proxy/limits.py); anything else counts as bad_request.
BAD_REQUEST_REASONS = (
    "bad_method", "bad_request_line", "bad_url", "request_line_too_long", "headers_too_large",
    "bad_body", "body_timeout", "bad_request",
)
UPSTREAM_ERROR_KINDS = ("timeout", "connect", "5xx")
NEW_SIDE_ERROR_KINDS = ("timeout", "5xx")
# Latency buckets tuned for an edge: sub-millisecond passthrough up to route timeouts.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def exported_registry(registry: CollectorRegistry, multiproc_dir: str | None) -> CollectorRegistry:
    """What /metrics exports: with gunicorn, every worker's files added up; else this process's registry."""
    if not multiproc_dir:
        return registry
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined, path=multiproc_dir)
    return combined


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "edge_requests_total", "Requests served by the edge",
            ("route", "backend", "method", "status_class"), registry=registry,
        )
        self.duration = Histogram(
            "edge_request_duration_seconds", "Time from request to response at the edge",
            ("route", "backend"), buckets=_BUCKETS, registry=registry,
        )
        self.upstream_errors = Counter(
            "edge_upstream_errors_total", "Failed upstream calls (timeout, connect, 5xx, pool_full)",
            ("route", "backend", "kind"), registry=registry,
        )
        self.new_percent = Gauge(
            "edge_route_new_percent", "Share of a route's callers served by the new side",
            ("route",), registry=registry, multiprocess_mode="livemostrecent",
        )
        self.reloads = Counter(
            "edge_routing_reload_total", "routing.yaml loads by result", ("result",), registry=registry,
        )
        # Not in the spec's table (an addition): whether the latest load attempt was accepted. The
        # counters alone can't tell an alert the problem is over: a fix that restores the table in
        # force is accepted without counting an ok load. livemin: one worker on a rejected file is enough.
        self.last_reload_ok = Gauge(
            "edge_routing_last_reload_ok", "1 if the latest routing.yaml load was accepted, 0 if rejected",
            registry=registry, multiprocess_mode="livemin",
        )
        self.shadow_requests = Counter(
            "edge_shadow_requests_total",
            "Shadowed requests by outcome (match, rounding, mismatch = beyond rounding, error, skipped)",
            ("route", "outcome"), registry=registry,
        )
        self.shadow_mismatch_fields = Counter(
            "edge_shadow_mismatch_fields_total",
            "Fields that differed between primary and shadow, by size (rounding: within one USD cent in the currency; beyond)",
            ("route", "field", "size"), registry=registry,
        )
        self.shadow_noise_fields = Counter(
            "edge_shadow_noise_fields_total", "Fields that differed between two calls to the primary side",
            ("route", "field"), registry=registry,
        )
        self.shadow_inflight = Gauge(
            "edge_shadow_inflight", "Shadow calls in flight", registry=registry, multiprocess_mode="livesum",
        )
        self.shadow_duration = Histogram(
            "edge_shadow_duration_seconds", "Duration of shadow-side and noise calls, by side called",
            ("route", "side"), buckets=_BUCKETS, registry=registry,
        )
        self.price_changed = Counter(
            "edge_price_changed_total", "409 answers whose legacy envelope says price_changed",
            ("route", "backend"), registry=registry,
        )
        self.body_too_large = Counter(
            "edge_body_too_large_total", "Requests refused with 413 before any upstream call", registry=registry,
        )
        self.bad_requests = Counter(
            "edge_bad_requests_total", "Requests refused as malformed or over a limit before routing, by reason",
            ("reason",), registry=registry,
        )
        # Zero-valued children exist from the start, so the first error is an increase alerts can see.
        for result in ("ok", "error"):
            self.reloads.labels(result)
        for reason in BAD_REQUEST_REASONS:
            self.bad_requests.labels(reason)
        # Children cached per label tuple: .labels() takes a lock and builds a key every call.
        self._req_children: dict[tuple[str, str, str, str], Counter] = {}
        self._dur_children: dict[tuple[str, str], Histogram] = {}

    def observe(self, route: str, backend: str, method: str, status: int, seconds: float) -> None:
        key = (route, backend, method if method in _METHODS else "OTHER", f"{status // 100}xx")
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(*key)
        child.inc()
        dkey = (route, backend)
        dchild = self._dur_children.get(dkey)
        if dchild is None:
            dchild = self._dur_children[dkey] = self.duration.labels(*dkey)
        dchild.observe(seconds)

    def bad_request(self, reason: str) -> None:
        self.bad_requests.labels(reason if reason in BAD_REQUEST_REASONS else "bad_request").inc()

    def upstream_error(self, route: str, backend: str, kind: str) -> None:
        self.upstream_errors.labels(route, backend, kind).inc()

    def set_percentages(self, percentages: Iterable[tuple[str, float]]) -> None:
        current = dict(percentages)
        for route in (*current, "passthrough"):
            for kind in UPSTREAM_ERROR_KINDS:
                self.upstream_errors.labels(route, "legacy", kind)
            self.upstream_errors.labels(route, "legacy", "pool_full")  # the route's share of the pool was full
        # The new side runs in-process (no connect failures), but times out and answers 5xx like any upstream.
        for route in current:
            for kind in NEW_SIDE_ERROR_KINDS:
                self.upstream_errors.labels(route, "new", kind)
        for labels in list(self._gauge_routes()):
            if labels not in current:
                self.new_percent.remove(labels)
        for route, percent in current.items():
            self.new_percent.labels(route).set(percent)

    def _gauge_routes(self) -> Iterable[str]:
        for metric in self.new_percent.collect():
            for sample in metric.samples:
                yield sample.labels["route"]
