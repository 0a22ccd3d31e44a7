"""``POST /payment_callback/adyen``: Adyen's standard webhooks, checked, then written as payment events.

The seed's chain (adyen → payment_callback → orders (mrpc) → shopping (http)) in one place. Adyen
calls it from the internet, through the edge's public port (routing.yaml route ``payment_callback``,
always on the new side: old shopping never served this path). It is authenticated by the HMAC of
each item, not by the service token.

1. The body: at most MAX_BODY_BYTES, JSON by shop.json_input's rules, Adyen's shape
   (``notificationItems[].NotificationRequestItem``, at most MAX_ITEMS); otherwise 400 / 413.
2. The HMAC of **every** item (adapters/adyen_hmac.py: the eight-field signing string,
   HMAC-SHA256 with the hex key, base64, constant-time compare) before anything is read or
   stored: one item missing or failing its signature → 401 ``invalid_signature`` naming the item
   by index, and nothing changes. Neither the key nor any signature is logged or answered.
3. Each good item → at most one event, all of them in ONE transaction (``Shop.run``: the outbox
   rows commit together or not at all), published later by the outbox relay and applied by the
   consumers (shop.events), which also decide what cannot be applied (DLQ, for a person):

   ===============================  ==================================================================
   AUTHORISATION "true"              ``payment_notified`` status ``authorized`` (psp_reference = pspReference)
   AUTHORISATION "false"             ``payment_failed`` (reason = Adyen's reason)
   CAPTURE "true"                    ``payment_notified`` status ``captured`` (psp_reference = originalReference,
                                     the payment's: that is how the payment row is found)
   CAPTURE "false", CAPTURE_FAILED   ``payment_failed`` (the payment row fails; an authorized order stays as it is)
   REFUND "true"                     ``refund_notified`` ``succeeded``
   REFUND "false", REFUND_FAILED     ``refund_notified`` ``failed`` (REFUND_FAILED arrives with success "true")
   anything else                     nothing stored, logged (CANCELLATION, CHARGEBACK, REPORT_AVAILABLE…)
   ===============================  ==================================================================

   AUTHORISATION is never "captured", even though the merchant account captures at once: paid is
   decided by the capture (as PayPal's is), the account sends CAPTURE notifications (the PSP
   emulator plays it so), and an authorised payment whose capture fails was never money.
4. The answer is ``[accepted]``, Adyen's expected body, for every authentic notification, including
   items stored as nothing (Adyen would otherwise retry them for days and then disable the webhook).

The event id is derived from the notification alone, ``adyen:<eventCode>:<pspReference>:<success>``,
so a delivery Adyen repeats (or the duplicate knob of the emulator) writes the same event id again
and the consumers' processed_events turns the copies into counted duplicates.

Adyen's ids map to ours: an item's merchantReference is our order id (the pay routes send it as
``reference``); its payment is the ``payments`` row with that pspReference, else the row named by
``additionalData["metadata.payment_id"]`` (both sides' adyen_pay send it), else the newest Adyen row
of the order still waiting for its pspReference (a webhook can overtake the pay route's own write). A refund's notification names the refund by pspReference (``refunds.psp_reference``, set from
Adyen's ``received``), else by its merchantReference: the ``refunds.id`` both sides send as the
refund's ``reference`` (or its request_id), checked against the payment's pspReference. An item that
names no order of ours (a reference that is not an order id, a refund of an unknown payment) is
logged and stored as nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.adyen_hmac import InvalidNotification, notification_items
from adapters.amounts import AmountError, adyen_amount
from common import envelope as codes
from handlers.context import ADYEN_HMAC, EVENT_TOPICS, SHOP
from handlers.errors import answer
from shop import schema as t
from shop.errors import BadRequest
from shop.json_input import parse_json_body
from shop.uow import UnitOfWork

log = structlog.get_logger("handlers.payment_callback")

PROVIDER = "adyen"
# Adyen sends one item per notification nowadays (a few in older setups): ample room, bounded work.
MAX_BODY_BYTES = 256 * 1024
MAX_ITEMS = 100
ACCEPTED = "[accepted]"
_ORDER_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_REFERENCE = re.compile(r"^[\x21-\x7e]{1,64}$")
_EVENT_CODE = re.compile(r"^[A-Z_]{1,40}$")
PAYMENT_FAILURES = frozenset({"CAPTURE_FAILED"})


@dataclass(frozen=True, slots=True)
class Notice:
    """What one notification item becomes: an event of ``event_type`` about ``order_id``."""

    event_type: str  # a shop.events.EVENT_TYPES name: payment_notified / payment_failed / refund_notified
    order_id: str
    payload: Mapping[str, Any]


class Skipped(Exception):
    """An authentic item that names nothing of ours or is not an event we apply: logged, stored as nothing."""


def _ref(item: Mapping[str, Any], name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not _REFERENCE.match(value):
        raise Skipped(f"{name} is not a reference")
    return value


def _reason(item: Mapping[str, Any], default: str) -> str:
    value = item.get("reason")
    return value[:255] if isinstance(value, str) and value else default


def event_id(item: Mapping[str, Any]) -> str:
    """The same for every delivery of one notification, different for every other one."""
    return f"adyen:{item['eventCode']}:{item['pspReference']}:{item['success']}"


@dataclass(frozen=True, slots=True)
class Payments:
    """The Adyen payments rows a notification's items name, read in one query for the whole body: by
    pspReference, and per order the newest row still waiting for its pspReference (the pay route writes
    it when Adyen answers, and a webhook may be faster)."""

    by_reference: Mapping[str, int]
    waiting: Mapping[str, int]


_P = t.payments.c
_PAYMENTS_NAMED = select(_P.id, _P.order_id, _P.psp_reference).where(_P.provider == PROVIDER, or_(
    _P.psp_reference.in_(bindparam("refs", expanding=True)),
    and_(_P.order_id.in_(bindparam("orders", expanding=True)), _P.status == "created", _P.psp_reference.is_(None)),
))


async def payments_named(conn: AsyncConnection, items: list[Mapping[str, Any]]) -> Payments:
    """One query instead of one per item: the rows each payment item may be about (a body of 100 items
    would otherwise be 100 round trips before its 100 outbox rows)."""
    refs: set[str] = set()
    orders: set[str] = set()
    for item in items:
        code = item.get("eventCode")
        if code not in ("AUTHORISATION", "CAPTURE") and code not in PAYMENT_FAILURES:
            continue
        ref = item.get("pspReference" if code == "AUTHORISATION" else "originalReference")
        merchant = item.get("merchantReference")
        if isinstance(ref, str) and _REFERENCE.match(ref):
            refs.add(ref)
        if isinstance(merchant, str) and _ORDER_ID.match(merchant):
            orders.add(merchant)
    by_reference: dict[str, int] = {}
    waiting: dict[str, int] = {}
    if refs or orders:
        for row in await conn.execute(_PAYMENTS_NAMED, {"refs": sorted(refs), "orders": sorted(orders)}):
            into, key = (waiting, row.order_id) if row.psp_reference is None else (by_reference, row.psp_reference)
            into[key] = max(into.get(key, 0), int(row.id))
    return Payments(by_reference, waiting)


def _payment_id(payments: Payments, order_id: str, psp_reference: str, item: Mapping[str, Any]) -> str | None:
    """The payments row with this pspReference; else the row the pay call named in ``metadata.payment_id``
    (Adyen echoes it); else the order's newest Adyen row still waiting for its pspReference."""
    found = payments.by_reference.get(psp_reference)
    if found is not None:
        return str(found)
    extra = item.get("additionalData")
    named = extra.get("metadata.payment_id") if isinstance(extra, Mapping) else None
    if isinstance(named, str) and named.isascii() and named.isdigit() and len(named) < 19:
        return named  # not signed by the HMAC: shop.events only takes it for a row of this order and provider
    waiting = payments.waiting.get(order_id)
    return None if waiting is None else str(waiting)


