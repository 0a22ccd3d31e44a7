"""A locking read holds on both databases the shop runs on.

Service functions lock the order row (`SELECT … FOR UPDATE`) before judging it: two paypal_finished
at once, two refunds of one order, an event and its redelivery. On MariaDB that is a row lock; SQLite
has none and SQLAlchemy drops FOR UPDATE there, so the second transaction used to read the order as it
was before the first committed (a 409 for an order the other call had just paid). On SQLite a
transaction now sends BEGIN IMMEDIATE with its first write or locking read, so the second waits and
reads the committed row; plain reads take no lock and never queue behind a writer (with BEGIN
IMMEDIATE for every transaction of a write engine they did: the demo stack's p99 was 1–4 s).
"""

from __future__ import annotations

import asyncio

import pytest
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


async def test_a_plain_read_does_not_wait_for_a_writer_and_reads_the_last_commit(fresh_engine: AsyncEngine) -> None:
    async with fresh_engine.begin() as conn:
        await insert_order(conn, "LOCK-2", status="pending_payment")
    async with fresh_engine.begin() as writer:
        await writer.execute(update(t.orders).where(_O.id == "LOCK-2").values(status="paid"))

        async def read() -> str:
            async with fresh_engine.begin() as reader:  # the write engine, as the legacy emulator's reads
                return (await reader.execute(select(_O.status).where(_O.id == "LOCK-2"))).scalar_one()

        # Well under busy_timeout (5 s): a read that queued behind the writer would still be waiting.
        assert await asyncio.wait_for(read(), 2) == "pending_payment"
        async with fresh_engine.connect() as plain:  # autobegin, no explicit begin()
            assert (await plain.execute(select(_O.status).where(_O.id == "LOCK-2"))).scalar_one() == "pending_payment"


async def test_a_transaction_begun_by_a_read_can_still_write_and_commits_atomically(fresh_engine: AsyncEngine) -> None:
    async with fresh_engine.begin() as conn:
        await insert_order(conn, "LOCK-3", status="pending_payment")
    with pytest.raises(RuntimeError):
        async with fresh_engine.begin() as conn:
            assert (await conn.execute(select(_O.status).where(_O.id == "LOCK-3"))).scalar_one() == "pending_payment"
            await conn.execute(update(t.orders).where(_O.id == "LOCK-3").values(status="paid"))
            raise RuntimeError("rolled back: the update must not have been committed on its own")
    assert await _locked_status(fresh_engine, "LOCK-3") == "pending_payment"
    async with fresh_engine.connect() as conn:  # autobegun: its first write is inside the transaction too
        await conn.execute(update(t.orders).where(_O.id == "LOCK-3").values(status="paid"))
        await conn.rollback()
    assert await _locked_status(fresh_engine, "LOCK-3") == "pending_payment"


async def test_a_transaction_cancelled_while_it_waits_for_the_lock_ends_cancelled(fresh_engine: AsyncEngine) -> None:
    # A route's timeout cancels its handler mid-statement (the demo stack: a place_order queued behind a
    # writer). SQLAlchemy then invalidates the connection; the rollback that follows must not turn the
    # cancellation into another error (it was a PendingRollbackError from our commit/rollback listener:
    # a 500 with a stack trace where asyncio.timeout would have given a 504).
    async with fresh_engine.begin() as conn:
        await insert_order(conn, "LOCK-4", status="pending_payment")
    async with fresh_engine.begin() as first:
        await first.execute(update(t.orders).where(_O.id == "LOCK-4").values(status="paid"))
        second = asyncio.create_task(_locked_status(fresh_engine, "LOCK-4"))
        await asyncio.sleep(0.3)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
    assert await _locked_status(fresh_engine, "LOCK-4") == "paid"  # and the engine goes on
