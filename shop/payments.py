"""Paying an order: PayPal (pay → the payer approves → finished captures) and Adyen (one /payments call).

Every call has three steps, and no PSP call ever runs inside a transaction:

1. a unit of work: the caller owns the order, the order is payable, and the attempt's `payments`
   row (status created) with its idempotency key is committed;
2. the PSP call, every attempt with that same key (adapters/retry.py), so a PSP that acted and
   whose answer was lost replays its first answer instead of charging again;
3. a unit of work that applies the answer with guarded compare-and-set updates (old shopping and
   the webhook consumers write the same rows), so a replayed or racing answer changes nothing twice.

Once started, a call runs to its end even when the caller stops waiting (the edge's route timeout, a
client hang-up): what the PSP did is always recorded, and an order paypal_finished moved to
payment_confirming always gets its capture call.

**One unresolved attempt per order and provider.** An attempt whose PSP answer never arrived (PayPal
order id, or Adyen pspReference, still NULL) is *reused*, key and row, by the next pay call for the
order: a retry after a 502/504 converges on what the PSP did the first time, and two concurrent taps
share one key (the order row is locked while the attempt is chosen), so the PSP deduplicates them.
An attempt with a known answer is never reused: the next call is a new attempt with a new key.
Old shopping's attempts (its own keys, its own request bodies) cannot be reused: while one of them is
unanswered and younger than IN_FLIGHT, a pay call is 409 ``payment_in_progress`` (Retry-After), so a
shopper whose two taps the gray edge sends to both sides is charged once (old shopping does the same).

**States.** pay routes start attempts on `pending_payment` / `payment_failed` orders only (PAYABLE),
not yet expired; anything else is 409 invalid_state with the current status. `payment_confirming`
is not payable: it means a payment is being confirmed (the app's paid_from_client, or a PayPal capture
whose outcome is not known yet), and a second payment there is how a shopper pays twice.
paypal_finished first moves the order to `payment_confirming` (the guarded ``paid_from_client``
transition, a no-op when it is there already): neither the expiry sweeper nor a cancel takes an order
out of that state, so the money cannot be captured for an order that was cancelled meanwhile, and an
order whose capture is in doubt keeps its stock until a retry settles it.

PayPal: paid only by a COMPLETED capture (``result.paid``); PayPal's own "authorized" is not a state a
PayPal payment takes here. A capture the PSP refuses (not approved, declined) → the order goes back to
`payment_failed` (payable, expirable, ``noti``); a PENDING capture leaves it `payment_confirming`.
Adyen: Authorised → payment authorized, order authorized (the CAPTURE webhook makes it paid);
Refused / Error / Cancelled → payment failed, order payment_failed, ``noti``; RedirectShopper and the
other action codes → the payment stays created with its pspReference and the action goes to the app.

**Webhooks recognise these rows** the way shop/events.py looks payments up: by (provider,
psp_reference), or by the payment id. Adyen's pspReference is stored as soon as the answer arrives,
the row id travels to Adyen as ``metadata.payment_id``; a PayPal payment's psp_reference is its
capture id. If the webhook's consumer got there first (it inserts its own row when it finds none),
the answer is applied to that row and the attempt's row, which nobody was told about, is removed.

shop imports neither aiohttp nor adapters: the PSP clients come in as ``Gateways`` (the Protocols
below, which adapters/paypal.py and adapters/adyen.py satisfy), with a ``classify`` function that
tells what a client's exception means (the composition root, handlers/context.py, knows the classes).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal, Protocol, TypeVar

import structlog
from sqlalchemy import ColumnElement, Exists, Update, and_, bindparam, delete, exists, func, insert, or_, select, update

from shop import order_states as st
from shop import schema as t
from shop.bootstrap import Shop
from shop.errors import (BadRequest, Conflict, LoginRequired, NotFound, ShopError, Unprocessable, UpstreamError,
                         UpstreamTimeout)
from shop.events import paid_rows
from shop.money import quantum
from shop.order_views import order_not_found, well_formed_order_id
from shop.reference import Forex
from shop.uow import UnitOfWork

log = structlog.get_logger("shop.payments")

T = TypeVar("T")
Provider = Literal["paypal", "adyen"]

# Orders a new attempt may start on; see the module docstring for payment_confirming.
PAYABLE = (st.PENDING_PAYMENT, st.PAYMENT_FAILED)
# Orders whose PayPal payment paypal_finished may capture (it moves them to payment_confirming first).
FINISHABLE = (st.PENDING_PAYMENT, st.PAYMENT_CONFIRMING, st.PAYMENT_FAILED)
_PAID_OR_LATER = frozenset({st.PAID, st.FULFILLING, st.SHIPPED, st.COMPLETED, st.PARTIALLY_REFUNDED, st.REFUNDED})
# Our attempts' keys, so an unresolved row old shopping wrote (its own key, its own request) is never reused.
KEY_PREFIX: Mapping[str, str] = {"paypal": "new-pp-", "adyen": "new-ad-"}
# How long another writer's unanswered attempt is taken to be in flight (a pay call with its retries takes
# at most ~10 s on either side); after that it is abandoned (its process died) and a new attempt may start.
IN_FLIGHT = timedelta(seconds=30)
# A capture PayPal answered with one of these took no money: the order is payable again.
CAPTURE_DECLINED = frozenset({"DECLINED", "FAILED"})
_METHOD = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MAX_RETURN_URL = 1024  # Adyen takes up to 8 KB; an app's return URL is short


# --- the gateways: what shop needs of the PSP clients ------------------------------------------------


class PayPalOrderView(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def approve_url(self) -> str | None: ...


class CaptureView(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...


class CaptureResultView(Protocol):
    @property
    def paid(self) -> bool: ...
    @property
    def capture(self) -> CaptureView | None: ...


class AdyenPaymentView(Protocol):
    @property
    def result_code(self) -> str: ...
    @property
    def psp_reference(self) -> str | None: ...
    @property
    def action(self) -> Mapping[str, Any] | None: ...
    @property
    def refusal_reason(self) -> str | None: ...
    @property
    def authorised(self) -> bool: ...
    @property
    def final(self) -> bool: ...


class PayPalGateway(Protocol):
    async def create_order(self, *, reference: str, amount: Decimal, currency: str, request_id: str,
                           custom_id: str | None = None) -> PayPalOrderView: ...

    async def capture_order(self, order_id: str, *, request_id: str) -> CaptureResultView: ...


class AdyenGateway(Protocol):
    async def pay(self, *, reference: str, amount: Decimal, currency: str, payment_method: Mapping[str, Any],
                  return_url: str, idempotency_key: str, browser_info: Mapping[str, Any] | None = None,
                  extra: Mapping[str, Any] | None = None) -> AdyenPaymentView: ...


FailureKind = Literal["rejected", "auth", "unknown", "timeout", "amount"]


@dataclass(frozen=True, slots=True)
class PspFailure:
    """What a gateway's exception means. rejected / auth / amount: the PSP did nothing (a refusal, our
    credentials, an amount it cannot carry, found before any I/O); unknown / timeout: it may have acted."""

    kind: FailureKind
    code: str | None = None  # the PSP's error name (ORDER_NOT_APPROVED…); never a message, never a secret
    status: int | None = None


@dataclass(frozen=True, slots=True)
class Gateways:
    paypal: PayPalGateway
    adyen: AdyenGateway
    classify: Callable[[Exception], PspFailure | None]


# --- errors ----------------------------------------------------------------------------------------


class PspOutcomeUnknown(UpstreamError):
    """502 psp_error: the PSP failed or could not be reached, and may have acted; the same request
    converges (same attempt, same key), so it may be sent again."""

    reason, retryable = "psp_error", True


class PaymentInProgress(Conflict):
    """409 payment_in_progress: another writer's attempt for this order and provider is being charged;
    in a moment the order is paid (409 invalid_state then) or payable again, so it may be sent again."""

    reason, retryable = "payment_in_progress", True


class PspTimedOut(UpstreamTimeout):
    """504 upstream_timeout: no answer in time; as above, the same request may be sent again."""

    retryable = True


def _psp_error(provider: str, failure: PspFailure, *, refused: ShopError | None = None) -> ShopError:
    """The answer for a PSP call that failed; `refused`: the one for a 422, the PSP's "not this request"."""
    data: dict[str, Any] = {"provider": provider}
    if failure.code:
        data["psp_code"] = failure.code
    if failure.kind == "timeout":
        return PspTimedOut(data=data)
    if failure.kind == "unknown":
        return PspOutcomeUnknown(data=data)
    if failure.kind == "amount":
        return Unprocessable("payment_method_unavailable", {"provider": provider, "reason": "amount_not_supported"})
    if failure.kind == "rejected" and failure.status == 422 and refused is not None:
        return refused
    # Our credentials, or a refusal that is ours to fix, not the shopper's: nothing happened.
    return UpstreamError("psp_error", data)


