"""One holder at a time for a singleton job (the outbox relay, the expiry sweeper) across processes.

A lease is a row (name, holder, expires_at). Taking or renewing it is one guarded statement:
the row changes hands only when it is ours already or has run out, so two processes never both
believe they hold it (each re-reads the row count, never a cached belief). A holder that dies
simply stops renewing: after `ttl` another process takes over. The same mechanism on MariaDB
and SQLite, and it keeps an ordered job (outbox per key) in one process at a time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import insert, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema as t

log = structlog.get_logger("shop.leases")


async def hold(db: AsyncEngine, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
    """Take or renew the lease `name` for `holder` until now + ttl; False while someone else holds it."""
    lc = t.leases.c
    async with db.begin() as conn:
        taken = await conn.execute(
            update(t.leases)
            .where(lc.name == name, or_(lc.holder == holder, lc.expires_at < now))
            .values(holder=holder, expires_at=now + ttl)
        )
        if taken.rowcount == 1:
            return True
    try:
        async with db.begin() as conn:
            await conn.execute(insert(t.leases).values(name=name, holder=holder, expires_at=now + ttl))
    except IntegrityError:
        return False  # the row exists and is someone else's, still valid
    return True


async def release(db: AsyncEngine, name: str, holder: str) -> None:
    """Give the lease up at once (a clean shutdown), so the next holder need not wait out the ttl."""
    lc = t.leases.c
    async with db.begin() as conn:
        await conn.execute(
            update(t.leases).where(lc.name == name, lc.holder == holder).values(expires_at=datetime(1970, 1, 1))
        )


async def release_quietly(db: AsyncEngine, name: str, holder: str) -> None:
    """`release` at the end of a holder's loop, whatever the database says: unreleased, the lease simply runs out."""
    try:
        await release(db, name, holder)
    except Exception as exc:
        log.info("lease_release_failed", lease=name, error=exc.__class__.__name__)
