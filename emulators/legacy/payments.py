"""Old shopping's pay routes: PayPal (paypal_pay, paypal_finished) and Adyen (adyen_pay).

``POST /shopping/orders/{order_id}/pay/{ptype}/paypal`` (paypal_pay): creates a PayPal order
(intent CAPTURE, ``reference_id`` = our order id, ``custom_id`` = the attempt's row, the order total
as a string with PayPal's decimals) and a ``payments`` row (created) for the attempt. Optional body
``{"return_url", "cancel_url"}``. ``data``: ``{"pay_id", "paypal_order_id", "approve_url"}``.

``POST /shopping/orders/{order_id}/paypal_finished/{pay_id}`` (paypal_finished): moves the order to
payment_confirming (so neither a cancel nor the expiry sweeper can take it while the money moves),
then captures the attempt's PayPal order. A capture with status COMPLETED (never the order's status)
→ the payment captured, the order paid, outbox ``purchased`` + ``noti``; DECLINED, or a capture PayPal
refuses (not approved yet…) → the order payment_failed (payable again) and ``noti``; PENDING leaves it
payment_confirming; an unknown outcome changes nothing more (the same call again settles it). 422
``ORDER_ALREADY_CAPTURED`` → the PayPal order is read back and its capture is the answer. Repeating
it after the capture answers the order's status. ``data``: ``{"order_id", "status"}``.

``POST /shopping/orders/{order_id}/pay/any/adyen`` (adyen_pay): body ``{"paymentMethod": {...},
"returnUrl": "…", "browserInfo": {...}}`` → Adyen ``/v71/payments`` for the order total in Adyen's
minor units, reference = order id, ``metadata.payment_id`` = the attempt's row (Adyen echoes it in
its webhooks). Authorised → the payment authorized, the order authorized (the CAPTURE webhook makes it
paid); Refused / Error / Cancelled → the payment failed, the order payment_failed; RedirectShopper &
co. hand the ``action`` to the app and the order stays payable. ``data``: ``{"pay_id", "resultCode",
"action" | null}``.

The same rules as the new side's pay routes (shop/payments.py), since the edge grays these routes
between the two and both write the same rows at the same time:

* owner only (401 anonymous, 404 ``order_not_found`` for another user's order); a new attempt only
  on a payable order (pending_payment, payment_failed, not past ``expires_at``), else 409
  ``invalid_state``: an order being confirmed, authorized or paid is never charged a second time;
* one ``payments`` row per attempt, inserted with its idempotency key under the order row's lock
  before the PSP is called; the PSP gets that key (``legacy-…``; PayPal's capture ``<key>:capture``,
  which is also what the new side sends for the same row, so PayPal captures a payment once whichever
  side finishes it). An attempt whose PSP answer never arrived is reused, row and key, by the next
  pay call for the order: a retry after a 502/504, or a second tap at the same time, reaches the PSP
  as the same request and the PSP answers it once; while the new side's attempt (its key) is
  unanswered and younger than IN_FLIGHT, 409 ``payment_in_progress`` (a tap on each side: one charge);
* every status change goes through ``events.record_payment`` / ``record_payment_failed`` /
  ``move_status``: the order row locked, guarded updates, history actor ``legacy``, outbox only for
  the writer that moved the order.

Amounts are the order's stored total, exact: ``forex_rates.exponent`` decimals, except where a PSP
differs (PayPal: none for HUF JPY TWD; Adyen: CLP 2, CVE 0, IDR 0, ISK 2). A total a PSP cannot carry
exactly is 422 ``payment_method_unavailable``, never rounded. PSP failures: unknown outcome 502
``psp_error``, timeout 504 ``upstream_timeout`` (both ``Retry-After: 1``); PayPal's 422 → 422
``payment_method_unavailable``, Adyen's 422 → 400 on ``paymentMethod``; other refusals 502.
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
    move_status,
    now,
    owned_order,
    retrying,
)
from emulators.legacy.psp_calls import PspFailed
from emulators.legacy.state import ENGINE, PSP
from shop.schema import forex_rates, payments

log = logging.getLogger(__name__)

PAYABLE = (PENDING_PAYMENT, PAYMENT_FAILED)
FINISHABLE = (PENDING_PAYMENT, PAYMENT_CONFIRMING, PAYMENT_FAILED)
KEY_PREFIX = "legacy-"
# Another writer's unanswered attempt younger than this is taken to be in flight (shop/payments.py IN_FLIGHT).
IN_FLIGHT = timedelta(seconds=30)
PAYPAL_NO_DECIMALS = frozenset({"HUF", "JPY", "TWD"})
ADYEN_PLACES = {"CLP": 2, "CVE": 0, "IDR": 0, "ISK": 2}
ADYEN_FAILED = {"Refused": "failed", "Error": "failed", "Cancelled": "cancelled"}
ADYEN_ACTIONS = ("RedirectShopper", "ChallengeShopper", "IdentifyShopper", "Pending")
_PTYPE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_PAY_ID = re.compile(r"^[0-9]{1,18}$")
_PSP_REF = re.compile(r"^[\x21-\x7e]{1,64}$")


@dataclass(frozen=True, slots=True)
class Attempt:
    payment_id: int
    key: str  # payments.idempotency_key, the PSP's idempotency key
    order_id: str
    amount: Decimal
    currency: str
    exponent: int


# --- request pieces -------------------------------------------------------------------------------


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


def psp_error(exc: PspFailed, *, refused: ApiError | None = None) -> ApiError:
    """The answer for a PSP call that failed; `refused`: the one for a 422 (the PSP's "not this request")."""
    data: dict[str, Any] = {"provider": exc.provider}
    if exc.name:
        data["psp_code"] = exc.name
    if exc.rejected and exc.status == 422 and refused is not None:
        return refused
    if exc.rejected:  # our credentials, or a refusal that is ours to fix: nothing happened
        return ApiError(502, envelope.PSP_ERROR, "psp_error", data)
    err = (ApiError(504, envelope.UPSTREAM_TIMEOUT, "upstream_timeout", data) if exc.timed_out
           else ApiError(502, envelope.PSP_ERROR, "psp_error", data))
    err.retry_after = True
    return err


def invalid_state(status: str, reason: str | None = None, **extra: str) -> ApiError:
    data: dict[str, Any] = {"status": status, **extra}
    if reason is not None:
        data["reason"] = reason
    return ApiError(409, envelope.INVALID_STATE, "invalid_state", data)


def not_representable(psp: str) -> ApiError:
    return ApiError(422, envelope.PAYMENT_METHOD_UNAVAILABLE, "payment_method_unavailable",
                    {"provider": psp, "reason": "amount_not_supported"})


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
        raise not_representable("paypal")
    return format(fitted, "f")


def adyen_minor(amount: Decimal, currency: str, exponent: int) -> int:
    places = ADYEN_PLACES.get(currency, exponent)
    fitted = _fitted(amount, places)
    if fitted is None:
        raise not_representable("adyen")
    return int(fitted.scaleb(places))


# --- attempts -------------------------------------------------------------------------------------


async def open_attempt(engine: AsyncEngine, order_id: str, uid: int, provider: str, method: str | None) -> Attempt:
    """The order's unanswered attempt of `provider` if there is one, else a new row; payable orders only."""

    async def work() -> Attempt:
        async with engine.begin() as conn:
            seen = await owned_order(conn, order_id, uid)
            order = await lock_order(conn, order_id)
            if order.status not in PAYABLE:
                raise invalid_state(order.status)
            if seen.expires_at is not None and seen.expires_at <= now():
                raise invalid_state(order.status, "expired")  # due for the sweeper: a payment would race it
            exponent = await exponent_of(conn, order.currency)
            p = payments.c
            unanswered = p.paypal_order_id.is_(None) if provider == "paypal" else p.psp_reference.is_(None)
            rows = (await conn.execute(select(p.id, p.idempotency_key, p.created_at).where(
                p.order_id == order.id, p.provider == provider, p.status == "created", unanswered,
                p.amount == order.total, p.currency == order.currency,
            ).order_by(p.id.desc()).limit(8))).all()
            pending = next((r for r in rows if (r.idempotency_key or "").startswith(KEY_PREFIX)), None)
            if pending is not None:
                return Attempt(pending.id, pending.idempotency_key, order.id, Decimal(order.total), order.currency,
                               exponent)
            at, key = now(), KEY_PREFIX + secrets.token_hex(16)
            if any(r.created_at > at - IN_FLIGHT for r in rows):
                # The new side is charging this order right now with its own key: a second attempt would be a
                # second charge (the edge grays these routes, so one shopper's two taps can reach both sides).
                err = ApiError(409, envelope.INVALID_STATE, "payment_in_progress",
                               {"status": order.status, "provider": provider})
                err.retry_after = True
                raise err
            result = await conn.execute(insert(payments).values(
                order_id=order.id, provider=provider, method=method, status="created", amount=order.total,
                currency=order.currency, idempotency_key=key, created_at=at, updated_at=at,
            ))
            payment_id = int(result.inserted_primary_key[0])  # type: ignore[index]  # an INSERT has a key
            return Attempt(payment_id, key, order.id, Decimal(order.total), order.currency, exponent)

    return await retrying(work)


async def end_attempt(engine: AsyncEngine, exc: PspFailed, payment_id: int) -> None:
    """A call the PSP refused (4xx: it did nothing) ends the attempt; an unknown outcome keeps it open."""
    if not exc.rejected:
        return
    async with engine.begin() as conn:
        p = payments.c
        await conn.execute(update(payments).where(p.id == payment_id, p.status == "created")
                           .values(status="failed", updated_at=now()))


async def _set_reference(conn: AsyncConnection, payment_id: int, **values: str) -> None:
    """PSP ids on the attempt's row, each only where still unset (a webhook may have written it first)."""
    p = payments.c
    for name, value in values.items():
        await conn.execute(update(payments).where(p.id == payment_id, p[name].is_(None)).values({name: value}))


async def unless_unpayable(work: Callable[[], Awaitable[str]]) -> str | None:
    """`work`'s answer (the order's status); None when ``record_payment`` refused it as unapplicable
    (422: the order was cancelled meanwhile), which the caller then records as money to give back."""
    try:
        return await retrying(work)
    except ApiError as exc:
        if exc.status != 422:
            raise
        return None


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
        raise bad_request("ptype", "1..32 letters, digits or _.-")
    body = await optional_json(request)
    return_url, cancel_url = url_field(body, "return_url"), url_field(body, "cancel_url")
    engine, psp = request.app[ENGINE], request.app[PSP]
    attempt = await open_attempt(engine, order_id, uid, "paypal", ptype)
    value = paypal_value(attempt.amount, attempt.currency, attempt.exponent)
    try:
        answer = await psp.paypal_create_order(reference=order_id, custom_id=str(attempt.payment_id),
                                               currency=attempt.currency, value=value, request_id=attempt.key,
                                               return_url=return_url, cancel_url=cancel_url)
    except PspFailed as exc:
        log.warning("paypal create for order %s (payment %s): %s", order_id, attempt.payment_id, exc)
        await end_attempt(engine, exc, attempt.payment_id)
        raise psp_error(exc, refused=not_representable("paypal")) from None
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


@dataclass(frozen=True, slots=True)
class _Capture:
    payment_id: int
    paypal_order_id: str
    key: str  # the capture's PayPal-Request-Id
    amount: Decimal
    currency: str
    exponent: int


async def _start_capture(engine: AsyncEngine, order_id: str, uid: int, raw_pay_id: str) -> _Capture | str:
    """The capture to make (the order moved to payment_confirming first), or the status when it is made."""

    async def work() -> _Capture | str:
        async with engine.begin() as conn:
            await owned_order(conn, order_id, uid)
            order = await lock_order(conn, order_id)
            p = payments.c
            pay = None if not _PAY_ID.match(raw_pay_id) else (await conn.execute(
                select(p.id, p.status, p.amount, p.currency, p.paypal_order_id, p.idempotency_key)
                .where(p.id == int(raw_pay_id), p.order_id == order.id, p.provider == "paypal")
            )).first()
            if pay is None:
                raise ApiError(404, envelope.ORDER_NOT_FOUND, "payment_not_found", None)
            if pay.status == "captured":
                return str(order.status)  # finished already: no second capture call
            if pay.status not in ("created", "authorized"):
                raise invalid_state(order.status, payment_status=pay.status)
            if pay.paypal_order_id is None:  # paypal_pay never got PayPal's answer: nothing to approve
                raise invalid_state(order.status, "not_created", payment_status=pay.status)
            if order.status not in FINISHABLE:
                raise invalid_state(order.status)
            await move_status(conn, order.id, PAYABLE, PAYMENT_CONFIRMING, f"paypal_finished:{pay.id}")
            key = f"{pay.idempotency_key or f'pay-{pay.id}'}:capture"  # the new side's capture key for this row
            return _Capture(pay.id, pay.paypal_order_id, key, Decimal(pay.amount), pay.currency,
                            await exponent_of(conn, pay.currency))

    return await retrying(work)


async def paypal_finished(request: web.Request) -> web.Response:
    uid = require_user(request)
    order_id = check_order_id(request.match_info["order_id"])
    engine, psp = request.app[ENGINE], request.app[PSP]
    job = await _start_capture(engine, order_id, uid, request.match_info["pay_id"])
    if isinstance(job, str):
        return ok({"order_id": order_id, "status": job})
    try:
        answer = await psp.paypal_capture(job.paypal_order_id, request_id=job.key)
    except PspFailed as exc:
        if exc.rejected and exc.name == "ORDER_ALREADY_CAPTURED":
            try:
                answer = await psp.paypal_order(job.paypal_order_id)
            except PspFailed as again:
                raise psp_error(again) from None
        elif not exc.rejected:
            # The order stays payment_confirming, the payment created: the same call again settles it.
            raise psp_error(exc) from None
        else:
            # PayPal captured nothing (not approved yet, our credentials…): the order is payable again.
            log.warning("paypal capture for order %s (payment %s): %s", order_id, job.payment_id, exc)
            status = await _failed(engine, order_id, job.payment_id, exc.name or "capture refused", end=False)
            if exc.status in (401, 403):  # our credentials: ours to fix, said as such
                raise psp_error(exc) from None
            return ok({"order_id": order_id, "status": status})
    captures = _captures(answer)
    completed = next((c for c in captures if c.get("status") == "COMPLETED"), None)
    if completed is not None:
        amount = completed.get("amount") or {}
        if (amount.get("currency_code"), amount.get("value")) != (job.currency, paypal_value(job.amount, job.currency, job.exponent)):
            log.error("paypal capture %s of payment %s is for %s, not the payment's amount", completed["id"],
                      job.payment_id, amount)
            raise psp_error(PspFailed("paypal", "capture", name="amount_mismatch"))
        status = await _captured(engine, order_id, job, str(completed["id"]))
    elif captures and captures[0].get("status") in ("DECLINED", "FAILED"):
        async with engine.begin() as conn:
            await _set_reference(conn, job.payment_id, capture_id=str(captures[0]["id"]))
        status = await _failed(engine, order_id, job.payment_id, f"capture {captures[0].get('status')}", end=True)
    else:  # PENDING (a review, an eCheck): not money yet; the order waits in payment_confirming
        async with engine.begin() as conn:
            if captures:
                await _set_reference(conn, job.payment_id, capture_id=str(captures[0]["id"]))
            status = str((await lock_order(conn, order_id)).status)
    return ok({"order_id": order_id, "status": status})


async def _captured(engine: AsyncEngine, order_id: str, job: _Capture, capture_id: str) -> str:
    async def work() -> str:
        async with engine.begin() as conn:
            order = await lock_order(conn, order_id)
            await record_payment(conn, order, provider="paypal", status="captured", amount=job.amount,
                                 currency=job.currency, psp_reference=capture_id, payment_id=job.payment_id,
                                 capture_id=capture_id)
            return str((await lock_order(conn, order_id)).status)

    status = await unless_unpayable(work)
    if status is not None:
        return status
    # Captured money on an order that can no longer be paid: the payment row says so, the order stays
    # as it is, and a person refunds it.
    async with engine.begin() as conn:
        p = payments.c
        await conn.execute(update(payments).where(p.id == job.payment_id, p.status.in_(("created", "authorized")))
                           .values(status="captured", psp_reference=capture_id, capture_id=capture_id, updated_at=now()))
        status = str((await lock_order(conn, order_id)).status)
    log.error("paypal capture %s of payment %s landed on order %s in status %s: refund it", capture_id,
              job.payment_id, order_id, status)
    raise invalid_state(status, "captured_after_cancel")


async def _failed(engine: AsyncEngine, order_id: str, payment_id: int, reason: str, *, end: bool) -> str:
    """The order payment_failed (payable again) and ``noti``; `end`: the payment failed too (a declined capture;
    a refused one stays created: the payer may still approve it and the same pay_id captures later)."""

    async def work() -> str:
        async with engine.begin() as conn:
            order = await lock_order(conn, order_id)
            await record_payment_failed(conn, order, provider="paypal", reason=reason[:255],
                                        payment_id=payment_id if end else None)
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
        raise bad_request("paymentMethod", "an object with a type")
    return_url = url_field(body, "returnUrl", required=True)
    assert return_url is not None
    browser = body.get("browserInfo")
    if browser is not None and not isinstance(browser, dict):
        raise bad_request("browserInfo", "an object")
    engine, psp = request.app[ENGINE], request.app[PSP]
    attempt = await open_attempt(engine, order_id, uid, "adyen", method["type"][:32])
    value = adyen_minor(attempt.amount, attempt.currency, attempt.exponent)
    try:
        answer = await psp.adyen_payment(reference=order_id, currency=attempt.currency, value=value, key=attempt.key,
                                         payment_method=method, return_url=return_url, browser_info=browser,
                                         metadata={"payment_id": str(attempt.payment_id)})
    except PspFailed as exc:
        # Never the request in a log line: paymentMethod carries card data.
        log.warning("adyen pay for order %s (payment %s): %s", order_id, attempt.payment_id, exc)
        await end_attempt(engine, exc, attempt.payment_id)
        invalid = ApiError(400, envelope.BAD_REQUEST, "bad_request",
                           {"field": "paymentMethod", "reason": "refused by the PSP", "psp_code": exc.name})
        raise psp_error(exc, refused=invalid) from None
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
