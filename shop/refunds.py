"""Refunds (legacy-api.md refund; domain.md "Payments"): reserve, call the PSP outside any transaction, apply.

``request_refund`` (the refund API) and ``retry_due`` (the consumers' retrier) share three steps:

1. **Reserve**, one unit of work: the order's row lock (a guarded no-op UPDATE, so two refunds of
   one order, or a request and its duplicate, are judged one after the other; READ COMMITTED then
   shows each the other's committed row), the request id looked up (the same request id is the
   same refund), the refundable amount checked, and the refund row inserted ``pending`` with
   ``attempts = 1``. Refundable = captured − (succeeded + pending + submitted + retrying): an open
   refund holds its amount until it ends, so two refunds racing can never promise more than was
   captured. A ``failed`` refund holds nothing (the PSP's own books refuse what it already paid back).
2. **Submit**, no transaction open: the PSP call with the refund's idempotency key
   (``idempotency_key``), derived from the refund's id, the same on every attempt and every retry,
   so a PSP that acted on a call whose answer was lost answers the next one with that refund.
3. **Apply**, a second unit of work, every update guarded by the status and the attempt number the
   submission was claimed with (a late answer of an attempt the retrier took over changes nothing):
   succeeded → ``apply_refund_notified`` itself (one path: the refund row, the order →
   partially_refunded / refunded by the guarded state machine, ``noti``); submitted (Adyen
   ``received``) → ``submitted``, its outcome arrives as ``refund_notified``; unknown (an error or a
   timeout) → ``retrying`` at ``now + refund_backoff(attempts)``, or ``failed`` once
   ``REFUND_ATTEMPTS`` submissions were made; rejected → ``failed`` at once. ``failed`` is for a
   person: logged at error level, a ``refund_failed`` noti, and counted by the retrier.

A process that dies between 1 and 3 leaves the row ``pending`` with ``next_attempt_at`` one
in-flight window ahead (longer than a PSP call with all its retries takes); the retrier then
submits it again with the same key. ``attempts`` counts submissions started.

A new key is used only after the PSP *said* the last submission failed (a REFUND_FAILED webhook
moves a ``submitted`` refund, whose ``psp_reference`` is then the failed refund's, back to
``retrying``): with the same key Adyen would only replay its first ``received`` and never try again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import order_states as st
from shop import schema as t
from shop.bootstrap import Shop
from shop.errors import BadRequest, Conflict, NotFound
from shop.events import EVENT_TYPES, REFUND_ATTEMPTS, RefundNotified, apply_refund_notified, consumer_name, refund_backoff
from shop.money import money_str, quantum
from shop.uow import UnitOfWork

log = structlog.get_logger("shop.refunds")

PENDING, SUBMITTED, RETRYING, SUCCEEDED, FAILED = "pending", "submitted", "retrying", "succeeded", "failed"
STATUSES = (PENDING, SUBMITTED, RETRYING, SUCCEEDED, FAILED)
OPEN = (PENDING, SUBMITTED, RETRYING)
HOLDING = (SUCCEEDED, *OPEN)  # what counts against the refundable amount
# The retrier submits these again once next_attempt_at is due.
DUE = (PENDING, RETRYING)
REFUNDABLE_ORDER = st.TRANSITIONS["refunded"].sources
MAX_REQUEST_ID = 64
MAX_REASON = 255
# The processed_events name under which a refund the PSP answered "done" is applied: the refund_notified
# applier's, so a refund_notified for it from anywhere is a guarded no-op.
_APPLIER = consumer_name(EVENT_TYPES["refund_notified"])


# --- the request ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefundRequest:
    order_id: str
    amount: Decimal | None  # None: everything still refundable
    reason: str | None
    request_id: str


def _bad(field: str, reason: str) -> BadRequest:
    return BadRequest(data={"field": field, "reason": reason})


def _text(body: Mapping[str, Any], field: str, max_len: int, *, optional: bool = False, ascii_only: bool = False) -> str | None:
    value = body.get(field)
    if value is None and optional:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and field == "order_id":
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise _bad(field, f"must be a string of 1..{max_len} characters")
    if ascii_only and not (value.isascii() and value.isprintable()):
        raise _bad(field, "must be printable ASCII")
    return value


def parse_refund_request(body: Any) -> RefundRequest:
    """The refund API's body, checked before anything is read or written (400 naming the field)."""
    if not isinstance(body, dict):
        raise _bad("body", "must be a JSON object")
    order_id = _text(body, "order_id", 32, ascii_only=True)
    request_id = _text(body, "request_id", MAX_REQUEST_ID, ascii_only=True)
    reason = _text(body, "reason", MAX_REASON, optional=True)
    assert order_id is not None and request_id is not None
    return RefundRequest(order_id, _amount(body.get("amount")), reason, request_id)


