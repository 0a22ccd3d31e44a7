"""The edge against a real upstream server: forwarding, gray dispatch, limits, faults, metrics."""

from __future__ import annotations

import re
import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from yarl import URL

from handlers.routes import NEW_ROUTES, placeholder
from proxy.app import ADMIN_APP, FORWARDER
from proxy.routing import RoutingError
from tests.support.shopdb import seed_database
from tests.support.edge import calc_price_route, detail_route, internal_headers, sample, start_edge, url_of
from tests.support.upstream import CALLS, create_echo_app
from tests.support.net import free_port

Client = TestClient


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await aiohttp_server(create_echo_app())



@pytest.fixture
def make_edge(aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path):
    async def make(legacy_url: str, routes: dict[str, Any] | None = None, **settings: Any) -> tuple[TestClient, CollectorRegistry]:
        return await start_edge(aiohttp_client, tmp_path, legacy_url, routes, **settings)

    return make


async def test_passthrough_forwards_everything_unchanged(upstream: TestServer, make_edge) -> None:
    client, _ = await make_edge(url_of(upstream))
    resp = await client.post(
        "/shopping/some/thing?b=2&a=1&a=3",
        data=b'{"x": 1}',
        headers={"X-User-Id": "7", "Content-Type": "application/json", "Connection": "keep-alive, X-Secret-Hop",
                 "X-Secret-Hop": "drop-me", "Keep-Alive": "timeout=5", "X-Edge-Backend": "new", "Cookie": "sid=1"},
    )
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert data["method"] == "POST"
    assert data["raw_path"] == "/shopping/some/thing?b=2&a=1&a=3"
    assert base64.b64decode(data["body_b64"]) == b'{"x": 1}'
    sent = {k.lower(): v for k, v in data["headers"]}
    assert sent["x-user-id"] == "7" and sent["cookie"] == "sid=1" and sent["content-type"] == "application/json"
    for hop in ("keep-alive", "x-secret-hop", "x-edge-backend"):
        assert hop not in sent
    assert sent["x-request-id"] == resp.headers["X-Request-Id"]
    assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert resp.headers["X-Upstream"] == "echo"
    assert resp.headers["X-Edge-Route"] == "passthrough" and resp.headers["X-Edge-Backend"] == "legacy"


async def test_request_id_is_kept_when_well_formed_and_replaced_when_not(upstream: TestServer, make_edge) -> None:
    client, _ = await make_edge(url_of(upstream))
    kept = await client.get("/x", headers={"X-Request-Id": "abc-123"})
    assert kept.headers["X-Request-Id"] == "abc-123"
    replaced = await client.get("/x", headers={"X-Request-Id": "bad id\twith tabs"})
    assert replaced.headers["X-Request-Id"] not in ("", "bad id\twith tabs")
    assert len(replaced.headers["X-Request-Id"]) == 24
    made = [(await client.get("/x")).headers["X-Request-Id"] for _ in range(50)]
    assert len(set(made)) == 50 and all(re.fullmatch(r"[0-9a-f]{24}", rid) for rid in made)


async def test_raw_tricky_paths_are_forwarded_as_is_and_never_routed(upstream: TestServer, make_edge) -> None:
    client, _ = await make_edge(url_of(upstream), {"detail": detail_route(100), "calc_price": calc_price_route(100)})
    for raw in ("/shopping/orders_v43/..%2F..%2Fadmin", "/shopping/orders_v43/a%2Fb", "/shopping/x/../cal_price/v4_4"):
        method = "GET" if "orders" in raw else "POST"
        # The test client's URL join would normalise "..": send the raw URL through its session instead.
        resp = await client.session.request(method, URL(url_of(client.server) + raw, encoded=True))
        assert resp.headers["X-Edge-Route"] == "passthrough", raw
        assert (await resp.json())["data"]["raw_path"] == raw


async def test_route_at_zero_goes_legacy_even_when_client_asks_for_new(upstream: TestServer, make_edge) -> None:
    client, registry = await make_edge(url_of(upstream), {"calc_price": calc_price_route(0)})
    resp = await client.post("/shopping/cal_price/v4_4", json={}, headers={"X-Edge-Backend": "new", "X-User-Id": "1"})
    assert resp.status == 200
    assert resp.headers["X-Edge-Route"] == "calc_price" and resp.headers["X-Edge-Backend"] == "legacy"
    assert sample(registry, "edge_requests_total", route="calc_price", backend="legacy", method="POST", status_class="2xx") == 1


