"""Orders not paid in time are cancelled, and what they held (stock, coupon, wallet) goes back.

``expire_due`` finds orders still ``pending_payment`` / ``payment_failed`` whose ``expires_at``
has passed (the ``(status, expires_at)`` index) and expires each in its own transaction:

1. a guarded no-op ``UPDATE orders … WHERE id = ? AND status IN (pending_payment,
   payment_failed) AND expires_at <= now`` claims the row (a row lock on MySQL, the write lock
   on SQLite) only while it is still unpaid and due, so an order that got authorized or paid
   between the scan and now is left alone (the state machine would allow ``expire`` from
   ``authorized``; the sweeper must not cancel an order whose payment just arrived);
2. ``transition(conn, id, "expire")``, the guarded compare-and-set of shop/order_states.py;
3. only when that transition changed the status, ``release_all``: stock, coupon, wallet, in the
   same transaction.

Old shopping's cancel, another sweeper (every edge worker runs one) or a second call at the
same moment lose the claim or the CAS and skip the order silently, so everything is released
exactly once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema as t
from shop.errors import NotFound
from shop.order_states import PAYMENT_FAILED, PENDING_PAYMENT, InvalidState, transition
from shop.reservations import release_all

UNPAID = (PENDING_PAYMENT, PAYMENT_FAILED)


async def _due(db: AsyncEngine, now: datetime, batch: int) -> list[str]:
    o = t.orders.c
    async with db.connect() as conn:
        rows = await conn.execute(
            select(o.id).where(o.status.in_(UNPAID), o.expires_at <= now).order_by(o.expires_at, o.id).limit(batch)
        )
        return [r.id for r in rows]


async def expire_one(db: AsyncEngine, order_id: str, now: datetime, *, actor: str = "new") -> bool:
    """Expire one due order and release what it held; False when someone else got there first."""
    o = t.orders.c
    async with db.begin() as conn:
        claimed = await conn.execute(
            update(t.orders)
            .where(o.id == order_id, o.status.in_(UNPAID), o.expires_at <= now)
            .values(updated_at=o.updated_at)
        )
        if claimed.rowcount != 1:
            return False
        try:
            outcome = await transition(conn, order_id, "expire", actor=actor, reason="expired")
        except (InvalidState, NotFound):
            return False
        if not outcome.changed:
            return False
        await release_all(conn, order_id)
        return True


async def expire_due(db: AsyncEngine, now: datetime, *, batch: int = 100, actor: str = "new") -> int:
    """Expire every unpaid order due at `now` (naive UTC), `batch` per scan; how many this call expired."""
    expired = 0
    while True:
        ids = await _due(db, now, batch)
        won = 0
        for order_id in ids:
            if await expire_one(db, order_id, now, actor=actor):
                won += 1
        expired += won
        # A short page is the last one; a full page where we won nothing means others are sweeping
        # the same rows right now: leave the rest to them (or to the next tick) rather than spin.
        if len(ids) < batch or won == 0:
            return expired
