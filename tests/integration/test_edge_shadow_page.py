"""GET /_edge/shadow on a running edge after real shadowed requests carrying hostile text.

A lone surrogate in a shadowed request or answer once made the HTML page answer 500 until the
example left the store; these prove both forms answer 200, stay valid UTF-8 and show it escaped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import ADMIN_APP, SHADOWER, create_app
from tests.support.edge import calc_price_route, edge_settings, routing_doc, write_routing
from tests.support.shopdb import seed_database

CALC = "/shopping/cal_price/v4_4"
# Raw JSON text: "\ud800" is a lone surrogate once parsed; "</script>" and a BEL ride along.
HOSTILE = b'{"payment_method": "\\ud800", "note": "</script><img src=x onerror=alert(1)>\\u0007"}'


async def hostile_legacy(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b'{"code": 0, "msg": "ok", "data": {"name": "\\udfff</script>"}}', content_type="application/json")


@pytest.fixture
async def edge_and_admin(aiohttp_server: Callable[..., Awaitable[TestServer]], aiohttp_client,
                         tmp_path: Path) -> AsyncIterator[tuple[TestClient, TestClient]]:
    legacy_app = web.Application()
    legacy_app.router.add_route("*", "/{tail:.*}", hostile_legacy)
    legacy = await aiohttp_server(legacy_app)
    legacy_url = str(legacy.make_url("")).rstrip("/")
    db = await seed_database(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}")
    routing = write_routing(tmp_path / "routing.yaml",
                            routing_doc(legacy_url, calc_price=calc_price_route(0, shadow={"percent": 100, "noise_percent": 0})))
    app = create_app(edge_settings(routing, legacy_url, db_url=db))
    edge = await aiohttp_client(app)
    admin = TestClient(TestServer(app[ADMIN_APP]))
    await admin.start_server()
    try:
        yield edge, admin
    finally:
        await admin.close()


async def settle(edge: TestClient) -> None:
    shadower = edge.server.app[SHADOWER]
    deadline = time.monotonic() + 10
    while shadower.inflight or shadower.worker.queue_depth or shadower.worker.done < shadower.worker.submitted:
        assert time.monotonic() < deadline, "shadow work did not settle"
        await asyncio.sleep(0.02)


async def test_shadow_page_answers_after_a_request_and_an_answer_with_lone_surrogates(edge_and_admin) -> None:
    edge, admin = edge_and_admin
    resp = await edge.post(CALC, data=HOSTILE, headers={"Content-Type": "application/json", "X-User-Id": "1"})
    assert resp.status == 200
    await settle(edge)
    index = await admin.get("/_edge/shadow", params={"format": "html"})
    assert index.status == 200
    (await index.read()).decode("utf-8")
    page = await admin.get("/_edge/shadow", params={"format": "html", "route": "calc_price"})
    assert page.status == 200
    text = (await page.read()).decode("utf-8")  # strict: a surrogate would not decode
    assert "\\ud800" in text and "\\udfff" in text
    assert "</script>" not in text and "<img" not in text and "\x07" not in text
    as_json = await admin.get("/_edge/shadow", params={"format": "json"})
    assert as_json.status == 200
    report = orjson.loads(await as_json.read())  # orjson refuses lone surrogates, escaped or not
    assert report["routes"]["calc_price"]["requests"]["mismatch"] == 1
