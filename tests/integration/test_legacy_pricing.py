"""Old shopping's calc_price and coupon list (emulators.legacy.pricing / coupons) on a seeded database.

The worked example of domain.md must come out to the cent (it has no half-cent case, so
float and Decimal agree), every coupon reason and bad input answers like the new side,
and one constructed cart shows the honest float-vs-Decimal rounding difference the shadow
diff has to live with. Decimal expectations are worked out by hand here, never by calling
the new engine (``shop.pricing``): the emulator stands in for a separately written service.

Most tests run on a copy of one seeded SQLite file; the worked example, the coupon list
and the rounding difference also run on MariaDB, in this module's own database
(``test_legacy_pricing``, created on demand) so suites running against ``test`` at the
same time cannot drop tables under them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import insert, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from emulators.legacy import create_app
from shop.db import create_all, make_engine
from shop.schema import skus, user_coupons
from shop.seed import seed_demo
from tests.support.legacydb import copy_seeded, engine_for, envelope, private_mariadb

ClientFactory = Callable[..., Awaitable[TestClient]]

CALC = "/shopping/cal_price/v4_4"
COUPONS = "/shopping/user_coupons_for_order"
USER1 = {"X-User-Id": "1"}
WORKED = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True}
WORKED_ITEMS = [{"sku_id": 1, "qty": 2}, {"sku_id": 2, "qty": 3}, {"sku_id": 3, "qty": 1}]
PRIVATE_MARIADB_DATABASE = "test_legacy_pricing"
# Ids far above the seed's, so rows the tests insert never collide with demo rows.
TEST_SKU = 900_001
TEST_USER_COUPON = 900_001
OTHER_USER = 5_000_003


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One seeded SQLite file per module; each SQLite test prices against its own copy."""
    path = tmp_path_factory.mktemp("legacy_pricing") / "template.db"

    async def build() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await create_all(engine)
            await seed_demo(engine)
        finally:
            await engine.dispose()

    asyncio.run(build())
    return path


@pytest.fixture
def sqlite_db_url(seeded_template: Path, tmp_path: Path) -> str:
    return copy_seeded(seeded_template, tmp_path)


@pytest.fixture
async def both_db_url(db_url: str, seeded_template: Path, tmp_path: Path) -> str:
    """SQLite (seeded copy) or MariaDB (this module's own database, freshly seeded)."""
    if make_url(db_url).get_backend_name() not in ("mysql", "mariadb"):
        return copy_seeded(seeded_template, tmp_path)
    return await private_mariadb(PRIVATE_MARIADB_DATABASE)


@pytest.fixture
async def db(sqlite_db_url: str) -> AsyncIterator[AsyncEngine]:
    async for engine in engine_for(sqlite_db_url):
        yield engine


@pytest.fixture
async def client(sqlite_db_url: str, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(create_app(sqlite_db_url))


@pytest.fixture
async def any_db(both_db_url: str) -> AsyncIterator[AsyncEngine]:
    async for engine in engine_for(both_db_url):
        yield engine


@pytest.fixture
async def any_client(both_db_url: str, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(create_app(both_db_url))


# --- helpers ----------------------------------------------------------------------------------


async def calc(client: TestClient, body: Any, headers: dict[str, str] | None = USER1) -> dict[str, Any]:
    resp = await client.post(CALC, json=body, headers=headers or {})
    return (await envelope(resp, 200))["data"]


async def add_user_coupon(engine: AsyncEngine, row_id: int, coupon_id: int, status: str = "unused", user_id: int = 1) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(user_coupons).values(
            id=row_id, user_id=user_id, coupon_id=coupon_id, status=status, created_at=datetime(2025, 1, 1),
        ))


async def add_sku(engine: AsyncEngine, sku_id: int, price: str, category_id: int, active: bool = True) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(skus).values(
            id=sku_id, name=f"Test SKU {sku_id}", category_id=category_id, price=Decimal(price), stock=100, active=active,
        ))


def half_up(value: Decimal, places: str = "0.01") -> Decimal:
    return value.quantize(Decimal(places), rounding=ROUND_HALF_UP)


# --- the worked example -----------------------------------------------------------------------