async def _refund(conn: AsyncConnection, psp_reference: str, merchant_reference: str | None,
                  original: str | None) -> tuple[str, str]:
    """(refund id, order id) of a REFUND / REFUND_FAILED notification."""
    r, p = t.refunds.c, t.payments.c
    joined = select(r.id, r.order_id).select_from(t.refunds.join(t.payments, p.id == r.payment_id)).where(p.provider == PROVIDER)
    row = (await conn.execute(joined.where(r.psp_reference == psp_reference).limit(1))).first()
    if row is None and merchant_reference is not None and original is not None:
        # Our refund's reference: `refund-<id>` from the new side (shop/refunds.py), `<id>` from old shopping.
        ours = merchant_reference.removeprefix("refund-")
        by_ours = r.id == int(ours) if ours.isdigit() and len(ours) < 19 else None
        by_request = r.request_id == merchant_reference
        condition = by_request if by_ours is None else (by_ours | by_request)
        row = (await conn.execute(joined.where(condition, p.psp_reference == original).limit(1))).first()
    if row is not None:
        return str(row.id), str(row.order_id)
    # Not a refund we know of: if the payment is ours, the event goes on and the consumer refuses it
    # (refund_not_found, to the DLQ for a person) rather than this notification vanishing here.
    order_id = None if original is None else (await conn.execute(
        select(p.order_id).where(p.provider == PROVIDER, p.psp_reference == original).limit(1)
    )).scalar()
    if order_id is None:
        raise Skipped("a refund of no payment of ours")
    return (merchant_reference or psp_reference)[:64], str(order_id)


