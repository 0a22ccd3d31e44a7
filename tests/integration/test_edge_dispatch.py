"""Nothing bypasses routing.yaml: what the edge decides on, before and after routing (issue 9).

Through a real edge in front of a real upstream (the echo server, or old shopping's emulator):
percent-encoded spellings of migrated paths keep their route; the new side's direct /order2
paths serve only internal callers with the service token; the caller id has one spelling;
non-origin-form request targets are refused; new-side timeouts and 5xx are answered and
counted like an upstream's; and a client choosing its X-Request-Ids can't steer shadowing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from hashlib import blake2b
from pathlib import Path
from typing import Any

import pymysql
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from handlers.routes import NEW_ROUTES, NewRoute
from proxy.app import SHADOWER
from tests.support.edge import (
    SERVICE_TOKEN, calc_price_route, dead_url, detail_route, internal_headers, raw_request, sample, start_edge, url_of,
)
from tests.support.shopdb import seed_database
from tests.support.upstream import CALLS, create_echo_app

PLACE_ORDER = "/shopping/cart/checkout/entries"
CALC = "/shopping/cal_price/v4_4"


def place_order_route(new_percent: float) -> dict[str, Any]:
    return {"match": {"methods": ["POST"], "path": PLACE_ORDER}, "new_percent": new_percent, "writes": True}


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await aiohttp_server(create_echo_app())


@pytest.fixture
def edge(aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path, upstream: TestServer):
    async def make(routes: dict[str, Any] | None = None, **settings: Any):
        return await start_edge(aiohttp_client, tmp_path, url_of(upstream), routes, **settings)

    return make


async def send_raw(client: TestClient, method: str, raw_path: str, **headers: str):
    """The path exactly as written: the test client's URL join would re-quote or normalise it."""
    return await client.session.request(method, URL(url_of(client.server) + raw_path, encoded=True), headers=headers)


def echoed_headers(body: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in body["data"]["headers"]}


# --- item 4: percent-encoding can't bypass the table ---------------------------------------------

SPELLINGS = [
    ("POST", "/shopping/cart/checkout/%65ntries", "place_order"),
    ("POST", "/shopping/%63al_price/v4_4", "calc_price"),
    ("POST", "/shopping/cal%5Fprice/v4_4", "calc_price"),
    ("GET", "/shopping/%6Frders_v43/ID", "detail"),
]


async def test_encoded_spellings_of_migrated_paths_go_where_the_table_says(upstream: TestServer, edge) -> None:
    client, _ = await edge({"place_order": place_order_route(100), "calc_price": calc_price_route(100), "detail": detail_route(100)})
    for method, raw, route in SPELLINGS:
        resp = await send_raw(client, method, raw, **{"X-User-Id": "7"})
        assert (resp.headers["X-Edge-Route"], resp.headers["X-Edge-Backend"]) == (route, "new"), raw
    assert upstream.app[CALLS] == []  # old shopping wrote no order, priced nothing


async def test_at_zero_percent_the_spellings_keep_their_route_and_reach_old_shopping_raw(upstream: TestServer, edge) -> None:
    client, registry = await edge({"place_order": place_order_route(0), "calc_price": calc_price_route(0), "detail": detail_route(0)})
    for method, raw, route in SPELLINGS:
        resp = await send_raw(client, method, raw)
        assert (resp.headers["X-Edge-Route"], resp.headers["X-Edge-Backend"]) == (route, "legacy"), raw
        assert (await resp.json())["data"]["raw_path"] == raw  # forwarded with its raw path unchanged
    assert sample(registry, "edge_requests_total", route="place_order", backend="legacy", method="POST", status_class="2xx") == 1


async def test_a_fragment_in_the_request_target_is_refused(upstream: TestServer, edge) -> None:
    # aiohttp (old shopping) serves `/entries#x` as /entries: the edge refuses what it can't match as sent.
    client, _ = await edge({"place_order": place_order_route(100)})
    status, _, body = await raw_request(client, f"POST {PLACE_ORDER}#x HTTP/1.1\r\nHost: x\r\nContent-Length: 0".encode())
    assert status == 400 and body["msg"] == "bad_request" and body["data"]["field"] == "request_target"
    assert upstream.app[CALLS] == []


# --- item 5: /order2 on the public port -----------------------------------------------------------

NOT_FOUND = {"code": 40401, "msg": "not_found", "data": None}


