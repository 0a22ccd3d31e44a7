"""Live rates for `edgectl status`: deltas of the edge's own counters over a recent window.

Counters only say "since this edge started"; a rollback then leaves `req new` at its old total
for ever. Each edge process keeps a bounded ring of snapshots of the aggregated samples it would
export on /metrics (with gunicorn, the multiprocess collector already sums all workers, so any
worker's ring describes the whole edge) and answers the difference between now and the snapshot
closest to ``window`` seconds ago.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from proxy.metrics import exported_registry
from shadow.report import COMPARED

MAX_WINDOW_SECONDS = 15 * 60
_REQUESTS = "edge_requests_total"
_BUCKET = "edge_request_duration_seconds_bucket"
_SHADOW = "edge_shadow_requests_total"
_PRICE_CHANGED = "edge_price_changed_total"
_WANTED = frozenset((_REQUESTS, _BUCKET, _SHADOW, _PRICE_CHANGED))

Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels
Samples = dict[Key, float]


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float  # time.monotonic()
    samples: Samples


def collect(registry: CollectorRegistry, multiproc_dir: str | None) -> Samples:
    """The counters and buckets /metrics would show now (all workers when multiprocess)."""
    out: Samples = {}
    for family in exported_registry(registry, multiproc_dir).collect():
        for s in family.samples:
            if s.name in _WANTED:
                key = (s.name, tuple(sorted(s.labels.items())))
                out[key] = out.get(key, 0.0) + s.value
    return out


class RateRing:
    """Snapshots every ``interval`` seconds, enough of them to cover MAX_WINDOW_SECONDS."""

    def __init__(self, sample: Callable[[], Samples], interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._sample = sample
        self.interval = interval
        self._clock = clock
        self._ring: deque[Snapshot] = deque(maxlen=int(MAX_WINDOW_SECONDS / interval) + 2)

    def current(self) -> Snapshot:
        """The samples now, not kept: queries must not push the older history out of the ring."""
        return Snapshot(self._clock(), self._sample())

    def take(self) -> Snapshot:
        snap = self.current()
        self._ring.append(snap)
        return snap

    def baseline(self, window: float, now: float) -> Snapshot | None:
        """The newest snapshot at least ``window`` old, else the oldest one (the edge is younger)."""
        chosen = None
        for snap in self._ring:
            if snap.at <= now - window:
                chosen = snap
            else:
                break
        return chosen if chosen is not None else (self._ring[0] if self._ring else None)

    async def run(self) -> AsyncIterator[None]:
        """A cleanup_ctx body: snapshots in the background while the app runs."""
        async def loop() -> None:
            while True:
                self.take()
                await asyncio.sleep(self.interval)

        task = asyncio.create_task(loop(), name="rate-ring")
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def _quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket deltas (linear inside a bucket)."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass(slots=True)
class SideCounts:
    """One side of one route over a window: counts (any unit, only their ratios and /seconds are shown)."""

    requests: float = 0.0
    client_errors: float = 0.0  # 4xx, the 409 price_changed answers included
    server_errors: float = 0.0
    price_changed: float = 0.0
    p50_seconds: float | None = None
    p99_seconds: float | None = None

    def add_requests(self, status_class: str | None, n: float) -> None:
        """`n` answers of `status_class` (edge_requests_total's label: 2xx, 4xx, 5xx…)."""
        self.requests += n
        if status_class == "4xx":
            self.client_errors += n
        elif status_class == "5xx":
            self.server_errors += n


# What "worse than legacy" means (docs/decisions.md, Issue 12: live rates).
ERROR_MARGIN = 0.01  # the new side's 5xx rate may exceed legacy's by 1 percentage point
MISMATCH_LIMIT = 0.01  # shadow mismatches beyond rounding, share of compared
LATENCY_FACTOR = 2.0  # new p99 over 2× legacy p99 …
LATENCY_SLACK = 0.05  # … and at least 50 ms slower
MIN_LATENCY_REQUESTS = 20  # fewer requests on a side make p99 a guess


def verdict(route: Mapping[str, Any]) -> str:
    new, legacy = route["new"], route["legacy"]
    if not new["requests"]:
        return "no traffic"
    legacy_5xx = legacy["5xx_rate"] or 0.0
    if new["5xx_rate"] > legacy_5xx + ERROR_MARGIN:
        return "worse than legacy"
    mismatch = route["shadow"]["mismatch_rate"]
    if mismatch is not None and mismatch > MISMATCH_LIMIT:
        return "worse than legacy"
    if (
        new["requests"] >= MIN_LATENCY_REQUESTS and legacy["requests"] >= MIN_LATENCY_REQUESTS
        and new["p99_seconds"] is not None and legacy["p99_seconds"] is not None
        and new["p99_seconds"] > LATENCY_FACTOR * legacy["p99_seconds"]
        and new["p99_seconds"] > legacy["p99_seconds"] + LATENCY_SLACK
    ):
        return "worse than legacy"
    return "ok"


def route_entry(
    set_percent: float | None, sides: Mapping[str, SideCounts], shadow: Mapping[str, float], seconds: float,
) -> dict[str, Any]:
    """One route of the live answer, with its verdict: the shape both `edgectl status` sources produce."""
    entry: dict[str, Any] = {"set_new_percent": set_percent}
    total = 0.0
    for backend in ("legacy", "new"):
        side = sides.get(backend) or SideCounts()
        n = side.requests
        total += n
        entry[backend] = {
            "requests": n,
            "req_per_s": n / seconds if seconds else 0.0,
            "4xx_rate": (side.client_errors - side.price_changed) / n if n else None,
            "price_changed_rate": side.price_changed / n if n else None,
            "5xx_rate": side.server_errors / n if n else None,
            "p50_seconds": side.p50_seconds,
            "p99_seconds": side.p99_seconds,
        }
    entry["observed_new_percent"] = 100 * entry["new"]["requests"] / total if total else None
    compared = sum(shadow.get(o, 0.0) for o in COMPARED)
    entry["shadow"] = {
        "outcomes": dict(shadow),
        "compared": compared,
        "mismatch_rate": shadow.get("mismatch", 0.0) / compared if compared else None,
    }
    entry["verdict"] = verdict(entry)
    return entry


def rates(now: Snapshot, then: Snapshot | None, set_percent: Mapping[str, float]) -> dict[str, Any]:
    """Per route and side: requests and rates over the window between the two snapshots."""
    base = then.samples if then is not None else {}
    seconds = max(now.at - then.at, 0.0) if then is not None else 0.0
    sides: dict[str, dict[str, SideCounts]] = defaultdict(lambda: {"legacy": SideCounts(), "new": SideCounts()})
    buckets: dict[tuple[str, str], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    shadow: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for key, value in now.samples.items():
        name, labels_t = key
        # A counter lower than its baseline belongs to a restarted worker's fresh files: count it whole.
        delta = value - base.get(key, 0.0)
        delta = value if delta < 0 else delta
        labels = dict(labels_t)
        route = labels.get("route")
        if route is None:
            continue
        if name == _SHADOW:
            shadow[route][labels.get("outcome", "?")] += delta
            continue
        backend = labels.get("backend")
        if backend not in ("legacy", "new"):
            continue
        side = sides[route][backend]
        if name == _REQUESTS:
            side.add_requests(labels.get("status_class"), delta)
        elif name == _PRICE_CHANGED:
            side.price_changed += delta
        elif name == _BUCKET:
            buckets[route, backend][float(labels["le"])] += delta
    for (route, backend), counts in buckets.items():
        sides[route][backend].p50_seconds = _quantile(counts, 0.5)
        sides[route][backend].p99_seconds = _quantile(counts, 0.99)
    routes = {
        route: route_entry(set_percent.get(route), sides[route], shadow[route], seconds)
        for route in sorted({*sides, *shadow, *set_percent})
    }
    return {"window_seconds": round(seconds, 3), "routes": routes}