# --- requests --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdyenPayRequest:
    payment_method: Mapping[str, Any]
    return_url: str
    browser_info: Mapping[str, Any] | None

    @property
    def method(self) -> str:
        kind = self.payment_method.get("type")
        return kind[:32] if isinstance(kind, str) else "unknown"


def parse_adyen_pay(body: object) -> AdyenPayRequest:
    """``{"paymentMethod": {"type": …, …}, "returnUrl": "…", "browserInfo": {…}}`` (legacy-api.md adyen_pay)."""
    if not isinstance(body, dict):
        raise BadRequest(data={"field": "body", "reason": "must be a JSON object"})
    method = body.get("paymentMethod")
    if not isinstance(method, dict) or not isinstance(method.get("type"), str) or not method["type"]:
        raise BadRequest(data={"field": "paymentMethod", "reason": "an object with a type"})
    url = body.get("returnUrl")
    if not isinstance(url, str) or not 0 < len(url) <= MAX_RETURN_URL:
        raise BadRequest(data={"field": "returnUrl", "reason": f"a URL of 1..{MAX_RETURN_URL} characters"})
    browser = body.get("browserInfo")
    if browser is not None and not isinstance(browser, dict):
        raise BadRequest(data={"field": "browserInfo", "reason": "an object"})
    return AdyenPayRequest(method, url, browser)


