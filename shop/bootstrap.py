"""The shop's resources for any process: `shop_resources(settings)` → `Shop` (cosmicpython's bootstrap).

The edge and the consumers build the same thing the same way: the write engine, the autocommit
read engine, the reference cache and the clock. `Shop.tx(actor)` is the one way a service
function gets a transaction (shop/uow.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema as t
from shop.db import make_engine
from shop.reference import ReferenceCache
from common.settings import Settings
from shop.uow import UnitOfWork

Clock = Callable[[], datetime]


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


@contextlib.asynccontextmanager
async def shop_resources(settings: Settings, *, clock: Clock = t.utcnow) -> AsyncIterator[Shop]:
    # Writes hold a connection for a whole change, reads for a query or two: each process keeps
    # its MariaDB connections (max_connections is shared with old shopping) to what it needs.
    engine = make_engine(settings.db_url, **settings.db_pool_options())
    reader = make_engine(settings.db_url, read_only=True, **settings.db_pool_options())
    try:
        yield Shop(engine, reader, ReferenceCache(reader, settings.reference_ttl_seconds), clock)
    finally:
        await reader.dispose()
        await engine.dispose()
