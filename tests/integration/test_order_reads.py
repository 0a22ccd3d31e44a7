"""Order detail, payment methods and paid_from_client on the new side, through the edge, on a seeded DB."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from yarl import URL

from proxy.app import create_app
from shop import schema as t
from shop.db import make_engine
from shop.errors import NotFound
from shop.order_views import order_detail, paid_from_client, payment_methods_for
from shop.seed import demo_rows
from tests.builders import NOW, insert_order, insert_payment, shop_at
from tests.support.edge import dead_url, detail_route, edge_settings, internal_headers, routing_doc, write_routing
from tests.support.shopdb import seed_database

ADDRESS = {"name": "Erika Mustermann", "phone": "+4915112345678", "country": "DE", "city": "Berlin",
           "zip": "10115", "line1": "Unter den Linden 1"}
NOT_FOUND = {"code": 40401, "msg": "order_not_found", "data": None}


def detail_path(order_id: str) -> str:
    return f"/shopping/orders_v43/{order_id}"


def methods_path(order_id: str) -> str:
    return f"/shopping/orders/{order_id}/pay_cm"


def paid_path(order_id: str) -> str:
    return f"/shopping/orders/{order_id}/paid_from_client"


def item(order_id: str, sku_id: int, name: str, qty: int, *money: str) -> dict[str, Any]:
    unit, line, mall, coupon, tariff = (D(v) for v in money)
    return {"order_id": order_id, "sku_id": sku_id, "name": name, "qty": qty, "unit_price": unit, "line_total": line,
            "mall_discount": mall, "coupon_discount": coupon, "tariff": tariff}


async def add_orders(engine: AsyncEngine) -> None:
    """ORD1 (user 1, DE/EUR, the worked example's figures) with history, a payment and a refund; more around it."""
    async with engine.begin() as conn:
        await insert_order(conn, "ORD1", address=ADDRESS, expires_at=NOW + timedelta(minutes=30),
                           created_at=NOW.replace(microsecond=123456))
        await conn.execute(insert(t.order_items), [
            item("ORD1", 1, "T-shirt", 2, "18.39", "36.78", "3.68", "4.12", "3.48"),
            # Stored with 4 places: shown half up to the exponent.
            item("ORD1", 2, "Mug", 3, "7.82", "23.4600", "0", "2.9150", "2.4650"),
        ])
        await conn.execute(insert(t.order_status_history), [
            {"order_id": "ORD1", "from_status": None, "to_status": "pending_payment", "actor": "new",
             "created_at": NOW},
            {"order_id": "ORD1", "from_status": "pending_payment", "to_status": "payment_confirming", "actor": "legacy",
             "created_at": NOW + timedelta(seconds=5)},
        ])
        await conn.execute(insert(t.payments).values(
            order_id="ORD1", provider="adyen", method="card", status="authorized", amount=D("96.07"), currency="EUR",
            psp_reference="PSPSECRET123", idempotency_key="idem-secret", created_at=NOW, updated_at=NOW,
        ))
        await conn.execute(insert(t.refunds).values(
            order_id="ORD1", payment_id=1, amount=D(10), currency="EUR", status="succeeded",
            psp_reference="REFSECRET456", request_id="req-1", created_at=NOW, updated_at=NOW,
        ))
        await insert_order(conn, "ORD2", user_id=2)  # someone else's
        await insert_paid_order(conn)
        await insert_order(conn, "JP1", region="JP", currency="JPY", fx_rate=D("151.2"), subtotal=D(18821),
                           mall_discount=D(0), coupon_discount=D(0), shipping_fee=D(1814), tariff=D("1882.4"),
                           wallet_deduction=D(0), total=D(22517), base_total=D("148.92"))
        await conn.execute(insert(t.order_items), [item("JP1", 3, "Headphones", 1, "8921", "8921", "0", "0", "892.1")])


PAID_AT = NOW + timedelta(minutes=3)


async def insert_paid_order(conn: Any) -> None:
    """PAID1 (user 1, KWD): payments by both PSPs with every reference and key a writer stores, a payment
    without a method (a webhook's event inserted it), refunds in three states, one whose payment is another
    order's and one whose payment row is gone."""
    await insert_order(conn, "PAID1", status="partially_refunded", currency="KWD", total=D("29.541"), paid_at=PAID_AT)
    await insert_order(conn, "ORD3", user_id=2, status="paid")
    failed = await insert_payment(conn, "PAID1", provider="adyen", method="scheme", status="failed", amount=D("29.541"),
                                  currency="KWD", psp_reference="ADYENREF-SECRET-1", idempotency_key="new-ad-SECRETKEY1",
                                  created_at=NOW + timedelta(seconds=61))
    captured = await insert_payment(conn, "PAID1", provider="paypal", method="paypal", amount=D("29.541"), currency="KWD",
                                    psp_reference="CAPTURE-SECRET-2", paypal_order_id="PPORDER-SECRET-3",
                                    capture_id="CAPTURE-SECRET-2", idempotency_key="legacy-SECRETKEY2",
                                    created_at=PAID_AT.replace(microsecond=999999))
    await insert_payment(conn, "PAID1", provider="adyen", method=None, status="authorized", amount=D("0.100"),
                         currency="KWD", psp_reference="ADYENREF-SECRET-4", created_at=PAID_AT)
    other = await insert_payment(conn, "ORD3", provider="adyen", psp_reference="ADYENREF-SECRET-5")
    refund = {"order_id": "PAID1", "currency": "KWD", "psp_reference": "REFUND-SECRET-6", "reason": "SECRET note",
              "attempts": 2, "created_at": PAID_AT + timedelta(minutes=1), "updated_at": PAID_AT}
    await conn.execute(insert(t.refunds), [
        {**refund, "payment_id": captured, "amount": D("10"), "status": "succeeded", "request_id": "SECRET-req-1"},
        {**refund, "payment_id": captured, "amount": D("5.5"), "status": "retrying", "request_id": "SECRET-req-2",
         "next_attempt_at": PAID_AT + timedelta(minutes=2)},
        {**refund, "payment_id": failed, "amount": D("1"), "status": "failed", "request_id": "SECRET-req-3"},
        {**refund, "payment_id": other, "amount": D("2"), "status": "pending", "request_id": "SECRET-req-4"},
        {**refund, "payment_id": 999_999, "amount": D("3"), "status": "submitted", "request_id": "SECRET-req-5"},
    ])


# What PAID1's detail shows of its payments and refunds, on both sides.
PAID1_PAYMENTS = [
    {"provider": "adyen", "method": "scheme", "status": "failed", "amount": "29.541", "currency": "KWD",
     "created_at": "2026-06-01T12:01:01Z"},
    {"provider": "paypal", "method": "paypal", "status": "captured", "amount": "29.541", "currency": "KWD",
     "created_at": "2026-06-01T12:03:00Z"},
    {"provider": "adyen", "method": None, "status": "authorized", "amount": "0.100", "currency": "KWD",
     "created_at": "2026-06-01T12:03:00Z"},
]
PAID1_REFUNDS = [
    {"provider": "paypal", "amount": "10.000", "currency": "KWD", "status": "succeeded", "created_at": "2026-06-01T12:04:00Z"},
    {"provider": "paypal", "amount": "5.500", "currency": "KWD", "status": "retrying", "created_at": "2026-06-01T12:04:00Z"},
    {"provider": "adyen", "amount": "1.000", "currency": "KWD", "status": "failed", "created_at": "2026-06-01T12:04:00Z"},
    # Its payment is another order's, or gone: no provider rather than someone else's.
    {"provider": None, "amount": "2.000", "currency": "KWD", "status": "pending", "created_at": "2026-06-01T12:04:00Z"},
    {"provider": None, "amount": "3.000", "currency": "KWD", "status": "submitted", "created_at": "2026-06-01T12:04:00Z"},
]


@pytest.fixture
async def shop_db(sqlite_url: str) -> str:
    await seed_database(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        await add_orders(engine)
    finally:
        await engine.dispose()
    return sqlite_url


@pytest.fixture
async def engine(shop_db: str):
    engine = make_engine(shop_db)
    yield engine
    await engine.dispose()


async def order_edge(aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path, db: str) -> TestClient:
    doc = routing_doc(
        dead_url(),
        detail=detail_route(100),
        payment_methods={"match": {"methods": ["GET"], "path": "/shopping/orders/{order_id}/pay_cm"}, "new_percent": 100},
        paid_from_client={"match": {"methods": ["POST"], "path": "/shopping/orders/{order_id}/paid_from_client"},
                          "new_percent": 100},
    )
    path = write_routing(tmp_path / "routing.yaml", doc)
    app = create_app(edge_settings(path, dead_url(), db_url=db, expiry_sweep_seconds=0.0), registry=CollectorRegistry())
    return await aiohttp_client(app)


@pytest.fixture
async def edge(aiohttp_client, tmp_path: Path, shop_db: str) -> TestClient:
    return await order_edge(aiohttp_client, tmp_path, shop_db)


def headers(user: str | None = "1", platform: str | None = None) -> dict[str, str]:
    out = {}
    if user is not None:
        out["X-User-Id"] = user
    if platform is not None:
        out["X-Platform"] = platform
    return out


async def call(client: TestClient, method: str, path: str, user: str | None = "1", platform: str | None = None,
               *, raw: bool = False) -> tuple[int, dict]:
    if raw:
        # The test client's URL join would re-quote the path: send it through the session exactly as written.
        resp = await client.session.request(method, URL(f"http://{client.host}:{client.port}{path}", encoded=True),
                                            headers=headers(user, platform))
    else:
        resp = await client.request(method, path, headers=headers(user, platform))
    assert resp.headers["X-Edge-Backend"] == "new", (path, resp.status)
    return resp.status, await resp.json()


# --- detail --------------------------------------------------------------------------------------


async def test_owner_sees_the_detail_with_exact_money(edge: TestClient) -> None:
    status, body = await call(edge, "GET", detail_path("ORD1"))
    assert status == 200 and body["code"] == 0 and body["msg"] == "ok"
    d = body["data"]
    server_time = d.pop("server_time")
    assert server_time.endswith("Z") and len(server_time) == 20
    assert d == {
        "order_id": "ORD1", "status": "pending_payment", "currency": "EUR", "region": "DE",
        "created_at": "2026-06-01T12:00:00Z", "expires_at": "2026-06-01T12:30:00Z", "paid_at": None,
        "items": [
            {"sku_id": 1, "name": "T-shirt", "qty": 2, "unit_price": "18.39", "line_total": "36.78",
             "mall_discount": "3.68", "coupon_discount": "4.12", "tariff": "3.48"},
            {"sku_id": 2, "name": "Mug", "qty": 3, "unit_price": "7.82", "line_total": "23.46",
             "mall_discount": "0.00", "coupon_discount": "2.92", "tariff": "2.47"},
        ],
        "summary": {"subtotal": "114.52", "mall_discount": "3.68", "coupon_discount": "13.80", "shipping_fee": "9.11",
                    "tariff": "8.32", "wallet_deduction": "18.40", "total": "96.07"},
        "status_history": [
            {"from": None, "to": "pending_payment", "at": "2026-06-01T12:00:00Z"},
            {"from": "pending_payment", "to": "payment_confirming", "at": "2026-06-01T12:00:05Z"},
        ],
        "address": ADDRESS,
        "payments": [{"provider": "adyen", "method": "card", "status": "authorized", "amount": "96.07", "currency": "EUR",
                      "created_at": "2026-06-01T12:00:00Z"}],
        "refunds": [{"provider": "adyen", "amount": "10.00", "currency": "EUR", "status": "succeeded",
                     "created_at": "2026-06-01T12:00:00Z"}],
    }
    text = str(body)
    assert "SECRET" not in text and "idem-secret" not in text


async def test_payments_and_refunds_show_what_the_buyer_may_know(edge: TestClient) -> None:
    status, body = await call(edge, "GET", detail_path("PAID1"))
    assert status == 200
    d = body["data"]
    assert (d["status"], d["paid_at"]) == ("partially_refunded", "2026-06-01T12:03:00Z")
    assert d["payments"] == PAID1_PAYMENTS
    assert d["refunds"] == PAID1_REFUNDS
    # No PSP reference, PayPal order or capture id, idempotency key, request id, reason or row id.
    text = str(body)
    assert "SECRET" not in text and "999999" not in text, text


async def test_jpy_detail_has_no_decimals(edge: TestClient) -> None:
    status, body = await call(edge, "GET", detail_path("JP1"))
    assert status == 200
    d = body["data"]
    assert d["summary"] == {"subtotal": "18821", "mall_discount": "0", "coupon_discount": "0", "shipping_fee": "1814",
                            "tariff": "1882", "wallet_deduction": "0", "total": "22517"}
    assert d["items"][0]["tariff"] == "892" and d["items"][0]["unit_price"] == "8921"
    assert d["address"] is None and d["expires_at"] is None and d["status_history"] == [] and d["payments"] == []


@pytest.mark.parametrize(("order_id", "user"), [("ORD2", "1"), ("ORD1", "2"), ("NOPE", "1")])
async def test_another_users_and_missing_are_the_same_404(edge: TestClient, order_id: str, user: str | None) -> None:
    for method, path in (("GET", detail_path(order_id)), ("GET", methods_path(order_id)), ("POST", paid_path(order_id))):
        status, body = await call(edge, method, path, user=user)
        assert (status, body) == (404, NOT_FOUND), (method, path, user)


@pytest.mark.parametrize("order_id", ["ORD1", "NOPE"])
async def test_anonymous_callers_are_asked_to_log_in_as_old_shopping_does(edge: TestClient, order_id: str) -> None:
    for method, path in (("GET", detail_path(order_id)), ("GET", methods_path(order_id)), ("POST", paid_path(order_id))):
        status, body = await call(edge, method, path, user=None)
        assert (status, body["code"], body["msg"]) == (401, 40101, "login_required"), (method, path)


GARBAGE = ["a" * 33, "a" * 100, "%00", "ORD1%00", "%27%20OR%201%3D1", "ORD1%20", "%E2%82%AC", "ORD1.json", "%2E%2E%2E",
           "*", "~", "-", "_" * 32 + "%5F"]


@pytest.mark.parametrize("raw_id", GARBAGE)
async def test_ids_that_are_not_ids_are_404_never_500(edge: TestClient, raw_id: str) -> None:
    for method, path in (("GET", detail_path(raw_id)), ("GET", methods_path(raw_id)), ("POST", paid_path(raw_id))):
        status, body = await call(edge, method, path, raw=True)
        assert (status, body) == (404, NOT_FOUND), (method, path)


async def test_an_encoded_newline_is_404_too(edge: TestClient) -> None:
    # aiohttp's catch-all `{tail:.*}` does not match a decoded newline, so the edge's router answers
    # this itself (aiohttp 404 in the envelope) before routing.yaml is consulted: still a 404, never a 500.
    resp = await edge.session.request("GET", URL(f"http://{edge.host}:{edge.port}{detail_path('ORD1%0A')}", encoded=True),
                                      headers={"X-User-Id": "1"})
    assert resp.status == 404 and (await resp.json())["code"] == 40401


@pytest.mark.parametrize("raw_id", ["..%2Fx", "%2E%2E%2Fx", "a%2Fb", "%00"])
async def test_direct_new_side_calls_with_bad_ids_are_404(edge: TestClient, raw_id: str) -> None:
    # /order2/... skips routing.yaml; aiohttp decodes the segment, the new side must still refuse it.
    resp = await edge.session.request("GET", URL(f"http://{edge.host}:{edge.port}/order2/detail/{raw_id}", encoded=True),
                                      headers=internal_headers(**{"X-User-Id": "1"}))
    assert resp.status == 404 and (await resp.json())["code"] == 40401


@pytest.mark.parametrize("order_id", ["../x", "a" * 100, "\x00", "", "ORD1\n", "ORD1/../ORD1", "ÖRD1"])
async def test_shop_functions_refuse_malformed_ids(engine: AsyncEngine, order_id: str) -> None:
    shop = shop_at(engine, t.utcnow())
    for call_ in (order_detail(engine, order_id, 1, shop.clock()), payment_methods_for(engine, order_id, 1, "web"),
                  shop.run("new", lambda uow: paid_from_client(uow, order_id, 1))):
        with pytest.raises(NotFound) as err:
            await call_
        assert err.value.msg == "order_not_found" and err.value.code == 40401


async def test_bad_user_header_is_400(edge: TestClient) -> None:
    # Refused by the edge before routing (shop.caller), so no side is asked.
    resp = await edge.get(detail_path("ORD1"), headers=headers(user="abc"))
    assert resp.status == 400 and (await resp.json())["data"]["field"] == "X-User-Id"


async def test_detail_has_old_shoppings_shape(edge: TestClient, aiohttp_client, shop_db: str) -> None:
    """Old shopping's detail (emulators/legacy) on the same rows: identical but for server_time and float rounding."""
    from emulators.legacy.app import create_app as create_legacy_app

    legacy = await aiohttp_client(create_legacy_app(shop_db))

    async def both(order_id: str) -> tuple[dict, dict]:
        resp = await legacy.get(detail_path(order_id), headers={"X-User-Id": "1"})
        assert resp.status == 200
        old = (await resp.json())["data"]
        new = (await call(edge, "GET", detail_path(order_id)))[1]["data"]
        assert set(old) == set(new)
        old.pop("server_time"), new.pop("server_time")
        return old, new

    old, new = await both("JP1")
    assert old == new
    old, new = await both("PAID1")
    assert old == new and old["payments"] == PAID1_PAYMENTS and old["refunds"] == PAID1_REFUNDS
    assert "SECRET" not in str(old)
    old, new = await both("ORD1")
    # 2.4650 is stored with four places: old shopping rounds the float (2.46499…) down, the new
    # side rounds the decimal half up. Expected ±0.01 noise (domain.md), and nothing else differs.
    assert (old["items"][1]["tariff"], new["items"][1]["tariff"]) == ("2.46", "2.47")
    old["items"][1]["tariff"] = "2.47"
    assert old == new


# --- payment methods -----------------------------------------------------------------------------


def expected_from_seed(rows: list[dict[str, Any]], region: str, currency: str, platform: str | None, total: D) -> list[str]:
    """The spec's filter written out plainly over the seed rows: [code/provider] in sort, id order."""

    def allows(listed: str | None, value: str | None) -> bool:
        return listed is None or (value is not None and value in listed.split(","))

    keep = [
        r for r in rows
        if r["enabled"] and allows(r["regions"], region) and allows(r["currencies"], currency)
        and allows(r["platforms"], platform if platform in ("ios", "android", "web") else None)
        and (r["min_amount"] is None or r["min_amount"] <= total) and (r["max_amount"] is None or total <= r["max_amount"])
    ]
    return [f"{r['code']}/{r['provider']}" for r in sorted(keep, key=lambda r: (r["sort"], r["id"]))]


async def set_order(engine: AsyncEngine, order_id: str, **values: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(t.orders).where(t.orders.c.id == order_id).values(**values))


async def methods(client: TestClient, order_id: str, platform: str | None) -> list[str]:
    status, body = await call(client, "GET", methods_path(order_id), platform=platform)
    assert status == 200, body
    assert set(body["data"]) == {"methods"}
    return [f"{m['code']}/{m['provider']}" for m in body["data"]["methods"]]


async def test_methods_by_platform(edge: TestClient) -> None:
    assert await methods(edge, "ORD1", "web") == ["card/adyen", "paypal/paypal", "ideal/adyen", "sofort/adyen"]
    assert await methods(edge, "ORD1", "ios") == ["card/adyen", "paypal/paypal", "ideal/adyen"]
    assert await methods(edge, "ORD1", "IOS") == ["card/adyen", "paypal/paypal", "ideal/adyen"]
    # Absent or unknown platform: only the methods offered on every platform.
    assert await methods(edge, "ORD1", None) == ["card/adyen", "paypal/paypal"]
    assert await methods(edge, "ORD1", "tv") == ["card/adyen", "paypal/paypal"]
    _, body = await call(edge, "GET", methods_path("ORD1"), platform="web")
    assert body["data"]["methods"][0] == {"code": "card", "provider": "adyen", "title": "Credit or debit card"}


@pytest.mark.parametrize(
    ("region", "currency", "total"),
    [
        ("DE", "EUR", "96.07"), ("DE", "EUR", "0.49"), ("DE", "EUR", "0.50"), ("DE", "EUR", "1.00"),
        ("DE", "EUR", "5000.00"), ("DE", "EUR", "5000.01"), ("DE", "EUR", "10000.00"), ("DE", "EUR", "10000.01"),
        ("DE", "USD", "50.00"), ("US", "USD", "50.00"), ("GB", "GBP", "40.00"), ("GB", "EUR", "40.00"),
        ("JP", "JPY", "75"), ("JP", "JPY", "100"), ("JP", "JPY", "1500001"), ("FR", "EUR", "50.00"), ("JP", "EUR", "50.00"),
    ],
)
async def test_methods_match_the_seed_rows(edge: TestClient, engine: AsyncEngine, region: str, currency: str, total: str) -> None:
    await set_order(engine, "ORD1", region=region, currency=currency, total=D(total))
    rows = demo_rows()["payment_methods"]
    for platform in ("ios", "android", "web", None, "smart-fridge"):
        assert await methods(edge, "ORD1", platform) == expected_from_seed(rows, region, currency, platform, D(total)), platform


async def test_methods_bounds_are_inclusive_and_klarna_is_disabled(edge: TestClient, engine: AsyncEngine) -> None:
    await set_order(engine, "ORD1", total=D("0.50"))
    assert await methods(edge, "ORD1", "web") == ["card/adyen"]
    await set_order(engine, "ORD1", total=D("0.49"))
    assert await methods(edge, "ORD1", "web") == []
    await set_order(engine, "ORD1", total=D("5000.01"))
    assert await methods(edge, "ORD1", "web") == ["card/adyen", "paypal/paypal"]
    # Klarna (DE, EUR, 35..1000) would match 96.07 but is disabled; enabling it lists it at its sort.
    await set_order(engine, "ORD1", total=D("96.07"))
    assert "klarna/adyen" not in await methods(edge, "ORD1", "web")
    async with engine.begin() as conn:
        await conn.execute(update(t.payment_methods).where(t.payment_methods.c.code == "klarna").values(enabled=True))
    assert await methods(edge, "ORD1", "web") == ["card/adyen", "paypal/paypal", "ideal/adyen", "sofort/adyen", "klarna/adyen"]


async def test_methods_sort_then_id(edge: TestClient, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(t.payment_methods), [
            {"id": 20, "code": "applepay", "provider": "adyen", "title": "Apple Pay", "regions": None, "currencies": None,
             "platforms": "ios", "min_amount": None, "max_amount": None, "sort": 5, "enabled": True},
            {"id": 21, "code": "giftcard", "provider": "adyen", "title": "Gift card", "regions": "DE", "currencies": "EUR",
             "platforms": None, "min_amount": None, "max_amount": None, "sort": 10, "enabled": True},
            {"id": 22, "code": "old", "provider": "adyen", "title": "Old", "regions": None, "currencies": None,
             "platforms": None, "min_amount": None, "max_amount": None, "sort": 0, "enabled": False},
        ])
    assert await methods(edge, "ORD1", "ios") == ["applepay/adyen", "card/adyen", "giftcard/adyen", "paypal/paypal", "ideal/adyen"]
    assert await methods(edge, "ORD1", "web") == ["card/adyen", "giftcard/adyen", "paypal/paypal", "ideal/adyen", "sofort/adyen"]


# --- paid_from_client ----------------------------------------------------------------------------


async def cart_of(engine: AsyncEngine, user_id: int) -> list[int]:
    c = t.cart_items.c
    async with engine.connect() as conn:
        return list((await conn.execute(select(c.sku_id).where(c.user_id == user_id).order_by(c.sku_id))).scalars())


async def others_carts(engine: AsyncEngine) -> int:
    c = t.cart_items.c
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).where(c.user_id != 1))).scalar_one()