def _amount(raw: Any) -> Decimal | None:
    if raw is None:
        return None
    # A JSON float has already lost the cents; money travels as a decimal string (or a whole number).
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise _bad("amount", "must be a decimal string")
    try:
        value = Decimal(raw.strip() if isinstance(raw, str) else raw)
    except InvalidOperation:
        raise _bad("amount", "must be a decimal string") from None
    if not value.is_finite() or value <= 0 or value.as_tuple().exponent < -4:  # type: ignore[operator]
        raise _bad("amount", "must be a positive amount with at most 4 decimals")
    return value


# --- what the PSP side must offer (adapters/refunds.py PspRefunds) --------------------------------


class PspAnswer(Protocol):
    @property
    def outcome(self) -> str: ...  # succeeded / submitted / unknown / rejected

    @property
    def psp_reference(self) -> str | None: ...

    @property
    def detail(self) -> str | None: ...


class RefundGateway(Protocol):
    async def refund(self, *, provider: str, payment_reference: str, amount: Decimal, currency: str,
                     idempotency_key: str, reference: str) -> PspAnswer: ...


@dataclass(frozen=True, slots=True)
class RefundView:
    refund_id: str
    status: str

    def view(self) -> dict[str, str]:
        return {"refund_id": self.refund_id, "status": self.status}


@dataclass(frozen=True, slots=True)
class Submission:
    """One PSP call of a refund, as claimed in a unit of work: what to send and the guard of its result."""

    refund_id: int
    order_id: str
    provider: str
    payment_reference: str
    amount: Decimal
    currency: str
    attempts: int  # the attempt this call is; the result applies only while the row still says so
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class Settled:
    status: str
    failed_now: bool = False  # this call moved the refund to failed (count it once)


def idempotency_key(refund_id: int, failed_reference: str | None = None) -> str:
    """The refund's key: ``refund-<id>`` until the PSP reported a submission failed, then one per failed one."""
    if failed_reference is None:
        return f"refund-{refund_id}"
    return f"refund-{refund_id}-{hashlib.sha256(failed_reference.encode()).hexdigest()[:16]}"


# --- 1. reserve -----------------------------------------------------------------------------------


async def _lock_order(uow: UnitOfWork, order_id: str) -> Any:
    o = t.orders.c
    # The row lock (MariaDB) / the write lock (SQLite) first, so every read below is of committed rows
    # no other refund of this order can change until this one commits.
    locked = await uow.conn.execute(update(t.orders).where(o.id == order_id).values(updated_at=o.updated_at))
    if locked.rowcount != 1:
        raise NotFound("order_not_found", data={"order_id": order_id})
    return (await uow.conn.execute(select(o.status, o.currency, o.user_id).where(o.id == order_id))).one()


async def _by_request_id(conn: Any, request_id: str) -> Any:
    r = t.refunds.c
    return (await conn.execute(
        select(r.id, r.order_id, r.amount, r.status).where(r.request_id == request_id)
    )).first()


def _same_refund(found: Any, req: RefundRequest) -> RefundView:
    if found.order_id != req.order_id or (req.amount is not None and Decimal(found.amount) != req.amount):
        # One request id, two different refunds: answering with the first would hide the second.
        raise Conflict("request_id_reused", data={"request_id": req.request_id, "refund_id": str(found.id)})
    return RefundView(str(found.id), found.status)


async def _exponent(uow: UnitOfWork, currency: str) -> int:
    f = t.forex_rates.c
    exponent = (await uow.conn.execute(select(f.exponent).where(f.currency == currency))).scalar()
    return 2 if exponent is None else int(exponent)


@dataclass(frozen=True, slots=True)
class _Payment:
    id: int
    provider: str
    reference: str | None  # PayPal capture id / Adyen pspReference
    currency: str
    left: Decimal


