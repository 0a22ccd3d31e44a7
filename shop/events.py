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

Batches (the consumer's throughput path, docs/decisions.md "Issue 10: throughput"): each event
type also has `apply_batch(uow, events, consumer)`, the same effects for a list of events in one
unit of work, with the same outcomes as applying them one after the other. `payment_notified`
and `purchased` do it with a few multi-row statements: one claim of every event id, the orders
read `FOR UPDATE` in id order (so two batches lock in one order and the status read is the one
the guarded update compares), the effects judged in Python event by event (two events of one
order in one batch see each other), then grouped guarded updates whose row counts are checked
and multi-row inserts. The other types apply their single-event function per event in the one
unit. An event that cannot be applied raises `EventFailed(index)`: nothing of the batch is
written, and the caller applies the events before it again and that one alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

import structlog
from sqlalchemy import ColumnElement, bindparam, delete, func, insert, or_, select, tuple_, update

from common import envelope as codes
from common.settings import DEFAULT_TOPICS
from shop import order_states as st
from shop import schema as t
from shop.errors import BadRequest, ShopError
from shop.reservations import ZERO, settle_wallet, use_coupon
from shop.uow import OutboxRow, UnitOfWork

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


class EventFailed(Exception):
    """The event at `index` of a batch cannot be applied (`error` says why); the batch wrote nothing.

    The events before it can be applied without it; the caller runs that one alone, where the error
    gets its usual treatment (the DLQ, a few retries).
    """

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


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


def paid_rows(now: datetime, order_id: str, user_id: int, amount: Decimal, currency: str, provider: str) -> list[OutboxRow]:
    """What every writer publishes when it moves an order to paid: ``purchased`` (keyed by the order, so
    the consumers apply it once whichever writer published it) and the ``order_paid`` noti."""
    return [
        ("purchased", order_id, {"event_id": f"purchased:{order_id}", "order_id": order_id, "user_id": user_id,
                                 "occurred_at": now.isoformat() + "Z"}),
        ("noti", order_id, {"user_id": user_id, "template": "order_paid", "order_id": order_id,
                            "vars": {"amount": str(amount), "currency": currency, "provider": provider}}),
    ]


async def apply_payment_notified(uow: UnitOfWork, ev: PaymentNotified, consumer: str) -> str:
    if not await uow.first_time(consumer, ev.event_id, unless_claimed_by=counterpart(consumer)):
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
                                   reason=f"{ev.provider}:{ev.psp_reference}", expected=order.status)
    if outcome.changed and outcome.status == st.PAID:
        await uow.publish_many(paid_rows(uow.now, ev.order_id, order.user_id, ev.amount, ev.currency, ev.provider))
    return "processed"


async def _payment_failed_already(uow: UnitOfWork, row_id: int, order_id: str) -> bool:
    """The event's payment is failed already: this failure was applied (by old shopping before a flip,
    say), and must not fail the order again after the buyer's next attempt (payment_confirming)."""
    p = t.payments.c
    return (await uow.conn.execute(
        select(p.id).where(p.id == row_id, p.order_id == order_id, p.status == "failed")
    )).first() is not None


async def apply_payment_failed(uow: UnitOfWork, ev: PaymentFailed, consumer: str) -> str:
    if not await uow.first_time(consumer, ev.event_id, unless_claimed_by=counterpart(consumer)):
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
    outcome = await uow.transition(ev.order_id, "payment_failed", reason=(ev.reason or ev.provider)[:255],
                                   expected=order.status)
    if outcome.changed:
        await uow.publish("noti", ev.order_id, {
            "user_id": order.user_id, "template": "payment_failed", "order_id": ev.order_id,
            "vars": {"provider": ev.provider, "reason": ev.reason},
        })
    return "processed"


