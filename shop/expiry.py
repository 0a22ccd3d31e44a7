"""Orders not paid in time are cancelled, and what they held (stock, coupon, wallet) goes back.

``expire_due`` finds orders still ``pending_payment`` / ``payment_failed`` whose ``expires_at``
has passed (the ``(status, expires_at)`` index) and expires each in its own unit of work
(``Shop.run``; ``expire_one`` receives the unit and never opens a transaction or reads the clock):

1. a guarded no-op ``UPDATE orders … WHERE id = ? AND status IN (pending_payment,
   payment_failed) AND expires_at <= now`` claims the row (a row lock on MySQL, the write lock
   on SQLite) only while it is still unpaid and due, so an order that got authorized or paid
   between the scan and now is left alone (the state machine would allow ``expire`` from
   ``authorized``; the sweeper must not cancel an order whose payment just arrived), and only
   while no pay call is in flight (an attempt of either side younger than IN_FLIGHT whose PSP
   answer has not come: the PSP may be charging it right now, and the money would arrive for a
   cancelled order whose stock went back; the pay routes insert the attempt under this same row
   lock, so one of the two waits for the other);
2. ``uow.transition(id, "expire")``, the guarded compare-and-set of shop/order_states.py;
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
from shop.bootstrap import Shop
from shop.errors import NotFound
from shop.order_states import PAYMENT_FAILED, PENDING_PAYMENT, InvalidState
from shop.payments import IN_FLIGHT, attempt_in_flight
from shop.reservations import release_all
from shop.uow import UnitOfWork

UNPAID = (PENDING_PAYMENT, PAYMENT_FAILED)


async def _due(db: AsyncEngine, now: datetime, batch: int) -> list[str]:
    o = t.orders.c
    async with db.connect() as conn:
        rows = await conn.execute(
            select(o.id).where(o.status.in_(UNPAID), o.expires_at <= now, ~attempt_in_flight(o.id, now - IN_FLIGHT))
            .order_by(o.expires_at, o.id).limit(batch)
        )
        return [r.id for r in rows]


async def expire_one(uow: UnitOfWork, order_id: str) -> bool:
    """Expire one order due at the unit's `now` and release what it held; False when someone else got there first."""
    o = t.orders.c
    claimed = await uow.conn.execute(
        update(t.orders)
        .where(o.id == order_id, o.status.in_(UNPAID), o.expires_at <= uow.now,
               ~attempt_in_flight(o.id, uow.now - IN_FLIGHT))
        .values(updated_at=o.updated_at)
    )
    if claimed.rowcount != 1:
        return False
    try:
        outcome = await uow.transition(order_id, "expire", reason="expired")
    except (InvalidState, NotFound):
        return False
    if not outcome.changed:
        return False
    await release_all(uow.conn, order_id, now=uow.now)
    return True


async def expire_due(shop: Shop, *, batch: int = 100, actor: str = "new") -> int:
    """Expire every unpaid order due at the shop clock's now, `batch` per scan, each in its own unit
    of work (Shop.run, history actor `actor`); how many this call expired."""
    expired = 0
    while True:
        ids = await _due(shop.db_read, shop.clock(), batch)
        won = 0
        for order_id in ids:
            if await shop.run(actor, lambda uow: expire_one(uow, order_id)):
                won += 1
        expired += won
        # A short page is the last one; a full page where we won nothing means others are sweeping
        # the same rows right now: leave the rest to them (or to the next tick) rather than spin.
        if len(ids) < batch or won == 0:
            return expired