async def _captured_payments(uow: UnitOfWork, order_id: str) -> list[_Payment]:
    p, r = t.payments.c, t.refunds.c
    held = (
        select(r.payment_id, func.sum(r.amount).label("held"))
        .where(r.order_id == order_id, r.status.in_(HOLDING)).group_by(r.payment_id).subquery()
    )
    rows = await uow.conn.execute(
        select(p.id, p.provider, p.amount, p.currency, p.capture_id, p.psp_reference, held.c.held)
        .select_from(t.payments.outerjoin(held, held.c.payment_id == p.id))
        .where(p.order_id == order_id, p.status == "captured").order_by(p.id)
    )
    return [
        _Payment(row.id, row.provider, row.capture_id if row.provider == "paypal" else row.psp_reference, row.currency,
                 Decimal(row.amount) - Decimal(row.held or 0))
        for row in rows
    ]


async def reserve(uow: UnitOfWork, req: RefundRequest, *, inflight: timedelta) -> tuple[RefundView, Submission | None]:
    """Step 1: the refund row (pending) and its first submission, or the refund this request id already is (None)."""
    order = await _lock_order(uow, req.order_id)
    found = await _by_request_id(uow.conn, req.request_id)
    if found is not None:
        return _same_refund(found, req), None
    if order.status not in REFUNDABLE_ORDER:
        raise st.InvalidState(data={"status": order.status})
    exponent = await _exponent(uow, order.currency)
    if req.amount is not None and req.amount != req.amount.quantize(quantum(exponent)):
        raise _bad("amount", f"{order.currency} has {exponent} decimals")
    payments = await _captured_payments(uow, req.order_id)
    if not payments:
        raise Conflict("no_captured_payment", data={"order_id": req.order_id, "status": order.status})
    refundable = sum((max(p.left, Decimal(0)) for p in payments), Decimal(0))
    amount = req.amount if req.amount is not None else refundable
    if amount <= 0 or amount > refundable:
        raise Conflict("refund_exceeds_refundable", data={
            "refundable": money_str(refundable, exponent), "currency": order.currency,
            **({"requested": money_str(req.amount, exponent)} if req.amount is not None else {}),
        })
    payment = max(payments, key=lambda p: p.left)
    if payment.left < amount:
        # Only an order captured twice (a double charge already in the books) gets here: which
        # capture gives how much back is a person's call, one refund per payment.
        raise Conflict("refund_spans_payments", data={
            "payments": [{"payment_id": str(p.id), "refundable": money_str(p.left, exponent)} for p in payments],
            "currency": order.currency,
        })
    if payment.provider not in ("paypal", "adyen") or not payment.reference:
        raise Conflict("payment_not_refundable", data={"payment_id": str(payment.id), "provider": payment.provider})
    amount = amount.quantize(quantum(exponent))
    inserted = await uow.conn.execute(t.refunds.insert().values(
        order_id=req.order_id, payment_id=payment.id, amount=amount, currency=payment.currency, status=PENDING,
        attempts=1, next_attempt_at=uow.now + inflight, reason=req.reason, request_id=req.request_id,
        created_at=uow.now, updated_at=uow.now,
    ))
    refund_id = int(inserted.inserted_primary_key[0])  # type: ignore[index]  # an INSERT always has a key
    log.info("refund_requested", order_id=req.order_id, refund_id=refund_id, amount=str(amount),
             currency=payment.currency, provider=payment.provider, request_id=req.request_id)
    return RefundView(str(refund_id), PENDING), Submission(
        refund_id, req.order_id, payment.provider, payment.reference, amount, payment.currency, 1,
        idempotency_key(refund_id),
    )


# --- 2. submit ------------------------------------------------------------------------------------


async def submit(gateway: RefundGateway, sub: Submission) -> PspAnswer:
    return await gateway.refund(provider=sub.provider, payment_reference=sub.payment_reference, amount=sub.amount,
                                currency=sub.currency, idempotency_key=sub.idempotency_key, reference=f"refund-{sub.refund_id}")


# --- 3. apply -------------------------------------------------------------------------------------


async def _status(uow: UnitOfWork, refund_id: int) -> str:
    r = t.refunds.c
    return (await uow.conn.execute(select(r.status).where(r.id == refund_id))).scalar_one()


def _claimed(sub: Submission) -> Any:
    r = t.refunds.c
    return (r.id == sub.refund_id) & r.status.in_(DUE) & (r.attempts == sub.attempts)