async def test_a_public_caller_of_order2_gets_404_even_with_the_route_at_zero(upstream: TestServer, edge) -> None:
    client, registry = await edge({"place_order": place_order_route(0)})
    resp = await client.post("/order2/place_order", json={}, headers={"X-User-Id": "7", "Idempotency-Key": "k-1"})
    assert (resp.status, await resp.json()) == (404, NOT_FOUND)
    assert (resp.headers["X-Edge-Route"], resp.headers["X-Edge-Backend"]) == ("passthrough", "legacy")
    # Exactly what a path the new side doesn't have answers: a caller can't tell which /order2 paths exist.
    unknown = await client.post("/order2/nothing_here", json={}, headers=internal_headers())
    assert (unknown.status, await unknown.json()) == (404, NOT_FOUND)
    assert upstream.app[CALLS] == []
    assert sample(registry, "edge_requests_total", route="place_order", backend="new", method="POST", status_class="2xx") == 0


@pytest.mark.parametrize("authorization", ["Bearer wrong", f"Bearer {SERVICE_TOKEN}x", f"Basic {SERVICE_TOKEN}", SERVICE_TOKEN])
@pytest.mark.parametrize("raw_path", ["/order2/place_order", "/%6Frder2/place_order", "/order2/%70lace_order", "/order2/nothing_here"])
async def test_no_spelling_of_order2_without_the_token_reaches_the_new_side(
    upstream: TestServer, edge, raw_path: str, authorization: str,
) -> None:
    client, _ = await edge()
    resp = await send_raw(client, "POST", raw_path, Authorization=authorization)
    assert (resp.status, await resp.json()) == (404, NOT_FOUND)
    assert resp.headers["X-Edge-Backend"] == "legacy"
    assert upstream.app[CALLS] == []


@pytest.mark.parametrize("raw_path", ["/ORDER2/place_order", "/Order%32/refund?x=1", "/order2%2Fplace_order", "/%4Frder2/detail/A1"])
async def test_spellings_of_order2_that_go_to_old_shopping_never_carry_the_authorization_header(
    upstream: TestServer, edge, raw_path: str,
) -> None:
    # Not the new side's paths (its router is case-sensitive and keeps %2F), so the unknown paths of any
    # other caller; but a bearer token sent to /order2 (right or wrong) is never old shopping's to see.
    client, _ = await edge()
    resp = await send_raw(client, "POST", raw_path, Authorization=f"Bearer {SERVICE_TOKEN}")
    assert resp.headers["X-Edge-Backend"] == "legacy"
    body = await resp.json()
    assert body["data"]["raw_path"] == raw_path
    assert "authorization" not in echoed_headers(body)


async def test_the_service_token_opens_order2_and_an_unset_token_opens_nothing(upstream: TestServer, edge) -> None:
    client, _ = await edge()
    resp = await client.post("/order2/refund", json={}, headers=internal_headers())
    assert (resp.status, resp.headers["X-Edge-Route"], resp.headers["X-Edge-Backend"]) == (400, "refund", "new")

    closed, _ = await edge(service_token=None)
    for authorization in (f"Bearer {SERVICE_TOKEN}", "Bearer ", "Bearer None", "Bearer"):
        resp = await closed.post("/order2/refund", json={}, headers={"Authorization": authorization})
        assert (resp.status, resp.headers["X-Edge-Backend"]) == (404, "legacy"), authorization


async def test_authorization_on_ordinary_legacy_paths_is_still_forwarded(upstream: TestServer, edge) -> None:
    client, _ = await edge()
    resp = await client.get("/shopping/cart", headers={"Authorization": "Bearer app-session"})
    assert echoed_headers(await resp.json())["authorization"] == "Bearer app-session"


# --- item 6c: one canonical caller id --------------------------------------------------------------

BAD_IDS = ["²", "١", "１", "012", "0012", "0", "-1", "+1", "1.5", "12a", "9" * 19]


@pytest.mark.parametrize("user", BAD_IDS)
async def test_a_caller_id_that_is_not_canonical_is_400_before_routing(upstream: TestServer, edge, user: str) -> None:
    client, _ = await edge({"calc_price": calc_price_route(100)})
    for method, path in (("POST", CALC), ("GET", "/shopping/cart")):
        resp = await client.request(method, path, json={}, headers={"X-User-Id": user})
        assert resp.status == 400, (user, path)
        body = await resp.json()
        assert body["code"] == 40001 and body["msg"] == "bad_request" and body["data"]["field"] == "X-User-Id"
    assert upstream.app[CALLS] == []


