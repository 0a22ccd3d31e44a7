"""Old shopping's pay routes: PayPal (paypal_pay, paypal_finished) and Adyen (adyen_pay).

``POST /shopping/orders/{order_id}/pay/{ptype}/paypal`` (paypal_pay): creates a PayPal order
(intent CAPTURE, ``reference_id`` = our order id, the order total as a string with PayPal's
decimals) and a ``payments`` row (created) for the attempt. Optional body ``{"return_url",
"cancel_url"}``. ``data``: ``{"pay_id", "paypal_order_id", "approve_url"}``.

``POST /shopping/orders/{order_id}/paypal_finished/{pay_id}`` (paypal_finished): captures the
attempt's PayPal order. A capture with status COMPLETED (never the order's status) → the payment
captured, the order paid, outbox ``purchased`` + ``noti``; DECLINED → the payment failed, the
order payment_failed; PENDING changes nothing yet. 422 ``ORDER_ALREADY_CAPTURED`` (another
request, or the new side, captured first) → the PayPal order is read back and its capture is the
answer; not approved yet → 409. Repeating it after the capture answers the order's status.
``data``: ``{"order_id", "status"}``.

``POST /shopping/orders/{order_id}/pay/any/adyen`` (adyen_pay): body ``{"paymentMethod": {...},
"returnUrl": "…", "browserInfo": {...}}`` → Adyen ``/v71/payments`` for the order total in Adyen's
minor units, reference = order id. Authorised → the payment authorized, the order authorized (the
CAPTURE webhook makes it paid); Refused / Error / Cancelled → the payment failed, the order
payment_failed; RedirectShopper & co. hand the ``action`` to the app and the order stays payable.
``data``: ``{"pay_id", "resultCode", "action" | null}``.

Rules both sides keep (they write the same rows at the same time):

* owner only (401 anonymous, 404 ``order_not_found`` for another user's order); a new attempt
  only while the order is payable (pending_payment, payment_confirming, payment_failed), else
  409 ``invalid_state``: an order another attempt authorized or paid is never charged again;
* one ``payments`` row per attempt, inserted (with its idempotency key) before the PSP is called,
  under the order row's lock. The PSP key is derived from the row (``legacy-<provider>-pay-<id>``),
  so a retry of the attempt sends the same key and the PSP answers it once. A caller's
  ``Idempotency-Key`` header names the attempt: the same key again is the same row and the same
  PSP call (the PSP replays its first answer), even after the order moved on;
* an Adyen attempt whose call is still unanswered (created, no pspReference, < 30 s old) makes a
  second one wait (409): two concurrent Adyen calls would be two charges;
* every status change is ``events.record_payment`` / ``record_payment_failed``: the order row
  locked, guarded updates, history actor ``legacy``, outbox only for the writer that moved it.

Amounts are the order's stored total, exact: ``forex_rates.exponent`` decimals, except where a
PSP differs (PayPal: none for HUF JPY TWD; Adyen: CLP 2, CVE 0, IDR 0, ISK 2). A total a PSP
cannot carry exactly is 422 ``payment_method_unavailable``, never rounded.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from emulators.legacy import envelope
from emulators.legacy.body import read_json
from emulators.legacy.caller import require_user
from emulators.legacy.envelope import ApiError, bad_request, ok
from emulators.legacy.events import lock_order, record_payment, record_payment_failed
from emulators.legacy.order_rows import (
    PAYMENT_CONFIRMING,
    PAYMENT_FAILED,
    PENDING_PAYMENT,
    check_order_id,
    now,
    owned_order,
    retrying,
)
from emulators.legacy.psp_calls import PspFailed
from emulators.legacy.state import ENGINE, PSP
from shop.schema import forex_rates, payments

log = logging.getLogger(__name__)

PAYABLE = (PENDING_PAYMENT, PAYMENT_CONFIRMING, PAYMENT_FAILED)
ADYEN_IN_FLIGHT = timedelta(seconds=30)
PAYPAL_NO_DECIMALS = frozenset({"HUF", "JPY", "TWD"})
ADYEN_PLACES = {"CLP": 2, "CVE": 0, "IDR": 0, "ISK": 2}
ADYEN_FAILED = {"Refused": "failed", "Error": "failed", "Cancelled": "cancelled"}
ADYEN_ACTIONS = ("RedirectShopper", "ChallengeShopper", "IdentifyShopper", "Pending")
_KEY = re.compile(r"^[\x21-\x7e]{1,64}$")
_PTYPE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_PAY_ID = re.compile(r"^[0-9]{1,18}$")
_PSP_REF = re.compile(r"^[\x21-\x7e]{1,64}$")


@dataclass(frozen=True, slots=True)
class Attempt:
    payment_id: int
    order_id: str
    amount: Decimal
    currency: str
    exponent: int

    def psp_key(self, provider: str) -> str:
        return f"legacy-{provider}-pay-{self.payment_id}"


# --- request pieces -------------------------------------------------------------------------------


def client_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key", "").strip()
    if key and not _KEY.match(key):
        raise bad_request("Idempotency-Key", "at most 64 printable characters")
    return key or None


async def optional_json(request: web.Request) -> dict[str, Any]:
    if not await request.read():
        return {}
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("body", "must be a JSON object")
    return body


def url_field(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or len(value) > 2048:
        raise bad_request(name, "must be an http(s) URL of at most 2048 characters")
    return value


def psp_error(exc: PspFailed) -> ApiError:
    if exc.timed_out:
        return ApiError(504, envelope.UPSTREAM_TIMEOUT, "upstream_timeout", {"provider": exc.provider})
    return ApiError(502, envelope.PSP_ERROR, "psp_error",
                    {"provider": exc.provider, "operation": exc.operation, "status": exc.status, "error": exc.name})


def invalid_state(status: str, reason: str | None = None) -> ApiError:
    data: dict[str, Any] = {"status": status}
    if reason is not None:
        data["reason"] = reason
    return ApiError(409, envelope.INVALID_STATE, "invalid_state", data)


def not_representable(currency: str, psp: str) -> ApiError:
    return ApiError(422, envelope.PAYMENT_METHOD_UNAVAILABLE, "payment_method_unavailable",
                    {"reason": "amount_not_representable", "provider": psp, "currency": currency})


# --- amounts --------------------------------------------------------------------------------------


async def exponent_of(conn: AsyncConnection, currency: str) -> int:
    found = (await conn.execute(select(forex_rates.c.exponent).where(forex_rates.c.currency == currency))).scalar()
    return 2 if found is None else int(found)


def _fitted(amount: Decimal, places: int) -> Decimal | None:
    fitted = amount.quantize(Decimal(1).scaleb(-places))
    return fitted if fitted == amount else None


def paypal_value(amount: Decimal, currency: str, exponent: int) -> str:
    fitted = _fitted(amount, 0 if currency in PAYPAL_NO_DECIMALS else exponent)
    if fitted is None:
        raise not_representable(currency, "paypal")
    return format(fitted, "f")


def adyen_minor(amount: Decimal, currency: str, exponent: int) -> int:
    places = ADYEN_PLACES.get(currency, exponent)
    fitted = _fitted(amount, places)
    if fitted is None:
        raise not_representable(currency, "adyen")
    return int(fitted.scaleb(places))


# --- attempts -------------------------------------------------------------------------------------


async def open_attempt(engine: AsyncEngine, order_id: str, uid: int, provider: str, method: str | None,
                       key: str | None) -> Attempt:
    """The attempt's payments row (the caller's key's row, or a new one while the order is payable)."""

    async def work() -> Attempt:
        async with engine.begin() as conn:
            await owned_order(conn, order_id, uid)
            order = await lock_order(conn, order_id)
            exponent = await exponent_of(conn, order.currency)
            p = payments.c
            if key is not None:
                row = (await conn.execute(select(p.id, p.amount, p.currency).where(
                    p.order_id == order.id, p.provider == provider, p.idempotency_key == key,
                ).order_by(p.id).limit(1))).first()
                if row is not None:
                    return Attempt(row.id, order.id, Decimal(row.amount), row.currency, exponent)
            if order.status not in PAYABLE:
                raise invalid_state(order.status)
            at = now()
            if provider == "adyen":
                busy = (await conn.execute(select(p.id).where(
                    p.order_id == order.id, p.provider == "adyen", p.status == "created", p.psp_reference.is_(None),
                    p.created_at > at - ADYEN_IN_FLIGHT,
                ).limit(1))).first()
                if busy is not None:
                    raise invalid_state(order.status, "payment_in_progress")
            result = await conn.execute(insert(payments).values(
                order_id=order.id, provider=provider, method=method, status="created", amount=order.total,
                currency=order.currency, idempotency_key=key or f"legacy-{secrets.token_hex(12)}",
                created_at=at, updated_at=at,
            ))
            payment_id = int(result.inserted_primary_key[0])  # type: ignore[index]  # an INSERT has a key
            return Attempt(payment_id, order.id, Decimal(order.total), order.currency, exponent)

    return await retrying(work)