async def apply_purchased(uow: UnitOfWork, ev: Purchased, consumer: str) -> str:
    if not await uow.first_time(consumer, ev.event_id, unless_claimed_by=counterpart(consumer)):
        return "duplicate"
    order = await _order(uow, ev.order_id)
    if order.status in (st.PENDING_PAYMENT, st.PAYMENT_CONFIRMING, st.PAYMENT_FAILED, st.AUTHORIZED):
        raise NotYet(f"order {ev.order_id} is {order.status}, not paid yet")
    if order.status == st.CANCELLED:
        raise Unapplicable(data={"order_id": ev.order_id, "reason": "purchased_after_cancel"})
    outcome = await uow.transition(ev.order_id, "purchased", reason="purchased", expected=order.status) \
        if order.status == st.PAID else None
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
    if not await uow.first_time(consumer, ev.event_id, unless_claimed_by=counterpart(consumer)):
        return "duplicate"
    order = await _order(uow, ev.order_id)
    r = t.refunds.c
    row_id = _payment_row_id(ev.refund_id)
    refund = None if row_id is None else (await uow.conn.execute(
        select(r.id, r.status, r.amount, r.currency, r.attempts, r.psp_reference).where(r.id == row_id, r.order_id == ev.order_id)
    )).first()
    if refund is None:
        raise Unapplicable(data={"order_id": ev.order_id, "refund_id": ev.refund_id, "reason": "refund_not_found"})
    if (refund.amount, refund.currency) != (ev.amount, ev.currency):
        raise Unapplicable(data={"order_id": ev.order_id, "refund_id": ev.refund_id, "reason": "amount_mismatch"})
    open_states = ("pending", "submitted", "retrying")
    if refund.status == "submitted" and None not in (refund.psp_reference, ev.psp_reference) \
            and ev.psp_reference != refund.psp_reference:
        # A submitted refund's reference is its live attempt's; another one names an attempt the PSP
        # already failed and the retrier replaced (Adyen's REFUND delivered after its REFUND_FAILED).
        log.info("refund_notice_of_replaced_attempt", order_id=ev.order_id, refund_id=refund.id,
                 psp_reference=ev.psp_reference, live_psp_reference=refund.psp_reference, status=ev.status)
        return "duplicate"
    # Adyen may send REFUND (success) and later REFUND_FAILED for the same pspReference: the scheme
    # refused it after all. That failure is the later truth, whichever of the two arrives first.
    same_attempt = ev.psp_reference is not None and refund.psp_reference == ev.psp_reference
    if ev.status == "failed":
        attempts = refund.attempts
        final = attempts >= REFUND_ATTEMPTS
        reopenable: ColumnElement[bool] = r.status.in_(open_states)
        if same_attempt:
            reopenable = reopenable | (r.status == "succeeded") & (r.psp_reference == ev.psp_reference)
        changed = await uow.conn.execute(
            update(t.refunds).where(r.id == refund.id, reopenable).values(
                status="failed" if final else "retrying",
                next_attempt_at=None if final else uow.now + refund_backoff(attempts),
                reason=(ev.reason or "the PSP refused the refund")[:255], updated_at=uow.now,
            )
        )
        if changed.rowcount == 1 and refund.status == "succeeded":
            # The order keeps its refunded state (the state machine has no way back): the refund is
            # open again and will be sent again; a person can see it in the refunds table and alerts.
            log.error("refund_reversed_by_psp", order_id=ev.order_id, refund_id=refund.id, psp_reference=ev.psp_reference)
        if changed.rowcount == 1 and final:
            log.error("refund_failed_for_good", order_id=ev.order_id, refund_id=refund.id, attempts=attempts)
            await uow.publish("noti", ev.order_id, {
                "user_id": order.user_id, "template": "refund_failed", "order_id": ev.order_id,
                "vars": {"amount": str(ev.amount), "currency": ev.currency},
            })
        return "processed"
    if refund.status == "retrying" and same_attempt:
        return "processed"  # this attempt's failure is already recorded: its success came late
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
    await uow.transition(ev.order_id, "refunded" if whole else "partially_refunded", reason=f"refund {refund.id}",
                         expected=order.status)
    await uow.publish("noti", ev.order_id, {
        "user_id": order.user_id, "template": "refund_succeeded", "order_id": ev.order_id,
        "vars": {"amount": str(ev.amount), "currency": ev.currency},
    })
    return "processed"