async def to_notice(conn: AsyncConnection, item: Mapping[str, Any], payments: Payments) -> Notice:
    """The event one verified item stands for (`payments`: payments_named of its body); Skipped when it
    stands for none."""
    code, success = item.get("eventCode"), item.get("success")
    if not isinstance(code, str) or not _EVENT_CODE.match(code) or success not in ("true", "false"):
        raise Skipped("no eventCode / success")
    if code not in ("AUTHORISATION", "CAPTURE", "REFUND", "REFUND_FAILED") and code not in PAYMENT_FAILURES:
        raise Skipped(f"{code} is not applied here")
    psp = _ref(item, "pspReference")
    original = _ref(item, "originalReference") if item.get("originalReference") is not None else None
    merchant = item.get("merchantReference") if isinstance(item.get("merchantReference"), str) else None
    found = item.get("amount")
    amount: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    currency = amount.get("currency")
    if not isinstance(currency, str):
        raise Skipped("no amount.currency")
    try:
        value = adyen_amount(amount.get("value"), currency)
    except AmountError as exc:
        raise Skipped(f"amount: {exc}") from None
    common = {"event_id": event_id(item), "occurred_at": item["eventDate"][:64] if isinstance(item.get("eventDate"), str) else None}

    if code in ("REFUND", "REFUND_FAILED"):
        refund_id, order_id = await _refund(conn, psp, merchant, original)
        ok = code == "REFUND" and success == "true"
        return Notice("refund_notified", order_id, {
            **common, "refund_id": refund_id, "order_id": order_id, "status": "succeeded" if ok else "failed",
            "amount": str(value), "currency": currency, "psp_reference": psp,
            "reason": None if ok else _reason(item, code.lower()),
        })

    if merchant is None or not _ORDER_ID.match(merchant):
        raise Skipped("merchantReference is not an order id")
    payment_psp = psp if code == "AUTHORISATION" else original
    if payment_psp is None:
        raise Skipped(f"{code} without originalReference")
    payment_id = _payment_id(payments, merchant, payment_psp, item)
    if success == "true" and code in ("AUTHORISATION", "CAPTURE"):
        return Notice("payment_notified", merchant, {
            **common, "order_id": merchant, "payment_id": payment_id, "provider": PROVIDER,
            "status": "authorized" if code == "AUTHORISATION" else "captured",
            "amount": str(value), "currency": currency, "psp_reference": payment_psp,
        })
    what = "refused" if code == "AUTHORISATION" else "capture failed"
    return Notice("payment_failed", merchant, {
        **common, "order_id": merchant, "payment_id": payment_id, "provider": PROVIDER,
        "reason": _reason(item, what) if code == "AUTHORISATION" else f"{what}: {_reason(item, code.lower())}"[:255],
    })


async def store(uow: UnitOfWork, items: list[Mapping[str, Any]], topics: Mapping[str, str]) -> int:
    """Every item's event into the outbox, in this one transaction; how many were stored."""
    stored = 0
    payments = await payments_named(uow.conn, items)
    for n, item in enumerate(items):
        try:
            notice = await to_notice(uow.conn, item, payments)
        except Skipped as why:
            log.info("adyen_item_not_stored", item=n, event_code=str(item.get("eventCode"))[:40],
                     psp_reference=str(item.get("pspReference"))[:64],
                     merchant_reference=str(item.get("merchantReference"))[:80], why=str(why))
            continue
        await uow.publish(topics[notice.event_type], notice.order_id, notice.payload)
        stored += 1
    return stored


async def adyen_webhook(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        return answer(codes.BODY_TOO_LARGE, {"limit_bytes": MAX_BODY_BYTES})
    body = parse_json_body(raw, request.charset)
    try:
        items = notification_items(body)
    except InvalidNotification as exc:
        raise BadRequest(data={"field": "notificationItems", "reason": str(exc)}) from None
    if len(items) > MAX_ITEMS:
        raise BadRequest(data={"field": "notificationItems", "reason": f"at most {MAX_ITEMS} items"})
    signer = request.config_dict[ADYEN_HMAC]
    for n, item in enumerate(items):
        if not signer.verify(item):
            log.warning("adyen_webhook_refused", item=n, items=len(items), reason="hmac signature missing or wrong")
            return answer(codes.SIGNATURE_INVALID, {"item": n})
    topics = request.config_dict[EVENT_TOPICS]
    stored = await request.config_dict[SHOP].run("new", lambda uow: store(uow, items, topics))
    log.info("adyen_webhook", items=len(items), stored=stored)
    return web.Response(text=ACCEPTED, content_type="text/plain")
