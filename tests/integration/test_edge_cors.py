"""CORS mode (EDGE_CORS_ORIGINS set) at the edge, against a real upstream.

The edge answers a real preflight from an allowed origin itself and owns every Access-Control-*
header of its answers (old shopping's are replaced), for both sides; every other request, of any
method (HEAD, OPTIONS that is no preflight, PROPFIND, a custom one), passes through as without CORS.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import create_app
from tests.support.edge import edge_settings, internal_headers, routing_doc, write_routing
from tests.support.upstream import CALLS, create_echo_app

WEB = "https://web.example.com"
EVIL = "https://evil.example.com"


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await aiohttp_server(create_echo_app())


@pytest.fixture
def make_edge(aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path, upstream: TestServer):
    async def make(origins: tuple[str, ...] = (WEB,), **settings: Any) -> TestClient:
        legacy_url = str(upstream.make_url("")).rstrip("/")
        path = write_routing(tmp_path / "routing.yaml", routing_doc(legacy_url))
        return await aiohttp_client(create_app(edge_settings(path, legacy_url, cors_origins=origins, **settings)))

    return make


def cors_headers(resp: Any) -> dict[str, list[str]]:
    return {k.lower(): resp.headers.getall(k) for k in resp.headers if k.lower().startswith("access-control-")}


@pytest.mark.parametrize("method", ["HEAD", "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "PURGE", "MKCALENDAR"])
async def test_every_method_passes_through_to_old_shopping(make_edge, upstream: TestServer, method: str) -> None:
    client = await make_edge()
    # An OPTIONS with an Origin but no Access-Control-Request-Method is not a preflight: it passes through too.
    resp = await client.request(method, "/shopping/cart", headers={"Origin": WEB})
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Edge-Route"] == "passthrough"
    assert upstream.app[CALLS] == [(method, "/shopping/cart")]
    assert resp.headers["Access-Control-Allow-Origin"] == WEB


async def test_a_preflight_from_an_allowed_origin_is_answered_by_the_edge(make_edge, upstream: TestServer) -> None:
    client = await make_edge()
    for path in ("/shopping/cart", "/order2/calc_price"):
        pre = await client.options(path, headers={
            "Origin": WEB, "Access-Control-Request-Method": "PROPFIND",
            "Access-Control-Request-Headers": "X-User-Id, Content-Type"})
        assert pre.status == 200
        assert pre.headers["Access-Control-Allow-Origin"] == WEB
        assert pre.headers["Access-Control-Allow-Credentials"] == "true"
        assert "PROPFIND" in pre.headers["Access-Control-Allow-Methods"]
        assert pre.headers["Access-Control-Allow-Headers"].lower() == "x-user-id, content-type"
        assert pre.headers["Access-Control-Max-Age"] == "600"
        assert "Origin" in pre.headers["Vary"]
    assert upstream.app[CALLS] == []


async def test_a_preflight_from_another_origin_gets_no_grant(make_edge, upstream: TestServer) -> None:
    client = await make_edge()
    pre = await client.options("/shopping/cart?cors=*", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
    assert cors_headers(pre) == {}
    assert upstream.app[CALLS] == [("OPTIONS", "/shopping/cart?cors=*")]


async def test_the_edge_replaces_old_shoppings_cors_headers(make_edge) -> None:
    client = await make_edge()
    resp = await client.get("/shopping/cart?cors=*", headers={"Origin": WEB})
    assert resp.status == 200
    headers = cors_headers(resp)
    assert headers["access-control-allow-origin"] == [WEB]
    assert headers["access-control-allow-credentials"] == ["true"]
    assert "x-upstream" in headers["access-control-expose-headers"][0].lower()
    assert "x-request-id" in headers["access-control-expose-headers"][0].lower()
    other = await client.get("/shopping/cart?cors=https://evil.example.com", headers={"Origin": EVIL})
    assert other.status == 200 and cors_headers(other) == {}
    assert (await client.get("/shopping/cart?cors=*")).status == 200


async def test_new_side_and_streamed_answers_get_the_same_cors_headers(make_edge) -> None:
    client = await make_edge(max_body_bytes=4 * 1024 * 1024)
    direct = await client.post("/order2/refund", json={}, headers={"Origin": WEB, **internal_headers()})
    assert direct.headers["X-Edge-Backend"] == "new"
    assert direct.headers["Access-Control-Allow-Origin"] == WEB
    streamed = await client.get("/download?big=2000000", headers={"Origin": WEB})
    assert len(await streamed.read()) == 2_000_000
    assert streamed.headers["Access-Control-Allow-Origin"] == WEB


async def test_a_wildcard_origin_grants_any_origin_without_credentials(make_edge) -> None:
    client = await make_edge(("*",))
    resp = await client.get("/shopping/cart?cors=https://x.example.com", headers={"Origin": EVIL})
    assert resp.headers.getall("Access-Control-Allow-Origin") == ["*"]
    assert "Access-Control-Allow-Credentials" not in resp.headers


async def test_without_cors_mode_old_shoppings_cors_headers_pass_unchanged(make_edge) -> None:
    client = await make_edge(())
    resp = await client.get("/shopping/cart?cors=https://app.example.com", headers={"Origin": WEB})
    assert resp.headers.getall("Access-Control-Allow-Origin") == ["https://app.example.com"]
    pre = await client.options("/shopping/cart", headers={"Origin": WEB, "Access-Control-Request-Method": "POST"})
    assert pre.headers["X-Edge-Route"] == "passthrough"
