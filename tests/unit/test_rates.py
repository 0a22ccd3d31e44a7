"""Windowed rates (proxy/rates.py) over a real registry, and the 409 price_changed peek."""

from __future__ import annotations

import json

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.app import response_says_price_changed
from proxy.metrics import EdgeMetrics
from proxy.rates import RateRing, collect, rates


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ring() -> tuple[EdgeMetrics, RateRing, Clock]:
    registry = CollectorRegistry()
    metrics = EdgeMetrics(registry)
    clock = Clock()
    return metrics, RateRing(lambda: collect(registry, None), interval=1.0, clock=clock), clock


def test_rates_count_only_the_window_and_split_price_changed_from_4xx() -> None:
    metrics, ring, clock = _ring()
    for _ in range(50):
        metrics.observe("checkout", "new", "POST", 200, 0.01)  # before the window
    ring.take()
    clock.now += 10
    ring.take()
    for _ in range(6):
        metrics.observe("checkout", "new", "POST", 200, 0.02)
    for _ in range(2):
        metrics.observe("checkout", "new", "POST", 409, 0.02)
    metrics.price_changed.labels("checkout", "new").inc(2)
    metrics.observe("checkout", "new", "POST", 404, 0.02)
    metrics.observe("checkout", "new", "POST", 502, 3.0)
    for _ in range(30):
        metrics.observe("checkout", "legacy", "POST", 200, 0.02)
    for outcome, n in (("match", 7), ("rounding", 2), ("mismatch", 1), ("error", 5)):
        metrics.shadow_requests.labels("checkout", outcome).inc(n)
    clock.now += 5
    now = ring.current()
    result = rates(now, ring.baseline(5, now.at), {"checkout": 25.0})
    assert result["window_seconds"] == 5
    route = result["routes"]["checkout"]
    new = route["new"]
    assert new["requests"] == 10 and new["req_per_s"] == 2.0
    assert new["price_changed_rate"] == 0.2 and new["4xx_rate"] == 0.1  # the 404 only
    assert new["5xx_rate"] == 0.1
    assert 0.01 < new["p50_seconds"] <= 0.025 and new["p99_seconds"] > 2.5
    assert route["observed_new_percent"] == 25.0 and route["set_new_percent"] == 25.0
    assert route["shadow"]["mismatch_rate"] == 0.1  # errors are not comparisons; rounding is
    assert route["verdict"] == "worse than legacy"  # 10 % 5xx against legacy's 0 %


def test_a_route_without_new_traffic_in_the_window_has_no_verdict_yet() -> None:
    metrics, ring, clock = _ring()
    metrics.observe("cart", "new", "GET", 200, 0.01)
    ring.take()
    clock.now += 3
    metrics.observe("cart", "legacy", "GET", 200, 0.01)
    now = ring.current()
    route = rates(now, ring.baseline(2, now.at), {"cart": 0.0})["routes"]["cart"]
    assert route["new"]["requests"] == 0 and route["legacy"]["requests"] == 1
    assert route["verdict"] == "no traffic"


def test_healthy_new_side_is_ok() -> None:
    metrics, ring, clock = _ring()
    ring.take()
    clock.now += 1
    for backend in ("new", "legacy"):
        for _ in range(40):
            metrics.observe("cart", backend, "GET", 200, 0.01)
    now = ring.current()
    assert rates(now, ring.baseline(1, now.at), {"cart": 50.0})["routes"]["cart"]["verdict"] == "ok"


def test_only_price_changed_409s_are_recognised() -> None:
    price = web.json_response({"code": 40901, "msg": "price_changed", "data": {"total": "1.00"}}, status=409)
    state = web.json_response({"code": 40901, "msg": "invalid_state", "data": {}}, status=409)
    gzipped = web.Response(body=json.dumps({"code": 40901, "msg": "price_changed"}).encode(), status=409,
                           headers={"Content-Encoding": "gzip"})
    assert response_says_price_changed(price)
    assert not response_says_price_changed(state)
    assert not response_says_price_changed(gzipped)
    assert not response_says_price_changed(None)