async def apply_group_update(uow: UnitOfWork, ev: GroupUpdate, consumer: str) -> str:
    # Deprecated (domain.md, decided): acknowledged, counted and logged, and nothing else.
    if not await uow.first_time(consumer, ev.event_id, unless_claimed_by=counterpart(consumer)):
        return "duplicate"
    log.info("group_update_ignored", event_id=ev.event_id)
    return "processed"


# --- batches: the same effects for many events in one unit of work ----------------------------------

_O = t.orders.c
_ORDERS_LOCKED = (
    select(_O.id, _O.user_id, _O.status, _O.total, _O.currency)
    .where(_O.id.in_(bindparam("ids", expanding=True))).order_by(_O.id).with_for_update()
)
_PAYMENT_INSERT = insert(t.payments)
_P = t.payments.c
_PAYMENTS_BY_REF = select(_P.id, _P.provider, _P.psp_reference).where(
    _P.psp_reference.in_(bindparam("refs", expanding=True))).order_by(_P.id)
_PAYMENTS_BY_ID = select(_P.id, _P.order_id, _P.provider).where(_P.id.in_(bindparam("ids", expanding=True)))
# Guarded like _record_payment: a payment row only moves forward. Run as an executemany (every row of a
# batch moving to one status), so the guard is ORs of plain parameters: SQLAlchemy renders a literal IN
# list as an expanding parameter, which executemany refuses (every such batch fell back to one by one).
_PAYMENT_FORWARD = {
    status: update(t.payments).where(
        _P.id == bindparam("row_id"),
        or_(*(_P.status == s for s, rank in _PAYMENT_RANK.items() if rank < _PAYMENT_RANK[status])),
    ).values(status=status, psp_reference=bindparam("psp"), updated_at=bindparam("now"))
    for status in ("authorized", "captured")
}


@dataclass(slots=True)
class _Orders:
    """A batch's orders, locked, and what the batch does to them, event by event."""

    rows: dict[str, Any]
    status: dict[str, str]  # as the events so far left it
    seen: dict[str, str]  # as read: what the guarded update compares
    history: list[dict[str, Any]] = field(default_factory=list)

    def move(self, uow: UnitOfWork, order_id: str, event: str, reason: str | None) -> bool:
        """order_states.transition's judgement on the status the batch has reached: True when it moved."""
        rule = st.TRANSITIONS[event]
        seen = self.status[order_id]
        if seen == rule.target:
            return False
        if seen not in rule.sources:
            raise st.InvalidState(data={"status": seen, "event": event})
        self.status[order_id] = rule.target
        self.history.append({"order_id": order_id, "from_status": seen, "to_status": rule.target, "reason": reason,
                             "actor": uow.actor, "created_at": uow.now})
        return True

    async def write(self, uow: UnitOfWork) -> None:
        """One guarded UPDATE per (status read, status reached) and one multi-row history INSERT."""
        groups: dict[tuple[str, str], list[str]] = {}
        for order_id, status in self.status.items():
            if status != self.seen[order_id]:
                groups.setdefault((self.seen[order_id], status), []).append(order_id)
        for (seen, target), ids in groups.items():
            values: dict[str, object] = {"status": target, "updated_at": uow.now}
            if target == st.PAID:
                values["paid_at"] = uow.now
            result = await uow.conn.execute(
                update(t.orders).where(_O.id.in_(bindparam("ids", expanding=True)), _O.status == seen).values(**values),
                {"ids": ids},
            )
            if result.rowcount != len(ids):
                # The rows are locked, so only a writer that ignores locks gets here; judge one by one.
                raise st.Conflict("status_contended", {"orders": len(ids), "moved": result.rowcount})
        if self.history:
            await uow.conn.execute(st.HISTORY_INSERT, self.history)


