"""An order as its owner sees it: detail (v43), the payment methods it can be paid with, "I have paid".

Transport-free (no aiohttp): handlers/orders.py parses the request and serialises what these
return. Every function is owner only: a missing order, another user's order and an order id
that is not a well-formed id (1..32 of ``[A-Za-z0-9_-]``) all raise the same
``NotFound("order_not_found")``, so the answer never reveals that someone else's order exists,
and a crafted id never reaches the database (never a 500). An anonymous caller gets 401
``login_required``, as from old shopping (the apps answer it with the login screen).

Detail shape (``data`` of ``GET /shopping/orders_v43/{order_id}``; old shopping's detail in
emulators/legacy answers the same, so a shadow diff shows only ``server_time``)::

    {"order_id": "…", "status": "pending_payment", "currency": "EUR", "region": "DE",
     "created_at": "2026-06-01T12:00:00Z", "expires_at": "2026-06-01T12:30:00Z" | null,
     "paid_at": "…Z" | null,
     "items": [{"sku_id": 1, "name": "T-shirt", "qty": 2, "unit_price": "18.39",
                "line_total": "36.78", "mall_discount": "3.68", "coupon_discount": "4.12",
                "tariff": "3.48"}],                                      # by order_items.id
     "summary": {"subtotal", "mall_discount", "coupon_discount", "shipping_fee", "tariff",
                 "wallet_deduction", "total"},                           # money strings
     "status_history": [{"from": null | "…", "to": "…", "at": "…Z"}],   # by (created_at, id)
     "address": {…the JSON snapshot as stored…} | null,   # a snapshot stored as JSON text is parsed
     "payments": [{"provider": "adyen", "method": "scheme" | null, "status": "authorized",
                   "amount": "96.07", "currency": "EUR", "created_at": "…Z"}],       # by id
     "refunds": [{"provider": "adyen" | null, "amount": "10.00", "currency": "EUR",
                  "status": "succeeded", "created_at": "…Z"}],                       # by id
     "server_time": "…Z"}

Payments and refunds are what the buyer may know: who (provider; a refund's is its payment's,
null when that row is missing or another order's), how (``method``: paypal_pay's ``{ptype}`` or Adyen's
``paymentMethod.type``, null for a row a webhook's event inserted), where it stands, how much, when.
Never a PSP reference (Adyen pspReference, PayPal order / capture ids), an idempotency key, a
request id, a refund's reason or attempts, or a row id (docs/decisions.md "Issue 11: detail and demo").

Money is a decimal string with exactly the currency's ``forex_rates.exponent`` places, rounded
half up: order, item and summary amounts in the order's currency (2 places when it has no
forex row), each payment / refund in its own currency (the order's exponent when that one has
no row). Old shopping formats through float (domain.md: ±0.01 shadow diffs on money are
expected and stay visible); everything else matches emulators/legacy/order_detail.py field for
field. One deliberate difference: old shopping answers an anonymous caller 401 login_required,
the new side 404 order_not_found (never confirm an order id exists). Times are naive UTC in the database and go out
as ISO 8601 to the second with a ``Z``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shop import schema as t
from shop.errors import LoginRequired, NotFound
from shop.money import money_str
from shop.order_states import CANCELLED, InvalidState
from shop.uow import UnitOfWork

ORDER_ID_OK = re.compile(r"[A-Za-z0-9_-]{1,32}")
DEFAULT_EXPONENT = 2
# X-Platform values the payment_methods table knows; anything else is "unknown".
PLATFORMS = frozenset({"ios", "android", "web"})

_SUMMARY = ("subtotal", "mall_discount", "coupon_discount", "shipping_fee", "tariff", "wallet_deduction", "total")
_ITEM_MONEY = ("unit_price", "line_total", "mall_discount", "coupon_discount", "tariff")


def order_not_found() -> NotFound:
    return NotFound("order_not_found")


def well_formed_order_id(order_id: object) -> bool:
    return isinstance(order_id, str) and ORDER_ID_OK.fullmatch(order_id) is not None


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


def _check_caller(order_id: str, user_id: int | None) -> int:
    if user_id is None:
        raise LoginRequired()
    if not well_formed_order_id(order_id):
        raise order_not_found()
    return user_id


async def _owned(conn: AsyncConnection, order_id: str, user_id: int | None, *columns: Any) -> Row[Any]:
    """The order's row (the given columns) when `user_id` owns it; order_not_found otherwise."""
    user_id = _check_caller(order_id, user_id)
    o = t.orders.c
    row = (await conn.execute(select(o.user_id, *columns).where(o.id == order_id))).first()
    if row is None or row.user_id != user_id:
        raise order_not_found()
    return row