async def history_of(engine: AsyncEngine, order_id: str) -> list[tuple[str | None, str, str]]:
    h = t.order_status_history.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(h.from_status, h.to_status, h.actor).where(h.order_id == order_id).order_by(h.id))
        return [tuple(r) for r in rows]


async def add_cart(engine: AsyncEngine, user_id: int, *sku_ids: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(t.cart_items), [
            {"user_id": user_id, "sku_id": s, "qty": 1, "created_at": NOW} for s in sku_ids
        ])


async def test_paid_from_client_clears_exactly_the_orders_skus_and_moves_the_status(edge: TestClient, engine: AsyncEngine) -> None:
    await add_cart(engine, 1, 7, 8)
    assert await cart_of(engine, 1) == [1, 2, 3, 7, 8]
    others = await others_carts(engine)
    status, body = await call(edge, "POST", paid_path("ORD1"))
    assert (status, body) == (200, {"code": 0, "msg": "ok", "data": {"order_id": "ORD1", "status": "payment_confirming"}})
    assert await cart_of(engine, 1) == [3, 7, 8]  # ORD1 holds SKUs 1 and 2
    assert await others_carts(engine) == others
    assert (await history_of(engine, "ORD1"))[-1] == ("pending_payment", "payment_confirming", "new")
    # Again: harmless, same answer, nothing new written.
    before = await history_of(engine, "ORD1")
    await add_cart(engine, 1, 1)  # the user put the T-shirt back meanwhile
    status, body = await call(edge, "POST", paid_path("ORD1"))
    assert (status, body["data"]) == (200, {"order_id": "ORD1", "status": "payment_confirming"})
    assert await history_of(engine, "ORD1") == before
    assert await cart_of(engine, 1) == [3, 7, 8]


