"""``POST /refund/refund`` (route refund): old shopping's internal refund API.

Internal callers only: ``Authorization: Bearer $SHOP_SERVICE_TOKEN`` (compared in constant time);
no token configured refuses everyone, 401 ``login_required`` like the new side.

Body ``{"order_id", "amount" (optional: all that is refundable), "reason", "request_id"}``:

* **the same request_id → the same refund**: a repeat answers the row it made (whatever became of
  it) and calls no PSP; a request_id already used for another order is 409 ``request_id_reused``.
  ``refunds.request_id`` is unique, so two racing repeats make one row;
* **never more than captured − refunded**: under the order row's lock, refundable = Σ captured
  payments − Σ refunds not failed (pending, submitted and retrying ones count: their money may be
  on its way back already); more is 409 ``invalid_state`` with ``refundable``; the order must be
  paid or later (paid, fulfilling, shipped, completed, partially_refunded);
* then the PSP, on the captured payment the refund fits on: PayPal ``/v2/payments/captures/{id}/
  refund`` (synchronous: COMPLETED → succeeded at once, the order partially_refunded / refunded,
  ``noti``), Adyen ``/v71/payments/{pspReference}/refunds`` (``received`` → submitted; the REFUND
  webhook, through the new side's bridge and the consumers, says how it went). The PSP key is
  ``refund-<refunds.id>`` (``PayPal-Request-Id`` / ``Idempotency-Key``), and Adyen's ``reference``
  is ``<refunds.id>``: whoever submits the refund again after an unknown outcome (the consumers'
  retry loop) sends the same key, so the PSP refunds once;
* a PSP error or timeout is not the caller's failure: the row goes to ``retrying`` (attempts 1,
  ``next_attempt_at`` by the shared backoff) for the consumers' retry loop, and the answer says so.

``data``: ``{"refund_id", "status"}`` (pending, submitted, retrying, succeeded, failed).
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from emulators.legacy import envelope
from emulators.legacy.body import read_json
from emulators.legacy.envelope import ApiError, bad_request, ok
from emulators.legacy.events import REFUNDABLE, lock_order, record_refund_outcome, retry_at
from emulators.legacy.order_rows import check_order_id, fmt, now, retrying
from emulators.legacy.payments import adyen_minor, exponent_of, invalid_state, paypal_value
from emulators.legacy.psp_calls import PspClient, PspFailed
from emulators.legacy.state import ENGINE, PSP, SERVICE_TOKEN
from shop.schema import payments, refunds

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,64}$")
_AMOUNT = re.compile(r"^\d{1,14}(\.\d{1,4})?$")


@dataclass(frozen=True, slots=True)
class NewRefund:
    refund_id: int
    order_id: str
    amount: Decimal
    currency: str
    exponent: int
    provider: str
    psp_reference: str | None  # the payment's: Adyen's pspReference
    capture_id: str | None  # PayPal's capture


def bearer_ok(header: str | None, token: str) -> bool:
    if not token or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].encode("utf-8", "replace"), token.encode())


def _parse(body: Any) -> tuple[str, str, Decimal | None, str | None]:
    if not isinstance(body, dict):
        raise bad_request("body", "must be a JSON object")
    order_id = body.get("order_id")
    if not isinstance(order_id, str):
        raise bad_request("order_id", "required")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise bad_request("request_id", "required: 1..64 printable characters")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 255):
        raise bad_request("reason", "a string of at most 255 characters")
    raw = body.get("amount")
    amount = None
    if raw is not None:
        try:
            amount = Decimal(raw) if isinstance(raw, str) and _AMOUNT.match(raw) else None
        except InvalidOperation:
            amount = None
        if amount is None or amount <= 0:
            raise bad_request("amount", "a positive decimal string")
    return order_id, request_id, amount, reason


def _answer(row: Any) -> web.Response:
    return ok({"refund_id": str(row.id), "status": row.status})


async def refund(request: web.Request) -> web.StreamResponse:
    if not bearer_ok(request.headers.get("Authorization"), request.app[SERVICE_TOKEN]):
        refused = envelope.error_response(401, envelope.LOGIN_REQUIRED, "login_required",
                                          {"reason": "service token required"})
        refused.headers["WWW-Authenticate"] = "Bearer"
        return refused
    order_id, request_id, amount, reason = _parse(await read_json(request))
    engine = request.app[ENGINE]
    made = await _open(engine, check_order_id(order_id), request_id, amount, reason)
    if not isinstance(made, NewRefund):
        return _answer(made)
    await _submit(engine, request.app[PSP], made)
    async with engine.connect() as conn:
        row = (await conn.execute(select(refunds.c.id, refunds.c.status).where(refunds.c.id == made.refund_id))).one()
    return _answer(row)


async def _existing(engine: AsyncEngine, order_id: str, request_id: str) -> Any:
    async with engine.connect() as conn:
        r = refunds.c
        row = (await conn.execute(select(r.id, r.order_id, r.status).where(r.request_id == request_id))).first()
    if row is not None and row.order_id != order_id:
        raise ApiError(409, envelope.REQUEST_ID_REUSED, "request_id_reused", {"request_id": request_id})
    return row


async def _open(engine: AsyncEngine, order_id: str, request_id: str, amount: Decimal | None,
                reason: str | None) -> Any:
    """The refund row of `request_id`: the one already made (a row), or a new one (a NewRefund)."""
    earlier = await _existing(engine, order_id, request_id)
    if earlier is not None:
        return earlier

    async def work() -> NewRefund:
        async with engine.begin() as conn:
            order = await lock_order(conn, order_id)
            if order.status not in REFUNDABLE:
                raise invalid_state(order.status)
            exponent = await exponent_of(conn, order.currency)
            p, r = payments.c, refunds.c
            captured = (await conn.execute(
                select(p.id, p.provider, p.amount, p.currency, p.psp_reference, p.capture_id)
                .where(p.order_id == order.id, p.status == "captured").order_by(p.id)
            )).all()
            taken = dict((await conn.execute(
                select(r.payment_id, func.sum(r.amount)).where(r.order_id == order.id, r.status != "failed")
                .group_by(r.payment_id)
            )).all())
            left = {pay.id: Decimal(pay.amount) - Decimal(taken.get(pay.id) or 0) for pay in captured}
            refundable = sum(left.values(), Decimal(0))
            if amount is not None and amount != amount.quantize(Decimal(1).scaleb(-exponent)):
                raise bad_request("amount", f"at most {exponent} decimals in {order.currency}")
            # In the currency's own decimals ("56.07", not the column's "56.0700"): the PSP and the noti see this.
            wanted = (refundable if amount is None else amount).quantize(Decimal(1).scaleb(-exponent))
            pay = next((pay for pay in captured if wanted <= left[pay.id]), None)
            if wanted <= 0 or wanted > refundable or pay is None:
                raise ApiError(409, envelope.INVALID_STATE, "invalid_state",
                               {"status": order.status, "reason": "exceeds_refundable",
                                "refundable": fmt(refundable, exponent)})
            # The PSP's format of the amount, checked before the row exists (422 if it cannot carry it).
            if pay.provider == "paypal":
                paypal_value(wanted, order.currency, exponent)
            else:
                adyen_minor(wanted, order.currency, exponent)
            at = now()
            # attempts = 1: this request's submission is the first.
            result = await conn.execute(insert(refunds).values(
                order_id=order.id, payment_id=pay.id, amount=wanted, currency=order.currency, status="pending",
                attempts=1, reason=reason, request_id=request_id, created_at=at, updated_at=at,
            ))
            refund_id = int(result.inserted_primary_key[0])  # type: ignore[index]  # an INSERT has a key
            return NewRefund(refund_id, order.id, wanted, order.currency, exponent, pay.provider, pay.psp_reference,
                             pay.capture_id)

    try:
        return await retrying(work)
    except IntegrityError:  # a racing repeat of the same request_id made the row first
        row = await _existing(engine, order_id, request_id)
        if row is None:
            raise
        return row


async def _submit(engine: AsyncEngine, psp: PspClient, made: NewRefund) -> None:
    key = f"refund-{made.refund_id}"
    try:
        if made.provider == "paypal":
            if made.capture_id is None:
                raise PspFailed("paypal", "refund", name="no_capture_id")
            answer = await psp.paypal_refund(made.capture_id, currency=made.currency, request_id=key, invoice_id=key,
                                             value=paypal_value(made.amount, made.currency, made.exponent))
            outcome, psp_ref = answer.get("status"), answer.get("id")
        else:
            if made.psp_reference is None:
                raise PspFailed("adyen", "refund", name="no_psp_reference")
            answer = await psp.adyen_refund(made.psp_reference, currency=made.currency, key=key,
                                            value=adyen_minor(made.amount, made.currency, made.exponent),
                                            reference=str(made.refund_id))
            outcome, psp_ref = answer.get("status"), answer.get("pspReference")
    except PspFailed as exc:
        log.warning("refund %s of order %s: %s; the retry loop takes it from here", made.refund_id, made.order_id, exc)
        await _retrying(engine, made)
        return
    psp_ref = psp_ref[:64] if isinstance(psp_ref, str) else None

    async def work() -> None:
        async with engine.begin() as conn:
            order = await lock_order(conn, made.order_id)
            r = refunds.c
            row = (await conn.execute(select(r.id, r.amount, r.currency, r.attempts).where(r.id == made.refund_id))).one()
            if outcome == "COMPLETED":
                await record_refund_outcome(conn, order, row, status="succeeded", amount=made.amount,
                                            psp_reference=psp_ref, reason=None)
            elif outcome in ("FAILED", "CANCELLED"):
                await record_refund_outcome(conn, order, row, status="failed", amount=made.amount,
                                            psp_reference=psp_ref, reason=f"paypal refund {outcome}")
            else:  # Adyen's "received", PayPal's PENDING: the outcome comes later
                await conn.execute(update(refunds).where(r.id == row.id, r.status == "pending")
                                   .values(status="submitted", psp_reference=psp_ref, updated_at=now()))
                await conn.execute(update(refunds).where(r.id == row.id, r.psp_reference.is_(None))
                                   .values(psp_reference=psp_ref))

    await retrying(work)


async def _retrying(engine: AsyncEngine, made: NewRefund) -> None:
    async with engine.begin() as conn:
        r = refunds.c
        at = now()
        # The caller's reason stays; why it is retrying is in the log.
        await conn.execute(update(refunds).where(r.id == made.refund_id, r.status == "pending").values(
            status="retrying", next_attempt_at=retry_at(1, at), updated_at=at,
        ))