async def fail_for_good(uow: UnitOfWork, sub: Submission, detail: str | None) -> bool:
    """The refund → failed (for a person), with its noti; False when it was no longer this submission's to end."""
    changed = await uow.conn.execute(
        update(t.refunds).where(_claimed(sub)).values(status=FAILED, next_attempt_at=None, updated_at=uow.now)
    )
    if changed.rowcount != 1:
        return False
    user_id = (await uow.conn.execute(select(t.orders.c.user_id).where(t.orders.c.id == sub.order_id))).scalar()
    log.error("refund_failed_for_good", order_id=sub.order_id, refund_id=sub.refund_id, provider=sub.provider,
              attempts=sub.attempts, amount=str(sub.amount), currency=sub.currency, detail=detail)
    await uow.publish("noti", sub.order_id, {
        "user_id": user_id, "template": "refund_failed", "order_id": sub.order_id,
        "vars": {"amount": str(sub.amount), "currency": sub.currency},
    })
    return True


async def _succeeded(uow: UnitOfWork, sub: Submission, psp_reference: str | None) -> None:
    await apply_refund_notified(uow, RefundNotified(
        event_id=f"refund_succeeded:{sub.refund_id}", refund_id=str(sub.refund_id), order_id=sub.order_id,
        status=SUCCEEDED, amount=sub.amount, currency=sub.currency, psp_reference=psp_reference, reason=None,
    ), _APPLIER)


async def _succeeded_without_order(uow: UnitOfWork, sub: Submission, psp_reference: str | None) -> None:
    """The money went back but the order can't take the refund's state (someone moved it meanwhile):
    the refund row must still say succeeded, and a person reconciles the order."""
    r = t.refunds.c
    await uow.conn.execute(
        update(t.refunds).where(r.id == sub.refund_id, r.status.in_(OPEN))
        .values(status=SUCCEEDED, psp_reference=psp_reference, next_attempt_at=None, updated_at=uow.now)
    )
    log.error("refund_succeeded_order_not_refundable", order_id=sub.order_id, refund_id=sub.refund_id,
              status=await st.current_status(uow.conn, sub.order_id))


async def apply_answer(uow: UnitOfWork, sub: Submission, answer: PspAnswer) -> Settled:
    """Step 3 for one PSP answer (shop/refunds.py docstring); the refund's status afterwards."""
    if answer.outcome == "succeeded":
        await _succeeded(uow, sub, answer.psp_reference)
        return Settled(await _status(uow, sub.refund_id))
    if answer.outcome == "submitted":
        await uow.conn.execute(update(t.refunds).where(_claimed(sub)).values(
            status=SUBMITTED, psp_reference=answer.psp_reference, next_attempt_at=None, updated_at=uow.now,
        ))
        log.info("refund_submitted", order_id=sub.order_id, refund_id=sub.refund_id, provider=sub.provider,
                 psp_reference=answer.psp_reference)
        return Settled(await _status(uow, sub.refund_id))
    if answer.outcome == "unknown" and sub.attempts < REFUND_ATTEMPTS:
        at = uow.now + refund_backoff(sub.attempts)
        changed = await uow.conn.execute(update(t.refunds).where(_claimed(sub)).values(
            status=RETRYING, next_attempt_at=at, updated_at=uow.now,
        ))
        if changed.rowcount == 1:
            log.warning("refund_retry_scheduled", order_id=sub.order_id, refund_id=sub.refund_id, provider=sub.provider,
                        attempts=sub.attempts, next_attempt_at=at.isoformat(), detail=answer.detail)
        return Settled(await _status(uow, sub.refund_id))
    # Rejected, or the last attempt's outcome is unknown too.
    failed = await fail_for_good(uow, sub, answer.detail)
    return Settled(await _status(uow, sub.refund_id), failed_now=failed)


async def settle(shop: Shop, actor: str, sub: Submission, answer: PspAnswer) -> Settled:
    try:
        return await shop.run(actor, lambda uow: apply_answer(uow, sub, answer))
    except st.InvalidState:
        async def record(uow: UnitOfWork) -> Settled:
            await _succeeded_without_order(uow, sub, answer.psp_reference)
            return Settled(await _status(uow, sub.refund_id))

        return await shop.run(actor, record)


# --- the refund API ---------------------------------------------------------------------------------


async def request_refund(shop: Shop, gateway: RefundGateway, req: RefundRequest, *, inflight: timedelta) -> RefundView:
    """The refund API (legacy-api.md refund): reserve, submit, apply; the refund's id and status."""
    try:
        view, sub = await shop.run("new", lambda uow: reserve(uow, req, inflight=inflight))
    except IntegrityError:
        # A duplicate of this request id committed first (the unique key): it is the answer.
        async with shop.db.connect() as conn:
            found = await _by_request_id(conn, req.request_id)
        if found is None:
            raise
        return _same_refund(found, req)
    if sub is None:
        return view
    answer = await submit(gateway, sub)
    return RefundView(view.refund_id, (await settle(shop, "new", sub, answer)).status)