def payment_method_code(ptype: str) -> str:
    """paypal_pay's `{ptype}` path segment, kept as payments.method."""
    if not _METHOD.fullmatch(ptype):
        raise BadRequest(data={"field": "ptype", "reason": "1..32 letters, digits or _.-"})
    return ptype


# --- step 1: the attempt ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    pay_id: int
    key: str
    order_id: str
    user_id: int
    amount: Decimal  # the order's total at its currency's exponent
    currency: str
    reused: bool  # the key was sent before: the PSP may hold an answer for it
    order_status: str | None = None  # the order's status when the attempt was opened: the answer's transition tries it first


@dataclass(frozen=True, slots=True)
class _Order:
    id: str
    user_id: int
    status: str
    amount: Decimal
    currency: str
    expires_at: datetime | None


# The hot path's statements, built once and run with parameters (building a statement per call costs about
# as much CPU as running it).
_O, _P = t.orders.c, t.payments.c
_ORDER = select(_O.id, _O.user_id, _O.status, _O.total, _O.currency, _O.expires_at) \
    .where(_O.id == bindparam("order_id"))
# The order row alone: a lock on its forex row would queue every payment in that currency.
_ORDER_LOCKED = _ORDER.with_for_update()
_EXPONENT = select(t.forex_rates.c.exponent).where(t.forex_rates.c.currency == bindparam("currency"))
# An attempt whose PSP answer never arrived: no PayPal order id, no Adyen pspReference yet.
_NO_ANSWER = {"paypal": _P.paypal_order_id.is_(None), "adyen": _P.psp_reference.is_(None)}
# Every writer's unanswered attempts (ours to reuse, old shopping's to wait for), newest first.
_UNANSWERED = {
    provider: select(_P.id, _P.idempotency_key, _P.created_at).where(
        _P.order_id == bindparam("order_id"), _P.provider == provider, _P.status == "created", _NO_ANSWER[provider],
        _P.amount == bindparam("amount"), _P.currency == bindparam("currency"),
    ).order_by(_P.id.desc()).limit(8)
    for provider in KEY_PREFIX
}
_PAYMENT_INSERT = insert(t.payments)
_PAYPAL_ROW = select(_P.id, _P.status, _P.paypal_order_id, _P.idempotency_key).where(
    _P.id == bindparam("pay_id"), _P.order_id == bindparam("order_id"), _P.provider == "paypal")
# Of the same order: a row of another order that carries this pspReference is a data error for a person,
# never a row to merge ours into (ours would be deleted and that order's payment taken over).
_SAME_PSP_PAYMENT = select(_P.id).where(_P.provider == bindparam("provider"), _P.order_id == bindparam("order_id"),
                                        _P.psp_reference == bindparam("psp_reference"), _P.id != bindparam("pay_id"))


