"""A locking read holds on both databases the shop runs on.

Service functions lock the order row (`SELECT … FOR UPDATE`) before judging it: two paypal_finished
at once, two refunds of one order, an event and its redelivery. On MariaDB that is a row lock; SQLite
has none and SQLAlchemy drops FOR UPDATE there, so the second transaction used to read the order as it
was before the first committed (a 409 for an order the other call had just paid). SQLite's write
transactions now take the write lock at BEGIN, so the second waits and reads the committed row.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema as t
from tests.builders import insert_order

_O = t.orders.c


async def _locked_status(engine: AsyncEngine, order_id: str) -> str:
    async with engine.begin() as conn:
        return (await conn.execute(select(_O.status).where(_O.id == order_id).with_for_update())).scalar_one()


async def test_a_second_locking_read_waits_for_the_first_transaction_and_sees_its_commit(fresh_engine: AsyncEngine) -> None:
    async with fresh_engine.begin() as conn:
        await insert_order(conn, "LOCK-1", status="pending_payment")
    async with fresh_engine.begin() as first:
        assert (await first.execute(select(_O.status).where(_O.id == "LOCK-1").with_for_update())).scalar_one() == "pending_payment"
        second = asyncio.create_task(_locked_status(fresh_engine, "LOCK-1"))
        await asyncio.sleep(0.3)
        assert not second.done(), "the second locking read did not wait for the first transaction"
        await first.execute(update(t.orders).where(_O.id == "LOCK-1").values(status="paid"))
    assert await asyncio.wait_for(second, 5) == "paid"
