"""Old shopping's order routes in the emulator: place_order, detail, payment_methods,
paid_from_client, cancel and the order list, on a seeded database.

Expectations are worked out by hand from domain.md's worked example (user 1's cart:
T-shirt ×2, Mug ×3, Headphones ×1, coupon SAVE15, wallet 20.00 USD, DE / EUR at 0.92),
never by calling the new side. Most tests run on a copy of one seeded SQLite file; the
worked example also runs on MariaDB, and the races (20 requests with one Idempotency-Key,
concurrent cancels) run on MariaDB only, in this module's own database
(``test_legacy_orders``) so suites using ``test`` at the same time cannot drop tables
under them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from emulators.legacy import create_app
from shop.schema import (
    address_blacklist,
    addresses,
    cart_items,
    order_items,
    order_status_history,
    orders,
    outbox,
    payments,
    refunds,
    skus,
    user_coupons,
    wallet_ledger,
    wallets,
)
from shop.seed import WORKED_EXAMPLE_STOCK
from tests.support.legacydb import copy_seeded, engine_for, envelope, private_mariadb
from tests.support.shopdb import seed_database

ClientFactory = Callable[..., Awaitable[TestClient]]

PLACE = "/shopping/cart/checkout/entries"
LIST = "/shopping/orders"
USER1 = {"X-User-Id": "1"}
USER2 = {"X-User-Id": "2"}
WORKED = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True, "expected_total": "96.07"}
WORKED_SUMMARY = {
    "subtotal": "114.52", "mall_discount": "3.68", "coupon_discount": "13.80", "shipping_fee": "9.11",
    "tariff": "8.32", "wallet_deduction": "18.40", "total": "96.07",
}
# (sku_id, name, qty, unit_price, line_total, mall_discount, coupon_discount, tariff) in EUR
WORKED_ITEMS = [
    (1, "T-shirt", 2, "18.39", "36.78", "3.68", "4.12", "3.48"),
    (2, "Mug", 3, "7.82", "23.46", "0.00", "2.92", "2.47"),
    (3, "Headphones", 1, "54.28", "54.28", "0.00", "6.76", "2.37"),
]
ORDER_ID = re.compile(r"^L[A-Z2-7]{15}$")
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
PRIVATE_MARIADB_DATABASE = "test_legacy_orders"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("legacy_orders") / "template.db"
    asyncio.run(seed_database(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(params=["sqlite", "mariadb"])
async def any_url(request: pytest.FixtureRequest, seeded_template: Path, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return copy_seeded(seeded_template, tmp_path)
    return await private_mariadb(PRIVATE_MARIADB_DATABASE)


@pytest.fixture
async def sqlite_db_url(seeded_template: Path, tmp_path: Path) -> str:
    return copy_seeded(seeded_template, tmp_path)


@pytest.fixture
async def maria_url() -> str:
    return await private_mariadb(PRIVATE_MARIADB_DATABASE)


@pytest.fixture
async def db(sqlite_db_url: str) -> AsyncIterator[AsyncEngine]:
    async for engine in engine_for(sqlite_db_url):
        yield engine


@pytest.fixture
async def client(sqlite_db_url: str, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(create_app(sqlite_db_url))


@pytest.fixture
async def any_db(any_url: str) -> AsyncIterator[AsyncEngine]:
    async for engine in engine_for(any_url):
        yield engine


@pytest.fixture
async def any_client(any_url: str, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(create_app(any_url))


@pytest.fixture
async def maria_db(maria_url: str) -> AsyncIterator[AsyncEngine]:
    async for engine in engine_for(maria_url):
        yield engine


@pytest.fixture
async def maria_client(maria_url: str, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(create_app(maria_url))


# --- helpers ----------------------------------------------------------------------------------


async def place(client: TestClient, key: str | None = "key-1", body: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    h = dict(USER1 if headers is None else headers)
    if key is not None:
        h["Idempotency-Key"] = key
    return await client.post(PLACE, json=WORKED if body is None else body, headers=h)


async def place_ok(client: TestClient, key: str = "key-1", **kw: Any) -> dict[str, Any]:
    return (await envelope(await place(client, key, **kw), 200))["data"]


async def state(engine: AsyncEngine) -> dict[str, Any]:
    """Everything place_order / cancel may touch, for "nothing changed" checks."""
    async with engine.connect() as conn:
        return {
            "orders": (await conn.execute(select(func.count()).select_from(orders))).scalar(),
            "items": (await conn.execute(select(func.count()).select_from(order_items))).scalar(),
            "history": (await conn.execute(select(func.count()).select_from(order_status_history))).scalar(),
            "outbox": (await conn.execute(select(func.count()).select_from(outbox))).scalar(),
            "ledger": (await conn.execute(select(func.count()).select_from(wallet_ledger))).scalar(),
            "user_coupons": (await conn.execute(
                select(user_coupons.c.id, user_coupons.c.status, user_coupons.c.order_id).order_by(user_coupons.c.id)
            )).all(),
            "stock": (await conn.execute(select(skus.c.id, skus.c.stock).order_by(skus.c.id))).all(),
            "wallet": (await conn.execute(select(wallets.c.balance).where(wallets.c.user_id == 1))).scalar(),
        }


async def stock_of(engine: AsyncEngine, *sku_ids: int) -> list[int]:
    async with engine.connect() as conn:
        rows = dict((await conn.execute(select(skus.c.id, skus.c.stock).where(skus.c.id.in_(sku_ids)))).all())
    return [rows[s] for s in sku_ids]


async def coupon_1(engine: AsyncEngine) -> tuple[str, str | None]:
    async with engine.connect() as conn:
        row = (await conn.execute(
            select(user_coupons.c.status, user_coupons.c.order_id).where(user_coupons.c.id == 1)
        )).one()
    return row.status, row.order_id


async def wallet_1(engine: AsyncEngine) -> tuple[Decimal, list[tuple[str, Decimal]]]:
    async with engine.connect() as conn:
        balance = (await conn.execute(select(wallets.c.balance).where(wallets.c.user_id == 1))).scalar()
        ledger = (await conn.execute(
            select(wallet_ledger.c.kind, wallet_ledger.c.amount).where(wallet_ledger.c.user_id == 1).order_by(wallet_ledger.c.id)
        )).all()
    return balance, [(r.kind, r.amount) for r in ledger]


async def history(engine: AsyncEngine, order_id: str) -> list[tuple[str | None, str, str]]:
    h = order_status_history.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(h.from_status, h.to_status, h.actor).where(h.order_id == order_id).order_by(h.created_at, h.id)
        )
        return [tuple(r) for r in rows]


async def status_of(engine: AsyncEngine, order_id: str) -> str:
    async with engine.connect() as conn:
        return (await conn.execute(select(orders.c.status).where(orders.c.id == order_id))).scalar_one()


async def set_status(engine: AsyncEngine, order_id: str, status: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(orders).where(orders.c.id == order_id).values(status=status))


async def cart_skus(engine: AsyncEngine, user_id: int = 1) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(cart_items.c.sku_id).where(cart_items.c.user_id == user_id).order_by(cart_items.c.sku_id))
        return list(rows.scalars())


def new_side_order(order_id: str, user_id: int, currency: str = "EUR", status: str = "pending_payment",
                   created_at: datetime = datetime(2026, 3, 1, 12, 0, 0)) -> dict[str, Any]:
    """An order row as the new side writes it (its own address snapshot shape)."""
    return {
        "id": order_id, "user_id": user_id, "status": status, "region": "DE" if currency != "JPY" else "JP",
        "currency": currency, "fx_rate": Decimal("0.92") if currency != "JPY" else Decimal("151.2"),
        "subtotal": Decimal("114.52"), "mall_discount": Decimal("3.68"), "coupon_discount": Decimal("13.80"),
        "shipping_fee": Decimal("9.11"), "tariff": Decimal("8.32"), "wallet_deduction": Decimal("18.40"),
        "total": Decimal("96.07") if currency != "JPY" else Decimal(15788), "base_total": Decimal("104.42"),
        "address": {"name": "N", "country": "DE", "zip": "10115"}, "idempotency_key": None,
        "expires_at": created_at + timedelta(minutes=30), "created_at": created_at, "updated_at": created_at,
    }


# --- place_order ------------------------------------------------------------------------------


async def test_place_worked_example_writes_every_row(any_client: TestClient, any_db: AsyncEngine) -> None:
    before = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    resp = await place(any_client, "worked-1", headers={**USER1, "X-Platform": "ios", "X-App-Version": "5.2.0"})
    data = (await envelope(resp, 200))["data"]
    order_id = data["order_id"]
    assert ORDER_ID.match(order_id), order_id
    assert {k: v for k, v in data.items() if k not in ("order_id", "expires_at")} == {
        "status": "pending_payment", "total": "96.07", "currency": "EUR",
    }
    assert ISO_Z.match(data["expires_at"])
    expires = datetime.fromisoformat(data["expires_at"][:-1])
    assert before + timedelta(minutes=30) <= expires <= datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=30, seconds=1)

    async with any_db.connect() as conn:
        row = (await conn.execute(select(orders).where(orders.c.id == order_id))).one()
        items = (await conn.execute(select(order_items).where(order_items.c.order_id == order_id).order_by(order_items.c.sku_id))).all()
        notes = (await conn.execute(select(outbox))).all()
    assert (row.user_id, row.status, row.region, row.currency, row.fx_rate) == (1, "pending_payment", "DE", "EUR", Decimal("0.92"))
    assert {k: str(getattr(row, k)) for k in WORKED_SUMMARY} == {k: v + "00" for k, v in WORKED_SUMMARY.items()}
    assert row.base_total == Decimal("104.42")  # USD: 124.48 - 4.00 - 15.00 + 9.90 + 9.04 - 20.00
    assert row.user_coupon_id == 1
    assert row.address == {
        "name": "Erika Mustermann", "phone": "+4915112345678", "country": "DE", "city": "Berlin",
        "zip": "10115", "line1": "Unter den Linden 1",
    }
    assert (row.platform, row.app_version, row.idempotency_key) == ("ios", "5.2.0", "worked-1")
    assert row.expires_at - row.created_at == timedelta(minutes=30)
    assert row.paid_at is None
    assert [
        (i.sku_id, i.name, i.qty, str(i.unit_price), str(i.line_total), str(i.mall_discount), str(i.coupon_discount), str(i.tariff))
        for i in items
    ] == [(s, n, q, *(m + "00" for m in money)) for s, n, q, *money in WORKED_ITEMS]

    assert await history(any_db, order_id) == [(None, "pending_payment", "legacy")]
    assert await coupon_1(any_db) == ("locked", order_id)
    assert await wallet_1(any_db) == (Decimal(0), [("reserve", Decimal("20.00"))])
    assert await stock_of(any_db, 1, 2, 3) == [WORKED_EXAMPLE_STOCK - 2, WORKED_EXAMPLE_STOCK - 3, WORKED_EXAMPLE_STOCK - 1]
    assert len(notes) == 1
    note = notes[0]
    assert (note.topic, note.key, note.published_at) == ("noti", order_id, None)
    assert note.payload == {
        "user_id": 1, "template": "order_placed", "order_id": order_id,
        "vars": {"total": "96.07", "currency": "EUR", "payment_method": None},
    }
    # The cart stays until the app reports payment.
    assert await cart_skus(any_db) == [1, 2, 3]

    # The order list and the detail show it.
    listed = (await envelope(await any_client.get(LIST, headers=USER1), 200))["data"]["orders"]
    assert [(o["id"], o["status"], o["total"], o["currency"]) for o in listed] == [(order_id, "pending_payment", "96.07", "EUR")]
    detail = (await envelope(await any_client.get(f"/shopping/orders_v43/{order_id}", headers=USER1), 200))["data"]
    assert detail["summary"] == WORKED_SUMMARY


async def test_wrong_expected_total_is_409_with_fresh_summary_and_nothing_written(client: TestClient, db: AsyncEngine) -> None:
    before = await state(db)
    err = await envelope(await place(client, body={**WORKED, "expected_total": "96.08"}), 409)
    assert (err["code"], err["msg"]) == (40901, "price_changed")
    # The fresh price, shaped like calc_price's data.
    assert err["data"]["summary"] == WORKED_SUMMARY
    assert [i["sku_id"] for i in err["data"]["items"]] == [1, 2, 3] and err["data"]["coupon"]["user_coupon_id"] == 1
    assert await state(db) == before
    # The same key can then be used with the right total.
    assert (await place_ok(client))["total"] == "96.07"


@pytest.mark.parametrize(
    ("key", "body", "headers", "status", "code", "field"),
    [
        (None, WORKED, USER1, 400, 40001, "Idempotency-Key"),
        ("   ", WORKED, USER1, 400, 40001, "Idempotency-Key"),
        ("k" * 65, WORKED, USER1, 400, 40001, "Idempotency-Key"),
        ("k", WORKED, {}, 401, 40101, None),
        ("k", {k: v for k, v in WORKED.items() if k != "address_id"}, USER1, 400, 40001, "address_id"),
        ("k", {k: v for k, v in WORKED.items() if k != "expected_total"}, USER1, 400, 40001, "expected_total"),
        ("k", {**WORKED, "expected_total": 96.07}, USER1, 400, 40001, "expected_total"),
        ("k", {**WORKED, "expected_total": "96,07"}, USER1, 400, 40001, "expected_total"),
        ("k", {**WORKED, "payment_method": 7}, USER1, 400, 40001, "payment_method"),
        # Address 2 is user 2's: treated exactly like a missing one.
        ("k", {**WORKED, "address_id": 2}, USER1, 400, 40001, "address_id"),
        ("k", {**WORKED, "address_id": 999_999}, USER1, 400, 40001, "address_id"),
        ("k", {**WORKED, "items": []}, USER1, 400, 40001, "items"),
    ],
)
async def test_bad_input_is_rejected_and_nothing_written(
    client: TestClient, db: AsyncEngine, key: str | None, body: dict[str, Any], headers: dict[str, str],
    status: int, code: int, field: str | None,
) -> None:
    before = await state(db)
    err = await envelope(await place(client, key, body=body, headers=headers), status)
    assert err["code"] == code
    if field is not None:
        assert err["data"]["field"] == field, err
    assert await state(db) == before


async def test_malformed_json_and_empty_cart(client: TestClient, db: AsyncEngine) -> None:
    resp = await client.post(PLACE, data=b"{nope", headers={**USER1, "Idempotency-Key": "k", "Content-Type": "application/json"})
    assert (await envelope(resp, 400))["data"]["field"] == "body"
    async with db.begin() as conn:
        await conn.execute(delete(cart_items).where(cart_items.c.user_id == 1))
    before = await state(db)
    err = await envelope(await place(client), 400)
    assert err["data"]["field"] == "items"
    assert await state(db) == before


async def test_same_key_twice_is_one_order(client: TestClient, db: AsyncEngine) -> None:
    first = await place_ok(client, "same")
    after_first = await state(db)
    second = await place_ok(client, "same")
    assert second == first
    assert await state(db) == after_first
    # The key is per user: user 2 with the same key places their own order.
    other_body = {"items": [{"sku_id": 1, "qty": 1}], "address_id": 2, "currency": "USD"}
    quoted = (await envelope(await client.post("/shopping/cal_price/v4_4", json=other_body, headers=USER2), 200))["data"]
    other = await place_ok(client, "same", body={**other_body, "expected_total": quoted["summary"]["total"]}, headers=USER2)
    assert other["order_id"] != first["order_id"]
    after_first = await state(db)
    # A new key with the same coupon: the coupon is locked to the first order now.
    err = await envelope(await place(client, "another"), 422)
    assert err == {"code": 42201, "msg": "coupon_not_applicable", "data": {"reason": "used"}}
    assert await state(db) == after_first
    # Without the coupon and the wallet the second order goes through.
    body: dict[str, Any] = {"address_id": 1, "currency": "EUR"}
    quoted = (await envelope(await client.post("/shopping/cal_price/v4_4", json=body, headers=USER1), 200))["data"]
    second_order = await place_ok(client, "another", body={**body, "expected_total": quoted["summary"]["total"]})
    assert second_order["order_id"] != first["order_id"] and second_order["total"] == quoted["summary"]["total"]


async def test_replay_answers_the_current_status(client: TestClient, db: AsyncEngine) -> None:
    first = await place_ok(client, "replay")
    await set_status(db, first["order_id"], "paid")
    assert await place_ok(client, "replay") == {**first, "status": "paid"}


async def test_public_code_without_a_row_gets_a_locked_row(client: TestClient, db: AsyncEngine) -> None:
    # User 1 holds no WELCOME10 row.
    body = {"coupon_code": "WELCOME10", "address_id": 1, "currency": "USD", "use_wallet": False}
    quoted = (await envelope(await client.post("/shopping/cal_price/v4_4", json=body, headers=USER1), 200))["data"]
    assert quoted["coupon"]["user_coupon_id"] is None
    data = await place_ok(client, "code", body={**body, "expected_total": quoted["summary"]["total"]})
    async with db.connect() as conn:
        rows = (await conn.execute(
            select(user_coupons.c.id, user_coupons.c.coupon_id, user_coupons.c.status, user_coupons.c.order_id)
            .where(user_coupons.c.user_id == 1, user_coupons.c.coupon_id == 3)
        )).all()
        order = (await conn.execute(select(orders.c.user_coupon_id).where(orders.c.id == data["order_id"]))).scalar()
    assert len(rows) == 1 and rows[0].status == "locked" and rows[0].order_id == data["order_id"]
    assert order == rows[0].id
    # Cancelling gives the row back as unused.
    await envelope(await client.post(f"/shopping/orders/{data['order_id']}/cancel", headers=USER1), 200)
    async with db.connect() as conn:
        status = (await conn.execute(select(user_coupons.c.status, user_coupons.c.order_id).where(user_coupons.c.id == rows[0].id))).one()
    assert tuple(status) == ("unused", None)


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("zip", "00000", None),
        ("phone", "+1 000 000 0000", None),
        ("country", "KP", None),
        ("line1", "PO Box 17", None),
        ("zip", "10115", ("zip", "10115")),
        ("country", "DE", ("country", "de")),
    ],
)
async def test_blacklisted_address_is_422(
    client: TestClient, db: AsyncEngine, column: str, value: str, rule: tuple[str, str] | None
) -> None:
    async with db.begin() as conn:
        await conn.execute(update(addresses).where(addresses.c.id == 1).values({column: value}))
        if rule is not None:
            await conn.execute(insert(address_blacklist).values(id=100, kind=rule[0], value=rule[1]))
    before = await state(db)
    err = await envelope(await place(client), 422)
    assert (err["code"], err["msg"]) == (42202, "address_blocked")
    assert err["data"] == {"address_id": 1, "kind": rule[0] if rule else {"line1": "line_contains"}.get(column, column)}
    assert await state(db) == before


async def test_out_of_stock_names_the_sku_and_changes_nothing(client: TestClient, db: AsyncEngine) -> None:
    # SKUs 1 and 2 are taken first (ascending id); SKU 3 fails, and the whole transaction rolls back.
    async with db.begin() as conn:
        await conn.execute(update(skus).where(skus.c.id == 3).values(stock=0))
    before = await state(db)
    err = await envelope(await place(client), 422)
    assert err == {"code": 42203, "msg": "out_of_stock", "data": {"sku_id": 3}}
    assert await state(db) == before
    assert await coupon_1(db) == ("unused", None)
    assert (await wallet_1(db))[0] == Decimal("20.00")
    # Exactly enough stock is fine.
    async with db.begin() as conn:
        await conn.execute(update(skus).where(skus.c.id == 3).values(stock=1))
    await place_ok(client, "enough")
    assert await stock_of(db, 3) == [0]


async def test_twenty_concurrent_requests_with_one_key_place_one_order(maria_client: TestClient, maria_db: AsyncEngine) -> None:
    responses = await asyncio.gather(*(place(maria_client, "race-key") for _ in range(20)))
    bodies = [await envelope(r, 200) for r in responses]
    ids = {b["data"]["order_id"] for b in bodies}
    assert len(ids) == 1
    async with maria_db.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(orders))).scalar() == 1
        assert (await conn.execute(select(func.count()).select_from(outbox))).scalar() == 1
    assert await stock_of(maria_db, 1, 2, 3) == [WORKED_EXAMPLE_STOCK - 2, WORKED_EXAMPLE_STOCK - 3, WORKED_EXAMPLE_STOCK - 1]
    assert await wallet_1(maria_db) == (Decimal(0), [("reserve", Decimal("20.00"))])
    assert await coupon_1(maria_db) == ("locked", ids.pop())


async def test_concurrent_same_key_without_coupon_or_wallet_is_settled_by_the_unique_key(
    maria_client: TestClient, maria_db: AsyncEngine
) -> None:
    # Nothing but stock (plenty of it) to take: the losers get as far as inserting the order.
    body: dict[str, Any] = {"items": [{"sku_id": 2, "qty": 1}], "address_id": 1, "currency": "EUR"}
    quoted = (await envelope(await maria_client.post("/shopping/cal_price/v4_4", json=body, headers=USER1), 200))["data"]
    body["expected_total"] = quoted["summary"]["total"]
    responses = await asyncio.gather(*(place(maria_client, "race-stock", body=body) for _ in range(20)))
    ids = {(await envelope(r, 200))["data"]["order_id"] for r in responses}
    assert len(ids) == 1
    async with maria_db.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(orders))).scalar() == 1
        assert (await conn.execute(select(func.count()).select_from(order_items))).scalar() == 1
    assert await stock_of(maria_db, 2) == [WORKED_EXAMPLE_STOCK - 1]


async def test_concurrent_orders_for_scarce_stock(maria_client: TestClient, maria_db: AsyncEngine) -> None:
    async with maria_db.begin() as conn:
        await conn.execute(update(skus).where(skus.c.id == 4).values(stock=3, active=True))
        price = (await conn.execute(select(skus.c.price).where(skus.c.id == 4))).scalar()
    body = {"items": [{"sku_id": 4, "qty": 1}], "address_id": 1, "currency": "USD"}
    quoted = (await envelope(await maria_client.post("/shopping/cal_price/v4_4", json=body, headers=USER1), 200))["data"]
    assert quoted["items"][0]["unit_price"] == f"{price:.2f}"
    body["expected_total"] = quoted["summary"]["total"]
    responses = await asyncio.gather(*(place(maria_client, f"scarce-{n}", body=body) for n in range(12)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 3 + [422] * 9
    for r in responses:
        if r.status == 422:
            assert (await r.json())["data"] == {"sku_id": 4}
    assert await stock_of(maria_db, 4) == [0]


# --- detail -----------------------------------------------------------------------------------


async def test_detail_for_the_owner(client: TestClient, db: AsyncEngine) -> None:
    placed = await place_ok(client)
    order_id = placed["order_id"]
    async with db.begin() as conn:
        await conn.execute(insert(payments).values(
            order_id=order_id, provider="adyen", method="card", status="captured", amount=Decimal("96.07"),
            currency="EUR", psp_reference="PSP-SECRET", idempotency_key="idem-secret",
        ))
        await conn.execute(insert(refunds).values(
            order_id=order_id, payment_id=1, amount=Decimal(10), currency="EUR", status="pending",
            psp_reference="REF-SECRET", request_id="r-1",
        ))
    resp = await client.get(f"/shopping/orders_v43/{order_id}", headers=USER1)
    data = (await envelope(resp, 200))["data"]
    assert set(data) == {
        "order_id", "status", "currency", "region", "created_at", "expires_at", "paid_at", "items", "summary",
        "status_history", "address", "payments", "refunds", "server_time",
    }
    assert (data["order_id"], data["status"], data["currency"], data["region"], data["paid_at"]) == (
        order_id, "pending_payment", "EUR", "DE", None
    )
    assert data["expires_at"] == placed["expires_at"] and ISO_Z.match(data["created_at"]) and ISO_Z.match(data["server_time"])
    assert [
        (i["sku_id"], i["name"], i["qty"], i["unit_price"], i["line_total"], i["mall_discount"], i["coupon_discount"], i["tariff"])
        for i in data["items"]
    ] == WORKED_ITEMS
    assert data["summary"] == WORKED_SUMMARY
    assert data["status_history"] == [{"from": None, "to": "pending_payment", "at": data["created_at"]}]
    assert data["address"]["zip"] == "10115" and data["address"]["country"] == "DE"
    [payment], [refund] = data["payments"], data["refunds"]
    assert ISO_Z.match(payment["created_at"]) and ISO_Z.match(refund["created_at"])
    assert {**payment, "created_at": "…"} == {"provider": "adyen", "method": "card", "status": "captured", "amount": "96.07",
                                              "currency": "EUR", "created_at": "…"}
    assert {**refund, "created_at": "…"} == {"provider": "adyen", "amount": "10.00", "currency": "EUR", "status": "pending",
                                             "created_at": "…"}
    assert "SECRET" not in await resp.text()

    # Two reads of an unchanged order differ in server_time only.
    again = (await envelope(await client.get(f"/shopping/orders_v43/{order_id}", headers=USER1), 200))["data"]
    assert {k: v for k, v in again.items() if k != "server_time"} == {k: v for k, v in data.items() if k != "server_time"}


async def test_detail_reads_an_order_the_new_side_wrote(client: TestClient, db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await conn.execute(insert(orders).values(new_side_order("N-JPY-1", 1, currency="JPY", status="paid")))
        await conn.execute(insert(order_status_history).values(
            order_id="N-JPY-1", from_status=None, to_status="pending_payment", actor="new", created_at=datetime(2026, 3, 1, 12),
        ))
    data = (await envelope(await client.get("/shopping/orders_v43/N-JPY-1", headers=USER1), 200))["data"]
    assert data["status"] == "paid" and data["summary"]["total"] == "15788" and data["summary"]["subtotal"] == "115"
    assert data["items"] == [] and data["address"] == {"name": "N", "country": "DE", "zip": "10115"}
    assert data["status_history"] == [{"from": None, "to": "pending_payment", "at": "2026-03-01T12:00:00Z"}]


@pytest.mark.parametrize(
    "bad_id",
    ["nope", "L" + "A" * 40, "%27%20OR%201%3D1", "%E2%98%83", "..", "a%2Fb", "%00", "1e9999", "-1"],
)
async def test_detail_of_missing_or_garbage_ids_is_404(client: TestClient, bad_id: str) -> None:
    resp = await client.get(f"/shopping/orders_v43/{bad_id}", headers=USER1)
    assert resp.status == 404, await resp.text()
    body = await resp.json()
    assert body["code"] in (40401, 40400)  # 40400 only where the path no longer matches the route (e.g. "..")
    if bad_id != "..":
        assert body == {"code": 40401, "msg": "order_not_found", "data": None}


async def test_order_routes_are_owner_only(client: TestClient, db: AsyncEngine) -> None:
    order_id = (await place_ok(client))["order_id"]
    before = await state(db)
    routes = [
        ("GET", f"/shopping/orders_v43/{order_id}"),
        ("GET", f"/shopping/orders/{order_id}/pay_cm"),
        ("POST", f"/shopping/orders/{order_id}/paid_from_client"),
        ("POST", f"/shopping/orders/{order_id}/cancel"),
    ]
    for method, path in routes:
        other = await envelope(await client.request(method, path, headers=USER2), 404)
        missing = await envelope(await client.request(method, path.replace(order_id, "LAAAAAAAAAAAAAAA"), headers=USER1), 404)
        assert other == missing == {"code": 40401, "msg": "order_not_found", "data": None}, path
        anonymous = await envelope(await client.request(method, path), 401)
        assert anonymous["msg"] == "login_required"
    assert await state(db) == before
    assert await status_of(db, order_id) == "pending_payment"
    assert await cart_skus(db) == [1, 2, 3]


# --- payment methods --------------------------------------------------------------------------


async def test_payment_methods_are_the_hard_coded_list(client: TestClient, db: AsyncEngine) -> None:
    order_id = (await place_ok(client))["order_id"]
    async with db.begin() as conn:
        await conn.execute(insert(orders), [
            new_side_order("N-JPY", 1, currency="JPY"),
            {**new_side_order("N-KWD", 1), "currency": "KWD"},
        ])
    resp = await client.get(f"/shopping/orders/{order_id}/pay_cm", headers=USER1)
    assert (await envelope(resp, 200))["data"] == {"methods": [
        {"code": "card", "provider": "adyen", "title": "Credit or debit card"},
        {"code": "paypal", "provider": "paypal", "title": "PayPal"},
    ]}
    resp = await client.get("/shopping/orders/N-JPY/pay_cm", headers=USER1)
    assert [m["code"] for m in (await envelope(resp, 200))["data"]["methods"]] == ["card", "paypal"]
    resp = await client.get("/shopping/orders/N-KWD/pay_cm", headers=USER1)
    assert (await envelope(resp, 200))["data"] == {"methods": []}


# --- paid_from_client -------------------------------------------------------------------------


async def test_paid_from_client_clears_the_cart_and_moves_status_once(client: TestClient, db: AsyncEngine) -> None:
    order_id = (await place_ok(client))["order_id"]
    await envelope(await client.post("/shopping/cart", json={"sku_id": 7, "qty": 1}, headers=USER1), 200)
    # Another user's cart with the same SKUs is not touched.
    async with db.begin() as conn:
        await conn.execute(delete(cart_items).where(cart_items.c.user_id == 2))
        await conn.execute(insert(cart_items).values(user_id=2, sku_id=1, qty=1, selected=True))
    path = f"/shopping/orders/{order_id}/paid_from_client"
    data = (await envelope(await client.post(path, headers=USER1), 200))["data"]
    assert data == {"order_id": order_id, "status": "payment_confirming"}
    assert await cart_skus(db) == [7]
    assert await cart_skus(db, 2) == [1]
    assert await history(db, order_id) == [(None, "pending_payment", "legacy"), ("pending_payment", "payment_confirming", "legacy")]

    # Repeating is harmless.
    data = (await envelope(await client.post(path, headers=USER1), 200))["data"]
    assert data == {"order_id": order_id, "status": "payment_confirming"}
    assert len(await history(db, order_id)) == 2

    # From payment_failed it moves again; once paid it only answers the status.
    await set_status(db, order_id, "payment_failed")
    assert (await envelope(await client.post(path, headers=USER1), 200))["data"]["status"] == "payment_confirming"
    await set_status(db, order_id, "paid")
    assert (await envelope(await client.post(path, headers=USER1), 200))["data"]["status"] == "paid"
    assert await status_of(db, order_id) == "paid"
    assert [h[1] for h in await history(db, order_id)] == ["pending_payment", "payment_confirming", "payment_confirming"]


async def test_paid_from_client_on_a_cancelled_order_is_409_and_keeps_the_cart(client: TestClient, db: AsyncEngine) -> None:
    order_id = (await place_ok(client))["order_id"]
    await envelope(await client.post(f"/shopping/orders/{order_id}/cancel", headers=USER1), 200)
    err = await envelope(await client.post(f"/shopping/orders/{order_id}/paid_from_client", headers=USER1), 409)
    assert err == {"code": 40901, "msg": "invalid_state", "data": {"status": "cancelled"}}
    assert await cart_skus(db) == [1, 2, 3]
    assert await status_of(db, order_id) == "cancelled"


# --- cancel -----------------------------------------------------------------------------------


async def test_cancel_releases_coupon_wallet_and_stock_once(any_client: TestClient, any_db: AsyncEngine) -> None:
    order_id = (await place_ok(any_client))["order_id"]
    path = f"/shopping/orders/{order_id}/cancel"
    data = (await envelope(await any_client.post(path, headers=USER1), 200))["data"]
    assert data == {"order_id": order_id, "status": "cancelled"}
    assert await coupon_1(any_db) == ("unused", None)
    assert await wallet_1(any_db) == (Decimal("20.00"), [("reserve", Decimal("20.00")), ("release", Decimal("20.00"))])
    assert await stock_of(any_db, 1, 2, 3) == [WORKED_EXAMPLE_STOCK] * 3
    assert await history(any_db, order_id) == [(None, "pending_payment", "legacy"), ("pending_payment", "cancelled", "legacy")]

    # Again: already cancelled, nothing released twice.
    released = await state(any_db)
    data = (await envelope(await any_client.post(path, headers=USER1), 200))["data"]
    assert data == {"order_id": order_id, "status": "cancelled"}
    assert await state(any_db) == released

    # The order list shows the new status; the coupon and wallet can be used again.
    listed = (await envelope(await any_client.get(LIST, headers=USER1), 200))["data"]["orders"]
    assert [(o["id"], o["status"]) for o in listed] == [(order_id, "cancelled")]
    await place_ok(any_client, "after-cancel")


@pytest.mark.parametrize("status", ["paid", "payment_confirming", "fulfilling", "refunded"])
async def test_cancel_in_a_later_state_is_409(client: TestClient, db: AsyncEngine, status: str) -> None:
    order_id = (await place_ok(client))["order_id"]
    await set_status(db, order_id, status)
    before = await state(db)
    err = await envelope(await client.post(f"/shopping/orders/{order_id}/cancel", headers=USER1), 409)
    assert err == {"code": 40901, "msg": "invalid_state", "data": {"status": status}}
    assert await state(db) == before


@pytest.mark.parametrize("status", ["payment_failed", "authorized"])
async def test_cancel_from_other_cancellable_states(client: TestClient, db: AsyncEngine, status: str) -> None:
    order_id = (await place_ok(client))["order_id"]
    await set_status(db, order_id, status)
    data = (await envelope(await client.post(f"/shopping/orders/{order_id}/cancel", headers=USER1), 200))["data"]
    assert data["status"] == "cancelled"
    assert (await history(db, order_id))[-1] == (status, "cancelled", "legacy")
    assert await coupon_1(db) == ("unused", None)


async def test_concurrent_cancels_release_once(maria_client: TestClient, maria_db: AsyncEngine) -> None:
    order_id = (await place_ok(maria_client))["order_id"]
    path = f"/shopping/orders/{order_id}/cancel"
    responses = await asyncio.gather(*(maria_client.post(path, headers=USER1) for _ in range(10)))
    for r in responses:
        assert (await envelope(r, 200))["data"] == {"order_id": order_id, "status": "cancelled"}
    assert await wallet_1(maria_db) == (Decimal("20.00"), [("reserve", Decimal("20.00")), ("release", Decimal("20.00"))])
    assert await coupon_1(maria_db) == ("unused", None)
    assert await stock_of(maria_db, 1, 2, 3) == [WORKED_EXAMPLE_STOCK] * 3
    assert [h[1] for h in await history(maria_db, order_id)] == ["pending_payment", "cancelled"]


async def test_cancel_racing_a_payment_either_cancels_or_answers_409(maria_client: TestClient, maria_db: AsyncEngine) -> None:
    """The other side moves the order to paid (guarded) while old shopping cancels: one wins, nothing leaks."""
    order_id = (await place_ok(maria_client))["order_id"]

    async def pay() -> int:
        async with maria_db.begin() as conn:
            result = await conn.execute(
                update(orders).where(orders.c.id == order_id, orders.c.status == "pending_payment").values(status="paid")
            )
            return result.rowcount

    cancel, paid = await asyncio.gather(maria_client.post(f"/shopping/orders/{order_id}/cancel", headers=USER1), pay())
    if paid:
        assert (await envelope(cancel, 409))["data"] == {"status": "paid"}
        assert await coupon_1(maria_db) == ("locked", order_id)
        assert (await wallet_1(maria_db))[0] == Decimal(0)
    else:
        assert (await envelope(cancel, 200))["data"]["status"] == "cancelled"
        assert await coupon_1(maria_db) == ("unused", None)
        assert (await wallet_1(maria_db))[0] == Decimal("20.00")


# --- order list -------------------------------------------------------------------------------


async def test_order_list_shows_both_sides_orders(client: TestClient, db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await conn.execute(insert(orders).values(new_side_order("N-1", 1, status="payment_confirming")))
    mine = (await place_ok(client))["order_id"]
    listed = (await envelope(await client.get(LIST, headers=USER1), 200))["data"]["orders"]
    assert [(o["id"], o["status"], o["total"]) for o in listed] == [(mine, "pending_payment", "96.07"), ("N-1", "payment_confirming", "96.07")]
    # Detail of the new side's order from old shopping, and old shopping's cancel of it is refused (not cancellable).
    assert (await envelope(await client.get("/shopping/orders_v43/N-1", headers=USER1), 200))["data"]["status"] == "payment_confirming"
    err = await envelope(await client.post("/shopping/orders/N-1/cancel", headers=USER1), 409)
    assert err["data"] == {"status": "payment_confirming"}