def attempt_in_flight(order_id: ColumnElement[Any], since: datetime) -> Exists:
    """EXISTS an unanswered attempt (the rows _UNANSWERED finds) for the order, by either writer and either PSP,
    started after `since`: the PSP may be charging it right now."""
    return exists().where(_P.order_id == order_id, _P.status == "created", _P.created_at > since,
                          or_(*(and_(_P.provider == provider, no_answer) for provider, no_answer in _NO_ANSWER.items())))


@lru_cache(maxsize=32)
def _payment_update(columns: tuple[str, ...]) -> Update:
    """UPDATE payments SET `columns` (+ updated_at) WHERE id = :pay_id AND status IN :sources."""
    return update(t.payments).where(_P.id == bindparam("pay_id"), _P.status.in_(bindparam("sources", expanding=True))) \
        .values(updated_at=bindparam("v_updated_at"), **{c: bindparam(f"v_{c}") for c in columns})


async def _owned_order(uow: UnitOfWork, order_id: str, user_id: int | None, *, lock: bool = False,
                       forex: Mapping[str, Forex] | None = None) -> _Order:
    """The caller's order (401 anonymous; 404 for a missing order, another user's, an id that is not one).

    `forex`: the reference cache's currencies; their exponent spares a query (the one pricing used for the
    total). A currency it lacks is read from the table."""
    if user_id is None:
        raise LoginRequired()
    if not well_formed_order_id(order_id):
        raise order_not_found()
    row = (await uow.conn.execute(_ORDER_LOCKED if lock else _ORDER, {"order_id": order_id})).first()
    if row is None or row.user_id != user_id:
        raise order_not_found()
    cached = None if forex is None else forex.get(row.currency)
    if cached is not None:
        exponent: int | None = cached.exponent
    else:
        exponent = (await uow.conn.execute(_EXPONENT, {"currency": row.currency})).scalar()
    places = 2 if exponent is None else int(exponent)
    return _Order(row.id, row.user_id, row.status, Decimal(row.total).quantize(quantum(places)), row.currency,
                  row.expires_at)


def _refuse_unless_payable(order: _Order, uow: UnitOfWork) -> None:
    if order.status not in PAYABLE:
        raise st.InvalidState(data={"status": order.status})
    if order.expires_at is not None and order.expires_at <= uow.now:
        # Due for the sweeper: a payment now would race its cancel.
        raise st.InvalidState(data={"status": order.status, "reason": "expired"})


async def open_attempt(uow: UnitOfWork, provider: Provider, order_id: str, user_id: int | None, method: str, *,
                       forex: Mapping[str, Forex] | None = None) -> Attempt:
    """The attempt a pay call sends: the order's unresolved one of `provider` if there is one, else a new row."""
    order = await _owned_order(uow, order_id, user_id, lock=True, forex=forex)
    _refuse_unless_payable(order, uow)
    prefix = KEY_PREFIX[provider]
    unanswered = (await uow.conn.execute(_UNANSWERED[provider], {
        "order_id": order.id, "amount": order.amount, "currency": order.currency,
    })).all()
    pending = next((r for r in unanswered if (r.idempotency_key or "").startswith(prefix)), None)
    if pending is not None:
        return Attempt(pending.id, pending.idempotency_key, order.id, order.user_id, order.amount, order.currency, True,
                       order.status)
    if any(r.created_at > uow.now - IN_FLIGHT for r in unanswered):
        # Another writer (old shopping, while the edge grays this route) is charging this order right now,
        # with a key of its own we cannot send: a second attempt would be a second charge.
        raise PaymentInProgress(data={"status": order.status, "provider": provider})
    key = prefix + secrets.token_hex(16)
    result = await uow.conn.execute(_PAYMENT_INSERT, {
        "order_id": order.id, "provider": provider, "method": method, "status": "created", "amount": order.amount,
        "currency": order.currency, "idempotency_key": key, "created_at": uow.now, "updated_at": uow.now,
    })
    inserted = result.inserted_primary_key
    assert inserted is not None
    pay_id = int(inserted[0])
    return Attempt(pay_id, key, order.id, order.user_id, order.amount, order.currency, False, order.status)


# --- step 3: applying answers ----------------------------------------------------------------------


async def _set_payment(uow: UnitOfWork, pay_id: int, sources: tuple[str, ...], **values: Any) -> bool:
    params = {"pay_id": pay_id, "sources": list(sources), "v_updated_at": uow.now,
              **{f"v_{c}": v for c, v in values.items()}}
    result = await uow.conn.execute(_payment_update(tuple(values)), params)
    return result.rowcount == 1


