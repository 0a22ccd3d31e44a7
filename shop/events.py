"""The Kafka events old shopping used to apply, as service functions on a unit of work (domain.md "Kafka events").

Each `apply_*` receives the parsed event and a `UnitOfWork` (one transaction: effect, history,
outbox, processed_events) and returns the outcome to count. The Kafka consumer and the HTTP
`POST /event/{name}` path call the same functions.

Exactly once, across redeliveries and across the two sides: an event id is claimed in
`processed_events` first (a redelivery to the same side is a `duplicate`), and every side effect
hangs off the order's guarded transition: only the writer whose compare-and-set moved the order
(paid → fulfilling, say) settles the wallet or publishes `purchased`. When old shopping applied
the same event first, the transition is a no-op here and so is everything that hangs off it; and
a payment it already recorded (same psp_reference and money, at the event's status) is a
`duplicate` even when the order has moved on since (fulfilling, cancelled), never a refusal.

What cannot be applied raises: `InvalidEvent` (not the event's schema) and `Unapplicable` (an
order that does not exist, money that does not match, a capture on a cancelled order) are for a
person, through the DLQ; `NotYet` (a `purchased` for an order whose payment is not applied yet,
the two topics are not ordered) is retried a few times first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

import structlog
from sqlalchemy import delete, func, insert, select, update

from common import envelope as codes
from shop import order_states as st
from shop import schema as t
from shop.errors import BadRequest, ShopError
from shop.reservations import settle_wallet, use_coupon
from shop.uow import UnitOfWork

log = structlog.get_logger("shop.events")

PROVIDERS = ("adyen", "paypal")
# The order a payment's status may only move forward in; failed and cancelled end it.
_PAYMENT_RANK = {"created": 0, "authorized": 1, "captured": 2}
_PAID_OR_LATER = frozenset({st.PAID, st.FULFILLING, st.SHIPPED, st.COMPLETED, st.PARTIALLY_REFUNDED, st.REFUNDED})


class InvalidEvent(BadRequest):
    """The message is not the event's schema; data names the field."""

    reason = "invalid_event"


class Unapplicable(ShopError):
    """A well-formed event the shop must not apply on its own (for a person to look at)."""

    code = codes.EVENT_NOT_APPLICABLE


class NotYet(Exception):
    """The event depends on another one not applied yet; worth a few retries."""


# --- parsing --------------------------------------------------------------------------------------


def _str(payload: Mapping[str, Any], name: str, *, optional: bool = False, max_len: int = 128) -> str | None:
    value = payload.get(name)
    if value is None and optional:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidEvent(data={"field": name, "reason": f"must be a string of 1..{max_len} characters"})
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent(data={"field": name, "reason": "not valid text"}) from None
    return value


def _req(payload: Mapping[str, Any], name: str, max_len: int = 128) -> str:
    value = _str(payload, name, max_len=max_len)
    assert value is not None
    return value


