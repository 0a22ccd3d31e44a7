"""What the new side's handlers share: the DB engine and the reference cache, one per process.

Stored on the edge's root app so handlers reach them through ``request.config_dict`` both when
the edge dispatches a legacy path in-process and on direct ``/order2`` calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shop.bootstrap import Shop
from shop.db import make_engine
from shop.reference import ReferenceCache
from common.settings import Settings

DB = web.AppKey("db", AsyncEngine)
# Autocommit connections for the hot read paths (see shop.db.make_engine).
DB_READ = web.AppKey("db_read", AsyncEngine)
REFERENCE = web.AppKey("reference", ReferenceCache)
# The same resources as one Shop (shop/bootstrap.py), for service functions on a unit of work.
SHOP = web.AppKey("shop", Shop)


def setup_new_side(app: web.Application, settings: Settings) -> None:
    async def resources(app: web.Application) -> AsyncIterator[None]:
        # Writes hold a connection for a whole checkout, reads for a query or two: each process keeps
        # its MariaDB connections (max_connections is shared with old shopping) to what it needs.
        engine = make_engine(settings.db_url, **settings.db_pool_options())
        reader = make_engine(settings.db_url, read_only=True, **settings.db_pool_options())
        app[DB] = engine
        app[DB_READ] = reader
        app[REFERENCE] = ReferenceCache(reader, settings.reference_ttl_seconds)
        app[SHOP] = Shop(engine, reader, app[REFERENCE])
        yield
        await reader.dispose()
        await engine.dispose()

    app.cleanup_ctx.append(resources)


async def db_ready(app: web.Application) -> str | None:
    """Readiness: None when the database answers, else why not."""
    try:
        async with app[DB].connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready", with its class for the operator
        return f"database: {exc.__class__.__name__}"
    return None