async def touch_created(uow: UnitOfWork, pay_id: int) -> None:
    """Only `updated_at` of a payment still created: it was looked at (the capture reconciler's queue order)."""
    await _set_payment(uow, pay_id, ("created",))


async def _adopt_recorded(uow: UnitOfWork, attempt: Attempt, provider: str, psp_reference: str) -> int:
    """The row of this PSP payment: the attempt's, or the one a webhook's consumer already inserted for it."""
    p = t.payments.c
    other = (await uow.conn.execute(_SAME_PSP_PAYMENT, {
        "provider": provider, "order_id": attempt.order_id, "psp_reference": psp_reference,
        "pay_id": attempt.pay_id})).first()
    if other is None:
        return attempt.pay_id
    # One payment, one row: the webhook's row keeps the history, and learns the attempt's key.
    await uow.conn.execute(update(t.payments).where(p.id == other.id).values(
        idempotency_key=func.coalesce(p.idempotency_key, attempt.key), updated_at=uow.now))
    await uow.conn.execute(delete(t.payments).where(p.id == attempt.pay_id, p.status == "created",
                                                    p.psp_reference.is_(None)))
    log.info("payment_row_adopted", order_id=attempt.order_id, attempt_row=attempt.pay_id, payment_id=other.id)
    return int(other.id)


async def _order_paid(uow: UnitOfWork, attempt: Attempt, provider: str, reference: str) -> str:
    """The guarded captured transition; outbox purchased + noti only when this call moved the order.

    It tries the status the attempt was opened in first and reads the row only when that no longer holds."""
    try:
        outcome = await uow.transition(attempt.order_id, "captured", reason=f"{provider}:{reference}",
                                       expected=attempt.order_status)
    except st.InvalidState as exc:
        seen = str((exc.data or {}).get("status"))
        if seen not in _PAID_OR_LATER:  # paid and gone on already (a racing call, the webhook, old shopping)
            # Money for an order that can't take it (cancelled): recorded, and for a person to refund.
            log.error("payment_captured_for_unpayable_order", order_id=attempt.order_id, payment_id=attempt.pay_id,
                      provider=provider, status=seen)
        return seen
    if outcome.changed:
        # The same rows shop/events.py writes for a captured payment_notified, in one INSERT.
        await uow.publish_many(paid_rows(uow.now, attempt.order_id, attempt.user_id, attempt.amount, attempt.currency,
                                         provider))
    return outcome.status


async def _order_failed(uow: UnitOfWork, attempt: Attempt, provider: str, reason: str) -> str:
    try:
        outcome = await uow.transition(attempt.order_id, "payment_failed", reason=f"{provider}:{reason}"[:255],
                                       expected=attempt.order_status)
    except st.InvalidState as exc:
        return str((exc.data or {}).get("status"))  # another payment got through: a failure changes nothing
    if outcome.changed:
        await uow.publish("noti", attempt.order_id, {
            "user_id": attempt.user_id, "template": "payment_failed", "order_id": attempt.order_id,
            "vars": {"provider": provider, "reason": reason},
        })
    return outcome.status


async def _attempt_refused(shop: Shop, attempt: Attempt, failure: PspFailure) -> None:
    """A pay call the PSP refused (it did nothing): the attempt is over; the next call makes a new one.

    A reused key's refusal included: an attempt that kept answering 502 for every later call would strand
    the order. (The emulator refuses a reused key sent with another body, where the PSPs replay the first
    answer; the webhook still reports what that first request did.)"""
    if failure.kind in ("unknown", "timeout"):
        return  # it may have acted: the attempt stays open for the next call to converge on
    await shop.run("new", lambda uow: _set_payment(uow, attempt.pay_id, ("created",), status="failed"))


def _failure(gateways: Gateways, exc: Exception) -> PspFailure:
    failure = gateways.classify(exc)
    if failure is None:
        raise exc
    return failure


async def _to_the_end(work: Awaitable[T]) -> T:
    """Run `work` to its end even if our caller is cancelled: once a PSP may act, its answer is recorded."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_after_cancel)
        raise


def _after_cancel(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.warning("payment_finished_after_caller_left", error=type(exc).__name__, detail=str(exc)[:200])


# --- paypal_pay ------------------------------------------------------------------------------------


async def paypal_pay(shop: Shop, gateways: Gateways, order_id: str, user_id: int | None, ptype: str) -> dict[str, Any]:
    """A PayPal order for the order's total; `data`: pay_id, paypal_order_id, approve_url."""
    method = payment_method_code(ptype)
    return await _to_the_end(_paypal_pay(shop, gateways, order_id, user_id, method))


