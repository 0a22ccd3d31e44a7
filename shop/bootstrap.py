"""The shop's resources for any process: `shop_resources(settings)` → `Shop` (cosmicpython's bootstrap).

The edge and the consumers build the same thing the same way: the write engine, the autocommit
read engine, the reference cache and the clock. `Shop.tx(actor)` is the one way a service
function gets a transaction (shop/uow.py); `Shop.run(actor, work)` is the same with the retry
a deadlock victim needs: the whole unit of work again, in a new transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import structlog

from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema as t
from shop.db import PING_AFTER_IDLE_SECONDS, is_deadlock, make_engine
from shop.reference import ReferenceCache
from common.settings import Settings
from shop.uow import UnitOfWork

Clock = Callable[[], datetime]
T = TypeVar("T")

log = structlog.get_logger("shop")
# A deadlock victim is tried again at most this many times in all (docs/orders.md).
TX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Shop:
    db: AsyncEngine
    db_read: AsyncEngine
    reference: ReferenceCache
    clock: Clock = t.utcnow

    @contextlib.asynccontextmanager
    async def tx(self, actor: str) -> AsyncIterator[UnitOfWork]:
        """One transaction; commits when the block ends, rolls back when it raises."""
        async with self.db.begin() as conn:
            yield UnitOfWork(conn, self.clock(), actor)

    async def run(self, actor: str, work: Callable[[UnitOfWork], Awaitable[T]], *, attempts: int = TX_ATTEMPTS) -> T:
        """`work` in one transaction, committed when it returns; run again from the start (a new
        transaction, a new `now`) when MariaDB picked it as a deadlock victim or a lock wait timed out.

        Only the caller that owns the transaction retries: `work` must not catch the deadlock, and
        everything it did was rolled back before the next try. Any other error is raised as it is.
        """
        for attempt in range(1, attempts + 1):
            try:
                async with self.tx(actor) as uow:
                    return await work(uow)
            except Exception as exc:
                if attempt < attempts and is_deadlock(exc):
                    log.warning("tx_deadlock_retry", actor=actor, attempt=attempt)
                    continue
                raise
        raise AssertionError("unreachable: the last attempt returns or raises")


@contextlib.asynccontextmanager
async def shop_resources(settings: Settings, *, clock: Clock = t.utcnow, pre_ping: bool = True) -> AsyncIterator[Shop]:
    """The shop's resources. ``pre_ping=False`` drops the write pool's liveness round trip before
    a transaction on a connection that idled in the pool (shop.db ``PING_AFTER_IDLE_SECONDS``): for a
    process that retries a failed transaction itself (the consumers: a connection lost to a DB
    restart is invalidated on its error and the retry gets a fresh one); the edge keeps it, so a
    person's first request after a restart is not the one that fails."""
    # Writes hold a connection for a whole change, reads for a query or two: each process keeps
    # its MariaDB connections (max_connections is shared with old shopping) to what it needs.
    engine = make_engine(settings.db_url, ping_after_idle=PING_AFTER_IDLE_SECONDS if pre_ping else None,
                         **settings.db_pool_options())
    reader = make_engine(settings.db_url, read_only=True, **settings.db_pool_options())
    try:
        yield Shop(engine, reader, ReferenceCache(reader, settings.reference_ttl_seconds), clock)
    finally:
        await reader.dispose()
        await engine.dispose()
