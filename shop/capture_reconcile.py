"""PayPal captures in doubt: orders paypal_finished left in payment_confirming without knowing what PayPal did.

A capture call that timed out after PayPal acted (or never reached it) leaves the order
payment_confirming and its payment created; the app's retry of paypal_finished settles it with the
same key (shop/payments.py). When nobody retries (the shopper closed the app), this settles it: the
consumers process (consumers/capture_reconcile.py) asks PayPal about every such payment older than
IN_FLIGHT, and records what PayPal says.

In doubt: a PayPal payment still `created` with its PayPal order id, its order `payment_confirming`,
untouched for IN_FLIGHT (a paypal_finished with all its retries is over by then). For each:

1. **Read first**, always: ``GET /v2/checkout/orders/{id}``. A COMPLETED capture is money: recorded
   (payment captured, order paid, purchased + noti) whoever made the order payment_confirming.
2. Everything else acts only when **the payer asked for this capture**: the order is payment_confirming
   because of paypal_finished for this payment (its latest move into that state has the reason
   ``paypal_finished:{pay_id}``, which both sides write). The app's paid_from_client makes orders
   payment_confirming too, with no approval behind it, and so does a finish of another payment; an
   earlier finish of this one does not count once the order left the state (failed, then another way
   of paying): those are left alone ("awaiting_payer"), counted in the in-doubt gauge for a person.
   - a DECLINED / FAILED capture → the order payable again; a PENDING one → its capture id recorded,
     the order waits (read again next pass);
   - no capture, the PayPal order APPROVED → the capture the payer asked for, sent now with the key
     paypal_finished sends (``capture_key``, the same on both sides): PayPal captures an order once,
     and the same PayPal-Request-Id replays a capture already made;
   - no capture, not approved (CREATED, PAYER_ACTION_REQUIRED) or VOIDED → what paypal_finished does
     when PayPal answers ORDER_NOT_APPROVED: the order payable again, the payment left created.
3. Applied in one unit of work under the order's lock, re-checked there (``capture_in_doubt``): a
   paypal_finished retry, old shopping or a webhook that settled it meanwhile wins and nothing changes.

A pass looks at BATCH payments, least recently looked at first (each one left in doubt is touched), so
payments that stay in doubt for a person never starve a newer one. A PSP error on a read or a capture
raises: the caller stops its pass and tries again next period.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import order_states as st
from shop import schema as t
from shop.bootstrap import Shop
from shop.payments import (IN_FLIGHT, Attempt, CaptureResultView, CaptureView, apply_capture, capture_in_doubt,
                           capture_key, capture_outcome, capture_refused, finish_reason, touch_created)
from shop.uow import UnitOfWork

# captured / declined / pending are shop.payments.capture_outcome's answers.
CAPTURED, DECLINED, PENDING, NOT_APPROVED, AWAITING_PAYER, SETTLED = (
    "captured", "declined", "pending", "not_approved", "awaiting_payer", "settled")
OUTCOMES = (CAPTURED, DECLINED, PENDING, NOT_APPROVED, AWAITING_PAYER, SETTLED)
BATCH = 50  # payments looked at per pass, least recently looked at first


class PayPalOrderState(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def captures(self) -> Sequence[CaptureView]: ...


class PayPalReconcileGateway(Protocol):
    async def get_order(self, order_id: str) -> PayPalOrderState: ...

    async def capture_order(self, order_id: str, *, request_id: str) -> CaptureResultView: ...


@dataclass(frozen=True, slots=True)
class InDoubt:
    pay_id: int
    order_id: str
    user_id: int
    paypal_order_id: str
    idempotency_key: str | None
    finish_asked: bool  # the order is payment_confirming because the payer's paypal_finished of this payment put it there


@dataclass(frozen=True, slots=True)
class Reconciled:
    pay_id: int
    order_id: str
    outcome: str  # one of OUTCOMES
    status: str | None  # the order's status after, when this pass changed or re-read it


_P, _O, _H = t.payments.c, t.orders.c, t.order_status_history.c
_IN_DOUBT_WHERE = (_P.provider == "paypal", _P.status == "created", _P.paypal_order_id.is_not(None),
                   _O.status == st.PAYMENT_CONFIRMING, _O.updated_at <= bindparam("before"))
# Least recently looked at first: a payment a pass leaves in doubt is touched (updated_at), so ones that stay
# for a person (awaiting_payer, a long PENDING) go to the back and never starve a newer one.
_IN_DOUBT = (
    select(_P.id, _P.order_id, _O.user_id, _P.paypal_order_id, _P.idempotency_key)
    .join_from(t.payments, t.orders, _O.id == _P.order_id).where(*_IN_DOUBT_WHERE)
    .order_by(_P.updated_at, _P.id).limit(bindparam("limit"))
)
_COUNT_IN_DOUBT = select(func.count()).select_from(t.payments).join(t.orders, _O.id == _P.order_id) \
    .where(*_IN_DOUBT_WHERE)
# Every move into payment_confirming of the orders, in order: the last one is why each is there now.
_CONFIRMING_MOVES = select(_H.order_id, _H.reason).where(
    _H.order_id.in_(bindparam("order_ids", expanding=True)), _H.to_status == st.PAYMENT_CONFIRMING).order_by(_H.id)


async def captures_in_doubt(db: AsyncEngine, now: datetime, *, older_than: timedelta = IN_FLIGHT,
                            limit: int = BATCH) -> list[InDoubt]:
    """`limit` PayPal payments in doubt, least recently looked at first (a replica will do: each is re-checked
    under the order's lock before anything is written)."""
    async with db.connect() as conn:
        rows = (await conn.execute(_IN_DOUBT, {"before": now - older_than, "limit": limit})).all()
        if not rows:
            return []
        why = {m.order_id: m.reason
               for m in await conn.execute(_CONFIRMING_MOVES, {"order_ids": sorted({r.order_id for r in rows})})}
    return [InDoubt(int(r.id), r.order_id, int(r.user_id), r.paypal_order_id, r.idempotency_key,
                    why.get(r.order_id) == finish_reason(int(r.id))) for r in rows]


async def count_in_doubt(db: AsyncEngine, now: datetime, *, older_than: timedelta = IN_FLIGHT) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(_COUNT_IN_DOUBT, {"before": now - older_than})).scalar() or 0)


