"""calc_price and the coupon list on the new side, through the edge, on a seeded database."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, update

from proxy.app import create_app
from shop import schema as t
from shop.db import create_all, drop_all, make_engine
from shop.seed import demo_rows, seed_demo
from tests.support.edge import calc_price_route, coupons_route, dead_url, edge_settings, routing_doc, write_routing

CALC = "/shopping/cal_price/v4_4"
COUPONS = "/shopping/user_coupons_for_order"
WORKED = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True}


async def seeded(url: str) -> None:
    engine = make_engine(url)
    try:
        await drop_all(engine)
        await create_all(engine)
        await seed_demo(engine)
        # Coupons for user 1 that each fail for one reason, plus one of user 2's.
        async with engine.begin() as conn:
            rows = [
                (9001, 1, 9, "unused"),   # SUMMER20: over → expired
                (9002, 1, 10, "unused"),  # US,GB only → region_not_allowed in DE
                (9003, 1, 5, "unused"),   # category 30 only
                (9004, 1, 3, "unused"),   # WELCOME10: min spend 50
                (9005, 1, 2, "used"),
                (9006, 2, 2, "unused"),   # someone else's
                (9007, 1, 4, "unused"),   # free shipping
            ]
            await conn.execute(insert(t.user_coupons), [
                {"id": i, "user_id": u, "coupon_id": c, "status": s, "created_at": t.utcnow()} for i, u, c, s in rows
            ])
    finally:
        await engine.dispose()


@pytest.fixture
async def shop_db(db_url: str) -> str:
    await seeded(db_url)
    return db_url


@pytest.fixture
async def sqlite_shop(sqlite_url: str) -> str:
    await seeded(sqlite_url)
    return sqlite_url


async def new_side_edge(aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path, db: str, **settings: Any) -> TestClient:
    path = write_routing(tmp_path / "routing.yaml", routing_doc(dead_url(), calc_price=calc_price_route(100), coupons=coupons_route(100)))
    app = create_app(edge_settings(path, dead_url(), db_url=db, **settings), registry=CollectorRegistry())
    return await aiohttp_client(app)


@pytest.fixture
async def edge(aiohttp_client, tmp_path: Path, shop_db: str) -> TestClient:
    return await new_side_edge(aiohttp_client, tmp_path, shop_db)


@pytest.fixture
async def sqlite_edge(aiohttp_client, tmp_path: Path, sqlite_shop: str) -> TestClient:
    return await new_side_edge(aiohttp_client, tmp_path, sqlite_shop)


async def calc(client: TestClient, body: Any, user: str | None = "1", raw: bytes | None = None) -> tuple[int, dict]:
    headers = {"X-User-Id": user} if user else {}
    if raw is not None:
        resp = await client.post(CALC, data=raw, headers={**headers, "Content-Type": "application/json"})
    else:
        resp = await client.post(CALC, json=body, headers=headers)
    assert resp.headers["X-Edge-Backend"] == "new"
    return resp.status, await resp.json()


async def test_worked_example_through_the_edge(edge: TestClient) -> None:
    status, body = await calc(edge, WORKED)
    assert status == 200 and body["code"] == 0
    d = body["data"]
    assert d["summary"] == {
        "subtotal": "114.52", "mall_discount": "3.68", "coupon_discount": "13.80", "shipping_fee": "9.11",
        "tariff": "8.32", "wallet_deduction": "18.40", "total": "96.07",
    }
    assert d["items"][0] == {
        "sku_id": 1, "name": "T-shirt", "qty": 2, "unit_price": "18.39", "line_total": "36.78",
        "mall_discount": "3.68", "coupon_discount": "4.12", "tariff": "3.48",
    }
    assert [i["sku_id"] for i in d["items"]] == [1, 2, 3]
    assert d["currency"] == "EUR" and d["region"] == "DE"
    assert d["coupon"] == {"user_coupon_id": 1, "code": "SAVE15", "title": "15 off orders over 100", "kind": "amount"}
    assert d["coupon_error"] is None
    assert d["free_shipping_threshold"] == "184.00" and d["wallet_balance"] == "18.40"


async def test_explicit_items_and_public_code_for_anonymous(sqlite_edge: TestClient) -> None:
    body = {"items": [{"sku_id": 1, "qty": 2}, {"sku_id": 2, "qty": 3}, {"sku_id": 3, "qty": 1}],
            "coupon_code": "save15", "region": "DE", "currency": "EUR"}
    status, resp = await calc(sqlite_edge, body, user=None)
    assert status == 200
    s = resp["data"]["summary"]
    # No wallet for an anonymous caller: 96.07 + 18.40.
    assert s["coupon_discount"] == "13.80" and s["wallet_deduction"] == "0.00" and s["total"] == "114.47"
    assert resp["data"]["coupon"]["user_coupon_id"] is None


async def test_jpy_has_no_decimals(sqlite_edge: TestClient) -> None:
    status, resp = await calc(sqlite_edge, {"address_id": 1, "currency": "JPY"})
    assert status == 200
    assert all("." not in v for v in resp["data"]["summary"].values())
    assert resp["data"]["summary"]["subtotal"] == "18821"  # 124.48 × 151.2 = 18821.376


@pytest.mark.parametrize(
    ("body", "user", "reason"),
    [
        ({"user_coupon_id": 999999}, "1", "not_found"),
        ({"coupon_code": "NOPE"}, "1", "not_found"),
        ({"user_coupon_id": 9006}, "1", "not_owner"),
        ({"user_coupon_id": 9005}, "1", "used"),
        ({"user_coupon_id": 9001}, "1", "expired"),
        ({"coupon_code": "SUMMER20", "items": [{"sku_id": 3, "qty": 2}]}, None, "expired"),
        ({"user_coupon_id": 9002}, "1", "region_not_allowed"),
        ({"user_coupon_id": 9003, "items": [{"sku_id": 1, "qty": 1}]}, "1", "category_mismatch"),
        ({"user_coupon_id": 9004, "items": [{"sku_id": 2, "qty": 1}]}, "1", "min_spend_not_met"),
        ({"user_coupon_id": 1, "items": [{"sku_id": 2, "qty": 1}]}, None, "login_required"),
    ],
)
async def test_each_coupon_reason(sqlite_edge: TestClient, body: dict, user: str | None, reason: str) -> None:
    status, resp = await calc(sqlite_edge, {"region": "DE", "currency": "EUR", **body}, user=user)
    assert status == 200, resp
    assert resp["data"]["coupon"] is None and resp["data"]["coupon_error"] == reason
    assert resp["data"]["summary"]["coupon_discount"] == "0.00"


async def test_coupon_list_splits_and_sorts(edge: TestClient) -> None:
    resp = await edge.post(COUPONS, json={"address_id": 1, "currency": "EUR"}, headers={"X-User-Id": "1"})
    assert resp.status == 200 and resp.headers["X-Edge-Route"] == "coupons"
    data = (await resp.json())["data"]
    usable = {c["user_coupon_id"]: c for c in data["usable"]}
    unusable = {c["user_coupon_id"]: c["reason"] for c in data["unusable"]}
    assert usable[1]["discount"] == "13.80" and usable[1]["code"] == "SAVE15"
    assert usable[9007]["kind"] == "free_shipping" and usable[9007]["discount"] == "9.11"
    assert usable[9003]["discount"] == "8.14"  # 15 % of 59.00 = 8.85 USD
    assert usable[9004]["discount"] == "11.09"  # 10 % of 120.48 = 12.05 USD × 0.92
    assert unusable == {9001: "expired", 9002: "region_not_allowed"}
    discounts = [float(c["discount"]) for c in data["usable"]]
    assert discounts == sorted(discounts, reverse=True)
    assert 9005 not in usable and 9006 not in usable  # used, and not the caller's


async def test_coupon_list_for_anonymous_public_code(sqlite_edge: TestClient) -> None:
    body = {"items": [{"sku_id": 3, "qty": 2}], "region": "US", "currency": "USD", "coupon_code": "WELCOME10"}
    resp = await sqlite_edge.post(COUPONS, json=body)
    data = (await resp.json())["data"]
    assert data["unusable"] == []
    assert [(c["code"], c["discount"]) for c in data["usable"]] == [("WELCOME10", "11.80")]


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (b'{"items": {"sku_id": 1}, "region": "DE"}', 400, "items"),
        (b'{"items": [], "region": "DE"}', 400, "items"),
        (b'{"items": [{"sku_id": 1, "qty": 0}], "region": "DE"}', 400, "items[0].qty"),
        (b'{"items": [{"sku_id": 1, "qty": -1}], "region": "DE"}', 400, "items[0].qty"),
        (b'{"items": [{"sku_id": 1, "qty": 1000}], "region": "DE"}', 400, "items[0].qty"),
        (b'{"items": [{"sku_id": 1, "qty": "2"}], "region": "DE"}', 400, "items[0].qty"),
        (b'{"items": [{"sku_id": true, "qty": 1}], "region": "DE"}', 400, "items[0].sku_id"),
        (b'{"items": [{"sku_id": 1, "qty": 1}], "region": "DE", "currency": "XXX"}', 400, "currency"),
        (b'{"items": [{"sku_id": 1, "qty": 1}], "region": "DE", "use_wallet": "yes"}', 400, "use_wallet"),
        (b'{"items": [{"sku_id": 1, "qty": 1}]}', 400, "region"),
        (b'{"address_id": 2}', 400, "address_id"),  # user 2's address
    ],
)
async def test_bad_input_is_a_clear_400(sqlite_edge: TestClient, raw: bytes, status: int, field: str) -> None:
    got, body = await calc(sqlite_edge, None, raw=raw)
    assert got == status and body["code"] == 40001 and body["msg"] == "bad_request"
    assert body["data"]["field"] == field


async def test_five_hundred_lines_is_400_with_bounded_work(sqlite_edge: TestClient) -> None:
    got, body = await calc(sqlite_edge, {"items": [{"sku_id": i, "qty": 1} for i in range(1, 501)], "region": "DE"})
    assert got == 400 and body["data"]["field"] == "items"


async def test_unknown_and_inactive_skus_and_unserved_region(sqlite_edge: TestClient) -> None:
    inactive = next(s["id"] for s in demo_rows()["skus"] if not s["active"])
    got, body = await calc(sqlite_edge, {"items": [{"sku_id": 99999, "qty": 1}], "region": "DE"})
    assert (got, body["code"], body["msg"], body["data"]) == (422, 42204, "sku_not_found", {"sku_id": 99999})
    got, body = await calc(sqlite_edge, {"items": [{"sku_id": inactive, "qty": 1}], "region": "DE"})
    assert (got, body["msg"], body["data"]) == (422, "sku_unavailable", {"sku_id": inactive})
    got, body = await calc(sqlite_edge, {"items": [{"sku_id": 1, "qty": 1}], "region": "FR"})
    assert (got, body["code"], body["msg"]) == (422, 42206, "region_not_served")


async def test_anonymous_cart_pricing_needs_login(sqlite_edge: TestClient) -> None:
    got, body = await calc(sqlite_edge, {"region": "DE"}, user=None)
    assert got == 401 and body["code"] == 40101 and body["msg"] == "login_required"


async def test_bad_user_header_is_400(sqlite_edge: TestClient) -> None:
    # Refused by the edge before routing (shop.caller), so no side is asked.
    resp = await sqlite_edge.post(CALC, json={"region": "DE"}, headers={"X-User-Id": "abc"})
    assert resp.status == 400 and (await resp.json())["data"]["field"] == "X-User-Id"


async def test_two_megabyte_body_is_413_at_the_edge(sqlite_edge: TestClient) -> None:
    resp = await sqlite_edge.post(CALC, data=b"{" + b" " * (2 * 1024 * 1024) + b"}", headers={"X-User-Id": "1"})
    assert resp.status == 413 and (await resp.json())["code"] == 41301


async def test_reference_cache_invalidation_makes_changes_live(aiohttp_client, tmp_path: Path, sqlite_shop: str) -> None:
    client = await new_side_edge(aiohttp_client, tmp_path, sqlite_shop, reference_ttl_seconds=3600.0)
    _, before = await calc(client, WORKED)
    engine = make_engine(sqlite_shop)
    async with engine.begin() as conn:
        await conn.execute(update(t.forex_rates).where(t.forex_rates.c.currency == "EUR").values(rate="0.50"))
    await engine.dispose()
    _, cached = await calc(client, WORKED)
    assert cached["data"]["summary"] == before["data"]["summary"]  # within the TTL: the cached rate
    from handlers.context import SHOP

    client.server.app[SHOP].reference.invalidate()
    _, fresh = await calc(client, WORKED)
    assert fresh["data"]["summary"]["subtotal"] == "62.24"  # 124.48 × 0.50
