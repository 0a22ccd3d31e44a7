"""take_stock: one guarded UPDATE for a whole cart, all or nothing; short_sku names the line that can't be had."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema as t
from shop.db import make_engine
from shop.reservations import StockShort, short_sku, take_stock
from tests.support.shopdb import seed_database


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[AsyncEngine]:
    await seed_database(db_url)
    engine = make_engine(db_url)
    async with engine.begin() as conn:
        for sku_id, stock, active in ((1, 10, True), (2, 2, True), (3, 5, True), (4, 9, False)):
            await conn.execute(update(t.skus).where(t.skus.c.id == sku_id).values(stock=stock, active=active))
    yield engine
    await engine.dispose()


async def stocks(engine: AsyncEngine) -> dict[int, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(t.skus.c.id, t.skus.c.stock).where(t.skus.c.id.in_([1, 2, 3, 4])))
        return {r.id: r.stock for r in rows}


async def test_takes_every_line_and_merges_repeated_skus(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await take_stock(conn, [(3, 1), (1, 2), (2, 2), (1, 1)])
    assert await stocks(db) == {1: 7, 2: 0, 3: 4, 4: 9}


@pytest.mark.parametrize(("lines", "short"), [
    ([(3, 1), (1, 2), (2, 3)], 2),  # the middle SKU of three is short; the others would fit
    ([(1, 11)], 1),
    ([(1, 1), (4, 1)], 4),  # withdrawn SKU
    ([(1, 1), (999, 1)], 999),  # no such SKU
    ([(1, 6), (1, 5)], 1),  # each line fits, together they don't
])
async def test_a_short_line_takes_nothing_and_is_named_after_the_rollback(db: AsyncEngine, lines, short: int) -> None:
    before = await stocks(db)
    with pytest.raises(StockShort) as caught:
        async with db.begin() as conn:
            await take_stock(conn, lines)
    assert await stocks(db) == before
    async with db.connect() as conn:
        assert await short_sku(conn, caught.value.lines) == short


async def test_short_sku_is_none_when_the_stock_came_back(db: AsyncEngine) -> None:
    async with db.connect() as conn:
        assert await short_sku(conn, [(1, 10), (2, 2)]) is None
