"""Old shopping's order-row helpers, shared by checkout, detail and the order actions.

Written for the emulator on its own (it stands in for a separately written service, so it
does not import the new side's ``shop.order_states`` / ``shop.reservations``) but it keeps
their contract, because both sides write the same rows at the same time:

* a status only changes through a guarded ``UPDATE orders SET status=… WHERE id=? AND
  status=<seen>`` whose row count is checked, never read-and-written-back;
* stock, coupons and wallet money are only taken and given back with guarded updates;
* every change writes ``order_status_history`` with actor ``legacy``;
* locks are taken in the same order as the new side (SKU rows ascending, then the user
  coupon, then the wallet, then order rows), and a deadlock or lock-wait victim simply
  runs its transaction again.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from emulators.legacy import envelope
from emulators.legacy.envelope import ApiError
from shop.schema import (
    order_items,
    order_status_history,
    orders,
    skus,
    user_coupons,
    wallet_ledger,
    wallets,
)

log = logging.getLogger(__name__)

ACTOR = "legacy"
PENDING_PAYMENT = "pending_payment"
PAYMENT_CONFIRMING = "payment_confirming"
PAYMENT_FAILED = "payment_failed"
AUTHORIZED = "authorized"
CANCELLED = "cancelled"

# Anything that could be an order id of either side; everything else is 404 without a query.
_ORDER_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# RFC 4648 base32 without padding: no 0/1/8/9, so ids read back unambiguously.
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

# MariaDB: 1213 deadlock victim, 1205 lock wait timeout. SQLite: a WAL snapshot gone stale.
_RETRY_MYSQL = {1205, 1213}
ATTEMPTS = 3

T = TypeVar("T")


def new_order_id() -> str:
    """``L`` + 15 random base32 characters (75 bits): unique, not guessable, safe to show."""
    return "L" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(15))


def now() -> datetime:
    # The shared database keeps naive UTC timestamps.
    return datetime.now(UTC).replace(tzinfo=None)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.replace(microsecond=0).isoformat() + "Z"


def fmt(value: Decimal | float | None, exponent: int) -> str | None:
    """Old shopping formats money through float; stored amounts are already rounded to the exponent."""
    if value is None:
        return None
    number = float(value)
    if abs(number) < 0.5 * 10.0**-exponent:
        number = 0.0
    return "%.*f" % (exponent, number)


def not_found() -> ApiError:
    return ApiError(404, envelope.ORDER_NOT_FOUND, "order_not_found", None)


def check_order_id(raw: str) -> str:
    if not _ORDER_ID.match(raw):
        raise not_found()
    return raw


async def owned_order(conn: AsyncConnection, order_id: str, uid: int) -> Any:
    """The caller's order row; another user's order answers exactly like a missing one."""
    row = (await conn.execute(
        select(orders).where(orders.c.id == check_order_id(order_id), orders.c.user_id == uid)
    )).first()
    if row is None:
        raise not_found()
    return row


async def add_history(conn: AsyncConnection, order_id: str, from_status: str | None, to_status: str,
                      reason: str | None, at: datetime) -> None:
    await conn.execute(insert(order_status_history).values(
        order_id=order_id, from_status=from_status, to_status=to_status, reason=reason, actor=ACTOR, created_at=at,
    ))


async def move_status(conn: AsyncConnection, order_id: str, sources: Iterable[str], target: str,
                      reason: str) -> tuple[bool, str]:
    """Guarded status change: (True, target) when this call moved it, else (False, status it is in).

    The update is ``WHERE id=? AND status=<seen>`` with ``seen`` one of ``sources``; when another
    writer changed the row between the read and the update the row is read again and judged again.
    """
    allowed = frozenset(sources)
    o = orders.c
    for _ in range(5):
        seen = (await conn.execute(select(o.status).where(o.id == order_id))).scalar()
        if seen is None:
            raise not_found()
        if seen not in allowed:
            return False, seen
        at = now()
        result = await conn.execute(
            update(orders).where(o.id == order_id, o.status == seen, o.status.in_(allowed))
            .values(status=target, updated_at=at)
        )
        if result.rowcount == 1:
            await add_history(conn, order_id, seen, target, reason, at)
            return True, target
    raise ApiError(409, envelope.INVALID_STATE, "invalid_state", {"status": seen})


async def release_holdings(conn: AsyncConnection, order_id: str) -> None:
    """Give back what an unpaid order held. Only call after winning its transition to cancelled."""
    i = order_items.c
    lines = (await conn.execute(
        select(i.sku_id, i.qty).where(i.order_id == order_id).order_by(i.sku_id)
    )).all()
    for sku_id, qty in lines:
        await conn.execute(update(skus).where(skus.c.id == sku_id).values(stock=skus.c.stock + qty))
    u = user_coupons.c
    await conn.execute(
        update(user_coupons).where(u.order_id == order_id, u.status == "locked").values(status="unused", order_id=None)
    )
    lg = wallet_ledger.c
    ledger = (await conn.execute(select(lg.user_id, lg.kind, lg.amount).where(lg.order_id == order_id))).all()
    held = sum((Decimal(r.amount) for r in ledger if r.kind == "reserve"), Decimal(0))
    closed = sum((Decimal(r.amount) for r in ledger if r.kind in ("release", "settle")), Decimal(0))
    if ledger and held - closed > 0:
        user_id, amount = ledger[0].user_id, held - closed
        await conn.execute(update(wallets).where(wallets.c.user_id == user_id).values(balance=wallets.c.balance + amount))
        await conn.execute(insert(wallet_ledger).values(
            user_id=user_id, order_id=order_id, amount=amount, kind="release", created_at=now(),
        ))


def is_retryable(exc: DBAPIError) -> bool:
    args = getattr(exc.orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _RETRY_MYSQL:
        return True
    return "database is locked" in str(exc.orig)


async def retrying(work: Callable[[], Awaitable[T]]) -> T:
    """Run one transaction again when the database picked it as a deadlock / lock-wait victim."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await work()
        except DBAPIError as exc:
            if attempt == ATTEMPTS or not is_retryable(exc):
                raise
            log.info("retrying a transaction after %s (attempt %d)", exc.orig, attempt)
    raise AssertionError("unreachable")
