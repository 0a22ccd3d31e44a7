"""The demo seed on real MariaDB and SQLite, and the `shopping-db` CLI."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema, seed
from shop.seed import demo_rows, seed_demo

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def seeded(fresh_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    started = time.monotonic()
    await seed_demo(fresh_engine)
    # The operations budget is < 10 s on MariaDB; leave a wide margin below it.
    assert time.monotonic() - started < 5
    yield fresh_engine


async def _rows(engine: AsyncEngine, table: Table, *where: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(table).where(*where).order_by(*table.primary_key.columns))
        return [dict(row._mapping) for row in result]


async def _counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            name: (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            for name, table in schema.metadata.tables.items()
        }


async def test_worked_example_rows_are_exact(seeded: AsyncEngine) -> None:
    skus = await _rows(seeded, schema.skus, schema.skus.c.id.in_([1, 2, 3]))
    assert [(s["id"], s["name"], s["category_id"], s["price"], s["active"]) for s in skus] == [
        (1, "T-shirt", 10, Decimal("19.99"), True),
        (2, "Mug", 20, Decimal("8.50"), True),
        (3, "Headphones", 30, Decimal("59.00"), True),
    ]
    assert all(isinstance(s["price"], Decimal) and s["stock"] > 100 for s in skus)

    user = seed.WORKED_EXAMPLE_USER_ID
    cart = await _rows(seeded, schema.cart_items, schema.cart_items.c.user_id == user)
    assert sorted((c["sku_id"], c["qty"], c["selected"]) for c in cart) == [(1, 2, True), (2, 3, True), (3, 1, True)]

    # Only the category-10 discount may touch the example's SKUs and categories.
    mall = await _rows(seeded, schema.mall_discounts)
    touching = [m for m in mall if (m["scope"], m["target_id"]) in
                {("category", 10), ("category", 20), ("category", 30), ("sku", 1), ("sku", 2), ("sku", 3)}]
    assert [(m["id"], m["scope"], m["target_id"], m["kind"], m["value"], m["active"]) for m in touching] == [
        (seed.WORKED_EXAMPLE_MALL_DISCOUNT_ID, "category", 10, "percent", Decimal("10.0000"), True)
    ]

    [coupon] = await _rows(seeded, schema.coupons, schema.coupons.c.code == "SAVE15")
    assert (coupon["id"], coupon["kind"], coupon["value"], coupon["min_spend"], coupon["max_discount"]) == (
        seed.WORKED_EXAMPLE_COUPON_ID, "amount", Decimal("15.0000"), Decimal("100.00"), None)
    assert coupon["category_ids"] is None and coupon["regions"] is None
    user_coupons = await _rows(seeded, schema.user_coupons, schema.user_coupons.c.user_id == user)
    assert [(u["id"], u["coupon_id"], u["status"], u["order_id"]) for u in user_coupons] == [
        (seed.WORKED_EXAMPLE_USER_COUPON_ID, seed.WORKED_EXAMPLE_COUPON_ID, "unused", None)
    ]

    [address] = await _rows(seeded, schema.addresses, schema.addresses.c.user_id == user)
    assert (address["id"], address["country"]) == (seed.WORKED_EXAMPLE_ADDRESS_ID, "DE")
    [wallet] = await _rows(seeded, schema.wallets, schema.wallets.c.user_id == user)
    assert wallet["balance"] == Decimal("20.00") and str(wallet["balance"]) == "20.0000"

    [shipping] = await _rows(seeded, schema.shipping_rules, schema.shipping_rules.c.region == "DE")
    assert (shipping["fee"], shipping["free_threshold"]) == (Decimal("9.90"), Decimal("200.00"))
    tariffs = await _rows(seeded, schema.tariff_rules, schema.tariff_rules.c.region == "DE")
    assert {(t["category_id"], t["rate_percent"], t["de_minimis"]) for t in tariffs} == {
        (None, Decimal("12.0000"), Decimal("22.00")), (30, Decimal("5.0000"), Decimal("22.00"))}

    forex = {f["currency"]: (f["rate"], f["exponent"]) for f in await _rows(seeded, schema.forex_rates)}
    assert forex["EUR"] == (Decimal("0.92000000"), 2)
    assert str(forex["EUR"][0]) == "0.92000000"
    assert forex["USD"] == (Decimal("1"), 2)
    assert forex["JPY"][1] == 0 and forex["KWD"][1] == 3 and "GBP" in forex


async def test_demo_crowd_has_every_kind_of_data(seeded: AsyncEngine) -> None:
    counts = await _counts(seeded)
    assert counts["skus"] == seed.DEMO_SKU_COUNT
    assert counts["addresses"] == counts["wallets"] == seed.DEMO_USER_COUNT
    assert counts["orders"] == counts["payments"] == counts["outbox"] == 0

    skus = await _rows(seeded, schema.skus)
    assert {s["category_id"] for s in skus} == set(seed.DEMO_CATEGORIES)

    lines = Counter(c["user_id"] for c in await _rows(seeded, schema.cart_items))
    assert set(lines) == set(range(1, seed.DEMO_USER_COUNT + 1))
    assert 1 <= min(lines.values()) and max(lines.values()) <= 8

    addresses = await _rows(seeded, schema.addresses)
    assert {a["country"] for a in addresses} == set(seed.DEMO_REGIONS)
    blacklist = await _rows(seeded, schema.address_blacklist)
    assert {b["kind"] for b in blacklist} == {"zip", "phone", "country", "line_contains"}
    assert ("country", "KP") in {(b["kind"], b["value"]) for b in blacklist}
    # Demo addresses must be orderable: none of them may be blacklisted by accident.
    for a in addresses:
        for b in blacklist:
            field = {"zip": "zip", "phone": "phone", "country": "country"}.get(b["kind"])
            blocked = b["value"] in a["line1"] if field is None else a[field] == b["value"]
            assert not blocked, (a, b)

    coupons = await _rows(seeded, schema.coupons)
    assert {c["kind"] for c in coupons} == {"amount", "percent", "free_shipping"}
    assert any(c["max_discount"] is not None for c in coupons)
    assert any(c["category_ids"] for c in coupons) and any(c["regions"] for c in coupons)
    assert sum(c["ends_at"].year < 2025 for c in coupons) == 1
    assert counts["user_coupons"] > seed.DEMO_USER_COUNT // 2

    regions = {r["region"] for r in await _rows(seeded, schema.shipping_rules)}
    assert regions == {r["region"] for r in await _rows(seeded, schema.tariff_rules)} == set(seed.DEMO_REGIONS)

    methods = await _rows(seeded, schema.payment_methods)
    assert {(m["provider"], m["code"]) for m in methods} >= {
        ("adyen", "card"), ("adyen", "ideal"), ("adyen", "sofort"), ("paypal", "paypal")}
    assert any(not m["enabled"] for m in methods) and any(m["platforms"] for m in methods)


async def test_seed_matches_the_pure_data_and_reseeding_resets(seeded: AsyncEngine) -> None:
    expected = demo_rows()
    assert demo_rows() == expected  # random.Random(42): the same data every time
    first = await _counts(seeded)
    assert first == {name: len(expected.get(name, [])) for name in schema.metadata.tables}

    # Rows written by a demo session (an order, a changed cart) disappear on the next seed.
    async with seeded.begin() as conn:
        await conn.execute(insert(schema.processed_events), {"consumer": "c", "event_id": "e"})
        await conn.execute(insert(schema.cart_items), {"user_id": 1, "sku_id": 150, "qty": 9})
    await seed_demo(seeded)
    assert await _counts(seeded) == first

    cart = await _rows(seeded, schema.cart_items)
    assert [(c["id"], c["user_id"], c["sku_id"], c["qty"], c["selected"]) for c in cart] == [
        (c["id"], c["user_id"], c["sku_id"], c["qty"], c["selected"]) for c in expected["cart_items"]]
    wallets = await _rows(seeded, schema.wallets)
    assert [(w["user_id"], w["balance"]) for w in wallets] == [
        (w["user_id"], w["balance"]) for w in expected["wallets"]]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shop.cli", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_cli_create_seed_check_on_sqlite(tmp_path: Path) -> None:
    db_file = tmp_path / "var" / "shop.db"
    url = f"sqlite+aiosqlite:///{db_file}"

    created = _cli("--db-url", url, "create")
    assert created.returncode == 0, created.stderr
    assert _cli("--db-url", url, "check").returncode == 0

    seeded = _cli("--db-url", url, "seed", "--demo")
    assert seeded.returncode == 0, seeded.stderr
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("SELECT name, price FROM skus WHERE id = 1").fetchone() == ("T-shirt", 19.99)
        assert conn.execute("SELECT count(*) FROM addresses").fetchone() == (seed.DEMO_USER_COUNT,)
        conn.execute("ALTER TABLE payments DROP COLUMN capture_id")

    broken = _cli("--db-url", url, "check")
    assert broken.returncode == 1
    assert "missing column payments.capture_id" in broken.stdout

    # Without --db-url the URL comes from the settings (SHOP_DB_URL).
    dropped = _cli("drop", env={**os.environ, "SHOP_DB_URL": url})
    assert dropped.returncode == 0, dropped.stderr
    assert "missing table skus" in _cli("--db-url", url, "check").stdout


def test_cli_seed_creates_missing_tables_and_rejects_bad_urls(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    assert _cli("--db-url", url, "seed", "--demo").returncode == 0
    assert _cli("--db-url", url, "check").stdout.strip() == "schema OK"
    assert _cli("--db-url", "not a url", "check").returncode == 2