async def _paypal_pay(shop: Shop, gateways: Gateways, order_id: str, user_id: int | None, method: str) -> dict[str, Any]:
    forex = (await shop.reference.get(shop.clock())).forex
    attempt = await shop.run("new", lambda uow: open_attempt(uow, "paypal", order_id, user_id, method, forex=forex))
    try:
        order = await gateways.paypal.create_order(
            reference=attempt.order_id, amount=attempt.amount, currency=attempt.currency, request_id=attempt.key,
            custom_id=str(attempt.pay_id),
        )
    except Exception as exc:
        failure = _failure(gateways, exc)
        log.warning("paypal_create_failed", order_id=attempt.order_id, pay_id=attempt.pay_id, kind=failure.kind,
                    psp_code=failure.code, status=failure.status)
        await _attempt_refused(shop, attempt, failure)
        # PayPal's 422 for an order it won't take (CURRENCY_NOT_SUPPORTED…): PayPal is not a method for it.
        unavailable = Unprocessable("payment_method_unavailable", {"provider": "paypal", "psp_code": failure.code})
        raise _psp_error("paypal", failure, refused=unavailable) from None
    await shop.run("new", lambda uow: _set_payment(uow, attempt.pay_id, ("created",), paypal_order_id=order.id))
    log.info("paypal_order_created", order_id=attempt.order_id, pay_id=attempt.pay_id, paypal_order_id=order.id,
             reused=attempt.reused)
    return {"pay_id": str(attempt.pay_id), "paypal_order_id": order.id, "approve_url": order.approve_url}


# --- paypal_finished -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Capture:
    attempt: Attempt
    paypal_order_id: str


def capture_key(key: str | None, pay_id: int) -> str:
    """The capture's PayPal-Request-Id: one per payment, whoever asks and however often."""
    return f"{key or f'pay-{pay_id}'}:capture"


def _pay_id(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and 0 < len(raw) <= 19):
        raise NotFound("payment_not_found")
    return int(raw)


async def _start_capture(uow: UnitOfWork, order_id: str, pay_id: int, user_id: int | None) -> _Capture | dict[str, Any]:
    # The order row locked, as old shopping's finish locks it: a capture another call (either side) is applying
    # right now commits first, so the payment and the order are read as that call left them, never an order
    # still payment_confirming beside a payment already captured (a stale answer, or a 409 for a paid order).
    order = await _owned_order(uow, order_id, user_id, lock=True)
    row = (await uow.conn.execute(_PAYPAL_ROW, {"pay_id": pay_id, "order_id": order.id})).first()
    if row is None:
        raise NotFound("payment_not_found")
    if row.status == "captured":
        return {"order_id": order.id, "status": order.status}  # finished already: no second capture call
    if row.status not in ("created", "authorized"):
        raise st.InvalidState(data={"status": order.status, "payment_status": row.status})
    if row.paypal_order_id is None:
        # paypal_pay never got PayPal's answer: there is nothing the payer can have approved.
        raise st.InvalidState(data={"status": order.status, "payment_status": row.status, "reason": "not_created"})
    if order.status not in FINISHABLE:
        raise st.InvalidState(data={"status": order.status})
    await uow.transition(order.id, "paid_from_client", reason=finish_reason(row.id), expected=order.status)
    return _Capture(_capture_attempt(order, row), row.paypal_order_id)


def finish_reason(pay_id: int) -> str:
    """The history reason of paypal_finished's move to payment_confirming (old shopping writes the same):
    the payer asked for this payment's capture."""
    return f"paypal_finished:{pay_id}"


def _capture_attempt(order: _Order, row: Any) -> Attempt:
    return Attempt(row.id, capture_key(row.idempotency_key, row.id), order.id, order.user_id, order.amount,
                   order.currency, True, st.PAYMENT_CONFIRMING)