WORKED_SUMMARY = {
    "subtotal": "114.52",
    "mall_discount": "3.68",
    "coupon_discount": "13.80",
    "shipping_fee": "9.11",
    "tariff": "8.32",
    "wallet_deduction": "18.40",
    "total": "96.07",
}


async def test_worked_example_prices_to_the_cent(any_client: TestClient) -> None:
    data = await calc(any_client, WORKED)
    assert data["currency"] == "EUR" and data["region"] == "DE"
    assert data["summary"] == WORKED_SUMMARY
    assert data["items"][0] == {
        "sku_id": 1, "name": "T-shirt", "qty": 2, "unit_price": "18.39", "line_total": "36.78",
        "mall_discount": "3.68", "coupon_discount": "4.12", "tariff": "3.48",
    }
    assert [i["sku_id"] for i in data["items"]] == [1, 2, 3]
    assert data["coupon"] == {"user_coupon_id": 1, "code": "SAVE15", "title": "15 off orders over 100", "kind": "amount"}
    assert data["coupon_error"] is None
    assert data["free_shipping_threshold"] == "184.00"
    assert data["wallet_balance"] == "18.40"
    # The displayed parts add up exactly.
    s = {k: Decimal(v) for k, v in data["summary"].items()}
    assert s["subtotal"] - s["mall_discount"] - s["coupon_discount"] + s["shipping_fee"] + s["tariff"] - s["wallet_deduction"] == s["total"]

    # Sending the same lines explicitly prices the same.
    explicit = await calc(any_client, {**WORKED, "items": WORKED_ITEMS})
    assert explicit == data


async def test_worked_example_in_usd_shows_the_domain_figures(client: TestClient) -> None:
    data = await calc(client, {**WORKED, "currency": "USD"})
    assert data["summary"] == {
        "subtotal": "124.48", "mall_discount": "4.00", "coupon_discount": "15.00", "shipping_fee": "9.90",
        "tariff": "9.04", "wallet_deduction": "20.00", "total": "104.42",
    }
    assert [i["coupon_discount"] for i in data["items"]] == ["4.48", "3.17", "7.35"]
    assert [i["tariff"] for i in data["items"]] == ["3.78", "2.68", "2.58"]


@pytest.mark.parametrize(("currency", "pattern"), [("JPY", r"^-?\d+$"), ("KWD", r"^-?\d+\.\d{3}$"), ("GBP", r"^-?\d+\.\d{2}$")])
async def test_amounts_use_the_currency_exponent(client: TestClient, currency: str, pattern: str) -> None:
    data = await calc(client, {**WORKED, "currency": currency})
    amounts = list(data["summary"].values()) + [data["free_shipping_threshold"], data["wallet_balance"]]
    amounts += [v for item in data["items"] for k, v in item.items() if k not in ("sku_id", "name", "qty")]
    assert all(re.match(pattern, a) for a in amounts), amounts
    s = {k: Decimal(v) for k, v in data["summary"].items()}
    assert s["subtotal"] - s["mall_discount"] - s["coupon_discount"] + s["shipping_fee"] + s["tariff"] - s["wallet_deduction"] == s["total"]


async def test_without_wallet_and_anonymous_items(client: TestClient) -> None:
    data = await calc(client, {**WORKED, "use_wallet": False})
    assert data["summary"]["wallet_deduction"] == "0.00"
    assert data["summary"]["total"] == "114.47"  # 96.07 + 18.40
    assert data["wallet_balance"] == "0.00"
    # Anonymous callers can price explicit items with a region; the wallet needs a login.
    data = await calc(client, {"items": WORKED_ITEMS, "region": "de", "currency": "eur", "use_wallet": True}, headers=None)
    assert data["region"] == "DE" and data["currency"] == "EUR"
    assert data["summary"]["wallet_deduction"] == "0.00" and data["summary"]["coupon_discount"] == "0.00"


async def test_free_shipping_from_threshold(client: TestClient) -> None:
    # 10 T-shirts: 199.90 − 19.99 mall = 179.91 < 200 → fee; 12: 239.88 − 23.99 = 215.89 ≥ 200 → free.
    data = await calc(client, {"items": [{"sku_id": 1, "qty": 10}], "region": "DE"})
    assert data["summary"]["shipping_fee"] == "9.90"
    data = await calc(client, {"items": [{"sku_id": 1, "qty": 12}], "region": "DE"})
    assert data["summary"]["shipping_fee"] == "0.00"


