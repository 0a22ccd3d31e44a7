"""The old-shopping emulator (emulators.legacy) against real databases.

DB-backed tests run on SQLite and on MariaDB; each test drops, recreates and seeds
the tables itself. On MariaDB they use their own database next to `test`
(`test_legacy_emulator`, created on demand) so a suite running elsewhere against
`test` at the same time cannot drop tables under them. Fault-knob tests only need SQLite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from emulators.legacy import create_admin_app, create_app
from emulators.legacy.errors import error_middleware
from emulators.legacy.routes import ROUTES, LegacyRoute, add_routes
from shop.db import create_all, drop_all, make_engine
from shop.schema import cart_items, orders, skus
from shop.seed import seed_demo
from tests.conftest import MARIADB_DATABASE
from tests.support.legacydb import envelope
from tests.support.shopdb import seed_database

ClientFactory = Callable[..., Awaitable[TestClient]]

# No seeded user has this id (the demo has users 1..1000), so their rows are all the test's own.
USER = 5_000_001
OTHER_USER = 5_000_002
AUTH = {"X-User-Id": str(USER)}
# Prefixed like tests.support.legacydb.private_mariadb, so a second suite (SHOP_TEST_MARIADB_DB) has its own.
PRIVATE_MARIADB_DATABASE = "test_legacy_emulator" if MARIADB_DATABASE == "test" else f"{MARIADB_DATABASE}_test_legacy_emulator"


@pytest.fixture
async def emulator_db_url(db_url: str) -> str:
    """``db_url``, with MariaDB moved to this module's own database (created if missing)."""
    url = make_url(db_url)
    if url.get_backend_name() not in ("mysql", "mariadb"):
        return db_url
    server = make_engine(db_url)
    try:
        async with server.begin() as conn:
            await conn.execute(
                text(f"CREATE DATABASE IF NOT EXISTS `{PRIVATE_MARIADB_DATABASE}` CHARACTER SET utf8mb4")
            )
    finally:
        await server.dispose()
    return url.set(database=PRIVATE_MARIADB_DATABASE).render_as_string(hide_password=False)


