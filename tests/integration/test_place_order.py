"""place_order on the new side through the edge: one guarded transaction, idempotent, race-safe."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import delete, func, insert, select, update

from proxy.app import create_app
from shop import schema as t
from shop.db import make_engine
from tests.support.edge import calc_price_route, dead_url, edge_settings, routing_doc, write_routing
from tests.support.shopdb import seed_database

PLACE = "/shopping/cart/checkout/entries"
CALC = "/shopping/cal_price/v4_4"
WORKED = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True, "expected_total": "96.07"}


def place_route() -> dict[str, Any]:
    return {"match": {"methods": ["POST"], "path": PLACE}, "new_percent": 100, "writes": True}


async def make_edge(aiohttp_client, tmp_path: Path, db: str) -> TestClient:
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(dead_url(), place_order=place_route(), calc_price=calc_price_route(100)))
    return await aiohttp_client(create_app(edge_settings(routing, dead_url(), db_url=db), registry=CollectorRegistry()))


@pytest.fixture
async def sqlite_edge(aiohttp_client, tmp_path: Path, sqlite_url: str) -> tuple[TestClient, str]:
    await seed_database(sqlite_url)
    return await make_edge(aiohttp_client, tmp_path, sqlite_url), sqlite_url


@pytest.fixture
async def maria_edge(aiohttp_client, tmp_path: Path, mariadb_url: str) -> tuple[TestClient, str]:
    await seed_database(mariadb_url)
    return await make_edge(aiohttp_client, tmp_path, mariadb_url), mariadb_url


async def place(client: TestClient, body: dict, user: str | None = "1", key: str | None = "k-1") -> tuple[int, dict]:
    headers = {"X-Platform": "ios", "X-App-Version": "5.10.0"}
    if user:
        headers["X-User-Id"] = user
    if key:
        headers["Idempotency-Key"] = key
    resp = await client.post(PLACE, json=body, headers=headers)
    assert resp.headers["X-Edge-Backend"] == "new"
    return resp.status, await resp.json()


async def scalar(url: str, stmt) -> Any:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(stmt)).scalar()
    finally:
        await engine.dispose()


async def snapshot(url: str) -> dict[str, Any]:
    """What a failed checkout must leave exactly as it was."""
    return {
        "orders": await scalar(url, select(func.count()).select_from(t.orders)),
        "stock": await scalar(url, select(func.sum(t.skus.c.stock))),
        "coupon": await scalar(url, select(t.user_coupons.c.status).where(t.user_coupons.c.id == 1)),
        "wallet": await scalar(url, select(t.wallets.c.balance).where(t.wallets.c.user_id == 1)),
        "ledger": await scalar(url, select(func.count()).select_from(t.wallet_ledger)),
        "outbox": await scalar(url, select(func.count()).select_from(t.outbox)),
    }


async def test_worked_example_order_writes_every_row(sqlite_edge) -> None:
    client, url = sqlite_edge
    stock_before = await scalar(url, select(t.skus.c.stock).where(t.skus.c.id == 2))
    status, body = await place(client, WORKED)
    assert status == 200, body
    data = body["data"]
    order_id = data["order_id"]
    assert data["status"] == "pending_payment" and data["total"] == "96.07" and data["currency"] == "EUR"
    assert order_id.startswith("N") and len(order_id) == 16 and data["expires_at"].endswith("Z")
    engine = make_engine(url)
    async with engine.connect() as conn:
        order = (await conn.execute(select(t.orders).where(t.orders.c.id == order_id))).mappings().one()
        items = (await conn.execute(select(t.order_items).where(t.order_items.c.order_id == order_id).order_by(t.order_items.c.sku_id))).mappings().all()
        history = (await conn.execute(select(t.order_status_history).where(t.order_status_history.c.order_id == order_id))).mappings().all()
        coupon = (await conn.execute(select(t.user_coupons).where(t.user_coupons.c.id == 1))).mappings().one()
        wallet = (await conn.execute(select(t.wallets.c.balance).where(t.wallets.c.user_id == 1))).scalar()
        ledger = (await conn.execute(select(t.wallet_ledger).where(t.wallet_ledger.c.order_id == order_id))).mappings().all()
        stock = (await conn.execute(select(t.skus.c.stock).where(t.skus.c.id == 2))).scalar()
        outbox = (await conn.execute(select(t.outbox))).mappings().all()
    await engine.dispose()
    assert (order["subtotal"], order["mall_discount"], order["coupon_discount"], order["shipping_fee"], order["tariff"],
            order["wallet_deduction"], order["total"]) == tuple(Decimal(x) for x in ("114.52", "3.68", "13.80", "9.11", "8.32", "18.40", "96.07"))
    assert order["base_total"] == Decimal("104.42") and order["fx_rate"] == Decimal("0.92")
    assert order["user_coupon_id"] == 1 and order["platform"] == "ios" and order["app_version"] == "5.10.0"
    assert order["address"]["zip"] == "10115" and order["idempotency_key"] == "k-1"
    assert [(i["sku_id"], i["qty"], i["unit_price"]) for i in items] == [(1, 2, Decimal("18.39")), (2, 3, Decimal("7.82")), (3, 1, Decimal("54.28"))]
    assert [(h["from_status"], h["to_status"], h["actor"]) for h in history] == [(None, "pending_payment", "new")]
    assert (coupon["status"], coupon["order_id"]) == ("locked", order_id)
    assert wallet == Decimal("0") and [(r["kind"], r["amount"]) for r in ledger] == [("reserve", Decimal("20.00"))]
    assert stock == stock_before - 3
    assert [(o["topic"], o["key"], o["payload"]["template"]) for o in outbox] == [("noti", order_id, "order_placed")]


async def test_one_cent_off_is_409_with_the_fresh_summary_and_nothing_written(sqlite_edge) -> None:
    client, url = sqlite_edge
    before = await snapshot(url)
    status, body = await place(client, {**WORKED, "expected_total": "96.06"})
    assert status == 409 and body["code"] == 40901 and body["msg"] == "price_changed"
    assert body["data"]["summary"]["total"] == "96.07"
    assert await snapshot(url) == before


@pytest.mark.parametrize(
    ("body", "key", "user", "status", "field"),
    [
        (WORKED, None, "1", 400, "Idempotency-Key"),
        (WORKED, "bad key with spaces", "1", 400, "Idempotency-Key"),
        ({**WORKED, "address_id": None}, "k", "1", 400, "address_id"),
        ({**WORKED, "address_id": 2}, "k", "1", 400, "address_id"),  # user 2's address
        ({**WORKED, "expected_total": None}, "k", "1", 400, "expected_total"),
        ({**WORKED, "expected_total": "abc"}, "k", "1", 400, "expected_total"),
        (WORKED, "k", None, 401, None),
    ],
)
async def test_bad_input_is_a_clear_4xx_and_changes_nothing(sqlite_edge, body, key, user, status, field) -> None:
    client, url = sqlite_edge
    before = await snapshot(url)
    got, resp = await place(client, body, user=user, key=key)
    assert got == status, resp
    if field:
        assert resp["data"]["field"] == field
    assert await snapshot(url) == before


@pytest.mark.parametrize(("column", "value", "kind"), [("zip", "00000", "zip"), ("phone", "+10000000000", "phone"),
                                                       ("country", "KP", "country"), ("line1", "PO Box 17", "line_contains")])
async def test_blacklisted_addresses_are_refused(sqlite_edge, column: str, value: str, kind: str) -> None:
    client, url = sqlite_edge
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(update(t.addresses).where(t.addresses.c.id == 1).values(**{column: value}))
    await engine.dispose()
    before = await snapshot(url)
    status, body = await place(client, WORKED)
    assert status == 422 and body["code"] == 42202 and body["msg"] == "address_blocked" and body["data"]["kind"] == kind
    assert await snapshot(url) == before


async def test_empty_cart_is_400(sqlite_edge) -> None:
    client, url = sqlite_edge
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(delete(t.cart_items).where(t.cart_items.c.user_id == 1))
    await engine.dispose()
    status, body = await place(client, {"address_id": 1, "currency": "EUR", "expected_total": "0.00"})
    assert status == 400 and body["data"]["field"] == "items"


async def test_same_key_returns_the_first_order(sqlite_edge) -> None:
    client, url = sqlite_edge
    first = await place(client, WORKED, key="same")
    again = await place(client, WORKED, key="same")
    assert first[0] == again[0] == 200 and first[1]["data"] == again[1]["data"]
    assert await scalar(url, select(func.count()).select_from(t.orders)) == 1


async def test_out_of_stock_names_the_sku_and_changes_nothing(sqlite_edge) -> None:
    client, url = sqlite_edge
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(update(t.skus).where(t.skus.c.id == 3).values(stock=0))
    await engine.dispose()
    before = await snapshot(url)
    status, body = await place(client, WORKED)
    assert (status, body["code"], body["msg"], body["data"]) == (422, 42203, "out_of_stock", {"sku_id": 3})
    assert await snapshot(url) == before


async def test_twenty_concurrent_requests_with_one_key_make_one_order(maria_edge) -> None:
    client, url = maria_edge
    results = await asyncio.gather(*(place(client, WORKED, key="race") for _ in range(20)))
    assert {s for s, _ in results} == {200}
    assert len({b["data"]["order_id"] for _, b in results}) == 1
    assert await scalar(url, select(func.count()).select_from(t.orders)) == 1
    assert await scalar(url, select(t.wallets.c.balance).where(t.wallets.c.user_id == 1)) == Decimal("0")
    assert await scalar(url, select(func.count()).select_from(t.wallet_ledger)) == 1


async def test_fifty_buyers_for_five_units_make_exactly_five_orders(maria_edge) -> None:
    client, url = maria_edge
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(insert(t.skus).values(id=9100, name="Limited", category_id=20, price="10.00", stock=5, active=True))
    await engine.dispose()
    users = list(range(2, 52))
    bodies = {}
    for user in users:  # each buyer's own total, as calc_price showed it to them
        body = {"items": [{"sku_id": 9100, "qty": 1}], "address_id": user, "currency": "USD"}
        resp = await client.post(CALC, json=body, headers={"X-User-Id": str(user)})
        bodies[user] = {**body, "expected_total": (await resp.json())["data"]["summary"]["total"]}
    results = await asyncio.gather(*(place(client, bodies[u], user=str(u), key=f"buy-{u}") for u in users))
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 5, statuses
    refusals = [b for s, b in results if s != 200]
    assert len(refusals) == 45 and all(b["msg"] == "out_of_stock" and b["data"] == {"sku_id": 9100} for b in refusals)
    assert await scalar(url, select(t.skus.c.stock).where(t.skus.c.id == 9100)) == 0
    assert await scalar(url, select(func.count()).select_from(t.orders)) == 5


async def test_a_coupon_used_by_two_concurrent_orders_goes_to_one(maria_edge) -> None:
    client, url = maria_edge
    engine = make_engine(url)
    async with engine.begin() as conn:  # enough wallet for both, so only the coupon decides
        await conn.execute(update(t.wallets).where(t.wallets.c.user_id == 1).values(balance="100.00"))
    await engine.dispose()
    body = {**WORKED, "use_wallet": False, "expected_total": "114.47"}
    results = await asyncio.gather(place(client, body, key="a"), place(client, body, key="b"))
    statuses = sorted(s for s, _ in results)
    assert statuses == [200, 422], results
    loser = next(b for s, b in results if s == 422)
    assert loser["msg"] == "coupon_not_applicable"
    assert await scalar(url, select(func.count()).select_from(t.orders)) == 1