def _choice(payload: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = payload.get(name)
    if value not in allowed:
        raise InvalidEvent(data={"field": name, "reason": f"must be one of {', '.join(allowed)}"})
    return str(value)


def _amount(payload: Mapping[str, Any], name: str) -> Decimal:
    raw = payload.get(name)
    # Money travels as a decimal string; a float would already have lost the cents.
    if not isinstance(raw, str):
        raise InvalidEvent(data={"field": name, "reason": "must be a decimal string"})
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise InvalidEvent(data={"field": name, "reason": "must be a decimal string"}) from None
    if not value.is_finite() or value < 0 or value.as_tuple().exponent < -4:  # type: ignore[operator]
        raise InvalidEvent(data={"field": name, "reason": "must be a non-negative amount with at most 4 decimals"})
    return value


def _currency(payload: Mapping[str, Any], name: str = "currency") -> str:
    value = _req(payload, name, max_len=3)
    if len(value) != 3 or not value.isascii() or not value.isalpha() or not value.isupper():
        raise InvalidEvent(data={"field": name, "reason": "must be an ISO 4217 code"})
    return value


@dataclass(frozen=True, slots=True)
class PaymentNotified:
    event_id: str
    order_id: str
    payment_id: str | None
    provider: str
    status: str  # authorized / captured
    amount: Decimal
    currency: str
    psp_reference: str
    occurred_at: str | None


@dataclass(frozen=True, slots=True)
class PaymentFailed:
    event_id: str
    order_id: str
    payment_id: str | None
    provider: str
    reason: str | None
    occurred_at: str | None


@dataclass(frozen=True, slots=True)
class Purchased:
    event_id: str
    order_id: str
    user_id: int | None
    occurred_at: str | None


@dataclass(frozen=True, slots=True)
class RefundNotified:
    event_id: str
    refund_id: str
    order_id: str
    status: str  # succeeded / failed
    amount: Decimal
    currency: str
    psp_reference: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class GroupUpdate:
    event_id: str


def parse_payment_notified(p: Mapping[str, Any]) -> PaymentNotified:
    return PaymentNotified(
        event_id=_req(p, "event_id"), order_id=_req(p, "order_id", 32), payment_id=_str(p, "payment_id", optional=True, max_len=64),
        provider=_choice(p, "provider", PROVIDERS), status=_choice(p, "status", ("authorized", "captured")),
        amount=_amount(p, "amount"), currency=_currency(p), psp_reference=_req(p, "psp_reference", 64),
        occurred_at=_str(p, "occurred_at", optional=True, max_len=64),
    )


def parse_payment_failed(p: Mapping[str, Any]) -> PaymentFailed:
    return PaymentFailed(
        event_id=_req(p, "event_id"), order_id=_req(p, "order_id", 32), payment_id=_str(p, "payment_id", optional=True, max_len=64),
        provider=_choice(p, "provider", PROVIDERS), reason=_str(p, "reason", optional=True, max_len=255),
        occurred_at=_str(p, "occurred_at", optional=True, max_len=64),
    )


def parse_purchased(p: Mapping[str, Any]) -> Purchased:
    user = p.get("user_id")
    if user is not None and (isinstance(user, bool) or not isinstance(user, int) or user <= 0):
        raise InvalidEvent(data={"field": "user_id", "reason": "must be a positive integer"})
    return Purchased(event_id=_req(p, "event_id"), order_id=_req(p, "order_id", 32), user_id=user,
                     occurred_at=_str(p, "occurred_at", optional=True, max_len=64))


def parse_refund_notified(p: Mapping[str, Any]) -> RefundNotified:
    return RefundNotified(
        event_id=_req(p, "event_id"), refund_id=_req(p, "refund_id", 64), order_id=_req(p, "order_id", 32),
        status=_choice(p, "status", ("succeeded", "failed")), amount=_amount(p, "amount"), currency=_currency(p),
        psp_reference=_str(p, "psp_reference", optional=True, max_len=64), reason=_str(p, "reason", optional=True, max_len=255),
    )


def parse_group_update(p: Mapping[str, Any]) -> GroupUpdate:
    return GroupUpdate(event_id=_req(p, "event_id"))


# --- effects --------------------------------------------------------------------------------------


async def _order(uow: UnitOfWork, order_id: str) -> Any:
    o = t.orders.c
    row = (await uow.conn.execute(
        select(o.id, o.user_id, o.status, o.total, o.currency).where(o.id == order_id)
        # Locked before the payment or refund is looked up or written: old shopping locks the order row
        # first too (emulators/legacy/events.py), so when both sides get the same event at once (a
        # redelivery after a flip, a rebalance) one waits for the other's commit and then sees its rows,
        # instead of both finding no payment and inserting one each. No-op on SQLite (one writer).
        .with_for_update()
    )).first()
    if row is None:
        raise Unapplicable(data={"order_id": order_id, "reason": "order_not_found"})
    return row


def _payment_row_id(payment_id: str | None) -> int | None:
    return int(payment_id) if payment_id is not None and payment_id.isascii() and payment_id.isdigit() else None


async def _record_payment(uow: UnitOfWork, ev: PaymentNotified) -> None:
    """The payment row moves forward only (created → authorized → captured), whoever wrote it first."""
    p = t.payments.c
    found = (await uow.conn.execute(
        select(p.id, p.status).where(p.provider == ev.provider, p.psp_reference == ev.psp_reference)
    )).first()
    row_id = _payment_row_id(ev.payment_id)
    if found is None and row_id is not None:
        # A row our pay route created before the PSP named its reference.
        found = (await uow.conn.execute(
            select(p.id, p.status).where(p.id == row_id, p.order_id == ev.order_id, p.provider == ev.provider)
        )).first()
    if found is None:
        await uow.conn.execute(insert(t.payments).values(
            order_id=ev.order_id, provider=ev.provider, status=ev.status, amount=ev.amount, currency=ev.currency,
            psp_reference=ev.psp_reference, created_at=uow.now, updated_at=uow.now,
        ))
        return
    earlier = [s for s, rank in _PAYMENT_RANK.items() if rank < _PAYMENT_RANK[ev.status]]
    await uow.conn.execute(
        update(t.payments).where(p.id == found.id, p.status.in_(earlier))
        .values(status=ev.status, psp_reference=ev.psp_reference, updated_at=uow.now)
    )


async def _payment_already_at(uow: UnitOfWork, ev: PaymentNotified) -> bool:
    """This very payment (provider + psp_reference, this order, this money) is at `ev.status` or beyond.

    Both sides write a payment's status in the transaction of the order's transition it causes, so
    the row means the event was applied: by old shopping (delivered there, its offset not committed,
    redelivered here after a flip) or under another event id (the PSP sending it again).
    """
    p = t.payments.c
    reached = [s for s, rank in _PAYMENT_RANK.items() if rank >= _PAYMENT_RANK[ev.status]]
    return (await uow.conn.execute(select(p.id).where(
        p.provider == ev.provider, p.psp_reference == ev.psp_reference, p.order_id == ev.order_id,
        p.amount == ev.amount, p.currency == ev.currency, p.status.in_(reached),
    ).limit(1))).first() is not None


async def apply_payment_notified(uow: UnitOfWork, ev: PaymentNotified, consumer: str) -> str:
    if not await uow.first_time(consumer, ev.event_id):
        return "duplicate"
    order = await _order(uow, ev.order_id)
    if order.status == st.CANCELLED or (ev.status == "captured" and order.status in _PAID_OR_LATER - {st.PAID}):
        # The order has moved on from where this event would take it (fulfilling after `purchased`, or
        # cancelled after an authorisation): refused below unless it is this event, already applied.
        # Only looked up on this path, so the usual event pays no extra round trip.
        if await _payment_already_at(uow, ev):
            return "duplicate"
    if ev.currency != order.currency or ev.amount != order.total:
        # Never mark an order paid for money that is not its total: a person reconciles it.
        raise Unapplicable(data={"order_id": ev.order_id, "reason": "amount_mismatch", "order_total": str(order.total),
                                 "order_currency": order.currency, "paid": str(ev.amount), "paid_currency": ev.currency})
    if order.status == st.CANCELLED:
        raise Unapplicable(data={"order_id": ev.order_id, "reason": f"{ev.status}_after_cancel"})
    await _record_payment(uow, ev)
    if ev.status == "authorized" and order.status in _PAID_OR_LATER | {st.AUTHORIZED}:
        return "processed"  # the capture (or a replay) got here first: nothing moves back
    outcome = await uow.transition(ev.order_id, "authorized" if ev.status == "authorized" else "captured",
                                   reason=f"{ev.provider}:{ev.psp_reference}")
    if outcome.changed and outcome.status == st.PAID:
        await uow.publish("purchased", ev.order_id, {
            "event_id": f"purchased:{ev.order_id}", "order_id": ev.order_id, "user_id": order.user_id,
            "occurred_at": uow.now.isoformat() + "Z",
        })
        await uow.publish("noti", ev.order_id, {
            "user_id": order.user_id, "template": "order_paid", "order_id": ev.order_id,
            "vars": {"amount": str(ev.amount), "currency": ev.currency, "provider": ev.provider},
        })
    return "processed"


async def _payment_failed_already(uow: UnitOfWork, row_id: int, order_id: str) -> bool:
    """The event's payment is failed already: this failure was applied (by old shopping before a flip,
    say), and must not fail the order again after the buyer's next attempt (payment_confirming)."""
    p = t.payments.c
    return (await uow.conn.execute(
        select(p.id).where(p.id == row_id, p.order_id == order_id, p.status == "failed")
    )).first() is not None


async def apply_payment_failed(uow: UnitOfWork, ev: PaymentFailed, consumer: str) -> str:
    if not await uow.first_time(consumer, ev.event_id):
        return "duplicate"
    order = await _order(uow, ev.order_id)
    row_id = _payment_row_id(ev.payment_id)
    if row_id is not None:
        p = t.payments.c
        failing = await uow.conn.execute(
            update(t.payments).where(p.id == row_id, p.order_id == ev.order_id, p.status.in_(("created", "authorized")))
            .values(status="failed", updated_at=uow.now)
        )
        if failing.rowcount == 0 and await _payment_failed_already(uow, row_id, ev.order_id):
            return "duplicate"
    if order.status not in st.TRANSITIONS["payment_failed"].sources:
        # Another attempt already paid (or the order ended): a late failure changes nothing.
        log.info("payment_failed_ignored", order_id=ev.order_id, status=order.status)
        return "processed"
    outcome = await uow.transition(ev.order_id, "payment_failed", reason=(ev.reason or ev.provider)[:255])
    if outcome.changed:
        await uow.publish("noti", ev.order_id, {
            "user_id": order.user_id, "template": "payment_failed", "order_id": ev.order_id,
            "vars": {"provider": ev.provider, "reason": ev.reason},
        })
    return "processed"


async def apply_purchased(uow: UnitOfWork, ev: Purchased, consumer: str) -> str:
    if not await uow.first_time(consumer, ev.event_id):
        return "duplicate"
    order = await _order(uow, ev.order_id)
    if order.status in (st.PENDING_PAYMENT, st.PAYMENT_CONFIRMING, st.PAYMENT_FAILED, st.AUTHORIZED):
        raise NotYet(f"order {ev.order_id} is {order.status}, not paid yet")
    if order.status == st.CANCELLED:
        raise Unapplicable(data={"order_id": ev.order_id, "reason": "purchased_after_cancel"})
    outcome = await uow.transition(ev.order_id, "purchased", reason="purchased") if order.status == st.PAID else None
    if outcome is None or not outcome.changed:
        return "processed"  # fulfilling or later already: whoever moved it did the rest
    await use_coupon(uow.conn, ev.order_id, now=uow.now)
    await settle_wallet(uow.conn, ev.order_id, now=uow.now)
    i, c = t.order_items.c, t.cart_items.c
    await uow.conn.execute(delete(t.cart_items).where(
        c.user_id == order.user_id, c.sku_id.in_(select(i.sku_id).where(i.order_id == ev.order_id).scalar_subquery()),
    ))
    return "processed"


REFUND_ATTEMPTS = 5  # legacy-api.md refund: up to 5 attempts, then `failed` for a person


def refund_backoff(attempts: int) -> timedelta:
    """When the retry loop submits a failed refund again: 30 s, 1 min, 2 min, 4 min…, at most 30 min."""
    return timedelta(seconds=min(1800, 30 * 2 ** max(0, attempts - 1)))


async def apply_refund_notified(uow: UnitOfWork, ev: RefundNotified, consumer: str) -> str:
    if not await uow.first_time(consumer, ev.event_id):
        return "duplicate"
    order = await _order(uow, ev.order_id)
    r = t.refunds.c
    row_id = _payment_row_id(ev.refund_id)
    refund = None if row_id is None else (await uow.conn.execute(
        select(r.id, r.status, r.amount, r.currency, r.attempts).where(r.id == row_id, r.order_id == ev.order_id)
    )).first()
    if refund is None:
        raise Unapplicable(data={"order_id": ev.order_id, "refund_id": ev.refund_id, "reason": "refund_not_found"})
    if (refund.amount, refund.currency) != (ev.amount, ev.currency):
        raise Unapplicable(data={"order_id": ev.order_id, "refund_id": ev.refund_id, "reason": "amount_mismatch"})
    open_states = ("pending", "submitted", "retrying")
    if ev.status == "failed":
        attempts = refund.attempts
        final = attempts >= REFUND_ATTEMPTS
        changed = await uow.conn.execute(
            update(t.refunds).where(r.id == refund.id, r.status.in_(open_states)).values(
                status="failed" if final else "retrying",
                next_attempt_at=None if final else uow.now + refund_backoff(attempts),
                reason=(ev.reason or "the PSP refused the refund")[:255], updated_at=uow.now,
            )
        )
        if changed.rowcount == 1 and final:
            log.error("refund_failed_for_good", order_id=ev.order_id, refund_id=refund.id, attempts=attempts)
            await uow.publish("noti", ev.order_id, {
                "user_id": order.user_id, "template": "refund_failed", "order_id": ev.order_id,
                "vars": {"amount": str(ev.amount), "currency": ev.currency},
            })
        return "processed"
    changed = await uow.conn.execute(
        update(t.refunds).where(r.id == refund.id, r.status.in_(open_states))
        .values(status="succeeded", psp_reference=ev.psp_reference, next_attempt_at=None, updated_at=uow.now)
    )
    if changed.rowcount != 1:
        return "processed"  # already succeeded (or failed for good): nothing moves twice
    p = t.payments.c
    captured = (await uow.conn.execute(
        select(func.coalesce(func.sum(p.amount), 0)).where(p.order_id == ev.order_id, p.status == "captured")
    )).scalar_one()
    refunded = (await uow.conn.execute(
        select(func.coalesce(func.sum(r.amount), 0)).where(r.order_id == ev.order_id, r.status == "succeeded")
    )).scalar_one()
    whole = Decimal(refunded) >= Decimal(captured or order.total)
    await uow.transition(ev.order_id, "refunded" if whole else "partially_refunded", reason=f"refund {refund.id}")
    await uow.publish("noti", ev.order_id, {
        "user_id": order.user_id, "template": "refund_succeeded", "order_id": ev.order_id,
        "vars": {"amount": str(ev.amount), "currency": ev.currency},
    })
    return "processed"


async def apply_group_update(uow: UnitOfWork, ev: GroupUpdate, consumer: str) -> str:
    # Deprecated (domain.md, decided): acknowledged, counted and logged, and nothing else.
    if not await uow.first_time(consumer, ev.event_id):
        return "duplicate"
    log.info("group_update_ignored", event_id=ev.event_id)
    return "processed"


# --- the registry: every event type, for the Kafka consumer and POST /event/{name} alike -------------


@dataclass(frozen=True, slots=True)
class EventType:
    name: str  # routing.yaml `consumers:` key and `/event/{name}` path segment; topic: Settings.consumer_topics
    parse: Callable[[Mapping[str, Any]], Any]
    apply: Callable[[UnitOfWork, Any, str], Awaitable[str]]


def consumer_name(event_type: EventType) -> str:
    """processed_events.consumer for the new side's applier of this event type, whether the event came
    by Kafka or by `POST /event/{name}`: one name, so an event delivered both ways is applied once."""
    return f"shopping-new:{event_type.name}"


EVENT_TYPES: Mapping[str, EventType] = MappingProxyType({
    e.name: e for e in (
        EventType("payment_notified", parse_payment_notified, apply_payment_notified),
        EventType("payment_failed", parse_payment_failed, apply_payment_failed),
        EventType("purchased", parse_purchased, apply_purchased),
        EventType("refund_notified", parse_refund_notified, apply_refund_notified),
        EventType("group_update", parse_group_update, apply_group_update),
    )
})