async def reconcile(shop: Shop, paypal: PayPalReconcileGateway, doubt: InDoubt, *, actor: str) -> Reconciled:
    """Settle one payment in doubt by what PayPal says (the module docstring's steps); PSP errors raise."""
    order = await paypal.get_order(doubt.paypal_order_id)
    completed = next((c for c in order.captures if c.status == "COMPLETED"), None)
    if completed is not None:
        return await _apply(shop, doubt, actor, CAPTURED, lambda uow, a: apply_capture(uow, a, True, completed))
    if not doubt.finish_asked:
        await shop.run(actor, lambda uow: touch_created(uow, doubt.pay_id))  # to the back of the queue
        return Reconciled(doubt.pay_id, doubt.order_id, AWAITING_PAYER, None)
    if order.captures:
        last = order.captures[-1]
        return await _apply(shop, doubt, actor, capture_outcome(False, last), lambda uow, a: apply_capture(uow, a, False, last))
    if order.status != "APPROVED":
        reason = f"paypal order {order.status}"[:64]
        return await _apply(shop, doubt, actor, NOT_APPROVED, lambda uow, a: capture_refused(uow, a, reason))
    result = await paypal.capture_order(doubt.paypal_order_id, request_id=capture_key(doubt.idempotency_key, doubt.pay_id))
    capture = result.capture
    return await _apply(shop, doubt, actor, capture_outcome(result.paid, capture),
                        lambda uow, a: apply_capture(uow, a, result.paid, capture))


async def _apply(shop: Shop, doubt: InDoubt, actor: str, outcome: str,
                 effect: Callable[[UnitOfWork, Attempt], Awaitable[str]]) -> Reconciled:
    async def work(uow: UnitOfWork) -> Reconciled:
        attempt = await capture_in_doubt(uow, doubt.order_id, doubt.user_id, doubt.pay_id)
        if attempt is None:
            return Reconciled(doubt.pay_id, doubt.order_id, SETTLED, None)
        return Reconciled(doubt.pay_id, doubt.order_id, outcome, await effect(uow, attempt))

    return await shop.run(actor, work)
