"""JSON bodies Python accepts but the stack cannot take are 400 ``bad_request`` naming the field, on both sides.

Nesting deep enough to run the decoder out of stack (990 levels, 100,000 levels) and lone UTF-16
surrogates (``"\\ud800"``: json.loads gives a str no UTF-8 encoder will write) reach the new
handlers through the edge and old shopping (the emulator) directly; both answer 400 with
``data.field`` naming the body or the JSON path of the string, before anything is written.
A real character written as a surrogate pair is still accepted. The headers place_order stores
(X-Platform, X-App-Version) are held to the same rule when their bytes are not UTF-8.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from emulators.legacy import create_app as create_legacy_app
from proxy.app import create_app
from shop import schema as t
from shop.db import make_engine
from tests.support.edge import (
    calc_price_route,
    coupons_route,
    dead_url,
    edge_settings,
    place_order_route,
    routing_doc,
    write_routing,
)
from tests.support.legacydb import envelope
from tests.support.shopdb import seed_database

CALC = "/shopping/cal_price/v4_4"
COUPONS = "/shopping/user_coupons_for_order"
PLACE = "/shopping/cart/checkout/entries"
WORKED = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True, "expected_total": "96.07"}
USER1 = {"X-User-Id": "1", "Content-Type": "application/json"}


def nested(levels: int) -> str:
    """`levels` arrays inside each other, as JSON text."""
    return "[" * levels + "]" * levels


@pytest.fixture(params=["new", "legacy"])
async def side(request: pytest.FixtureRequest, aiohttp_client, tmp_path: Path, sqlite_url: str) -> tuple[TestClient, str]:
    """(a client, its database URL): the new handlers behind the edge, or old shopping's emulator on its own."""
    await seed_database(sqlite_url)
    if request.param == "legacy":
        return await aiohttp_client(create_legacy_app(sqlite_url)), sqlite_url
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(
        dead_url(), calc_price=calc_price_route(100), coupons=coupons_route(100), place_order=place_order_route(100),
    ))
    app = create_app(edge_settings(routing, dead_url(), db_url=sqlite_url), registry=CollectorRegistry())
    return await aiohttp_client(app), sqlite_url


async def post(client: TestClient, path: str, text: str, key: str = "hostile-1") -> tuple[int, dict[str, Any]]:
    resp = await client.post(path, data=text.encode(), headers={**USER1, "Idempotency-Key": key})
    assert resp.headers.get("X-Edge-Backend", "new") == "new"  # through the edge: served by the new side
    return resp.status, await envelope(resp, resp.status)


async def written(url: str) -> dict[str, Any]:
    """What a refused checkout must leave as it was."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return {
                "orders": (await conn.execute(select(func.count()).select_from(t.orders))).scalar(),
                "outbox": (await conn.execute(select(func.count()).select_from(t.outbox))).scalar(),
                "ledger": (await conn.execute(select(func.count()).select_from(t.wallet_ledger))).scalar(),
                "stock": (await conn.execute(select(func.sum(t.skus.c.stock)))).scalar(),
            }
    finally:
        await engine.dispose()


@pytest.mark.parametrize("path", [CALC, COUPONS, PLACE])
@pytest.mark.parametrize("levels", [990, 100_000])
async def test_json_nested_past_the_stack_is_400_on_the_body(side, path: str, levels: int) -> None:
    client, url = side
    before = await written(url)
    status, body = await post(client, path, '{"items": ' + nested(levels) + "}")
    assert (status, body) == (400, {"code": 40001, "msg": "bad_request",
                                    "data": {"field": "body", "reason": "nested deeper than 64 levels"}})
    assert await written(url) == before


async def test_sixty_four_levels_are_accepted_and_sixty_five_are_not(side) -> None:
    client, _ = side
    # The body object is the first level; an unknown field holding 63 more is still a priced cart.
    status, body = await post(client, CALC, '{"currency": "EUR", "address_id": 1, "extra": ' + nested(63) + "}")
    assert status == 200 and body["data"]["summary"]["total"], body
    status, body = await post(client, CALC, '{"currency": "EUR", "address_id": 1, "extra": ' + nested(64) + "}")
    assert status == 400 and body["data"]["field"] == "body", body


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"payment_method": "\ud800"}, "payment_method"),
        ({"payment_method": "card\udfff"}, "payment_method"),
        ({"items": [{"sku_id": 1, "qty": 1, "name": "\udc00"}]}, "items[0].name"),
        ({"extra": {"note\ud83d": 1}}, "extra.note\\ud83d"),  # a key: its path, the surrogate as it was escaped
    ],
)
async def test_a_lone_surrogate_is_400_naming_its_path_and_nothing_is_written(side, fields: dict[str, Any], field: str) -> None:
    client, url = side
    before = await written(url)
    # json.dumps escapes the surrogate as \ud800: valid JSON text that json.loads turns back into a lone surrogate.
    status, body = await post(client, PLACE, json.dumps({**WORKED, **fields}))
    assert status == 400 and body["code"] == 40001 and body["msg"] == "bad_request", body
    assert body["data"]["field"] == field
    assert await written(url) == before


async def test_a_surrogate_pair_is_one_real_character_and_the_order_is_placed(side) -> None:
    client, url = side
    status, body = await post(client, PLACE, json.dumps({**WORKED, "payment_method": "card \U0001f600"}))
    assert status == 200 and body["data"]["status"] == "pending_payment", body
    assert (await written(url))["orders"] == 1


@pytest.mark.parametrize(
    ("text", "charset"),
    [('{"currency": "EUR"}', "no-such-charset"), ('{"currency": "EUR", "n": ' + "1" * 5000 + "}", "utf-8")],
)
async def test_an_unknown_charset_or_an_endless_integer_is_400_on_the_body(side, text: str, charset: str) -> None:
    client, _ = side
    resp = await client.post(CALC, data=text.encode(), headers={**USER1, "Content-Type": f"application/json; charset={charset}"})
    body = await envelope(resp, 400)
    assert body["data"]["field"] == "body", body


async def raw_post(client: TestClient, path: str, body: bytes, headers: bytes) -> tuple[int, dict[str, Any]]:
    """A request written byte by byte: header values that are not UTF-8, which aiohttp's client will not send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
                     + headers + b"\r\n" + body)
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(payload)


@pytest.mark.parametrize("header", ["X-Platform", "X-App-Version"])
async def test_a_stored_header_that_is_not_utf8_is_400_naming_it_and_nothing_is_written(side, header: str) -> None:
    """aiohttp hands undecodable header bytes over as lone surrogates; place_order stores these two headers."""
    client, url = side
    before = await written(url)
    status, body = await raw_post(client, PLACE, json.dumps(WORKED).encode(),
                                  b"X-User-Id: 1\r\nIdempotency-Key: hdr-1\r\n" + header.encode() + b": ios\xff\r\n")
    assert status == 400 and body["code"] == 40001, body
    assert body["data"]["field"] == header
    assert await written(url) == before
