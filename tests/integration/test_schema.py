"""The shared schema on real MariaDB and SQLite: creation, the contract check, constraints, exact money."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Column, Float, MetaData, Table, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema
from shop.db import check_schema, create_all, drop_all, make_engine

CONTRACT_TABLES = {
    "skus", "cart_items", "mall_discounts", "coupons", "user_coupons", "wallets", "wallet_ledger",
    "forex_rates", "shipping_rules", "tariff_rules", "addresses", "address_blacklist", "payment_methods",
    "orders", "order_items", "order_status_history", "payments", "refunds", "processed_events", "outbox", "leases",
}


async def _recreate_without_constraints(engine: AsyncEngine, table: Table, **types: object) -> None:
    """Replace `table` by a copy with the same columns but no unique keys, optionally retyping some."""
    bare = Table(
        table.name,
        MetaData(),
        *(Column(c.name, types.get(c.name, c.type), primary_key=c.primary_key) for c in table.columns),  # type: ignore[arg-type]
    )
    async with engine.begin() as conn:
        await conn.run_sync(table.drop)
        await conn.run_sync(bare.create)


def test_every_contract_table_is_a_module_attribute() -> None:
    assert set(schema.metadata.tables) == CONTRACT_TABLES
    for name in CONTRACT_TABLES:
        assert getattr(schema, name) is schema.metadata.tables[name]


async def test_create_all_matches_the_contract(fresh_engine: AsyncEngine) -> None:
    assert await check_schema(fresh_engine) == []
    # Idempotent: creating again over existing tables is harmless.
    await create_all(fresh_engine)
    assert await check_schema(fresh_engine) == []


async def test_check_reports_missing_tables(fresh_engine: AsyncEngine) -> None:
    async with fresh_engine.begin() as conn:
        await conn.run_sync(schema.outbox.drop)
    assert await check_schema(fresh_engine) == ["missing table outbox"]

    await drop_all(fresh_engine)
    problems = await check_schema(fresh_engine)
    assert sorted(problems) == sorted(f"missing table {name}" for name in CONTRACT_TABLES)


async def test_check_reports_a_dropped_column(fresh_engine: AsyncEngine) -> None:
    async with fresh_engine.begin() as conn:
        await conn.execute(text("ALTER TABLE orders DROP COLUMN paid_at"))
    assert await check_schema(fresh_engine) == ["missing column orders.paid_at"]


async def test_check_reports_a_missing_unique_key(fresh_engine: AsyncEngine) -> None:
    await _recreate_without_constraints(fresh_engine, schema.refunds)
    assert await check_schema(fresh_engine) == ["missing unique key refunds(request_id)"]


async def test_check_reports_money_stored_as_float(fresh_engine: AsyncEngine) -> None:
    await _recreate_without_constraints(fresh_engine, schema.wallets, balance=Float())
    problems = await check_schema(fresh_engine)
    assert len(problems) == 1
    assert problems[0].startswith("column wallets.balance is ")
    assert problems[0].endswith("expected NUMERIC(18, 4)")


async def test_cart_line_is_unique_per_user_and_sku(fresh_engine: AsyncEngine) -> None:
    line = {"user_id": 7, "sku_id": 3, "qty": 1, "selected": True}
    async with fresh_engine.begin() as conn:
        await conn.execute(insert(schema.cart_items), [line, {**line, "sku_id": 4}, {**line, "user_id": 8}])
    with pytest.raises(IntegrityError):
        async with fresh_engine.begin() as conn:
            await conn.execute(insert(schema.cart_items), {**line, "qty": 5})
    async with fresh_engine.connect() as conn:
        count = len((await conn.execute(select(schema.cart_items.c.id))).all())
    assert count == 3


def _order(order_id: str, key: str | None) -> dict[str, object]:
    return {
        "id": order_id, "user_id": 1, "status": "pending_payment", "region": "DE", "currency": "EUR",
        "fx_rate": Decimal("0.92"), "subtotal": Decimal("114.52"), "total": Decimal("96.07"),
        "base_total": Decimal("104.42"), "idempotency_key": key,
    }


async def test_order_idempotency_key_is_unique_per_user(fresh_engine: AsyncEngine) -> None:
    async with fresh_engine.begin() as conn:
        await conn.execute(insert(schema.orders), [_order("o1", "k1"), _order("o2", None), _order("o3", None)])
        # Same key for another user is a different request.
        await conn.execute(insert(schema.orders), {**_order("o4", "k1"), "user_id": 2})
    with pytest.raises(IntegrityError):
        async with fresh_engine.begin() as conn:
            await conn.execute(insert(schema.orders), _order("o5", "k1"))


async def test_processed_event_and_refund_request_are_unique(fresh_engine: AsyncEngine) -> None:
    async with fresh_engine.begin() as conn:
        await conn.execute(insert(schema.processed_events), [
            {"consumer": "purchased", "event_id": "e1"}, {"consumer": "noti", "event_id": "e1"},
        ])
    with pytest.raises(IntegrityError):
        async with fresh_engine.begin() as conn:
            await conn.execute(insert(schema.processed_events), {"consumer": "purchased", "event_id": "e1"})

    refund = {"order_id": "o1", "payment_id": 1, "amount": Decimal("5"), "currency": "EUR",
              "status": "pending", "request_id": "r1"}
    async with fresh_engine.begin() as conn:
        await conn.execute(insert(schema.refunds), refund)
    with pytest.raises(IntegrityError):
        async with fresh_engine.begin() as conn:
            await conn.execute(insert(schema.refunds), {**refund, "order_id": "o2"})


@pytest.mark.parametrize("other", ["case-key-a", "CASE-KEY-A", "Case-Key-A ", "Case-Key-\u00c0"])
async def test_keys_and_references_compare_byte_exact(fresh_engine: AsyncEngine, other: str) -> None:
    """Case, trailing spaces and accents all make another key (MariaDB's default collation calls them equal)."""
    key = "Case-Key-A"
    async with fresh_engine.begin() as conn:
        await conn.execute(insert(schema.orders), [_order("o1", key), _order("o2", other)])
        await conn.execute(insert(schema.processed_events), [
            {"consumer": "purchased", "event_id": key}, {"consumer": "purchased", "event_id": other},
        ])
        refund = {"payment_id": 1, "amount": Decimal("5"), "currency": "EUR", "status": "pending"}
        await conn.execute(insert(schema.refunds), [
            {**refund, "order_id": "o1", "request_id": key}, {**refund, "order_id": "o2", "request_id": other},
        ])
        payment = {"provider": "adyen", "status": "created", "amount": Decimal("5"), "currency": "EUR"}
        await conn.execute(insert(schema.payments), [
            {**payment, "order_id": "o1", "idempotency_key": key}, {**payment, "order_id": "o2", "idempotency_key": other},
        ])
    async with fresh_engine.connect() as conn:
        o, r, p = schema.orders.c, schema.refunds.c, schema.payments.c
        assert (await conn.execute(select(o.id).where(o.user_id == 1, o.idempotency_key == key))).scalars().all() == ["o1"]
        assert (await conn.execute(select(r.order_id).where(r.request_id == other))).scalars().all() == ["o2"]
        assert (await conn.execute(select(p.order_id).where(p.idempotency_key == key))).scalars().all() == ["o1"]
        e = schema.processed_events.c
        assert (await conn.execute(select(e.event_id).where(e.event_id == other))).scalars().all() == [other]


async def test_check_reports_a_key_column_that_compares_case_insensitively(mariadb_url: str) -> None:
    """A database created before keys were byte-exact: `shopping-db check` names the column and the fix."""
    engine = make_engine(mariadb_url)
    try:
        await drop_all(engine)
        await create_all(engine)
        async with engine.begin() as conn:
            await conn.execute(text(
                "ALTER TABLE orders MODIFY idempotency_key VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NULL"
            ))
        problems = await check_schema(engine)
        assert len(problems) == 1, problems
        assert problems[0].startswith("column orders.idempotency_key compares with utf8mb4_general_ci, expected utf8mb4_nopad_bin")
        async with engine.begin() as conn:  # the statement the message gives is the fix
            await conn.execute(text(problems[0].split("fix: ", 1)[1]))
        assert await check_schema(engine) == []
    finally:
        await engine.dispose()


async def test_money_json_and_timestamps_round_trip_exactly(fresh_engine: AsyncEngine) -> None:
    created = datetime(2025, 3, 4, 5, 6, 7, 123456)
    address = {"country": "DE", "zip": "10115", "line1": "Unter den Linden 1", "deposit": Decimal("1.10")}
    async with fresh_engine.begin() as conn:
        await conn.execute(insert(schema.orders), {
            **_order("o1", None), "fx_rate": Decimal("151.12345678"), "tariff": Decimal("8.3249"),
            "address": address, "created_at": created,
        })
        await conn.execute(insert(schema.outbox), {"topic": "noti", "key": "o1", "payload": {"amount": Decimal("96.07")}})
    async with fresh_engine.connect() as conn:
        order = (await conn.execute(select(schema.orders))).one()._mapping
        payload = (await conn.execute(select(schema.outbox.c.payload))).scalar_one()
    assert order["fx_rate"] == Decimal("151.12345678") and isinstance(order["fx_rate"], Decimal)
    assert str(order["total"]) == "96.0700"
    assert str(order["tariff"]) == "8.3249"
    assert str(order["wallet_deduction"]) == "0.0000"  # defaulted, still a Decimal
    # Decimals inside JSON go out as strings, never floats.
    assert order["address"] == {**address, "deposit": "1.10"}
    assert payload == {"amount": "96.07"}
    assert order["created_at"] == created  # microseconds survive on MariaDB too
    assert order["updated_at"] is not None


async def test_sqlite_engine_creates_its_directory_and_uses_wal(tmp_path: Path) -> None:
    db_file = tmp_path / "nested" / "dir" / "shop.db"
    engine = make_engine(f"sqlite+aiosqlite:///{db_file}")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one() >= 1000
        assert db_file.exists()
    finally:
        await engine.dispose()


async def test_database_errors_never_carry_the_statement_parameters(db_url: str) -> None:
    """Error texts end up in logs: the values bound into a failing statement (addresses, PSP references) stay out."""
    engine = make_engine(db_url)
    try:
        with pytest.raises(Exception) as caught:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT * FROM no_such_table WHERE x = :secret"), {"secret": "TOPSECRET-123"})
    finally:
        await engine.dispose()
    assert "no_such_table" in str(caught.value)
    assert "TOPSECRET" not in str(caught.value)
