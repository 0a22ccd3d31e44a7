"""Idempotency-Keys compare byte for byte, on both sides and on both databases.

`Case-Key-A` then `case-key-a` with another cart are two requests and make two orders, on the
new side (through the edge) and on old shopping (the emulator), on MariaDB (whose default
utf8mb4 collation calls the two equal) and on SQLite. Whitespace around the header's value is
not part of the key (HTTP strips it before either side sees it).
"""

from __future__ import annotations

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
from tests.support.edge import calc_price_route, dead_url, edge_settings, place_order_route, routing_doc, write_routing
from tests.support.legacydb import envelope, private_mariadb
from tests.support.shopdb import seed_database

CALC = "/shopping/cal_price/v4_4"
PLACE = "/shopping/cart/checkout/entries"
WORKED = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True, "expected_total": "96.07"}
ONE_SHIRT = {"items": [{"sku_id": 1, "qty": 1}], "address_id": 1, "currency": "EUR"}


@pytest.fixture(params=["sqlite", "mariadb"])
async def url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    if request.param == "sqlite":
        return await seed_database(sqlite_url)
    return await private_mariadb("test_idempotency_keys")


@pytest.fixture(params=["new", "legacy"])
async def side(request: pytest.FixtureRequest, url: str, aiohttp_client, tmp_path: Path) -> TestClient:
    if request.param == "legacy":
        return await aiohttp_client(create_legacy_app(url))
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(
        dead_url(), calc_price=calc_price_route(100), place_order=place_order_route(100)))
    return await aiohttp_client(create_app(edge_settings(routing, dead_url(), db_url=url), registry=CollectorRegistry()))


async def place(client: TestClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(PLACE, json=body, headers={"X-User-Id": "1", "Idempotency-Key": key})
    assert resp.headers.get("X-Edge-Backend", "new") == "new"
    return (await envelope(resp, 200))["data"]


async def orders_of_user_1(url: str) -> list[tuple[str, str]]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            o = t.orders.c
            rows = await conn.execute(select(o.idempotency_key, o.total).where(o.user_id == 1).order_by(o.idempotency_key))
            return [(r.idempotency_key, f"{r.total:.2f}") for r in rows]
    finally:
        await engine.dispose()


async def test_keys_differing_only_by_case_are_two_orders(side: TestClient, url: str) -> None:
    first = await place(side, "Case-Key-A", WORKED)
    quoted = (await envelope(await side.post(CALC, json=ONE_SHIRT, headers={"X-User-Id": "1"}), 200))["data"]
    shirt = {**ONE_SHIRT, "expected_total": quoted["summary"]["total"]}
    second = await place(side, "case-key-a", shirt)
    assert second["order_id"] != first["order_id"]
    assert (first["total"], second["total"]) == ("96.07", quoted["summary"]["total"])
    # Each key still answers its own order.
    assert await place(side, "Case-Key-A", WORKED) == first
    assert await place(side, "case-key-a", shirt) == second
    assert await orders_of_user_1(url) == sorted([("Case-Key-A", "96.07"), ("case-key-a", quoted["summary"]["total"])])


async def test_whitespace_around_the_header_value_is_not_part_of_the_key(side: TestClient, url: str) -> None:
    first = await place(side, "Case-Key-A", WORKED)
    assert await place(side, " Case-Key-A  ", WORKED) == first
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(t.orders))).scalar() == 1
    finally:
        await engine.dispose()