async def test_two_caller_id_headers_are_400(upstream: TestServer, edge) -> None:
    client, _ = await edge()
    status, _, body = await raw_request(client, b"GET /shopping/cart HTTP/1.1\r\nHost: x\r\nX-User-Id: 1\r\nX-User-Id: 2")
    assert status == 400 and body["data"]["field"] == "X-User-Id"
    assert upstream.app[CALLS] == []


async def test_a_padded_id_can_not_pick_another_bucket_or_the_allow_list(upstream: TestServer, edge) -> None:
    client, _ = await edge({"calc_price": calc_price_route(0, allow_new=["1001"])})
    assert (await client.post(CALC, headers={"X-User-Id": "01001"})).status == 400
    allowed = await client.post(CALC, headers={"X-User-Id": "1001"})
    assert allowed.headers["X-Edge-Backend"] == "new"


async def test_a_canonical_id_is_passed_upstream_unchanged_and_an_empty_one_is_anonymous(upstream: TestServer, edge) -> None:
    client, _ = await edge()
    resp = await client.get("/shopping/cart", headers={"X-User-Id": "12"})
    assert echoed_headers(await resp.json())["x-user-id"] == "12"
    anonymous = await client.get("/shopping/cart", headers={"X-User-Id": ""})
    assert anonymous.status == 200


# --- item 6d: absolute-form and other non-origin-form targets --------------------------------------

@pytest.mark.parametrize(
    "line",
    ["GET http://x/shopping/cart HTTP/1.1", "POST http://x/order2/place_order HTTP/1.1", "GET https://x:1/shopping/cart?a=1 HTTP/1.1",
     "OPTIONS * HTTP/1.1", "CONNECT x:80 HTTP/1.1"],
)
async def test_targets_that_are_not_a_path_are_400_in_the_envelope_before_routing(upstream: TestServer, edge, line: str) -> None:
    client, _ = await edge({"place_order": place_order_route(100)})
    extra = f"\r\nAuthorization: Bearer {SERVICE_TOKEN}" if "order2" in line else ""
    status, headers, body = await raw_request(client, f"{line}\r\nHost: x\r\nContent-Length: 0{extra}".encode())
    assert status == 400, line
    assert body["code"] == 40001 and body["msg"] == "bad_request" and body["data"]["field"] == "request_target"
    assert headers["X-Edge-Backend"] == "legacy"
    assert upstream.app[CALLS] == []


# --- item 10: new-side failures are visible --------------------------------------------------------

def with_new_route(name: str, handler: Callable[[web.Request, Mapping[str, str]], Awaitable[web.StreamResponse]]) -> Mapping[str, NewRoute]:
    return {**NEW_ROUTES, name: NewRoute(name, "POST", f"/{name}", handler)}


async def test_zero_valued_new_side_error_counters_exist_from_the_start(edge) -> None:
    _, registry = await edge({"calc_price": calc_price_route(10)})
    for kind in ("timeout", "5xx"):
        assert registry.get_sample_value("edge_upstream_errors_total", {"route": "calc_price", "backend": "new", "kind": kind}) == 0.0


async def test_a_new_handler_over_its_route_timeout_is_504_and_counted(aiohttp_client, tmp_path: Path, mariadb_url: str) -> None:
    """The real calc_price, blocked on a table another session holds locked, past a 300 ms route timeout."""
    await seed_database(mariadb_url)
    client, registry = await start_edge(aiohttp_client, tmp_path, dead_url(),
                                        {"calc_price": calc_price_route(100, timeout_ms=300)}, db_url=mariadb_url)
    database = mariadb_url.rsplit("/", 1)[1]
    locker = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=database)
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLES mall_discounts WRITE")
        loop = asyncio.get_running_loop()
        started = loop.time()
        resp = await client.post(CALC, json={"region": "DE", "items": [{"sku_id": 1, "qty": 1}]}, headers={"X-User-Id": "1"})
        elapsed = loop.time() - started
    finally:
        with locker.cursor() as cur:
            cur.execute("UNLOCK TABLES")
        locker.close()
    assert resp.status == 504 and await resp.json() == {"code": 50401, "msg": "upstream_timeout", "data": {"route": "calc_price"}}
    assert resp.headers["X-Edge-Backend"] == "new"
    assert 0.3 <= elapsed < 2.5
    assert sample(registry, "edge_upstream_errors_total", route="calc_price", backend="new", kind="timeout") == 1
    # The same handler, unblocked, answers within the timeout again.
    again = await client.post(CALC, json={"region": "DE", "items": [{"sku_id": 1, "qty": 1}]}, headers={"X-User-Id": "1"})
    assert again.status == 200