async def test_tariff_zero_at_or_below_de_minimis(client: TestClient) -> None:
    # One mug, 8.50 into DE: goods net ≤ 22.00, so no tariff on any line.
    data = await calc(client, {"items": [{"sku_id": 2, "qty": 1}], "region": "DE"})
    assert data["summary"]["tariff"] == "0.00"
    # Three mugs, 25.50 > 22.00: 12 % → 3.06.
    data = await calc(client, {"items": [{"sku_id": 2, "qty": 3}], "region": "DE"})
    assert data["summary"]["tariff"] == "3.06"


async def test_wallet_takes_at_most_half(client: TestClient, db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await conn.execute(text("UPDATE wallets SET balance = 1000 WHERE user_id = 1"))
    data = await calc(client, {**WORKED, "currency": "USD"})
    # Before wallet: 124.48 − 4.00 − 15.00 + 9.90 + 9.04 = 124.42; half = 62.21.
    assert data["summary"]["wallet_deduction"] == "62.21"
    assert data["summary"]["total"] == "62.21"
    assert data["wallet_balance"] == "1000.00"


# --- coupons in calc_price --------------------------------------------------------------------


async def _coupon_error(client: TestClient, body: dict[str, Any], headers: dict[str, str] | None = USER1) -> str | None:
    data = await calc(client, body, headers)
    if data["coupon_error"] is not None:
        # An inapplicable coupon never fails calc_price: the cart is priced without it.
        assert data["coupon"] is None
        assert data["summary"]["coupon_discount"] == "0.00"
        assert all(item["coupon_discount"] == "0.00" for item in data["items"])
    return data["coupon_error"]


async def test_reason_not_found(client: TestClient) -> None:
    assert await _coupon_error(client, {**WORKED, "user_coupon_id": 99_999_999}) == "not_found"
    assert await _coupon_error(client, {**WORKED, "user_coupon_id": None, "coupon_code": "NOPE"}) == "not_found"


async def test_reason_not_owner(client: TestClient, db: AsyncEngine) -> None:
    await add_user_coupon(db, TEST_USER_COUPON, 1, user_id=OTHER_USER)
    assert await _coupon_error(client, {**WORKED, "user_coupon_id": TEST_USER_COUPON}) == "not_owner"


@pytest.mark.parametrize(("status", "reason"), [("used", "used"), ("locked", "used"), ("expired", "expired")])
async def test_reason_from_user_coupon_status(client: TestClient, db: AsyncEngine, status: str, reason: str) -> None:
    async with db.begin() as conn:
        await conn.execute(update(user_coupons).where(user_coupons.c.id == 1).values(status=status))
    assert await _coupon_error(client, WORKED) == reason
    # The code reads the caller's own row too.
    assert await _coupon_error(client, {**WORKED, "user_coupon_id": None, "coupon_code": "save15"}) == reason


async def test_reason_expired_window(client: TestClient, db: AsyncEngine) -> None:
    # SUMMER20 (coupon 9) ended in 2024.
    assert await _coupon_error(client, {**WORKED, "user_coupon_id": None, "coupon_code": "SUMMER20"}) == "expired"
    await add_user_coupon(db, TEST_USER_COUPON, 9)
    assert await _coupon_error(client, {**WORKED, "user_coupon_id": TEST_USER_COUPON}) == "expired"


async def test_reason_region_not_allowed(client: TestClient, db: AsyncEngine) -> None:
    await add_user_coupon(db, TEST_USER_COUPON, 8)  # free shipping, JP only
    assert await _coupon_error(client, {**WORKED, "user_coupon_id": TEST_USER_COUPON}) == "region_not_allowed"


async def test_reason_category_mismatch(client: TestClient, db: AsyncEngine) -> None:
    await add_user_coupon(db, TEST_USER_COUPON, 5)  # electronics (category 30) only
    body = {**WORKED, "user_coupon_id": TEST_USER_COUPON, "items": [{"sku_id": 1, "qty": 2}]}
    assert await _coupon_error(client, body) == "category_mismatch"
    # With the headphones in the cart it applies to them alone: 15 % of 59.00 = 8.85 USD.
    data = await calc(client, {**body, "currency": "USD", "items": WORKED_ITEMS})
    assert data["coupon_error"] is None and data["summary"]["coupon_discount"] == "8.85"
    assert [i["coupon_discount"] for i in data["items"]] == ["0.00", "0.00", "8.85"]


async def test_reason_min_spend_not_met(client: TestClient) -> None:
    body = {**WORKED, "items": [{"sku_id": 2, "qty": 3}]}  # 25.50 < 100.00
    assert await _coupon_error(client, body) == "min_spend_not_met"


async def test_reason_login_required(client: TestClient) -> None:
    body = {"items": WORKED_ITEMS, "region": "DE", "currency": "EUR", "user_coupon_id": 1}
    assert await _coupon_error(client, body, headers=None) == "login_required"
    # A public code needs no login.
    data = await calc(client, {**body, "user_coupon_id": None, "coupon_code": "SAVE15"}, headers=None)
    assert data["coupon_error"] is None and data["summary"]["coupon_discount"] == "13.80"
    assert data["coupon"]["user_coupon_id"] is None


async def test_free_shipping_coupon_zeroes_the_fee(client: TestClient, db: AsyncEngine) -> None:
    await add_user_coupon(db, TEST_USER_COUPON, 4)
    data = await calc(client, {**WORKED, "user_coupon_id": TEST_USER_COUPON})
    assert data["coupon"]["kind"] == "free_shipping"
    assert data["summary"]["shipping_fee"] == "0.00" and data["summary"]["coupon_discount"] == "0.00"


# --- the coupon list --------------------------------------------------------------------------


async def test_coupon_list_sorted_with_reasons(any_client: TestClient, any_db: AsyncEngine) -> None:
    base = TEST_USER_COUPON
    await add_user_coupon(any_db, base + 0, 2)  # 5 off over 30 → 5.00 USD → 4.60 EUR
    await add_user_coupon(any_db, base + 1, 4)  # free shipping → the 9.11 EUR fee
    await add_user_coupon(any_db, base + 2, 9)  # window over → expired
    await add_user_coupon(any_db, base + 3, 8)  # JP only → region_not_allowed
    await add_user_coupon(any_db, base + 4, 3, status="used")  # not listed at all
    await add_user_coupon(any_db, base + 5, 6, status="locked")  # → used
    await add_user_coupon(any_db, base + 6, 5)  # 15 % of the 59.00 headphones = 8.85 USD → 8.14 EUR
    await add_user_coupon(any_db, base + 7, 7, status="expired")  # → expired
    resp = await any_client.post(COUPONS, json={**WORKED, "coupon_code": "welcome10"}, headers=USER1)
    data = (await envelope(resp, 200))["data"]

    usable = [(c["user_coupon_id"], c["coupon_id"], c["discount"]) for c in data["usable"]]
    assert usable == [
        (1, 1, "13.80"),  # SAVE15
        (None, 3, "11.09"),  # WELCOME10, public code: 10 % of 120.48 = 12.05 USD
        (base + 1, 4, "9.11"),
        (base + 6, 5, "8.14"),
        (base + 0, 2, "4.60"),
    ]
    assert data["usable"][0] == {
        "user_coupon_id": 1, "coupon_id": 1, "code": "SAVE15", "title": "15 off orders over 100",
        "kind": "amount", "discount": "13.80", "expires_at": "2099-12-31T23:59:59Z",
    }
    unusable = [(c["user_coupon_id"], c["coupon_id"], c["reason"], c["discount"]) for c in data["unusable"]]
    assert unusable == [
        (base + 2, 9, "expired", None),
        (base + 3, 8, "region_not_allowed", None),
        (base + 5, 6, "used", None),
        (base + 7, 7, "expired", None),
    ]
    assert data["unusable"][0]["expires_at"] == "2024-06-30T23:59:59Z"
    for entry in data["usable"] + data["unusable"]:
        assert set(entry) >= {"user_coupon_id", "coupon_id", "code", "title", "kind", "discount", "expires_at"}


async def test_coupon_list_anonymous_sees_only_the_public_code(client: TestClient) -> None:
    body = {"items": WORKED_ITEMS, "region": "DE", "currency": "EUR", "coupon_code": "SAVE15"}
    resp = await client.post(COUPONS, json=body)
    data = (await envelope(resp, 200))["data"]
    assert [(c["user_coupon_id"], c["code"], c["discount"]) for c in data["usable"]] == [(None, "SAVE15", "13.80")]
    assert data["unusable"] == []
    # A public code that doesn't cover the cart is listed with its reason.
    resp = await client.post(COUPONS, json={**body, "items": [{"sku_id": 2, "qty": 1}]})
    data = (await envelope(resp, 200))["data"]
    assert data["usable"] == [] and [c["reason"] for c in data["unusable"]] == ["min_spend_not_met"]


async def test_coupon_list_rejects_bad_input_like_calc_price(client: TestClient) -> None:
    resp = await client.post(COUPONS, json={**WORKED, "currency": "XXX"}, headers=USER1)
    assert (await envelope(resp, 400))["data"] == {"field": "currency", "reason": "unknown currency"}
    resp = await client.post(COUPONS, json={"region": "DE"})
    assert (await envelope(resp, 401))["code"] == 40101
    resp = await client.post(COUPONS, json={"items": WORKED_ITEMS, "region": "FR"}, headers=USER1)
    assert (await envelope(resp, 422))["code"] == 42206


# --- bad input --------------------------------------------------------------------------------


async def test_malformed_json_is_400(client: TestClient) -> None:
    resp = await client.post(CALC, data=b'{"items": [', headers={**USER1, "Content-Type": "application/json"})
    assert await envelope(resp, 400) == {
        "code": 40001, "msg": "bad_request", "data": {"field": "body", "reason": "malformed JSON"},
    }
    resp = await client.post(CALC, data=b"\xff\xfe", headers={**USER1, "Content-Type": "application/json"})
    assert (await envelope(resp, 400))["data"]["field"] == "body"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ("items", "body"),
        ({**WORKED, "items": {"sku_id": 1, "qty": 1}}, "items"),
        ({**WORKED, "items": "1x2"}, "items"),
        ({**WORKED, "items": []}, "items"),
        ({**WORKED, "items": [3]}, "items[0]"),
        ({**WORKED, "items": [{"sku_id": 1, "qty": 0}]}, "items[0].qty"),
        ({**WORKED, "items": [{"sku_id": 1, "qty": 1000}]}, "items[0].qty"),
        ({**WORKED, "items": [{"sku_id": 1, "qty": "x"}]}, "items[0].qty"),
        ({**WORKED, "items": [{"sku_id": 1, "qty": 1.5}]}, "items[0].qty"),
        ({**WORKED, "items": [{"sku_id": 1, "qty": True}]}, "items[0].qty"),
        ({**WORKED, "items": [{"sku_id": 1, "qty": 1}, {"sku_id": "2", "qty": 1}]}, "items[1].sku_id"),
        ({**WORKED, "items": [{"sku_id": 1, "qty": 1}, {"sku_id": 1, "qty": 2}]}, "items[1].sku_id"),
        ({**WORKED, "currency": "euro"}, "currency"),
        ({**WORKED, "currency": "XXX"}, "currency"),
        ({**WORKED, "currency": 978}, "currency"),
        ({**WORKED, "use_wallet": "yes"}, "use_wallet"),
        ({**WORKED, "user_coupon_id": "1"}, "user_coupon_id"),
        ({**WORKED, "user_coupon_id": 0}, "user_coupon_id"),
        ({**WORKED, "address_id": -1}, "address_id"),
        ({**WORKED, "address_id": 2}, "address_id"),  # another user's address reads as missing
        ({**WORKED, "address_id": None}, "region"),
        ({**WORKED, "address_id": None, "region": "D"}, "region"),
    ],
)
async def test_bad_field_is_400_naming_it(client: TestClient, body: Any, field: str) -> None:
    resp = await client.post(CALC, json=body, headers=USER1)
    err = await envelope(resp, 400)
    assert err["code"] == 40001 and err["msg"] == "bad_request"
    assert err["data"]["field"] == field and isinstance(err["data"]["reason"], str)