@pytest.fixture
async def db(emulator_db_url: str) -> AsyncIterator[AsyncEngine]:
    """A freshly created and seeded database; the engine is the test's own view of it."""
    engine = make_engine(emulator_db_url)
    await drop_all(engine)
    await create_all(engine)
    await seed_demo(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def client(db: AsyncEngine, emulator_db_url: str, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(create_app(emulator_db_url))


@pytest.fixture
async def bare_client(sqlite_url: str, aiohttp_client: ClientFactory) -> TestClient:
    """An emulator on an empty SQLite file: enough for routing, envelopes and fault knobs."""
    return await aiohttp_client(create_app(sqlite_url))


@pytest.fixture
async def bare_admin(bare_client: TestClient, aiohttp_client: ClientFactory) -> TestClient:
    """The control API (/_emulator/*) of ``bare_client``'s emulator, on its own listener."""
    return await aiohttp_client(create_admin_app(bare_client.server.app))


async def cart_rows(engine: AsyncEngine, user_id: int = USER) -> list[tuple[int, int, bool]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(cart_items.c.sku_id, cart_items.c.qty, cart_items.c.selected)
            .where(cart_items.c.user_id == user_id)
            .order_by(cart_items.c.sku_id)
        )
        return [(r.sku_id, r.qty, bool(r.selected)) for r in rows]


# --- cart -------------------------------------------------------------------------------------


async def test_cart_upsert_get_and_delete(client: TestClient, db: AsyncEngine) -> None:
    resp = await client.get("/shopping/cart", headers=AUTH)
    assert await envelope(resp, 200) == {"code": 0, "msg": "ok", "data": {"items": []}}

    resp = await client.post("/shopping/cart", json={"sku_id": 1, "qty": 2}, headers=AUTH)
    body = await envelope(resp, 200)
    assert body["data"]["items"] == [
        {"sku_id": 1, "name": "T-shirt", "qty": 2, "selected": True, "unit_price": "19.99"}
    ]
    assert await cart_rows(db) == [(1, 2, True)]

    # Upsert: same line, new qty and selection; still one row.
    resp = await client.post("/shopping/cart", json={"sku_id": 1, "qty": 5, "selected": False}, headers=AUTH)
    await envelope(resp, 200)
    assert await cart_rows(db) == [(1, 5, False)]
    # Without `selected` the stored selection is kept.
    resp = await client.post("/shopping/cart", json={"sku_id": 1, "qty": 4}, headers=AUTH)
    await envelope(resp, 200)
    assert await cart_rows(db) == [(1, 4, False)]

    resp = await client.post("/shopping/cart", json={"sku_id": 2, "qty": 3}, headers=AUTH)
    await envelope(resp, 200)
    resp = await client.get("/shopping/cart", headers=AUTH)
    items = (await envelope(resp, 200))["data"]["items"]
    assert [(i["sku_id"], i["name"], i["qty"], i["selected"], i["unit_price"]) for i in items] == [
        (1, "T-shirt", 4, False, "19.99"),
        (2, "Mug", 3, True, "8.50"),
    ]

    # qty 0 deletes the line.
    resp = await client.post("/shopping/cart", json={"sku_id": 1, "qty": 0}, headers=AUTH)
    assert [i["sku_id"] for i in (await envelope(resp, 200))["data"]["items"]] == [2]
    assert await cart_rows(db) == [(2, 3, True)]
    # Deleting a line that is not there is harmless.
    resp = await client.post("/shopping/cart", json={"sku_id": 1, "qty": 0}, headers=AUTH)
    await envelope(resp, 200)
    assert await cart_rows(db) == [(2, 3, True)]


async def test_cart_shows_rows_the_new_side_wrote(client: TestClient, db: AsyncEngine) -> None:
    # The seed's worked-example user 1 has SKUs 1, 2, 3 in the cart.
    resp = await client.get("/shopping/cart", headers={"X-User-Id": "1"})
    items = (await envelope(resp, 200))["data"]["items"]
    assert [(i["sku_id"], i["qty"], i["unit_price"]) for i in items] == [(1, 2, "19.99"), (2, 3, "8.50"), (3, 1, "59.00")]


async def test_concurrent_upserts_leave_one_row(client: TestClient, db: AsyncEngine) -> None:
    responses = await asyncio.gather(
        *(client.post("/shopping/cart", json={"sku_id": 3, "qty": n}, headers=AUTH) for n in range(1, 9))
    )
    assert [r.status for r in responses] == [200] * 8
    rows = await cart_rows(db)
    assert len(rows) == 1 and rows[0][0] == 3 and 1 <= rows[0][1] <= 8


# (raw body, HTTP status, legacy code, field named in data; None = sku_not_found)
BAD_CART_BODIES: list[tuple[bytes, int, int, str | None]] = [
    (b"{not json", 400, 40001, "body"),
    (b"", 400, 40001, "body"),
    (b"[1, 2]", 400, 40001, "body"),
    (b'{"sku_id": 1, "qty": -1}', 400, 40001, "qty"),
    (b'{"sku_id": 1, "qty": "x"}', 400, 40001, "qty"),
    (b'{"sku_id": 1, "qty": 1000}', 400, 40001, "qty"),
    (b'{"sku_id": 1, "qty": 2.5}', 400, 40001, "qty"),
    (b'{"sku_id": 1, "qty": true}', 400, 40001, "qty"),
    (b'{"sku_id": 1}', 400, 40001, "qty"),
    (b'{"qty": 1}', 400, 40001, "sku_id"),
    (b'{"sku_id": "1", "qty": 1}', 400, 40001, "sku_id"),
    (b'{"sku_id": 1, "qty": 1, "selected": "yes"}', 400, 40001, "selected"),
    (b'{"sku_id": 1, "qty": 1, "extra": 1}', 400, 40001, "extra"),
    (b'{"sku_id": 999999, "qty": 1}', 422, 42204, None),
    (b'{"sku_id": 999999, "qty": 0}', 422, 42204, None),
]


async def test_cart_rejects_bad_input_and_changes_nothing(client: TestClient, db: AsyncEngine) -> None:
    resp = await client.post("/shopping/cart", json={"sku_id": 1, "qty": 1}, headers=AUTH)
    await envelope(resp, 200)
    assert await cart_rows(db) == [(1, 1, True)]

    for body, status, code, field in BAD_CART_BODIES:
        resp = await client.post(
            "/shopping/cart", data=body, headers={**AUTH, "Content-Type": "application/json"}
        )
        err = await envelope(resp, status)
        assert err["code"] == code, body
        if field is not None:
            assert err["msg"] == "bad_request" and err["data"]["field"] == field, (body, err)
        else:
            assert err["msg"] == "sku_not_found" and err["data"] == {"sku_id": 999999}, (body, err)
        assert await cart_rows(db) == [(1, 1, True)], body


@pytest.mark.parametrize("raw", ["\u00b2", "\uff11", "\u0661", "1\u00b2", "-1", "0", "1.0", "0x10", "9" * 19])
async def test_a_user_id_that_is_not_ascii_digits_is_400_naming_the_header(bare_client: TestClient, raw: str) -> None:
    """str.isdigit() takes superscripts and other scripts' digits; int() refuses "²" and reads "１" as user 1."""
    resp = await bare_client.get("/shopping/cart", headers={"X-User-Id": raw})
    err = await envelope(resp, 400)
    assert err == {"code": 40001, "msg": "bad_request", "data": {"field": "X-User-Id", "reason": "must be a positive integer"}}


@pytest.mark.parametrize("body", [b"[" * 990 + b"]" * 990, b'{"sku_id": 1, "qty": 1, "x": ' + b"[" * 100_000 + b"}"])
async def test_cart_refuses_json_nested_past_the_stack_and_changes_nothing(client: TestClient, db: AsyncEngine, body: bytes) -> None:
    resp = await client.post("/shopping/cart", data=body, headers={**AUTH, "Content-Type": "application/json"})
    err = await envelope(resp, 400)
    assert err["data"] == {"field": "body", "reason": "nested deeper than 64 levels"}
    assert await cart_rows(db) == []


async def test_a_body_of_strings_left_open_is_refused_in_linear_time(bare_client: TestClient) -> None:
    """Every quote of `["\\"\\"\\…` opens a string no quote closes; the depth scan must not restart from each."""
    body = b"[" + b'"\\' * 400_000
    started = time.monotonic()
    resp = await bare_client.post("/shopping/cal_price/v4_4", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert (await envelope(resp, 400))["data"] == {"field": "body", "reason": "malformed JSON"}
    assert time.monotonic() - started < 5  # quadratic, it took 15 s for a tenth of this


async def test_inactive_sku_cannot_be_added(client: TestClient, db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await conn.execute(update(skus).where(skus.c.id == 2).values(active=False))
    resp = await client.post("/shopping/cart", json={"sku_id": 2, "qty": 1}, headers=AUTH)
    err = await envelope(resp, 422)
    assert (err["code"], err["msg"], err["data"]) == (42205, "sku_unavailable", {"sku_id": 2})
    assert await cart_rows(db) == []


async def test_anonymous_caller_gets_login_required(client: TestClient, db: AsyncEngine) -> None:
    for method, path in [("GET", "/shopping/cart"), ("POST", "/shopping/cart"), ("GET", "/shopping/orders")]:
        for headers in ({}, {"X-User-Id": ""}):
            resp = await client.request(method, path, json={"sku_id": 1, "qty": 1}, headers=headers)
            assert await envelope(resp, 401) == {"code": 40101, "msg": "login_required", "data": None}
    assert await cart_rows(db) == []
    async with db.connect() as conn:
        assert (await conn.execute(select(cart_items.c.id).where(cart_items.c.user_id == 0))).first() is None


# --- orders -----------------------------------------------------------------------------------


def _order_row(order_id: str, user_id: int, status: str, currency: str, total: str, created_at: datetime) -> dict[str, Any]:
    return {
        "id": order_id,
        "user_id": user_id,
        "status": status,
        "region": "DE",
        "currency": currency,
        "fx_rate": Decimal("0.92") if currency == "EUR" else Decimal("151.2"),
        "subtotal": Decimal(total),
        "total": Decimal(total),
        "base_total": Decimal("104.42"),
        "created_at": created_at,
        "updated_at": created_at,
    }


async def test_orders_list_shows_orders_the_new_side_wrote(client: TestClient, db: AsyncEngine) -> None:
    t0 = datetime(2026, 3, 1, 12, 0, 0)
    async with db.begin() as conn:
        await conn.execute(
            insert(orders),
            [
                _order_row("O-OLD", USER, "completed", "EUR", "12.5000", t0),
                _order_row("O-NEW", USER, "pending_payment", "EUR", "96.0700", t0 + timedelta(hours=2)),
                _order_row("O-JPY", USER, "paid", "JPY", "15788.0000", t0 + timedelta(hours=1)),
                _order_row("O-OTHER", OTHER_USER, "paid", "EUR", "1.0000", t0 + timedelta(hours=3)),
            ],
        )

    resp = await client.get("/shopping/orders", headers=AUTH)
    data = (await envelope(resp, 200))["data"]
    assert data["orders"] == [
        {"id": "O-NEW", "status": "pending_payment", "currency": "EUR", "total": "96.07", "created_at": "2026-03-01T14:00:00Z"},
        {"id": "O-JPY", "status": "paid", "currency": "JPY", "total": "15788", "created_at": "2026-03-01T13:00:00Z"},
        {"id": "O-OLD", "status": "completed", "currency": "EUR", "total": "12.50", "created_at": "2026-03-01T12:00:00Z"},
    ]

    # The other side moves the order on; the list shows the current status.
    async with db.begin() as conn:
        await conn.execute(update(orders).where(orders.c.id == "O-NEW").values(status="paid"))
    resp = await client.get("/shopping/orders", params={"limit": "1"}, headers=AUTH)
    data = (await envelope(resp, 200))["data"]
    assert [(o["id"], o["status"]) for o in data["orders"]] == [("O-NEW", "paid")]

    resp = await client.get("/shopping/orders", params={"limit": "1000"}, headers=AUTH)
    assert (await envelope(resp, 200))["data"]["limit"] == 100
    for bad in ("0", "-1", "x"):
        resp = await client.get("/shopping/orders", params={"limit": bad}, headers=AUTH)
        err = await envelope(resp, 400)
        assert err["data"]["field"] == "limit"


# --- routing, envelopes -----------------------------------------------------------------------


def test_every_migrated_route_has_old_shoppings_own_handler() -> None:
    assert [r.name for r in ROUTES if r.handler is None] == []


async def test_a_route_without_a_handler_answers_501_naming_it(aiohttp_client: ClientFactory) -> None:
    app = web.Application(middlewares=[error_middleware])
    add_routes(app, (LegacyRoute("later", "POST", "/later"),))
    resp = await (await aiohttp_client(app)).post("/later", json={})
    assert await envelope(resp, 501) == {"code": 50101, "msg": "not_migrated_in_emulator", "data": {"route": "later"}}


@pytest.mark.parametrize("path", ["/nope", "/shopping/unknown", "/shopping/orders_v43/"])
async def test_unknown_path_is_404_envelope(bare_client: TestClient, path: str) -> None:
    resp = await bare_client.get(path, headers=AUTH)
    assert await envelope(resp, 404) == {"code": 40400, "msg": "not_found", "data": None}


async def test_unexpected_error_is_500_envelope_without_trace(
    sqlite_url: str, aiohttp_client: ClientFactory
) -> None:
    app = create_app(sqlite_url)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app.router.add_get("/shopping/boom", boom)
    client = await aiohttp_client(app)
    resp = await client.get("/shopping/boom")
    assert await envelope(resp, 500) == {"code": 50000, "msg": "internal_error", "data": None}
    # The tables don't exist on this empty database: a DB error must not leak either.
    resp = await client.get("/shopping/cart", headers=AUTH)
    text = await resp.text()
    assert resp.status == 500 and "Traceback" not in text and "no such table" not in text


async def test_health_and_stats(bare_client: TestClient, bare_admin: TestClient) -> None:
    resp = await bare_admin.get("/_emulator/health")
    assert resp.status == 200 and await resp.json() == {"ok": True}

    await bare_client.post("/shopping/cal_price/v4_4", json={})
    await bare_client.post("/shopping/cal_price/v4_4", json={})
    await bare_client.get("/nope")
    stats = await (await bare_admin.get("/_emulator/stats")).json()
    assert stats["total"] == 3
    assert stats["paths"] == {"/shopping/cal_price/v4_4": 2, "/nope": 1}
    assert stats["routes"]["calc_price"] == 2

    resp = await bare_admin.delete("/_emulator/stats")
    assert (await resp.json())["total"] == 0


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/_emulator/health"), ("GET", "/_emulator/faults"), ("POST", "/_emulator/faults"),
    ("DELETE", "/_emulator/faults"), ("GET", "/_emulator/stats"), ("DELETE", "/_emulator/stats"),
])
async def test_the_public_port_serves_no_control_api(bare_client: TestClient, bare_admin: TestClient, method: str, path: str) -> None:
    await set_fault(bare_admin, path="/shopping/cart", delay_ms=1)
    resp = await bare_client.request(method, path, json={"path": "*", "error_rate": 1.0})
    assert await envelope(resp, 404) == {"code": 40400, "msg": "not_found", "data": None}
    assert [r["path"] for r in (await (await bare_admin.get("/_emulator/faults")).json())["faults"]] == ["/shopping/cart"]
    # To the public port it is just another path old shopping does not have: counted like any other.
    assert (await (await bare_admin.get("/_emulator/stats")).json())["paths"] == {path: 1}


# --- fault knobs ------------------------------------------------------------------------------


async def set_fault(client: TestClient, **rule: Any) -> None:
    resp = await client.post("/_emulator/faults", json=rule)
    assert resp.status == 200, await resp.text()


async def test_fault_delay(bare_client: TestClient, bare_admin: TestClient) -> None:
    await set_fault(bare_admin, path="/shopping/orders_v43/*", delay_ms=300)
    started = time.monotonic()
    resp = await bare_client.get("/shopping/orders_v43/O-1")
    elapsed = time.monotonic() - started
    # Anonymous detail: login_required, after the delay.
    assert resp.status == 401 and elapsed >= 0.3
    # Other paths are not delayed.
    started = time.monotonic()
    resp = await bare_client.post("/refund/refund")
    assert resp.status == 401 and time.monotonic() - started < 0.3


async def test_fault_error_rate_one_answers_error_status(bare_client: TestClient, bare_admin: TestClient) -> None:
    await set_fault(bare_admin, path="/shopping/*", error_rate=1.0, error_status=503)
    for _ in range(3):
        resp = await bare_client.get("/shopping/cart", headers=AUTH)
        err = await envelope(resp, 503)
        assert err["code"] == 50300 and err["msg"] == "injected_fault"
    # Outside the prefix: untouched.
    resp = await bare_client.post("/refund/refund")
    assert resp.status == 401


async def test_fault_reset_rate_one_drops_the_connection(bare_client: TestClient, bare_admin: TestClient) -> None:
    await set_fault(bare_admin, path="/shopping/cal_price/v4_4", reset_rate=1.0)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await bare_client.post("/shopping/cal_price/v4_4", json={})
    # The server keeps serving other requests.
    resp = await bare_client.post("/refund/refund")
    assert resp.status == 401


async def test_fault_list_replace_clear_and_the_control_api_is_never_faulted(
    bare_client: TestClient, bare_admin: TestClient
) -> None:
    await set_fault(bare_admin, path="*", error_rate=1.0, error_status=500)
    await set_fault(bare_admin, path="/shopping/cart", delay_ms=10)
    await set_fault(bare_admin, path="/shopping/cart", delay_ms=20)  # replaces the previous rule
    resp = await bare_admin.get("/_emulator/faults")
    assert resp.status == 200  # the control API is never faulted, even by "*"
    assert await resp.json() == {
        "faults": [
            {"path": "*", "delay_ms": 0, "error_rate": 1.0, "error_status": 500, "reset_rate": 0.0, "random_field": None},
            {"path": "/shopping/cart", "delay_ms": 20, "error_rate": 0.0, "error_status": 500, "reset_rate": 0.0, "random_field": None},
        ]
    }
    assert (await bare_admin.get("/_emulator/health")).status == 200
    resp = await bare_client.get("/nope")
    assert (await envelope(resp, 500))["msg"] == "injected_fault"

    resp = await bare_admin.delete("/_emulator/faults")
    assert resp.status == 200 and (await resp.json())["faults"] == []
    assert (await bare_admin.get("/_emulator/faults")).status == 200
    assert await (await bare_admin.get("/_emulator/faults")).json() == {"faults": []}
    resp = await bare_client.get("/nope")
    assert (await envelope(resp, 404))["code"] == 40400


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"delay_ms": 5}, "path"),
        ({"path": "shopping"}, "path"),
        ({"path": "/a*b"}, "path"),
        ({"path": "/x", "error_rate": 1.5}, "error_rate"),
        ({"path": "/x", "reset_rate": -0.1}, "reset_rate"),
        ({"path": "/x", "error_status": 200}, "error_status"),
        ({"path": "/x", "delay_ms": "slow"}, "delay_ms"),
        ({"path": "/x", "colour": "red"}, "colour"),
    ],
)
async def test_fault_knob_validation(bare_admin: TestClient, rule: dict[str, Any], field: str) -> None:
    resp = await bare_admin.post("/_emulator/faults", json=rule)
    err = await envelope(resp, 400)
    assert err["data"]["field"] == field
    assert await (await bare_admin.get("/_emulator/faults")).json() == {"faults": []}