async def _lock_orders(uow: UnitOfWork, order_ids: Iterable[str]) -> _Orders:
    """The orders, read and locked in id order (the lock order every batch keeps)."""
    rows = {r.id: r for r in (await uow.conn.execute(_ORDERS_LOCKED, {"ids": sorted(set(order_ids))})).all()}
    status = {order_id: r.status for order_id, r in rows.items()}
    return _Orders(rows, status, dict(status))


async def _claim_batch(uow: UnitOfWork, evs: Sequence[Any], consumer: str) -> tuple[list[str], list[tuple[int, Any]], _Orders]:
    """Every event id claimed: the outcomes so far (duplicates marked), the claimed events with their
    index in the batch, and their orders, locked."""
    fresh = await uow.claim_many(consumer, [e.event_id for e in evs], unless_claimed_by=counterpart(consumer))
    todo = [(i, e) for i, e in enumerate(evs) if fresh[i]]
    orders = await _lock_orders(uow, (e.order_id for _, e in todo)) if todo else _Orders({}, {}, {})
    return ["processed" if f else "duplicate" for f in fresh], todo, orders


def _no_order(order_id: str) -> Unapplicable:
    return Unapplicable(data={"order_id": order_id, "reason": "order_not_found"})


@dataclass(slots=True)
class _Payments:
    """The payment rows a batch of payment_notified finds, inserts and moves forward, as _record_payment."""

    by_ref: dict[tuple[str, str], int]  # (provider, psp_reference) → row id
    by_id: dict[int, tuple[str, str]]  # row id → (order_id, provider), rows named by payment_id
    inserts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    forward: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"authorized": [], "captured": []})

    @classmethod
    async def load(cls, uow: UnitOfWork, evs: Sequence[PaymentNotified]) -> _Payments:
        by_ref: dict[tuple[str, str], int] = {}
        for r in (await uow.conn.execute(_PAYMENTS_BY_REF, {"refs": sorted({e.psp_reference for e in evs})})).all():
            by_ref.setdefault((r.provider, r.psp_reference), r.id)
        row_ids = sorted({i for e in evs if (e.provider, e.psp_reference) not in by_ref
                          and (i := _payment_row_id(e.payment_id)) is not None})
        by_id = {} if not row_ids else {
            r.id: (r.order_id, r.provider) for r in (await uow.conn.execute(_PAYMENTS_BY_ID, {"ids": row_ids})).all()
        }
        return cls(by_ref, by_id)

    def record(self, uow: UnitOfWork, ev: PaymentNotified) -> None:
        ref = (ev.provider, ev.psp_reference)
        planned = self.inserts.get(ref)
        if planned is not None:  # inserted earlier in this batch: it moves forward before it is written
            if _PAYMENT_RANK[ev.status] > _PAYMENT_RANK[planned["status"]]:
                planned["status"] = ev.status
            return
        row_id = self.by_ref.get(ref)
        if row_id is None:
            named = _payment_row_id(ev.payment_id)
            if named is not None and self.by_id.get(named) == (ev.order_id, ev.provider):
                row_id = self.by_ref[ref] = named  # the update below gives it this reference
        if row_id is None:
            self.inserts[ref] = {
                "order_id": ev.order_id, "provider": ev.provider, "status": ev.status, "amount": ev.amount,
                "currency": ev.currency, "psp_reference": ev.psp_reference, "created_at": uow.now, "updated_at": uow.now,
            }
            return
        self.forward[ev.status].append({"row_id": row_id, "psp": ev.psp_reference, "now": uow.now})

    async def write(self, uow: UnitOfWork) -> None:
        if self.inserts:
            await uow.conn.execute(_PAYMENT_INSERT, list(self.inserts.values()))
        for status in ("authorized", "captured"):  # rank order: a capture after an authorisation wins
            if self.forward[status]:
                await uow.conn.execute(_PAYMENT_FORWARD[status], self.forward[status])