async def capture_in_doubt(uow: UnitOfWork, order_id: str, user_id: int, pay_id: int) -> Attempt | None:
    """The capture attempt of `pay_id` (its key the one paypal_finished sends, on either side), under the order's
    lock, if it is still in doubt: the payment created with a PayPal order, the order payment_confirming.
    None once anybody settled it (a paypal_finished retry, old shopping, a webhook)."""
    order = await _owned_order(uow, order_id, user_id, lock=True)
    row = (await uow.conn.execute(_PAYPAL_ROW, {"pay_id": pay_id, "order_id": order.id})).first()
    if row is None or row.status != "created" or row.paypal_order_id is None or order.status != st.PAYMENT_CONFIRMING:
        return None
    return _capture_attempt(order, row)


async def capture_refused(uow: UnitOfWork, attempt: Attempt, reason: str) -> str:
    """PayPal captured nothing and will not (the order not approved, declined): the order is payable again,
    the payment stays created so the payer may approve and finish it still."""
    return await _order_failed(uow, attempt, "paypal", reason)


async def paypal_finished(shop: Shop, gateways: Gateways, order_id: str, pay_id: str,
                          user_id: int | None) -> dict[str, Any]:
    """Capture `pay_id`'s PayPal order (idempotent); `data`: order_id, status."""
    payment = _pay_id(pay_id)
    # Whole, step 1 included: an order moved to payment_confirming is always followed by its capture call.
    return await _to_the_end(_paypal_finished(shop, gateways, order_id, payment, user_id))


async def _paypal_finished(shop: Shop, gateways: Gateways, order_id: str, pay_id: int,
                           user_id: int | None) -> dict[str, Any]:
    job = await shop.run("new", lambda uow: _start_capture(uow, order_id, pay_id, user_id))
    if isinstance(job, dict):
        return job
    attempt = job.attempt
    try:
        result = await gateways.paypal.capture_order(job.paypal_order_id, request_id=attempt.key)
    except Exception as exc:
        failure = _failure(gateways, exc)
        log.warning("paypal_capture_failed", order_id=attempt.order_id, pay_id=attempt.pay_id, kind=failure.kind,
                    psp_code=failure.code, status=failure.status)
        if failure.kind in ("unknown", "timeout"):
            # The order stays payment_confirming and the payment created: the same call again settles it.
            raise _psp_error("paypal", failure) from None
        # PayPal captured nothing (not approved, declined, our credentials): the order is payable again.
        reason = failure.code or failure.kind
        status = await shop.run("new", lambda uow: capture_refused(uow, attempt, reason))
        if failure.kind != "rejected":
            raise _psp_error("paypal", failure) from None
        return {"order_id": attempt.order_id, "status": status}
    capture = result.capture
    status = await shop.run("new", lambda uow: apply_capture(uow, attempt, result.paid, capture))
    outcome, capture_id = capture_outcome(result.paid, capture), None if capture is None else capture.id
    if outcome == "captured":
        log.info("paypal_captured", order_id=attempt.order_id, pay_id=attempt.pay_id, capture_id=capture_id,
                 status=status)
    elif outcome == "pending":
        log.info("paypal_capture_pending", order_id=attempt.order_id, pay_id=attempt.pay_id, capture_id=capture_id)
    return {"order_id": attempt.order_id, "status": status}


CaptureOutcome = Literal["captured", "declined", "pending"]


def capture_outcome(paid: bool, capture: CaptureView | None) -> CaptureOutcome:
    """What PayPal says of a capture (the capture call's answer, or the order read back): COMPLETED → captured
    (money); DECLINED / FAILED → declined (none taken, the order payable again); PENDING (an eCheck, a review:
    not money yet) or no capture → pending (the order waits in payment_confirming)."""
    if paid and capture is not None:
        return "captured"
    return "declined" if capture is not None and capture.status in CAPTURE_DECLINED else "pending"


async def apply_capture(uow: UnitOfWork, attempt: Attempt, paid: bool, capture: CaptureView | None) -> str:
    """`capture_outcome`'s answer on the payment row and the order; the order's status after."""
    outcome = capture_outcome(paid, capture)
    if outcome == "captured":
        assert capture is not None
        return await _captured(uow, attempt, capture.id)
    if outcome == "declined":
        assert capture is not None
        return await _capture_declined(uow, attempt, capture.id, capture.status)
    return await _capture_pending(uow, attempt, None if capture is None else capture.id)


async def _captured(uow: UnitOfWork, attempt: Attempt, capture_id: str) -> str:
    # A COMPLETED capture in hand is money whatever the row said before (a failure recorded earlier included).
    await _set_payment(uow, attempt.pay_id, ("created", "authorized", "failed"), status="captured",
                       capture_id=capture_id, psp_reference=capture_id)
    return await _order_paid(uow, attempt, "paypal", capture_id)