# --- the retrier (consumers/refund_retry.py) --------------------------------------------------------


async def _due(db: AsyncEngine, now: datetime, batch: int) -> list[int]:
    r = t.refunds.c
    async with db.connect() as conn:
        rows = await conn.execute(
            select(r.id).where(r.status.in_(DUE), r.next_attempt_at <= now).order_by(r.next_attempt_at, r.id).limit(batch)
        )
        return [row.id for row in rows]


@dataclass(frozen=True, slots=True)
class Retried:
    refund_id: int
    provider: str
    submitted: bool  # False: its attempts were used up, so it failed without another call
    settled: Settled


async def claim(uow: UnitOfWork, refund_id: int, *, inflight: timedelta) -> Submission | Retried | None:
    """The next submission of a due refund, claimed by a guarded update so one retrier wins (None: not
    due, or another one won). A refund whose attempts are used up (the process of its last one died
    before the answer was applied) is not sent again: it fails for good here (a ``Retried``)."""
    r, p = t.refunds.c, t.payments.c
    row = (await uow.conn.execute(
        select(r.id, r.order_id, r.amount, r.currency, r.status, r.attempts, r.next_attempt_at, r.psp_reference,
               p.provider, p.capture_id, p.psp_reference.label("payment_reference"))
        .select_from(t.refunds.join(t.payments, p.id == r.payment_id)).where(r.id == refund_id)
    )).first()
    if row is None or row.status not in DUE or row.next_attempt_at is None or row.next_attempt_at > uow.now:
        return None
    reference = (row.capture_id if row.provider == "paypal" else row.payment_reference) or ""
    amount = Decimal(row.amount).quantize(quantum(await _exponent(uow, row.currency)))  # 96.07, not the column's 96.0700
    sub = Submission(row.id, row.order_id, row.provider, reference, amount, row.currency, row.attempts,
                     idempotency_key(row.id, row.psp_reference))
    if row.attempts >= REFUND_ATTEMPTS:
        if not await fail_for_good(uow, sub, "attempts used up; the outcome of the last one is unknown"):
            return None
        return Retried(sub.refund_id, sub.provider, False, Settled(FAILED, failed_now=True))
    claimed = await uow.conn.execute(
        update(t.refunds).where(r.id == refund_id, r.status == row.status, r.attempts == row.attempts,
                                r.next_attempt_at <= uow.now)
        .values(status=RETRYING, attempts=row.attempts + 1, next_attempt_at=uow.now + inflight, updated_at=uow.now)
    )
    if claimed.rowcount != 1:
        return None
    return replace(sub, attempts=row.attempts + 1)


async def retry_one(shop: Shop, gateway: RefundGateway, refund_id: int, *, inflight: timedelta,
                    actor: str = "consumer") -> Retried | None:
    """One due refund: claim, submit with its key, apply; None when it was not (or no longer) this retrier's."""
    claimed = await shop.run(actor, lambda uow: claim(uow, refund_id, inflight=inflight))
    if not isinstance(claimed, Submission):
        return claimed
    answer = await submit(gateway, claimed)
    return Retried(claimed.refund_id, claimed.provider, True, await settle(shop, actor, claimed, answer))


async def retry_due(shop: Shop, gateway: RefundGateway, *, inflight: timedelta, batch: int = 50,
                    actor: str = "consumer") -> list[Retried]:
    """Every refund due at the shop clock's now submitted again (same key), one at a time; what happened to each."""
    done: list[Retried] = []
    for refund_id in await _due(shop.db_read, shop.clock(), batch):
        retried = await retry_one(shop, gateway, refund_id, inflight=inflight, actor=actor)
        if retried is not None:
            done.append(retried)
    return done


async def count_by_status(db: AsyncEngine) -> dict[str, int]:
    """Refunds per status, every status present (0 when none): the retrier's gauge."""
    r = t.refunds.c
    async with db.connect() as conn:
        rows = await conn.execute(select(r.status, func.count()).group_by(r.status))
        counts = {status: int(n) for status, n in rows}
    return {status: counts.get(status, 0) for status in STATUSES}
