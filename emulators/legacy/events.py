"""``POST /event/{name}`` (route events): old shopping applies one Kafka event handed over by HTTP.

What the seed's orders service did, and what the new consumer now hands it for the share of the
events routing.yaml's ``consumers:`` gives to ``legacy`` (consumers/legacy_delivery.py). Old
shopping's own, older code: it does not import the new side's ``shop.events`` /
``shop.order_states``, but it writes the same rows by the same rules, so either side applying an
event leaves the same orders, payments, refunds and history (a test compares them):

* ``payment_notified_cm``: the payment row (found by provider + psp_reference, else the row id in
  ``payment_id``, else inserted) only moves forward (created → authorized → captured); the order
  → authorized / paid; on paid, outbox ``purchased`` and ``noti`` (order_paid), as the new side;
* ``payment_failed_cm``: the payment row → failed; a payable order → payment_failed and ``noti``;
  an order already paid (another attempt) stays paid;
* ``purchased``: a paid order → fulfilling, its coupon locked → used, its wallet reservation
  settled, its SKUs removed from the user's cart; not paid yet → 409 (the consumer retries);
* ``refund_notified``: the refund row → succeeded (the order → partially_refunded / refunded,
  ``noti``) or → retrying / failed after 5 attempts (``noti`` when final);
* ``group_update``: deprecated: 200 and no effect.

Idempotent: each event id is claimed in ``processed_events`` under consumer ``legacy:<name>``
in the transaction of its effect (a redelivery answers ``duplicate`` and changes nothing), and
every status change is the guarded compare-and-set of ``order_rows.move_status`` (actor
``legacy``); whatever hangs off a transition happens only when this call won it, so an event the
new side applied first moves nothing here either. The order row is locked first (``FOR UPDATE``).

The effects themselves (``record_payment``, ``record_payment_failed``, ``record_refund_outcome``)
are also what old shopping's own pay and refund routes (payments.py, refunds.py) call when a PSP
answers them directly, so a payment reads the same whether a webhook's event or a route recorded it.

Answers: 200 ``{"outcome": "processed" | "duplicate", ...}``; 400 ``bad_request`` naming the
field; 404 ``order_not_found``; 409 ``invalid_state`` (not paid yet: worth a retry); 422
``event_not_applicable`` (money that is not the order's, a refund that does not exist, a capture
on a cancelled order: for a person).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from emulators.legacy import envelope
from emulators.legacy.body import read_json
from emulators.legacy.envelope import ApiError, bad_request, ok
from emulators.legacy.order_rows import (
    AUTHORIZED,
    CANCELLED,
    PAYMENT_CONFIRMING,
    PAYMENT_FAILED,
    PENDING_PAYMENT,
    move_status,
    not_found,
    now,
    retrying,
)
from emulators.legacy.state import ENGINE
from shop.schema import (
    cart_items,
    order_items,
    orders,
    outbox,
    payments,
    processed_events,
    refunds,
    user_coupons,
    wallet_ledger,
)

EVENT_NOT_APPLICABLE = 42298
PAID = "paid"
FULFILLING = "fulfilling"
PAID_OR_LATER = (PAID, FULFILLING, "shipped", "completed", "partially_refunded", "refunded")
REFUNDABLE = (PAID, FULFILLING, "shipped", "completed", "partially_refunded")
NOT_PAID_YET = (PENDING_PAYMENT, PAYMENT_CONFIRMING, PAYMENT_FAILED, AUTHORIZED)
PROVIDERS = ("adyen", "paypal")
PAYMENT_STEPS = {"created": 0, "authorized": 1, "captured": 2}
REFUND_ATTEMPTS = 5
OPEN_REFUND = ("pending", "submitted", "retrying")
_ORDER_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_CURRENCY = re.compile(r"[A-Z]{3}")


def unapplicable(order_id: str, reason: str) -> ApiError:
    return ApiError(422, EVENT_NOT_APPLICABLE, "event_not_applicable", {"order_id": order_id, "reason": reason})


# --- the body -------------------------------------------------------------------------------------


class Body:
    """The event's JSON object, read field by field (400 naming the first bad one)."""

    def __init__(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise bad_request("body", "must be a JSON object")
        self.raw = raw

    def text(self, name: str, max_len: int = 128, *, optional: bool = False) -> str | None:
        value = self.raw.get(name)
        if value is None and optional:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise bad_request(name, f"must be a string of 1..{max_len} characters")
        return value

    def required(self, name: str, max_len: int = 128) -> str:
        value = self.text(name, max_len)
        assert value is not None
        return value

    def order_id(self) -> str:
        value = self.required("order_id", 32)
        if not _ORDER_ID.fullmatch(value):
            raise bad_request("order_id", "not an order id")
        return value

    def one_of(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self.raw.get(name)
        if value not in allowed:
            raise bad_request(name, f"must be one of {', '.join(allowed)}")
        return str(value)

    def money(self, name: str = "amount") -> Decimal:
        raw = self.raw.get(name)
        try:
            value = Decimal(raw) if isinstance(raw, str) and len(raw) <= 40 else None
            exact = value is not None and value.is_finite() and value >= 0 and value == value.quantize(Decimal("0.0001"))
        except ArithmeticError:  # InvalidOperation from Decimal() and from quantize() of a huge exponent
            exact = False
        if not exact:
            raise bad_request(name, "must be a decimal string, at least 0, at most 4 decimals")
        assert value is not None
        return value

    def currency(self) -> str:
        value = self.raw.get("currency")
        if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
            raise bad_request("currency", "must be an ISO 4217 code")
        return value


# --- shared steps ---------------------------------------------------------------------------------


async def _claim(conn: AsyncConnection, name: str, event_id: str) -> bool:
    """processed_events for ``legacy:<name>``; False when this event was applied before."""
    consumer = f"legacy:{name}"
    pe = processed_events.c
    seen = (await conn.execute(select(pe.event_id).where(pe.consumer == consumer, pe.event_id == event_id))).first()
    if seen is not None:
        return False
    try:
        await conn.execute(insert(processed_events).values(consumer=consumer, event_id=event_id))
    except IntegrityError:  # a concurrent delivery of the same event won
        return False
    return True


async def lock_order(conn: AsyncConnection, order_id: str) -> Any:
    """The order row, locked for this transaction (``FOR UPDATE``): the first lock every effect takes."""
    o = orders.c
    row = (await conn.execute(
        select(o.id, o.user_id, o.status, o.total, o.currency).where(o.id == order_id).with_for_update()
    )).first()
    if row is None:
        raise not_found()
    return row


async def _noti(conn: AsyncConnection, order: Any, template: str, variables: dict[str, Any], at: datetime) -> None:
    await conn.execute(insert(outbox).values(
        topic="noti", key=order.id, created_at=at,
        payload={"user_id": order.user_id, "template": template, "order_id": order.id, "vars": variables},
    ))


def _row_id(raw: str | None) -> int | None:
    return int(raw) if raw is not None and raw.isascii() and raw.isdigit() else None


# --- the events -----------------------------------------------------------------------------------


async def _payment_notified(conn: AsyncConnection, body: Body, order: Any) -> None:
    provider, status = body.one_of("provider", PROVIDERS), body.one_of("status", ("authorized", "captured"))
    amount, currency, psp = body.money(), body.currency(), body.required("psp_reference", 64)
    await record_payment(conn, order, provider=provider, status=status, amount=amount, currency=currency,
                         psp_reference=psp, payment_id=_row_id(body.text("payment_id", 64, optional=True)))


async def record_payment(conn: AsyncConnection, order: Any, *, provider: str, status: str, amount: Decimal,
                         currency: str, psp_reference: str, payment_id: int | None,
                         capture_id: str | None = None) -> bool:
    """A payment authorized / captured (the event, or old shopping's own pay routes): True when this
    call moved the order to paid. ``order`` is the row ``lock_order`` returned."""
    if amount != order.total or currency != order.currency:
        raise unapplicable(order.id, "amount_mismatch")
    p = payments.c
    if order.status == CANCELLED:
        # An authorisation applied before the order was cancelled, delivered again (the new side
        # applied it, then a flip sent the redelivery here): already done, not a capture to refuse.
        reached = [s for s, step in PAYMENT_STEPS.items() if step >= PAYMENT_STEPS[status]]
        done = (await conn.execute(select(p.id).where(
            p.provider == provider, p.psp_reference == psp_reference, p.order_id == order.id, p.amount == amount,
            p.currency == currency, p.status.in_(reached),
        ))).first()
        if done is not None:
            return False
        raise unapplicable(order.id, f"{status}_after_cancel")
    at = now()
    row = (await conn.execute(select(p.id).where(p.provider == provider, p.psp_reference == psp_reference))).first()
    if row is None and payment_id is not None:
        row = (await conn.execute(
            select(p.id).where(p.id == payment_id, p.order_id == order.id, p.provider == provider)
        )).first()
    extra = {} if capture_id is None else {"capture_id": capture_id}
    if row is None:
        await conn.execute(insert(payments).values(
            order_id=order.id, provider=provider, status=status, amount=amount, currency=currency,
            psp_reference=psp_reference, created_at=at, updated_at=at, **extra,
        ))
    else:
        before = [s for s, step in PAYMENT_STEPS.items() if step < PAYMENT_STEPS[status]]
        await conn.execute(update(payments).where(p.id == row.id, p.status.in_(before))
                           .values(status=status, psp_reference=psp_reference, updated_at=at, **extra))
    reason = f"{provider}:{psp_reference}"
    if status == "authorized":
        await move_status(conn, order.id, (PENDING_PAYMENT, PAYMENT_CONFIRMING, PAYMENT_FAILED), AUTHORIZED, reason)
        return False
    moved, _ = await move_status(conn, order.id, (PENDING_PAYMENT, PAYMENT_CONFIRMING, PAYMENT_FAILED, AUTHORIZED), PAID, reason)
    if not moved:
        return False  # paid already (by either side): nothing hangs off a second capture
    await conn.execute(update(orders).where(orders.c.id == order.id).values(paid_at=at))
    await conn.execute(insert(outbox).values(
        topic="purchased", key=order.id, created_at=at,
        payload={"event_id": f"purchased:{order.id}", "order_id": order.id, "user_id": order.user_id,
                 "occurred_at": at.isoformat() + "Z"},
    ))
    await _noti(conn, order, "order_paid", {"amount": str(amount), "currency": currency, "provider": provider}, at)
    return True


async def _payment_failed(conn: AsyncConnection, body: Body, order: Any) -> None:
    await record_payment_failed(conn, order, provider=body.one_of("provider", PROVIDERS),
                                reason=body.text("reason", 255, optional=True),
                                payment_id=_row_id(body.text("payment_id", 64, optional=True)))


async def record_payment_failed(conn: AsyncConnection, order: Any, *, provider: str, reason: str | None,
                                payment_id: int | None, payment_status: str = "failed") -> None:
    """A payment attempt failed: its row → ``payment_status``; a payable order → payment_failed and ``noti``."""
    at = now()
    if payment_id is not None:
        p = payments.c
        failing = await conn.execute(update(payments).where(p.id == payment_id, p.order_id == order.id, p.status.in_(("created", "authorized")))
                                     .values(status=payment_status, updated_at=at))
        if failing.rowcount == 0:
            # This payment failed already: the event was applied (here or by the new side) and must not
            # fail the buyer's next attempt (payment_confirming) a second time.
            already = (await conn.execute(select(p.id).where(p.id == payment_id, p.order_id == order.id, p.status == payment_status))).first()
            if already is not None:
                return
    moved, _ = await move_status(conn, order.id, (PENDING_PAYMENT, PAYMENT_CONFIRMING), PAYMENT_FAILED, (reason or provider)[:255])
    if moved:
        await _noti(conn, order, "payment_failed", {"provider": provider, "reason": reason}, at)


async def _purchased(conn: AsyncConnection, body: Body, order: Any) -> None:
    if order.status in NOT_PAID_YET:
        raise ApiError(409, envelope.INVALID_STATE, "invalid_state", {"status": order.status, "reason": "not_paid_yet"})
    if order.status == CANCELLED:
        raise unapplicable(order.id, "purchased_after_cancel")
    moved, _ = await move_status(conn, order.id, (PAID,), FULFILLING, "purchased")
    if not moved:
        return  # fulfilling or later: whoever moved it did the rest
    at = now()
    u = user_coupons.c
    await conn.execute(update(user_coupons).where(u.order_id == order.id, u.status == "locked").values(status="used", used_at=at))
    lg = wallet_ledger.c
    ledger = (await conn.execute(select(lg.user_id, lg.kind, lg.amount).where(lg.order_id == order.id))).all()
    held = sum((Decimal(r.amount) for r in ledger if r.kind == "reserve"), Decimal(0))
    closed = sum((Decimal(r.amount) for r in ledger if r.kind in ("release", "settle")), Decimal(0))
    if ledger and held > closed:
        await conn.execute(insert(wallet_ledger).values(
            user_id=ledger[0].user_id, order_id=order.id, amount=held - closed, kind="settle", created_at=at,
        ))
    i, c = order_items.c, cart_items.c
    skus = (await conn.execute(select(i.sku_id).where(i.order_id == order.id))).scalars().all()
    if skus:
        await conn.execute(delete(cart_items).where(c.user_id == order.user_id, c.sku_id.in_(skus)))


async def _refund_notified(conn: AsyncConnection, body: Body, order: Any) -> None:
    refund_id, status = body.required("refund_id", 64), body.one_of("status", ("succeeded", "failed"))
    amount, currency = body.money(), body.currency()
    psp, reason = body.text("psp_reference", 64, optional=True), body.text("reason", 255, optional=True)
    r = refunds.c
    row = None if _row_id(refund_id) is None else (await conn.execute(
        select(r.id, r.amount, r.currency, r.attempts).where(r.id == _row_id(refund_id), r.order_id == order.id)
    )).first()
    if row is None:
        raise unapplicable(order.id, "refund_not_found")
    if row.amount != amount or row.currency != currency:
        raise unapplicable(order.id, "amount_mismatch")
    await record_refund_outcome(conn, order, row, status=status, amount=amount, psp_reference=psp, reason=reason)


def retry_at(attempts: int, at: datetime) -> datetime:
    """When a refund that failed after `attempts` submissions is submitted again: 30 s, 1 min, 2 min… ≤ 30 min."""
    return at + timedelta(seconds=min(1800, 30 * 2 ** max(0, attempts - 1)))


async def record_refund_outcome(conn: AsyncConnection, order: Any, row: Any, *, status: str, amount: Decimal,
                                psp_reference: str | None, reason: str | None) -> None:
    """The PSP's word on a refund (``row``: id, currency, attempts; `amount` as the notification says it):
    succeeded → the order partially_refunded / refunded and ``noti``; failed → retrying, or failed for good
    after 5 attempts."""
    r = refunds.c
    currency = row.currency
    at = now()
    if status == "failed":
        final = row.attempts >= REFUND_ATTEMPTS
        changed = await conn.execute(update(refunds).where(r.id == row.id, r.status.in_(OPEN_REFUND)).values(
            status="failed" if final else "retrying", next_attempt_at=None if final else retry_at(row.attempts, at),
            reason=(reason or "the PSP refused the refund")[:255], updated_at=at,
        ))
        if changed.rowcount == 1 and final:
            await _noti(conn, order, "refund_failed", {"amount": str(amount), "currency": currency}, at)
        return
    changed = await conn.execute(update(refunds).where(r.id == row.id, r.status.in_(OPEN_REFUND))
                                 .values(status="succeeded", psp_reference=psp_reference, next_attempt_at=None, updated_at=at))
    if changed.rowcount != 1:
        return
    p = payments.c
    captured = (await conn.execute(
        select(func.coalesce(func.sum(p.amount), 0)).where(p.order_id == order.id, p.status == "captured")
    )).scalar_one()
    refunded = (await conn.execute(
        select(func.coalesce(func.sum(r.amount), 0)).where(r.order_id == order.id, r.status == "succeeded")
    )).scalar_one()
    target = "refunded" if Decimal(refunded) >= Decimal(captured or order.total) else "partially_refunded"
    await move_status(conn, order.id, REFUNDABLE, target, f"refund {row.id}")
    await _noti(conn, order, "refund_succeeded", {"amount": str(amount), "currency": currency}, at)


APPLIERS = {
    "payment_notified_cm": _payment_notified,
    "payment_failed_cm": _payment_failed,
    "purchased": _purchased,
    "refund_notified": _refund_notified,
}
GROUP_UPDATE = "group_update"


async def event(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in APPLIERS and name != GROUP_UPDATE:
        raise ApiError(404, envelope.NOT_FOUND, "not_found", {"event": name[:64]})
    raw = await read_json(request)
    if name == GROUP_UPDATE:  # deprecated: acknowledged, nothing else
        return ok({"event": name, "outcome": "ignored"})
    body = Body(raw)
    event_id, order_id = body.required("event_id"), body.order_id()
    apply = APPLIERS[name]
    engine = request.app[ENGINE]

    async def work() -> tuple[str, str]:
        async with engine.begin() as conn:
            order = await lock_order(conn, order_id)
            if not await _claim(conn, name, event_id):
                return "duplicate", order.status
            await apply(conn, body, order)
            status = (await conn.execute(select(orders.c.status).where(orders.c.id == order_id))).scalar_one()
            return "processed", status

    outcome, status = await retrying(work)
    return ok({"event": name, "event_id": event_id, "order_id": order_id, "outcome": outcome, "status": status})
