"""What an unpaid order holds — stock, a coupon, wallet money — taken and given back with guarded updates.

Every statement is a compare-and-set that old shopping's concurrent writes cannot slip past:
stock only goes down while enough is left, a coupon is only locked while unused, a wallet
only pays while its balance covers the amount. Each runs on the caller's connection, inside its
unit of work (shop/uow.py), with the unit's `now`: nothing here opens a transaction or reads the clock. Releases run in the same transaction as the
order's winning `cancel`/`expire` transition (shop/order_states.py), and that transition is
itself a CAS, so two cancellers never both release.

Lock order, to keep concurrent checkouts and cancels free of deadlocks: SKU rows in ascending
id, then the user coupon, then the wallet, then the order rows (docs/orders.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from functools import lru_cache

from sqlalchemy import Integer, Update, bindparam, case, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shop import schema as t

ZERO = Decimal(0)


class StockShort(Exception):
    """take_stock could not take every line; the caller's transaction must roll back.

    Which SKU ran short is not knowable inside the transaction (the taken rows already show their
    new stock), so the caller names it from a fresh read after the rollback: short_sku().
    """

    def __init__(self, lines: list[tuple[int, int]]) -> None:
        super().__init__(lines)
        self.lines = lines


@lru_cache(maxsize=64)
def _take_stock_statement(n: int) -> Update:
    """One guarded UPDATE for n distinct SKUs, with bind params sku0.., qty0.. (built once per n).

    `WHERE id IN (…)` walks the primary key in ascending order, so the row locks are taken in
    the same order as the documented lock order (SKUs ascending), in one round trip.
    """
    s = t.skus.c
    skus = [bindparam(f"sku{i}", type_=Integer) for i in range(n)]
    qty = case(*((s.id == skus[i], bindparam(f"qty{i}", type_=Integer)) for i in range(n)), else_=None)
    return update(t.skus).where(s.id.in_(skus), s.active, s.stock >= qty).values(stock=s.stock - qty)


async def take_stock(conn: AsyncConnection, lines: Iterable[tuple[int, int]]) -> None:
    """Decrement stock for (sku_id, qty) lines, all or nothing: StockShort when any line can't be taken.

    The caller's transaction rolls everything back on the raise, so a failed checkout changes nothing.
    """
    merged: dict[int, int] = {}
    for sku_id, qty in lines:
        merged[sku_id] = merged.get(sku_id, 0) + qty
    ordered = sorted(merged.items())
    if not ordered:
        return
    params: dict[str, int] = {}
    for i, (sku_id, qty) in enumerate(ordered):
        params[f"sku{i}"] = sku_id
        params[f"qty{i}"] = qty
    result = await conn.execute(_take_stock_statement(len(ordered)), params)
    if result.rowcount != len(ordered):
        raise StockShort(ordered)


async def short_sku(conn: AsyncConnection, lines: list[tuple[int, int]]) -> int | None:
    """The lowest SKU id of `lines` that is inactive, missing or has less stock than asked; None if all fit now."""
    s = t.skus.c
    rows = {r.id: r for r in (await conn.execute(
        select(s.id, s.stock, s.active).where(s.id.in_([sku for sku, _ in lines]))
    )).all()}
    for sku_id, qty in sorted(lines):
        row = rows.get(sku_id)
        if row is None or not row.active or row.stock < qty:
            return sku_id
    return None


async def return_stock(conn: AsyncConnection, order_id: str) -> None:
    i = t.order_items.c
    rows = (await conn.execute(select(i.sku_id, i.qty).where(i.order_id == order_id).order_by(i.sku_id))).all()
    for sku_id, qty in rows:
        await conn.execute(update(t.skus).where(t.skus.c.id == sku_id).values(stock=t.skus.c.stock + qty))


async def lock_coupon(conn: AsyncConnection, user_coupon_id: int, user_id: int, order_id: str) -> bool:
    """unused → locked for this order; False when another order (or old shopping) got it first."""
    u = t.user_coupons.c
    result = await conn.execute(
        update(t.user_coupons)
        .where(u.id == user_coupon_id, u.user_id == user_id, u.status == "unused")
        .values(status="locked", order_id=order_id)
    )
    return result.rowcount == 1


async def unlock_coupon(conn: AsyncConnection, order_id: str) -> int:
    u = t.user_coupons.c
    result = await conn.execute(
        update(t.user_coupons).where(u.order_id == order_id, u.status == "locked").values(status="unused", order_id=None)
    )
    return result.rowcount


async def use_coupon(conn: AsyncConnection, order_id: str, *, now: datetime) -> int:
    """locked → used when the order is purchased."""
    u = t.user_coupons.c
    result = await conn.execute(
        update(t.user_coupons).where(u.order_id == order_id, u.status == "locked").values(status="used", used_at=now)
    )
    return result.rowcount


_W = t.wallets.c
_WALLET_TAKE = (
    update(t.wallets)
    .where(_W.user_id == bindparam("w_user"), _W.balance >= bindparam("w_amount"))
    .values(balance=_W.balance - bindparam("w_amount"))
)
_LEDGER_INSERT = insert(t.wallet_ledger)


async def reserve_wallet(conn: AsyncConnection, user_id: int, order_id: str, amount: Decimal, *, now: datetime) -> bool:
    """Take `amount` (USD) from the wallet into a reservation; False when the balance no longer covers it."""
    if amount <= 0:
        return True
    result = await conn.execute(_WALLET_TAKE, {"w_user": user_id, "w_amount": amount})
    if result.rowcount != 1:
        return False
    await conn.execute(_LEDGER_INSERT, {
        "user_id": user_id, "order_id": order_id, "amount": amount, "kind": "reserve", "created_at": now,
    })
    return True


async def _open_reservation(conn: AsyncConnection, order_id: str) -> tuple[int, Decimal] | None:
    """(user, amount) still reserved for the order: reserves not yet released or settled."""
    lg = t.wallet_ledger.c
    rows = (await conn.execute(select(lg.user_id, lg.kind, lg.amount).where(lg.order_id == order_id))).all()
    if not rows:
        return None
    held = sum((r.amount for r in rows if r.kind == "reserve"), ZERO)
    closed = sum((r.amount for r in rows if r.kind in ("release", "settle")), ZERO)
    if held - closed <= 0:
        return None
    return rows[0].user_id, held - closed


async def release_wallet(conn: AsyncConnection, order_id: str, *, now: datetime) -> Decimal:
    """Give a cancelled order's reservation back to the wallet; the amount released (0 if none)."""
    open_ = await _open_reservation(conn, order_id)
    if open_ is None:
        return ZERO
    user_id, amount = open_
    await conn.execute(update(t.wallets).where(t.wallets.c.user_id == user_id).values(balance=t.wallets.c.balance + amount))
    await conn.execute(insert(t.wallet_ledger).values(
        user_id=user_id, order_id=order_id, amount=amount, kind="release", created_at=now,
    ))
    return amount


async def settle_wallet(conn: AsyncConnection, order_id: str, *, now: datetime) -> Decimal:
    """A purchased order's reservation becomes spent money (the balance already went down)."""
    open_ = await _open_reservation(conn, order_id)
    if open_ is None:
        return ZERO
    user_id, amount = open_
    await conn.execute(insert(t.wallet_ledger).values(
        user_id=user_id, order_id=order_id, amount=amount, kind="settle", created_at=now,
    ))
    return amount


async def release_all(conn: AsyncConnection, order_id: str, *, now: datetime) -> None:
    """Everything a cancelled or expired order held, in lock order. Call only after winning the transition."""
    await return_stock(conn, order_id)
    await unlock_coupon(conn, order_id)
    await release_wallet(conn, order_id, now=now)