async def apply_payment_notified_batch(uow: UnitOfWork, evs: Sequence[PaymentNotified], consumer: str) -> list[str]:
    """apply_payment_notified for each event in turn, in one unit of work and a few statements."""
    outcomes, todo, orders = await _claim_batch(uow, evs, consumer)
    if not todo:
        return outcomes
    payments = await _Payments.load(uow, [e for _, e in todo])
    outbox: list[OutboxRow] = []
    for i, ev in todo:
        try:
            order = orders.rows.get(ev.order_id)
            if order is None:
                raise _no_order(ev.order_id)
            if ev.currency != order.currency or ev.amount != order.total:
                raise Unapplicable(data={"order_id": ev.order_id, "reason": "amount_mismatch", "order_total": str(order.total),
                                         "order_currency": order.currency, "paid": str(ev.amount), "paid_currency": ev.currency})
            status = orders.status[ev.order_id]
            if status == st.CANCELLED:
                raise Unapplicable(data={"order_id": ev.order_id, "reason": f"{ev.status}_after_cancel"})
            payments.record(uow, ev)
            if ev.status == "authorized" and status in _PAID_OR_LATER | {st.AUTHORIZED}:
                continue
            moved = orders.move(uow, ev.order_id, "authorized" if ev.status == "authorized" else "captured",
                                f"{ev.provider}:{ev.psp_reference}")
        except (ShopError, NotYet) as exc:
            raise EventFailed(i, exc) from exc
        if moved and orders.status[ev.order_id] == st.PAID:
            outbox += paid_rows(uow.now, ev.order_id, order.user_id, ev.amount, ev.currency, ev.provider)
    await payments.write(uow)
    await orders.write(uow)
    await uow.publish_many(outbox)
    return outcomes


_UC = t.user_coupons.c
_COUPONS_USED = update(t.user_coupons).where(
    _UC.order_id.in_(bindparam("ids", expanding=True)), _UC.status == "locked",
).values(status="used", used_at=bindparam("now"))
_LG = t.wallet_ledger.c
_LEDGER_OF = select(_LG.order_id, _LG.user_id, _LG.kind, _LG.amount).where(
    _LG.order_id.in_(bindparam("ids", expanding=True))).order_by(_LG.id)
_LEDGER_INSERT = insert(t.wallet_ledger)
_I = t.order_items.c
_ITEMS_OF = select(_I.order_id, _I.sku_id).where(_I.order_id.in_(bindparam("ids", expanding=True)))
_CI = t.cart_items.c


async def _purchased_effects(uow: UnitOfWork, won: dict[str, int]) -> None:
    """use_coupon, settle_wallet and the cart lines, for every order (→ user) the batch moved to fulfilling."""
    ids = sorted(won)
    await uow.conn.execute(_COUPONS_USED, {"ids": ids, "now": uow.now})
    open_: dict[str, tuple[int, Decimal]] = {}
    for r in (await uow.conn.execute(_LEDGER_OF, {"ids": ids})).all():
        user, held = open_.get(r.order_id, (r.user_id, ZERO))
        open_[r.order_id] = (user, held + (r.amount if r.kind == "reserve" else -r.amount if r.kind in ("release", "settle") else ZERO))
    settles = [{"user_id": user, "order_id": order_id, "amount": amount, "kind": "settle", "created_at": uow.now}
               for order_id, (user, amount) in open_.items() if amount > 0]
    if settles:
        await uow.conn.execute(_LEDGER_INSERT, settles)
    lines = sorted({(won[r.order_id], r.sku_id) for r in (await uow.conn.execute(_ITEMS_OF, {"ids": ids})).all()})
    if lines:
        await uow.conn.execute(delete(t.cart_items).where(tuple_(_CI.user_id, _CI.sku_id).in_(lines)))