async def test_route_at_hundred_goes_to_the_new_side_in_process(upstream: TestServer, make_edge, tmp_path: Path) -> None:
    db = await seed_database(f"sqlite+aiosqlite:///{tmp_path / 'seeded.db'}")
    client, registry = await make_edge(url_of(upstream), {"calc_price": calc_price_route(100)}, db_url=db)
    body = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True}
    resp = await client.post("/shopping/cal_price/v4_4", json=body, headers={"X-User-Id": "1"})
    assert resp.status == 200
    assert (await resp.json())["data"]["summary"]["total"] == "96.07"
    assert resp.headers["X-Edge-Backend"] == "new"
    assert upstream.app[CALLS] == []
    assert sample(registry, "edge_requests_total", route="calc_price", backend="new", method="POST", status_class="2xx") == 1


async def test_route_not_migrated_yet_cannot_be_dialled_up(upstream: TestServer, make_edge) -> None:
    # A route whose new handler is a 501 placeholder (handlers/routes.py): at 100 % every refund would fail.
    new_routes = {**NEW_ROUTES, "refund": placeholder("refund", "POST", "/refund")}
    refund = {"match": {"methods": ["POST"], "path": "/refund/refund"}, "new_percent": 100, "writes": True}
    with pytest.raises(RoutingError, match=r"routes.refund \(line \d+\): the new-side handler of 'refund' is a placeholder"):
        await make_edge(url_of(upstream), {"refund": refund}, new_routes=new_routes)
    client, _ = await make_edge(url_of(upstream), {"refund": {**refund, "new_percent": 0}}, new_routes=new_routes)
    resp = await client.post("/refund/refund", json={}, headers={"X-User-Id": "1"})
    assert resp.status == 200 and resp.headers["X-Edge-Backend"] == "legacy"
    assert upstream.app[CALLS] == [("POST", "/refund/refund")]


async def test_allow_and_deny_lists(upstream: TestServer, make_edge) -> None:
    routes = {"calc_price": calc_price_route(0, allow_new=["1001"]), "detail": detail_route(100, deny_new=["13"])}
    client, _ = await make_edge(url_of(upstream), routes)
    assert (await client.post("/shopping/cal_price/v4_4", headers={"X-User-Id": "1001"})).headers["X-Edge-Backend"] == "new"
    assert (await client.post("/shopping/cal_price/v4_4", headers={"X-User-Id": "1002"})).headers["X-Edge-Backend"] == "legacy"
    assert (await client.get("/shopping/orders_v43/A1", headers={"X-User-Id": "13"})).headers["X-Edge-Backend"] == "legacy"
    assert (await client.get("/shopping/orders_v43/A1", headers={"X-User-Id": "14"})).headers["X-Edge-Backend"] == "new"


async def test_gray_share_is_sticky_per_user_across_routes(upstream: TestServer, make_edge) -> None:
    client, _ = await make_edge(url_of(upstream), {"calc_price": calc_price_route(30), "detail": detail_route(30)})
    sides = {}
    for user in range(200):
        a = await client.post("/shopping/cal_price/v4_4", headers={"X-User-Id": str(user)})
        b = await client.get(f"/shopping/orders_v43/O{user}", headers={"X-User-Id": str(user)})
        again = await client.post("/shopping/cal_price/v4_4", headers={"X-User-Id": str(user)})
        assert a.headers["X-Edge-Backend"] == b.headers["X-Edge-Backend"] == again.headers["X-Edge-Backend"]
        sides[user] = a.headers["X-Edge-Backend"]
    share = sum(v == "new" for v in sides.values()) / len(sides)
    assert 0.15 < share < 0.45


async def test_body_over_limit_is_413_and_upstream_never_called(upstream: TestServer, make_edge) -> None:
    client, registry = await make_edge(url_of(upstream), max_body_bytes=1000)
    resp = await client.post("/shopping/cart", data=b"x" * 1001)
    assert resp.status == 413
    assert (await resp.json())["code"] == 41301

    async def chunks():
        for _ in range(20):
            yield b"y" * 100

    chunked = await client.post("/shopping/cart", data=chunks())
    assert chunked.status == 413 and (await chunked.json())["msg"] == "body_too_large"
    assert upstream.app[CALLS] == []
    assert sample(registry, "edge_body_too_large_total") == 2
    ok = await client.post("/shopping/cart", data=b"x" * 1000)
    assert ok.status == 200


async def test_legacy_down_is_502_with_envelope_and_counted(make_edge) -> None:
    client, registry = await make_edge(f"http://127.0.0.1:{free_port()}", {"calc_price": calc_price_route(0)})
    resp = await client.post("/shopping/cal_price/v4_4", json={})
    assert resp.status == 502
    assert await resp.json() == {"code": 50201, "msg": "upstream_unavailable", "data": {"route": "calc_price"}}
    assert sample(registry, "edge_upstream_errors_total", route="calc_price", backend="legacy", kind="connect") == 1
    assert "Traceback" not in await resp.text()