async def fail_attempt(engine: AsyncEngine, payment_id: int) -> None:
    """The PSP refused the call (4xx): nothing happened there, so the attempt is over."""
    async with engine.begin() as conn:
        p = payments.c
        await conn.execute(update(payments).where(p.id == payment_id, p.status == "created")
                           .values(status="failed", updated_at=now()))


async def _set_reference(conn: AsyncConnection, payment_id: int, **values: str) -> None:
    """PSP ids on the attempt's row, each only where still unset (a webhook may have written it first)."""
    p = payments.c
    for name, value in values.items():
        column = p[name]
        await conn.execute(update(payments).where(p.id == payment_id, column.is_(None)).values({name: value}))


# --- PayPal ---------------------------------------------------------------------------------------


def approve_link(answer: dict[str, Any]) -> str | None:
    for link in answer.get("links") or ():
        if isinstance(link, dict) and link.get("rel") in ("approve", "payer-action") and isinstance(link.get("href"), str):
            return str(link["href"])
    return None


async def paypal_pay(request: web.Request) -> web.Response:
    uid = require_user(request)
    order_id = check_order_id(request.match_info["order_id"])
    ptype = request.match_info["ptype"]
    if not _PTYPE.match(ptype):
        raise bad_request("ptype", "letters, digits, _ and -, at most 32")
    body = await optional_json(request)
    return_url, cancel_url = url_field(body, "return_url"), url_field(body, "cancel_url")
    engine, psp = request.app[ENGINE], request.app[PSP]
    attempt = await open_attempt(engine, order_id, uid, "paypal", ptype, client_key(request))
    value = paypal_value(attempt.amount, attempt.currency, attempt.exponent)
    try:
        answer = await psp.paypal_create_order(reference=order_id, currency=attempt.currency, value=value,
                                               request_id=attempt.psp_key("paypal"), return_url=return_url,
                                               cancel_url=cancel_url)
    except PspFailed as exc:
        if exc.rejected:
            await fail_attempt(engine, attempt.payment_id)
        raise psp_error(exc) from None
    paypal_id = answer.get("id")
    if not isinstance(paypal_id, str) or not _PSP_REF.match(paypal_id):
        raise psp_error(PspFailed("paypal", "create_order", name="no_order_id"))
    async with engine.begin() as conn:
        await _set_reference(conn, attempt.payment_id, paypal_order_id=paypal_id)
    return ok({"pay_id": str(attempt.payment_id), "paypal_order_id": paypal_id, "approve_url": approve_link(answer)})