async def test_bad_user_header_is_400(client: TestClient) -> None:
    resp = await client.post(CALC, json=WORKED, headers={"X-User-Id": "abc"})
    assert (await envelope(resp, 400))["data"]["field"] == "X-User-Id"


async def test_anonymous_cart_pricing_is_401(client: TestClient) -> None:
    resp = await client.post(CALC, json={"region": "DE", "currency": "EUR"})
    err = await envelope(resp, 401)
    assert err["code"] == 40101 and err["msg"] == "login_required"


async def test_unknown_sku_is_422(client: TestClient) -> None:
    resp = await client.post(CALC, json={**WORKED, "items": [{"sku_id": 1, "qty": 1}, {"sku_id": 77_777_777, "qty": 1}]}, headers=USER1)
    assert await envelope(resp, 422) == {"code": 42204, "msg": "sku_not_found", "data": {"sku_id": 77_777_777}}


async def test_inactive_sku_is_422(client: TestClient, db: AsyncEngine) -> None:
    await add_sku(db, TEST_SKU, "10.00", 20, active=False)
    resp = await client.post(CALC, json={**WORKED, "items": [{"sku_id": TEST_SKU, "qty": 1}]}, headers=USER1)
    assert await envelope(resp, 422) == {"code": 42205, "msg": "sku_unavailable", "data": {"sku_id": TEST_SKU}}


