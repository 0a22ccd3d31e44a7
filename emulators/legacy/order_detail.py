"""Old shopping's order reads: the detail page and the payment-method list.

``GET /shopping/orders_v43/{order_id}`` (route detail) and ``GET /shopping/orders/{order_id}/pay_cm``
(route payment_methods). Owner only: anonymous callers get 401, another user's order and
ids that cannot be ids get the same 404 ``order_not_found`` as a missing one. Both read
the shared rows as they are now, so orders either side placed read the same.

Detail ``data``::

    {"order_id", "status", "currency", "region", "created_at", "expires_at", "paid_at",
     "items": [{"sku_id", "name", "qty", "unit_price", "line_total", "mall_discount",
                "coupon_discount", "tariff"}],
     "summary": {"subtotal", "mall_discount", "coupon_discount", "shipping_fee", "tariff",
                 "wallet_deduction", "total"},
     "status_history": [{"from", "to", "at"}],
     "address": <the snapshot taken when the order was placed, as stored>,
     "payments": [{"provider", "method", "status", "amount", "currency", "created_at"}],
     "refunds": [{"provider", "amount", "currency", "status", "created_at"}],
     "server_time"}

Money is a string with the currency's exponent; timestamps are ISO seconds with ``Z``. The
history leaves out who made a change (internal); payments and refunds leave out PSP references
(pspReference, PayPal order and capture ids), idempotency keys, request ids and the refund's reason.
A refund's provider is its payment's (null when that payment row is missing or another order's).
``server_time`` is the only field that differs between two reads of an unchanged order.

The payment-method list was hard-coded in old shopping (the seed says so) and is kept that
way here: a fixed list per currency, nothing filtered by region, platform or amount.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from sqlalchemy import select

from emulators.legacy.caller import require_user
from emulators.legacy.envelope import ok
from emulators.legacy.order_rows import fmt, iso, now, owned_order
from emulators.legacy.state import ENGINE
from shop.schema import (
    forex_rates,
    order_items,
    order_status_history,
    payments,
    refunds,
)

SUMMARY_FIELDS = ("subtotal", "mall_discount", "coupon_discount", "shipping_fee", "tariff", "wallet_deduction", "total")
ITEM_MONEY = ("unit_price", "line_total", "mall_discount", "coupon_discount", "tariff")

_CARD = {"code": "card", "provider": "adyen", "title": "Credit or debit card"}
_PAYPAL = {"code": "paypal", "provider": "paypal", "title": "PayPal"}
# Old shopping's hard-coded list, crudely by currency.
HARD_CODED_METHODS: dict[str, tuple[dict[str, str], ...]] = {
    "USD": (_CARD, _PAYPAL),
    "EUR": (_CARD, _PAYPAL),
    "GBP": (_CARD, _PAYPAL),
    "JPY": ({"code": "card", "provider": "adyen", "title": "クレジットカード"}, _PAYPAL),
}


def _snapshot(raw: Any) -> Any:
    if isinstance(raw, str):  # a writer that stored the JSON as text
        try:
            return json.loads(raw)
        except ValueError:
            return None
    return raw


async def detail(request: web.Request) -> web.Response:
    uid = require_user(request)
    order_id = request.match_info["order_id"]
    async with request.app[ENGINE].connect() as conn:
        order = await owned_order(conn, order_id, uid)
        exponents = {r.currency: int(r.exponent) for r in await conn.execute(select(forex_rates.c.currency, forex_rates.c.exponent))}
        i, h, p, r = order_items.c, order_status_history.c, payments.c, refunds.c
        items = (await conn.execute(select(order_items).where(i.order_id == order.id).order_by(i.id))).all()
        history = (await conn.execute(
            select(h.from_status, h.to_status, h.created_at).where(h.order_id == order.id).order_by(h.created_at, h.id)
        )).all()
        pays = (await conn.execute(
            select(p.id, p.provider, p.method, p.status, p.amount, p.currency, p.created_at)
            .where(p.order_id == order.id).order_by(p.id)
        )).all()
        refs = (await conn.execute(
            select(r.amount, r.currency, r.status, r.created_at, r.payment_id).where(r.order_id == order.id).order_by(r.id)
        )).all()

    exp = exponents.get(order.currency, 2)
    providers = {pay.id: pay.provider for pay in pays}
    return ok({
        "order_id": order.id,
        "status": order.status,
        "currency": order.currency,
        "region": order.region,
        "created_at": iso(order.created_at),
        "expires_at": iso(order.expires_at),
        "paid_at": iso(order.paid_at),
        "items": [
            {"sku_id": it.sku_id, "name": it.name, "qty": it.qty,
             **{name: fmt(getattr(it, name), exp) for name in ITEM_MONEY}}
            for it in items
        ],
        "summary": {name: fmt(getattr(order, name), exp) for name in SUMMARY_FIELDS},
        "status_history": [{"from": row.from_status, "to": row.to_status, "at": iso(row.created_at)} for row in history],
        "address": _snapshot(order.address),
        "payments": [
            {"provider": pay.provider, "method": pay.method, "status": pay.status,
             "amount": fmt(pay.amount, exponents.get(pay.currency, exp)), "currency": pay.currency,
             "created_at": iso(pay.created_at)}
            for pay in pays
        ],
        "refunds": [
            {"provider": providers.get(ref.payment_id), "amount": fmt(ref.amount, exponents.get(ref.currency, exp)),
             "currency": ref.currency, "status": ref.status, "created_at": iso(ref.created_at)}
            for ref in refs
        ],
        "server_time": iso(now()),
    })


async def payment_methods(request: web.Request) -> web.Response:
    uid = require_user(request)
    async with request.app[ENGINE].connect() as conn:
        order = await owned_order(conn, request.match_info["order_id"], uid)
    return ok({"methods": [dict(m) for m in HARD_CODED_METHODS.get(order.currency, ())]})