@pytest.mark.parametrize(
    ("start", "answer"),
    [("payment_failed", "payment_confirming"), ("authorized", "authorized"), ("paid", "paid"),
     ("fulfilling", "fulfilling"), ("refunded", "refunded")],
)
async def test_paid_from_client_from_other_states(edge: TestClient, engine: AsyncEngine, start: str, answer: str) -> None:
    await set_order(engine, "ORD1", status=start)
    before = await history_of(engine, "ORD1")
    status, body = await call(edge, "POST", paid_path("ORD1"))
    assert (status, body["data"]) == (200, {"order_id": "ORD1", "status": answer})
    added = (await history_of(engine, "ORD1"))[len(before):]
    assert added == ([(start, answer, "new")] if start != answer else [])


async def test_paid_from_client_on_a_cancelled_order_is_409_and_changes_nothing(edge: TestClient, engine: AsyncEngine) -> None:
    await set_order(engine, "ORD1", status="cancelled")
    status, body = await call(edge, "POST", paid_path("ORD1"))
    assert status == 409 and body["code"] == 40901 and body["msg"] == "invalid_state"
    assert body["data"]["status"] == "cancelled"
    assert await cart_of(engine, 1) == [1, 2, 3]


async def test_paid_from_client_by_another_user_touches_nothing(edge: TestClient, engine: AsyncEngine) -> None:
    user2 = await cart_of(engine, 2)
    status, body = await call(edge, "POST", paid_path("ORD1"), user="2")
    assert (status, body) == (404, NOT_FOUND)
    assert await cart_of(engine, 2) == user2 and await cart_of(engine, 1) == [1, 2, 3]
    async with engine.connect() as conn:
        assert (await conn.execute(select(t.orders.c.status).where(t.orders.c.id == "ORD1"))).scalar_one() == "pending_payment"