@pytest.mark.parametrize("body", [b"[" * 990 + b"]" * 990, b'{"path": "\\ud800"}', b'{"path": "/x", "\\udc00": 1}'])
async def test_fault_knobs_refuse_hostile_json(bare_admin: TestClient, body: bytes) -> None:
    resp = await bare_admin.post("/_emulator/faults", data=body, headers={"Content-Type": "application/json"})
    assert (await envelope(resp, 400))["msg"] == "bad_request"
    assert await (await bare_admin.get("/_emulator/faults")).json() == {"faults": []}


async def test_fractional_rates_are_reproducible_per_seed(sqlite_url: str, aiohttp_client: ClientFactory) -> None:
    async def statuses(seed: int) -> list[int]:
        client = await aiohttp_client(create_app(sqlite_url, random_seed=seed))
        await set_fault(await aiohttp_client(create_admin_app(client.server.app)), path="/refund/refund", error_rate=0.5, error_status=502)
        return [(await client.post("/refund/refund")).status for _ in range(20)]

    first, second = await statuses(7), await statuses(7)
    assert first == second
    assert set(first) == {401, 502}


async def test_oversized_body_is_413_envelope(bare_client: TestClient) -> None:
    resp = await bare_client.post(
        "/shopping/cart", data=b"x" * (2 * 1024 * 1024), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert await envelope(resp, 413) == {"code": 41301, "msg": "body_too_large", "data": None}


async def test_random_field_knob_stamps_each_answer_differently(sqlite_url: str, aiohttp_client) -> None:
    await seed_database(sqlite_url)
    client = await aiohttp_client(create_app(sqlite_url))
    admin = await aiohttp_client(create_admin_app(client.server.app))
    resp = await admin.post("/_emulator/faults", json={"path": "/shopping/cart", "random_field": "quote_time"})
    assert resp.status == 200
    first = (await (await client.get("/shopping/cart", headers={"X-User-Id": "1"})).json())["data"]
    second = (await (await client.get("/shopping/cart", headers={"X-User-Id": "1"})).json())["data"]
    assert first["quote_time"] != second["quote_time"]
    assert first["items"] == second["items"]
    bad = await admin.post("/_emulator/faults", json={"path": "/x", "random_field": "not a key"})
    assert bad.status == 400