async def test_a_new_side_503_db_unavailable_is_counted_as_5xx(aiohttp_client, tmp_path: Path) -> None:
    port = dead_url().rsplit(":", 1)[1]
    client, registry = await start_edge(aiohttp_client, tmp_path, dead_url(), {"calc_price": calc_price_route(100)},
                                        db_url=f"mysql+aiomysql://root@127.0.0.1:{port}/nothing")
    resp = await client.post(CALC, json={"region": "DE", "items": [{"sku_id": 1, "qty": 1}]}, headers={"X-User-Id": "1"})
    assert resp.status == 503 and (await resp.json())["msg"] == "db_unavailable"
    assert sample(registry, "edge_upstream_errors_total", route="calc_price", backend="new", kind="5xx") == 1


async def test_a_crashing_new_handler_is_500_in_the_envelope_and_counted(aiohttp_client, tmp_path: Path) -> None:
    async def crash(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
        raise RuntimeError("a bug")

    client, registry = await start_edge(aiohttp_client, tmp_path, dead_url(), {"calc_price": calc_price_route(100)},
                                        new_routes=with_new_route("calc_price", crash))
    resp = await client.post(CALC, json={})
    assert resp.status == 500 and await resp.json() == {"code": 50000, "msg": "internal_error", "data": None}
    direct = await client.post("/order2/calc_price", json={}, headers=internal_headers())
    assert direct.status == 500
    assert sample(registry, "edge_upstream_errors_total", route="calc_price", backend="new", kind="5xx") == 2


async def test_a_client_error_raised_by_aiohttp_inside_a_new_handler_is_not_a_new_side_failure(aiohttp_client, tmp_path: Path) -> None:
    async def too_large(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
        raise web.HTTPRequestEntityTooLarge(max_size=1, actual_size=2)

    client, registry = await start_edge(aiohttp_client, tmp_path, dead_url(), {"calc_price": calc_price_route(100)},
                                        new_routes=with_new_route("calc_price", too_large))
    resp = await client.post(CALC, json={})
    assert resp.status == 413 and (await resp.json())["code"] == 41301
    assert sample(registry, "edge_upstream_errors_total", route="calc_price", backend="new", kind="5xx") == 0


async def test_a_direct_order2_call_is_bounded_by_its_routes_timeout_too(aiohttp_client, tmp_path: Path) -> None:
    async def slow(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.json_response({})

    client, registry = await start_edge(aiohttp_client, tmp_path, dead_url(), {"calc_price": calc_price_route(0, timeout_ms=100)},
                                        new_routes=with_new_route("calc_price", slow))
    resp = await client.post("/order2/calc_price", json={}, headers=internal_headers())
    assert resp.status == 504 and (await resp.json())["msg"] == "upstream_timeout"
    assert sample(registry, "edge_upstream_errors_total", route="calc_price", backend="new", kind="timeout") == 1


# --- risk: shadow sampling the client can't steer ---------------------------------------------------

def shadowed_by_the_old_hash(request_id: str, basis_points: int) -> bool:
    """The sampling the edge used to do: a hash of the client's X-Request-Id (what an attacker would aim at)."""
    digest = blake2b(request_id.encode(), digest_size=8, person=b"edge-shadow").digest()
    return int.from_bytes(digest, "big") % 10_000 < basis_points


async def test_chosen_request_ids_can_not_raise_the_shadow_share(upstream: TestServer, aiohttp_client, tmp_path: Path) -> None:
    shadow_calls = 0

    async def counted(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
        nonlocal shadow_calls
        shadow_calls += 1
        return web.json_response({"code": 0, "msg": "ok", "data": {}})

    client, _ = await start_edge(aiohttp_client, tmp_path, url_of(upstream),
                                 {"calc_price": calc_price_route(0, shadow={"percent": 10, "noise_percent": 0})},
                                 new_routes=with_new_route("calc_price", counted))
    chosen = [rid for rid in (f"pick-{i}" for i in range(20_000)) if shadowed_by_the_old_hash(rid, 1000)][:300]
    assert len(chosen) == 300
    for rid in chosen:
        resp = await client.post(CALC, json={}, headers={"X-Request-Id": rid})
        assert resp.headers["X-Request-Id"] == rid  # the ids were kept, so the old hash would have shadowed all 300
    shadower = client.server.app[SHADOWER]
    while shadower.inflight:
        await asyncio.sleep(0.01)
    # 10 % of 300: 30 expected, standard deviation ≈ 5.2; above 60 is > 5 σ, all 300 was the old behaviour.
    assert 5 <= shadow_calls <= 60, shadow_calls