async def test_detail_and_paid_from_client_on_mariadb(aiohttp_client, tmp_path: Path, mariadb_url: str) -> None:
    await seed_database(mariadb_url)
    engine = make_engine(mariadb_url)
    try:
        await add_orders(engine)
        client = await order_edge(aiohttp_client, tmp_path, mariadb_url)
        status, body = await call(client, "GET", detail_path("ORD1"))
        assert status == 200 and body["data"]["summary"]["total"] == "96.07"
        assert body["data"]["items"][1]["coupon_discount"] == "2.92" and body["data"]["created_at"] == "2026-06-01T12:00:00Z"
        assert await methods(client, "ORD1", "ios") == ["card/adyen", "paypal/paypal", "ideal/adyen"]
        status, body = await call(client, "POST", paid_path("ORD1"))
        assert body["data"]["status"] == "payment_confirming"
        assert await cart_of(engine, 1) == [3]
        assert (await call(client, "GET", detail_path("ORD2")))[0] == 404
        assert (await call(client, "GET", detail_path("ord1"), user="2"))[0] == 404
    finally:
        await engine.dispose()


async def test_detail_never_shows_a_status_its_history_has_left(mariadb_url: str) -> None:
    """Transitions committed while detail reads: every answer's status is its history's last step."""
    from shop.order_states import transition

    await seed_database(mariadb_url)
    writer, reader = make_engine(mariadb_url), make_engine(mariadb_url, read_only=True)
    async with writer.begin() as conn:
        await insert_order(conn, "FLIP1", status="payment_confirming")
        await conn.execute(insert(t.order_status_history).values(
            order_id="FLIP1", from_status=None, to_status="payment_confirming", actor="new", created_at=NOW))
    done = False

    async def flip() -> int:
        flips = 0
        while not done:  # payment fails, the app says it paid again, ...: the status goes back and forth
            for event in ("payment_failed", "paid_from_client"):
                async with writer.begin() as conn:
                    await transition(conn, "FLIP1", event, actor="new", now=t.utcnow())
                flips += 1
        return flips

    flipping = asyncio.create_task(flip())
    try:
        views = [await order_detail(reader, "FLIP1", 1, t.utcnow()) for _ in range(300)]
    finally:
        done = True
        flips = await flipping
        await writer.dispose()
        await reader.dispose()
    assert flips > 50  # the reads really raced the writes
    for view in views:
        assert view["status_history"][-1]["to"] == view["status"], view["status_history"][-3:]