def _captures(answer: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for unit in answer.get("purchase_units") or ():
        paid = unit.get("payments") if isinstance(unit, dict) else None
        for capture in (paid.get("captures") if isinstance(paid, dict) else None) or ():
            if isinstance(capture, dict) and isinstance(capture.get("id"), str):
                found.append(capture)
    return found


async def paypal_finished(request: web.Request) -> web.Response:
    uid = require_user(request)
    order_id = check_order_id(request.match_info["order_id"])
    raw_pay_id = request.match_info["pay_id"]
    engine, psp = request.app[ENGINE], request.app[PSP]
    p = payments.c
    async with engine.connect() as conn:
        order = await owned_order(conn, order_id, uid)
        pay = None if not _PAY_ID.match(raw_pay_id) else (await conn.execute(
            select(p.id, p.status, p.amount, p.currency, p.paypal_order_id)
            .where(p.id == int(raw_pay_id), p.order_id == order.id, p.provider == "paypal")
        )).first()
        exponent = await exponent_of(conn, order.currency)
    if pay is None:
        raise ApiError(404, envelope.ORDER_NOT_FOUND, "payment_not_found", None)
    if pay.status == "captured":
        return ok({"order_id": order_id, "status": order.status})
    if pay.status in ("failed", "cancelled") or pay.paypal_order_id is None:
        raise invalid_state(order.status, f"payment_{pay.status}")
    if order.status not in PAYABLE:
        raise invalid_state(order.status)
    try:
        answer = await psp.paypal_capture(pay.paypal_order_id, request_id=f"legacy-paypal-capture-{pay.id}")
    except PspFailed as exc:
        if exc.rejected and exc.name == "ORDER_NOT_APPROVED":
            raise invalid_state(order.status, "paypal_not_approved") from None
        if not (exc.rejected and exc.name == "ORDER_ALREADY_CAPTURED"):
            raise psp_error(exc) from None
        try:
            answer = await psp.paypal_order(pay.paypal_order_id)
        except PspFailed as again:
            raise psp_error(again) from None
    captures = _captures(answer)
    completed = next((c for c in captures if c.get("status") == "COMPLETED"), None)
    if completed is not None:
        amount = completed.get("amount") or {}
        if (amount.get("currency_code"), amount.get("value")) != (pay.currency, paypal_value(Decimal(pay.amount), pay.currency, exponent)):
            log.error("paypal capture %s of payment %s is for %s, not the payment's amount", completed["id"], pay.id, amount)
            raise psp_error(PspFailed("paypal", "capture", name="amount_mismatch"))
        status = await _captured(engine, order_id, pay, str(completed["id"]))
    elif any(c.get("status") in ("DECLINED", "FAILED") for c in captures):
        status = await _declined(engine, order_id, pay.id, captures[0])
    else:  # PENDING (a review, an eCheck): not money yet; a later finish, or a person, settles it
        async with engine.begin() as conn:
            if captures:
                await _set_reference(conn, pay.id, capture_id=str(captures[0]["id"]))
            status = (await lock_order(conn, order_id)).status
    return ok({"order_id": order_id, "status": status})


async def unless_unpayable(work: Callable[[], Awaitable[str]]) -> str | None:
    """`work`'s answer (the order's status); None when ``record_payment`` refused it as unapplicable
    (422: the order was cancelled meanwhile), which the caller then records as money to give back."""
    try:
        return await retrying(work)
    except ApiError as exc:
        if exc.status != 422:
            raise
        return None


async def _captured(engine: AsyncEngine, order_id: str, pay: Any, capture_id: str) -> str:
    async def work() -> str:
        async with engine.begin() as conn:
            order = await lock_order(conn, order_id)
            await record_payment(conn, order, provider="paypal", status="captured", amount=Decimal(pay.amount),
                                 currency=pay.currency, psp_reference=capture_id, payment_id=pay.id, capture_id=capture_id)
            return str((await lock_order(conn, order_id)).status)

    status = await unless_unpayable(work)
    if status is not None:
        return status
    # Captured money on an order that can no longer be paid (cancelled meanwhile): the payment
    # row says so, the order stays as it is, and a person refunds it.
    async with engine.begin() as conn:
        p = payments.c
        await conn.execute(update(payments).where(p.id == pay.id, p.status.in_(("created", "authorized")))
                           .values(status="captured", psp_reference=capture_id, capture_id=capture_id, updated_at=now()))
        status = (await lock_order(conn, order_id)).status
    log.error("paypal capture %s of payment %s landed on order %s in status %s: refund it", capture_id, pay.id,
              order_id, status)
    raise invalid_state(status, "captured_after_cancel")


async def _declined(engine: AsyncEngine, order_id: str, payment_id: int, capture: dict[str, Any]) -> str:
    async def work() -> str:
        async with engine.begin() as conn:
            order = await lock_order(conn, order_id)
            await _set_reference(conn, payment_id, capture_id=str(capture["id"]))
            await record_payment_failed(conn, order, provider="paypal", reason=f"capture {capture.get('status')}",
                                        payment_id=payment_id)
            return str((await lock_order(conn, order_id)).status)

    return await retrying(work)


# --- Adyen ----------------------------------------------------------------------------------------


async def adyen_pay(request: web.Request) -> web.Response:
    uid = require_user(request)
    order_id = check_order_id(request.match_info["order_id"])
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("body", "must be a JSON object")
    method = body.get("paymentMethod")
    if not isinstance(method, dict) or not isinstance(method.get("type"), str) or not method["type"]:
        raise bad_request("paymentMethod", "must be an object with a type")
    return_url = url_field(body, "returnUrl", required=True)
    assert return_url is not None
    browser = body.get("browserInfo")
    if browser is not None and not isinstance(browser, dict):
        raise bad_request("browserInfo", "must be an object")
    engine, psp = request.app[ENGINE], request.app[PSP]
    attempt = await open_attempt(engine, order_id, uid, "adyen", method["type"][:32], client_key(request))
    value = adyen_minor(attempt.amount, attempt.currency, attempt.exponent)
    try:
        answer = await psp.adyen_payment(reference=order_id, currency=attempt.currency, value=value,
                                         key=attempt.psp_key("adyen"), payment_method=method, return_url=return_url,
                                         browser_info=browser)
    except PspFailed as exc:
        if exc.rejected:
            await fail_attempt(engine, attempt.payment_id)
        raise psp_error(exc) from None
    code, psp_ref = answer.get("resultCode"), answer.get("pspReference")
    amount = answer.get("amount", {"currency": attempt.currency, "value": value})
    if (not isinstance(code, str) or answer.get("merchantReference", order_id) != order_id
            or amount != {"currency": attempt.currency, "value": value}
            or (psp_ref is not None and not (isinstance(psp_ref, str) and _PSP_REF.match(psp_ref)))):
        raise psp_error(PspFailed("adyen", "pay", name="not_this_payment"))
    status = await _adyen_result(engine, attempt, code, psp_ref, answer)
    action = answer.get("action") if code in ADYEN_ACTIONS and isinstance(answer.get("action"), dict) else None
    log.info("adyen pay %s for order %s: %s (order %s)", attempt.payment_id, order_id, code, status)
    return ok({"pay_id": str(attempt.payment_id), "resultCode": code, "action": action})


async def _adyen_result(engine: AsyncEngine, attempt: Attempt, code: str, psp_ref: str | None,
                        answer: dict[str, Any]) -> str:
    async def work() -> str:
        async with engine.begin() as conn:
            order = await lock_order(conn, attempt.order_id)
            if psp_ref is not None:
                await _set_reference(conn, attempt.payment_id, psp_reference=psp_ref)
            if code == "Authorised" and psp_ref is not None:
                await record_payment(conn, order, provider="adyen", status="authorized", amount=attempt.amount,
                                     currency=attempt.currency, psp_reference=psp_ref, payment_id=attempt.payment_id)
            elif code in ADYEN_FAILED:
                reason = answer.get("refusalReason") if isinstance(answer.get("refusalReason"), str) else code
                await record_payment_failed(conn, order, provider="adyen", reason=str(reason)[:255],
                                            payment_id=attempt.payment_id, payment_status=ADYEN_FAILED[code])
            return str((await lock_order(conn, attempt.order_id)).status)

    status = await unless_unpayable(work)
    if status is not None:
        return status
    # Authorised for an order cancelled meanwhile: the row keeps its pspReference (for the person
    # who cancels the authorisation); the order stays cancelled.
    async with engine.begin() as conn:
        if psp_ref is not None:
            await _set_reference(conn, attempt.payment_id, psp_reference=psp_ref)
        status = str((await lock_order(conn, attempt.order_id)).status)
    log.error("adyen payment %s (%s) authorised for order %s in status %s: cancel it at Adyen", attempt.payment_id,
              psp_ref, attempt.order_id, status)
    raise invalid_state(status, "authorised_after_cancel")