async def _capture_declined(uow: UnitOfWork, attempt: Attempt, capture_id: str, capture_status: str) -> str:
    await _set_payment(uow, attempt.pay_id, ("created", "authorized"), status="failed", capture_id=capture_id,
                       psp_reference=capture_id)
    return await _order_failed(uow, attempt, "paypal", f"capture {capture_status}")


async def _capture_pending(uow: UnitOfWork, attempt: Attempt, capture_id: str | None) -> str:
    if capture_id is not None:
        await _set_payment(uow, attempt.pay_id, ("created",), capture_id=capture_id, psp_reference=capture_id)
    return await st.current_status(uow.conn, attempt.order_id)


# --- adyen_pay -------------------------------------------------------------------------------------


async def adyen_pay(shop: Shop, gateways: Gateways, order_id: str, user_id: int | None,
                    request: AdyenPayRequest) -> dict[str, Any]:
    """Adyen /payments for the order's total; `data`: pay_id, resultCode, action (or null)."""
    return await _to_the_end(_adyen_pay(shop, gateways, order_id, user_id, request))


async def _adyen_pay(shop: Shop, gateways: Gateways, order_id: str, user_id: int | None,
                     request: AdyenPayRequest) -> dict[str, Any]:
    forex = (await shop.reference.get(shop.clock())).forex
    attempt = await shop.run("new", lambda uow: open_attempt(uow, "adyen", order_id, user_id, request.method,
                                                             forex=forex))
    try:
        result = await gateways.adyen.pay(
            reference=attempt.order_id, amount=attempt.amount, currency=attempt.currency,
            payment_method=request.payment_method, return_url=request.return_url, idempotency_key=attempt.key,
            browser_info=request.browser_info, extra={"metadata": {"payment_id": str(attempt.pay_id)}},
        )
    except Exception as exc:
        failure = _failure(gateways, exc)
        # Never the request: paymentMethod carries card data.
        log.warning("adyen_pay_failed", order_id=attempt.order_id, pay_id=attempt.pay_id, kind=failure.kind,
                    psp_code=failure.code, status=failure.status)
        await _attempt_refused(shop, attempt, failure)
        # Adyen's 422 is validation of what the app sent (the card fields): the app's to fix.
        invalid = BadRequest(data={"field": "paymentMethod", "reason": "refused by the PSP", "psp_code": failure.code})
        raise _psp_error("adyen", failure, refused=invalid) from None
    pay_id = await shop.run("new", lambda uow: record_adyen_answer(uow, attempt, result))
    log.info("adyen_payment", order_id=attempt.order_id, pay_id=pay_id, result_code=result.result_code,
             psp_reference=result.psp_reference, reused=attempt.reused)
    action = result.action
    return {"pay_id": str(pay_id), "resultCode": result.result_code, "action": None if action is None else dict(action)}


async def record_adyen_answer(uow: UnitOfWork, attempt: Attempt, result: AdyenPaymentView) -> int:
    """Step 3 of adyen_pay: the answer on the payment row (and the order); the row's id, which is the pay_id."""
    ref = result.psp_reference
    pay_id = attempt.pay_id if ref is None else await _adopt_recorded(uow, attempt, "adyen", ref)
    here = replace(attempt, pay_id=pay_id)
    named = {} if ref is None else {"psp_reference": ref}
    if result.authorised:
        await _set_payment(uow, pay_id, ("created",), status="authorized", **named)
        try:
            # Guarded: it tries the status the attempt was opened in and reads the row only when that no longer
            # holds (authorized already, by the webhook: no change).
            await uow.transition(attempt.order_id, "authorized", reason=f"adyen:{ref}", expected=attempt.order_status)
        except st.InvalidState as exc:
            seen = (exc.data or {}).get("status")
            if seen not in _PAID_OR_LATER:  # the CAPTURE webhook may have made it paid already
                log.error("payment_authorised_for_unpayable_order", order_id=attempt.order_id, payment_id=pay_id,
                          status=seen)
    elif result.final:  # Refused, Error, Cancelled
        await _set_payment(uow, pay_id, ("created",), status="failed", **named)
        await _order_failed(uow, here, "adyen", result.refusal_reason or result.result_code)
    elif named:
        # RedirectShopper & co (the app acts), Received & co (the webhook decides): the attempt is answered.
        await _set_payment(uow, pay_id, ("created",), **named)
    return pay_id