async def apply_purchased_batch(uow: UnitOfWork, evs: Sequence[Purchased], consumer: str) -> list[str]:
    """apply_purchased for each event in turn, in one unit of work and a few statements."""
    outcomes, todo, orders = await _claim_batch(uow, evs, consumer)
    if not todo:
        return outcomes
    won: dict[str, int] = {}
    for i, ev in todo:
        try:
            order = orders.rows.get(ev.order_id)
            if order is None:
                raise _no_order(ev.order_id)
            status = orders.status[ev.order_id]
            if status in (st.PENDING_PAYMENT, st.PAYMENT_CONFIRMING, st.PAYMENT_FAILED, st.AUTHORIZED):
                raise NotYet(f"order {ev.order_id} is {status}, not paid yet")
            if status == st.CANCELLED:
                raise Unapplicable(data={"order_id": ev.order_id, "reason": "purchased_after_cancel"})
            if status == st.PAID and orders.move(uow, ev.order_id, "purchased", "purchased"):
                won[ev.order_id] = order.user_id
        except (ShopError, NotYet) as exc:
            raise EventFailed(i, exc) from exc
    await orders.write(uow)
    if won:
        await _purchased_effects(uow, won)
    return outcomes


BatchApply = Callable[[UnitOfWork, Sequence[Any], str], Awaitable[list[str]]]


def one_by_one(apply: Callable[[UnitOfWork, Any, str], Awaitable[str]]) -> BatchApply:
    """The batch form of a rare event type: its single-event function per event, in the one unit of work.

    A repeated event id inside the batch is a duplicate by the claim's primary key, as across batches.
    """

    async def apply_batch(uow: UnitOfWork, evs: Sequence[Any], consumer: str) -> list[str]:
        outcomes = []
        for i, ev in enumerate(evs):
            try:
                outcomes.append(await apply(uow, ev, consumer))
            except (ShopError, NotYet) as exc:
                raise EventFailed(i, exc) from exc
        return outcomes

    return apply_batch


# --- the registry: every event type, for the Kafka consumer and POST /event/{name} alike -------------


@dataclass(frozen=True, slots=True)
class EventType:
    name: str  # routing.yaml `consumers:` key and `/event/{name}` path segment; topic: Settings.consumer_topics
    parse: Callable[[Mapping[str, Any]], Any]
    apply: Callable[[UnitOfWork, Any, str], Awaitable[str]]
    # The same for a list of events, with the outcomes apply would give one after the other.
    apply_batch: BatchApply


def consumer_name(event_type: EventType) -> str:
    """processed_events.consumer for the new side's applier of this event type, whether the event came
    by Kafka or by `POST /event/{name}`: one name, so an event delivered both ways is applied once."""
    return f"shopping-new:{event_type.name}"


def legacy_consumer_name(event_type: EventType) -> str:
    """processed_events.consumer under which old shopping records the events it applied (its
    `/event/{name}` path name, as its code and our emulator of it do)."""
    return f"legacy:{DEFAULT_TOPICS[event_type.name]}"


def counterpart(consumer: str) -> str | None:
    """The other side's consumer of the same event type: an event either side applied is applied.

    Owners flip while events are redelivered (at least once), so the same event id can reach the new
    side after old shopping applied it, or the reverse; not every effect shows in the rows (a
    `payment_failed` without payment_id after the buyer paid again would fail the new attempt)."""
    return _COUNTERPARTS.get(consumer)


EVENT_TYPES: Mapping[str, EventType] = MappingProxyType({
    e.name: e for e in (
        EventType("payment_notified", parse_payment_notified, apply_payment_notified, apply_payment_notified_batch),
        EventType("payment_failed", parse_payment_failed, apply_payment_failed, one_by_one(apply_payment_failed)),
        EventType("purchased", parse_purchased, apply_purchased, apply_purchased_batch),
        EventType("refund_notified", parse_refund_notified, apply_refund_notified, one_by_one(apply_refund_notified)),
        EventType("group_update", parse_group_update, apply_group_update, one_by_one(apply_group_update)),
    )
})
_COUNTERPARTS: Mapping[str, str] = MappingProxyType({consumer_name(e): legacy_consumer_name(e) for e in EVENT_TYPES.values()})