async def test_legacy_slow_is_504_after_the_route_timeout(upstream: TestServer, make_edge) -> None:
    routes = {"detail": detail_route(0, timeout_ms=200)}
    client, registry = await make_edge(url_of(upstream), routes)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await client.get("/shopping/orders_v43/A1?slow_ms=3000")
    elapsed = loop.time() - started
    assert resp.status == 504 and (await resp.json())["msg"] == "upstream_timeout"
    assert 0.2 <= elapsed < 2.0
    assert sample(registry, "edge_upstream_errors_total", route="detail", backend="legacy", kind="timeout") == 1


async def test_a_route_timeout_of_five_seconds_fires_on_time_not_at_the_next_whole_second(upstream: TestServer, make_edge) -> None:
    client, registry = await make_edge(url_of(upstream), {"detail": detail_route(0, timeout_ms=5000)})
    loop = asyncio.get_running_loop()
    # aiohttp rounds a timeout of 5 s or more up to the loop clock's next whole second: start just after one,
    # where rounding up would make it fire almost a second late.
    await asyncio.sleep(1.05 - loop.time() % 1)
    started = loop.time()
    resp = await client.get("/shopping/orders_v43/A1?slow_ms=8000")
    elapsed = loop.time() - started
    assert resp.status == 504
    assert 5.0 <= elapsed < 5.25  # slack for a busy test machine; rounding up made it 5.95
    assert sample(registry, "edge_upstream_errors_total", route="detail", backend="legacy", kind="timeout") == 1


async def test_a_slow_path_holding_its_share_of_the_pool_is_refused_at_once_and_never_slows_another_route(
    upstream: TestServer, make_edge,
) -> None:
    client, registry = await make_edge(url_of(upstream), {"detail": detail_route(0)}, upstream_pool_size=8, route_max_inflight=4)
    loop = asyncio.get_running_loop()
    slow = [asyncio.create_task(client.get("/shopping/cart?slow_ms=2000")) for _ in range(10)]
    # The overflow is answered within a second, long before the 2 s upstream calls could free a slot.
    done, pending = await asyncio.wait(slow, timeout=1.0)
    refused = [await t.result().json() for t in done]
    assert len(refused) == 6
    assert all(body == {"code": 50303, "msg": "upstream_busy", "data": {"route": "passthrough"}} for body in refused)
    assert {t.result().headers["Retry-After"] for t in done} == {"1"}
    healthy_started = loop.time()
    healthy = await asyncio.gather(*(client.get(f"/shopping/orders_v43/A{i}") for i in range(4)))
    assert [r.status for r in healthy] == [200] * 4
    assert loop.time() - healthy_started < 0.5
    assert [r.status for r in await asyncio.gather(*pending)] == [200] * 4
    assert sample(registry, "edge_upstream_errors_total", route="passthrough", backend="legacy", kind="pool_full") == 6
    assert client.server.app[FORWARDER].bulkhead.inflight("passthrough") == 0
    # Pre-created at zero for every route, so the first refusal is an increase alerts can see.
    labels = {"route": "detail", "backend": "legacy", "kind": "pool_full"}
    assert registry.get_sample_value("edge_upstream_errors_total", labels) == 0.0


async def test_legacy_resetting_connections_is_502(upstream: TestServer, make_edge) -> None:
    client, registry = await make_edge(url_of(upstream))
    for method in ("GET", "POST"):
        resp = await client.request(method, "/shopping/cart?reset=1")
        assert resp.status == 502
        assert (await resp.json())["code"] == 50201
    assert sample(registry, "edge_upstream_errors_total", route="passthrough", backend="legacy", kind="connect") == 2
    # aiohttp may retry a GET once (a stale pooled connection); a POST never: a write must not run twice.
    assert 1 <= len([c for c in upstream.app[CALLS] if c[0] == "GET"]) <= 2
    assert [c for c in upstream.app[CALLS] if c[0] == "POST"] == [("POST", "/shopping/cart?reset=1")]


async def test_legacy_5xx_passes_through_and_is_counted(upstream: TestServer, make_edge) -> None:
    client, registry = await make_edge(url_of(upstream))
    resp = await client.get("/shopping/cart?status=503")
    assert resp.status == 503
    assert sample(registry, "edge_upstream_errors_total", route="passthrough", backend="legacy", kind="5xx") == 1


async def test_large_bodies_stream_through_both_ways(upstream: TestServer, make_edge) -> None:
    client, _ = await make_edge(url_of(upstream), max_body_bytes=4 * 1024 * 1024)
    resp = await client.get("/download?big=3000000")
    assert resp.status == 200 and len(await resp.read()) == 3_000_000
    up = await client.post("/upload", data=b"z" * 3_000_000)
    assert base64.b64decode((await up.json())["data"]["body_b64"]) == b"z" * 3_000_000