async def test_region_without_shipping_rule_is_422(client: TestClient) -> None:
    body = {"items": WORKED_ITEMS, "region": "FR", "currency": "EUR"}
    resp = await client.post(CALC, json=body, headers=USER1)
    assert await envelope(resp, 422) == {"code": 42206, "msg": "region_not_served", "data": {"region": "FR"}}


# --- the honest float-vs-Decimal difference ---------------------------------------------------


async def test_float_rounding_differs_from_decimal_on_a_half_cent(any_client: TestClient, any_db: AsyncEngine) -> None:
    """Old shopping's floats round 2.675 down; the Decimal contract (ROUND_HALF_UP) rounds it up.

    A 26.75 USD SKU in category 10 (mall −10 %) shipped to the US, priced in USD: the mall
    discount is exactly 2.675 in decimal, but the nearest binary double is 2.67499999…
    """
    await add_sku(any_db, TEST_SKU, "26.75", 10)
    data = await calc(any_client, {"items": [{"sku_id": TEST_SKU, "qty": 1}], "region": "US", "currency": "USD"})

    # The contract's expectation, worked out by hand in Decimal.
    line = Decimal("26.75")
    mall = half_up(line * Decimal(10) / Decimal(100))  # 2.675 → 2.68
    shipping = Decimal("6.95")  # US fee; 24.07 is below the 75.00 threshold
    tariff = Decimal("0.00")  # US de minimis 800.00
    decimal_total = line - mall + shipping + tariff
    assert (mall, decimal_total) == (Decimal("2.68"), Decimal("31.02"))

    assert data["items"][0]["mall_discount"] == "2.67"
    assert data["summary"]["mall_discount"] == "2.67"
    assert data["summary"]["total"] == "31.03"
    assert Decimal(data["summary"]["mall_discount"]) - mall == Decimal("-0.01")
    assert Decimal(data["summary"]["total"]) - decimal_total == Decimal("0.01")


async def test_float_rounding_differs_on_conversion(client: TestClient, db: AsyncEngine) -> None:
    """6.50 USD × 0.79 = 5.135 GBP exactly; half-up says 5.14, the float 5.13499999… gives 5.13."""
    await add_sku(db, TEST_SKU, "6.50", 20)
    data = await calc(client, {"items": [{"sku_id": TEST_SKU, "qty": 1}], "region": "US", "currency": "GBP"})
    decimal_unit = half_up(Decimal("6.50") * Decimal("0.79"))
    assert decimal_unit == Decimal("5.14")
    assert data["items"][0]["unit_price"] == "5.13"
    assert data["summary"]["subtotal"] == "5.13"