async def _exponents(conn: AsyncConnection, currencies: Iterable[str]) -> dict[str, int]:
    wanted = set(currencies)
    f = t.forex_rates.c
    rows = await conn.execute(select(f.currency, f.exponent).where(f.currency.in_(sorted(wanted))))
    return {currency: int(exponent) for currency, exponent in rows}


def _snapshot(raw: Any) -> Any:
    """The stored address snapshot; a writer that stored the JSON as a text value is parsed (unparseable → null)."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return None
    return raw


async def order_detail(db: AsyncEngine, order_id: str, user_id: int | None, now: datetime) -> dict[str, Any]:
    """The order, its items, money summary, history, address snapshot, payments and refunds; `now` is server_time."""
    o, i, h, p, r = t.orders.c, t.order_items.c, t.order_status_history.c, t.payments.c, t.refunds.c
    user_id = _check_caller(order_id, user_id)
    async with db.connect() as conn:
        # The order row and its history in ONE statement, so one snapshot: a transition committed between
        # two statements would show a status whose history has already moved on (every status change
        # writes its history row in the same transaction, on both sides).
        rows = (await conn.execute(
            select(o.user_id, o.id, o.status, o.currency, o.region, o.created_at, o.expires_at, o.paid_at, o.address,
                   *(o[name] for name in _SUMMARY), h.from_status, h.to_status, h.created_at.label("history_at"))
            .select_from(t.orders.outerjoin(t.order_status_history, h.order_id == o.id))
            .where(o.id == order_id)
            .order_by(h.created_at, h.id)
        )).all()
        if not rows or rows[0].user_id != user_id:
            raise order_not_found()
        order = rows[0]
        history = [x for x in rows if x.to_status is not None]
        items = (await conn.execute(
            select(i.sku_id, i.name, i.qty, *(i[name] for name in _ITEM_MONEY)).where(i.order_id == order.id).order_by(i.id)
        )).all()
        payments = (await conn.execute(
            select(p.provider, p.method, p.status, p.amount, p.currency, p.created_at)
            .where(p.order_id == order.id).order_by(p.id)
        )).all()
        refunds = (await conn.execute(
            select(p.provider, r.amount, r.currency, r.status, r.created_at)
            .select_from(t.refunds.outerjoin(t.payments, (p.id == r.payment_id) & (p.order_id == r.order_id)))
            .where(r.order_id == order.id).order_by(r.id)
        )).all()
        exponents = await _exponents(conn, [order.currency, *(x.currency for x in payments), *(x.currency for x in refunds)])
    order_exponent = exponents.get(order.currency, DEFAULT_EXPONENT)

    def m(amount: Decimal | None, currency: str = order.currency) -> str:
        # A payment / refund in a currency without a forex row is shown with the order's exponent.
        return money_str(Decimal(0) if amount is None else Decimal(amount), exponents.get(currency, order_exponent))

    return {
        "order_id": order.id,
        "status": order.status,
        "currency": order.currency,
        "region": order.region,
        "created_at": iso(order.created_at),
        "expires_at": iso(order.expires_at),
        "paid_at": iso(order.paid_at),
        "items": [
            {"sku_id": it.sku_id, "name": it.name, "qty": it.qty, **{name: m(it._mapping[name]) for name in _ITEM_MONEY}}
            for it in items
        ],
        "summary": {name: m(order._mapping[name]) for name in _SUMMARY},
        "status_history": [{"from": x.from_status, "to": x.to_status, "at": iso(x.history_at)} for x in history],
        "address": _snapshot(order.address),
        "payments": [
            {"provider": x.provider, "method": x.method, "status": x.status, "amount": m(x.amount, x.currency),
             "currency": x.currency, "created_at": iso(x.created_at)}
            for x in payments
        ],
        "refunds": [
            {"provider": x.provider, "amount": m(x.amount, x.currency), "currency": x.currency, "status": x.status,
             "created_at": iso(x.created_at)}
            for x in refunds
        ],
        "server_time": iso(now),
    }


def _listed(allowed: str | None, value: str | None) -> bool:
    """A comma-list column: NULL (or empty) allows everything; else `value` must be one of its entries."""
    if allowed is None or allowed.strip() == "":
        return True
    if value is None:
        return False
    return value.upper() in {part.strip().upper() for part in allowed.split(",") if part.strip()}


def normalise_platform(platform: str | None) -> str | None:
    """ios / android / web from X-Platform (any case); None for absent or unknown."""
    if platform is None:
        return None
    p = platform.strip().lower()
    return p if p in PLATFORMS else None


def method_applies(method: Mapping[Any, Any], *, region: str, currency: str, platform: str | None, total: Decimal) -> bool:
    """One payment_methods row against an order; `platform` already normalised (None = unknown)."""
    if not method["enabled"]:
        return False
    if not _listed(method["regions"], region) or not _listed(method["currencies"], currency):
        return False
    # An unknown or absent platform (None) only gets the methods offered everywhere.
    if not _listed(method["platforms"], platform):
        return False
    low, high = method["min_amount"], method["max_amount"]
    return (low is None or total >= low) and (high is None or total <= high)


async def payment_methods_for(db: AsyncEngine, order_id: str, user_id: int | None, platform: str | None) -> list[dict[str, Any]]:
    """The enabled methods for the order's region, currency and total and the caller's platform, by sort then id.

    min_amount / max_amount are in the order's currency (the JPY rows say 50 and 1,500,000).
    """
    o, pm = t.orders.c, t.payment_methods.c
    async with db.connect() as conn:
        order = await _owned(conn, order_id, user_id, o.region, o.currency, o.total)
        rows = (await conn.execute(
            select(pm.id, pm.code, pm.provider, pm.title, pm.regions, pm.currencies, pm.platforms, pm.min_amount,
                   pm.max_amount, pm.enabled)
            .where(pm.enabled)
            .order_by(pm.sort, pm.id)
        )).all()
    plat = normalise_platform(platform)
    total = Decimal(order.total)
    return [
        {"code": row.code, "provider": row.provider, "title": row.title}
        for row in rows
        if method_applies(row._mapping, region=order.region, currency=order.currency, platform=plat, total=total)
    ]


async def paid_from_client(uow: UnitOfWork, order_id: str, user_id: int | None) -> dict[str, Any]:
    """The app says it has paid: clear the order's SKUs from the caller's cart and await the PSP.

    One unit of work (the caller's): the cart lines go, then the guarded ``paid_from_client``
    transition (pending_payment / payment_failed → payment_confirming, the unit's actor). Repeating it is
    harmless: an order already payment_confirming or further along (authorized, paid,
    fulfilling, …) answers its current status. A cancelled order is 409 invalid_state and
    the cart is left as it was (the transaction rolls back). Cart rows before the order row
    (orders rows last, docs/orders.md), as old shopping's version does.
    """
    o, c, i = t.orders.c, t.cart_items.c, t.order_items.c
    order = await _owned(uow.conn, order_id, user_id, o.id)
    await uow.conn.execute(
        delete(t.cart_items).where(
            c.user_id == user_id,
            c.sku_id.in_(select(i.sku_id).where(i.order_id == order.id)),
        )
    )
    try:
        outcome = await uow.transition(order.id, "paid_from_client", reason="paid_from_client")
        status: str | None = outcome.status
    except InvalidState as exc:
        status = (exc.data or {}).get("status")
        if status == CANCELLED or status is None:
            raise
    return {"order_id": order.id, "status": status}