async def test_ten_thousand_unmatched_paths_keep_one_route_label(upstream: TestServer, make_edge) -> None:
    client, registry = await make_edge(url_of(upstream), {"calc_price": calc_price_route(0)})
    sem = asyncio.Semaphore(50)

    async def hit(i: int) -> int:
        async with sem:
            async with client.get(f"/shopping/random/{i}/p{i * 7}") as resp:
                return resp.status

    statuses = await asyncio.gather(*(hit(i) for i in range(10_000)))
    assert set(statuses) == {200}
    routes = {s.labels["route"] for m in registry.collect() if m.name.startswith("edge_") for s in m.samples if "route" in s.labels}
    assert routes == {"passthrough", "calc_price"}
    assert sample(registry, "edge_requests_total", route="passthrough", backend="legacy", method="GET", status_class="2xx") == 10_000


async def test_unknown_method_label_is_bounded(upstream: TestServer, make_edge) -> None:
    client, registry = await make_edge(url_of(upstream))
    resp = await client.request("PROPFIND", "/x")
    assert resp.status == 200
    assert sample(registry, "edge_requests_total", route="passthrough", backend="legacy", method="OTHER", status_class="2xx") == 1


async def test_new_side_direct_path_is_served_with_headers_and_metrics(upstream: TestServer, make_edge) -> None:
    client, registry = await make_edge(url_of(upstream))
    resp = await client.post("/order2/refund", json={}, headers=internal_headers())
    assert resp.status == 400  # the refund handler's answer to a body without order_id
    assert resp.headers["X-Edge-Route"] == "refund" and resp.headers["X-Edge-Backend"] == "new"
    assert sample(registry, "edge_request_duration_seconds_count", route="refund", backend="new") == 1


async def test_cors_preflight_and_simple_request(upstream: TestServer, make_edge) -> None:
    client, _ = await make_edge(url_of(upstream), cors_origins=("https://web.example.com",))
    pre = await client.options(
        "/shopping/cal_price/v4_4",
        headers={"Origin": "https://web.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "X-User-Id, Content-Type"},
    )
    assert pre.status == 200
    assert pre.headers["Access-Control-Allow-Origin"] == "https://web.example.com"
    assert upstream.app[CALLS] == []
    resp = await client.get("/shopping/cart", headers={"Origin": "https://web.example.com"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://web.example.com"
    other = await client.get("/shopping/cart", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_admin_endpoints(upstream: TestServer, make_edge) -> None:
    client, _ = await make_edge(url_of(upstream), {"calc_price": calc_price_route(12.5)})
    await client.get("/x")
    admin = TestClient(TestServer(client.server.app[ADMIN_APP]))
    await admin.start_server()
    try:
        metrics = await (await admin.get("/metrics")).text()
        for name in ("edge_requests_total", "edge_request_duration_seconds", "edge_route_new_percent", "edge_routing_reload_total"):
            assert name in metrics
        assert 'edge_route_new_percent{route="calc_price"} 12.5' in metrics
        assert (await admin.get("/healthz")).status == 200
        ready = await admin.get("/readyz")
        assert ready.status == 200 and (await ready.json())["ready"] is True
        routes = await (await admin.get("/_edge/routes")).json()
        assert routes["routes"]["calc_price"]["new_percent"] == 12.5
        assert routes["last_reload"]["ok"] is True and len(routes["hash"]) == 64
    finally:
        await admin.close()


async def test_client_claims_about_its_address_are_replaced_by_what_the_edge_saw(upstream: TestServer, make_edge) -> None:
    client, _ = await make_edge(url_of(upstream))
    resp = await client.get("/shopping/cart", headers={
        "X-Real-IP": "203.0.113.7", "Forwarded": "for=203.0.113.7;proto=https", "X-Forwarded-For": "198.51.100.1"})
    sent = {k.lower(): v for k, v in (await resp.json())["data"]["headers"]}
    assert "forwarded" not in sent
    assert sent["x-real-ip"] == "127.0.0.1"
    assert sent["x-forwarded-for"] == "198.51.100.1, 127.0.0.1"


async def test_a_header_old_shopping_names_in_connection_is_not_relayed(upstream: TestServer, make_edge) -> None:
    client, _ = await make_edge(url_of(upstream))
    resp = await client.get("/shopping/cart?hop_header=X-Upstream-Hop")
    assert resp.status == 200
    assert "X-Upstream-Hop" not in resp.headers
    assert resp.headers["X-Upstream"] == "echo"
