"""``POST /shopping/cart/checkout/entries`` (route place_order): old shopping places an order.

Body: the calc_price fields plus ``address_id`` (required), ``expected_total`` (the total the
user saw, a string) and ``payment_method`` (optional; only passed on to the ``order_placed``
notification, the app picks the method again on the payment page). Header
``Idempotency-Key`` is required.

One transaction, in old shopping's order and with the new side's lock order:

1. the address must be the caller's (else 400 on ``address_id``, like a missing one) and
   must not hit ``address_blacklist`` (422 ``address_blocked``, checked before pricing so
   a blacklisted country is blocked rather than ``region_not_served``);
2. re-price with old shopping's own float pricing (``pricing.load`` / ``pricing.compute``);
   a requested coupon that does not apply is 422 ``coupon_not_applicable``; a total other
   than ``expected_total`` is 409 ``price_changed`` with the fresh price (calc_price's
   ``data``: items, summary, coupon…, as the new side answers);
3. stock per SKU in ascending id, ``UPDATE skus … WHERE stock >= qty`` (422 ``out_of_stock``
   naming the SKU; the whole transaction rolls back, so nothing else changed);
4. the coupon: the caller's ``user_coupons`` row ``unused`` → ``locked`` (guarded), or for
   a public code without a row a new row inserted already locked;
5. the wallet: ``UPDATE wallets … WHERE balance >= amount`` and a ``reserve`` ledger row
   (USD, the wallet deduction);
6. ``orders`` (pending_payment, expires in 30 minutes), ``order_items``, the creating
   ``order_status_history`` row (actor legacy) and an outbox ``noti`` ``order_placed``.

Idempotency: the same key from the same user answers the first order (its current status).
Two racing requests are settled by the unique key ``(user_id, idempotency_key)`` on
``orders``: the loser's insert (or an earlier guarded update that found the winner's
coupon, wallet or stock already taken) fails, its transaction rolls back, and the order
that now exists under the key is answered instead.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from emulators.legacy import envelope
from emulators.legacy.body import lone_surrogate, read_json
from emulators.legacy.caller import require_user
from emulators.legacy.envelope import ApiError, bad_request, ok
from emulators.legacy.order_rows import (
    PENDING_PAYMENT,
    add_history,
    fmt,
    iso,
    new_order_id,
    now,
    retrying,
)
from emulators.legacy.pricing import (
    Priced,
    PriceRequest,
    compute,
    load,
    parse_request,
    price_json,
)
from emulators.legacy.state import ENGINE
from shop.schema import (
    address_blacklist,
    addresses,
    forex_rates,
    order_items,
    orders,
    outbox,
    skus,
    user_coupons,
    wallet_ledger,
    wallets,
)

log = logging.getLogger(__name__)

ORDER_TTL = timedelta(minutes=30)
MAX_KEY_LEN = 64  # orders.idempotency_key
_KEY = re.compile(r"^[\x21-\x7e]{1,64}$")  # printable ASCII, no spaces
_AMOUNT = re.compile(r"^\d{1,14}(\.\d{1,4})?$")
_FOUR = Decimal("0.0001")
_RATE = Decimal("0.00000001")


class _WalletShort(Exception):
    """The wallet no longer covers the deduction the user saw (spent meanwhile): price changed."""


# --- request ----------------------------------------------------------------------------------


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key:
        raise bad_request("Idempotency-Key", "required")
    if not _KEY.match(key):
        raise bad_request("Idempotency-Key", f"at most {MAX_KEY_LEN} printable characters")
    return key


def _parse(body: Any) -> tuple[PriceRequest, Decimal, str | None]:
    req = parse_request(body)
    if req.address_id is None:
        raise bad_request("address_id", "required")
    expected = body.get("expected_total")
    if not isinstance(expected, str) or not _AMOUNT.match(expected.strip()):
        raise bad_request("expected_total", "must be the total as a decimal string")
    method = body.get("payment_method")
    if method is not None and (not isinstance(method, str) or len(method) > 32):
        raise bad_request("payment_method", "must be a string of at most 32 characters or null")
    return req, Decimal(expected.strip()), method


def _header(request: web.Request, name: str, max_len: int) -> str | None:
    value = request.headers.get(name, "").strip()
    if lone_surrogate(value):  # the bytes were not UTF-8: the order row could not be written
        raise bad_request(name, "not valid UTF-8")
    return value[:max_len] or None


# --- the transaction --------------------------------------------------------------------------


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def _squash(value: str) -> str:
    return "".join(value.split()).upper()


def _blocked(kind: str, value: str, address: Any) -> bool:
    if kind == "zip":
        return _squash(address.zip) == _squash(value)
    if kind == "phone":
        return bool(_digits(value)) and _digits(address.phone) == _digits(value)
    if kind == "country":
        return address.country.strip().upper() == value.strip().upper()
    if kind == "line_contains":
        return bool(value.strip()) and value.strip().lower() in address.line1.lower()
    return False


async def _address(conn: AsyncConnection, uid: int, address_id: int) -> Any:
    a = addresses.c
    row = (await conn.execute(select(addresses).where(a.id == address_id, a.user_id == uid))).first()
    if row is None:
        raise bad_request("address_id", "not_found")
    for rule in await conn.execute(select(address_blacklist.c.kind, address_blacklist.c.value).order_by(address_blacklist.c.id)):
        if _blocked(rule.kind, rule.value, row):
            raise ApiError(422, envelope.ADDRESS_BLOCKED, "address_blocked", {"address_id": address_id, "kind": rule.kind})
    return row


def _usd(value: float) -> Decimal:
    return Decimal(f"{value:.2f}")


def _amount(text: str) -> Decimal:
    return Decimal(text).quantize(_FOUR)


async def _take_stock(conn: AsyncConnection, priced: Priced) -> None:
    s = skus.c
    for line in sorted(priced.cart.lines, key=lambda ln: ln.sku_id):
        result = await conn.execute(
            update(skus).where(s.id == line.sku_id, s.stock >= line.qty).values(stock=s.stock - line.qty)
        )
        if result.rowcount != 1:
            raise ApiError(422, envelope.OUT_OF_STOCK, "out_of_stock", {"sku_id": line.sku_id})


async def _lock_coupon(conn: AsyncConnection, priced: Priced, uid: int, order_id: str) -> int | None:
    picked = priced.applied
    if picked is None:
        return None
    u = user_coupons.c
    if picked.user_coupon_id is None:
        # A public code the caller holds no row for: the row is created already locked to the order.
        result = await conn.execute(insert(user_coupons).values(
            user_id=uid, coupon_id=picked.coupon.coupon_id, status="locked", order_id=order_id, created_at=now(),
        ))
        return int(result.inserted_primary_key[0])  # type: ignore[index]  # an INSERT always has a key
    result = await conn.execute(
        update(user_coupons)
        .where(u.id == picked.user_coupon_id, u.user_id == uid, u.status == "unused")
        .values(status="locked", order_id=order_id)
    )
    if result.rowcount != 1:
        raise ApiError(422, envelope.COUPON_NOT_APPLICABLE, "coupon_not_applicable", {"reason": "used"})
    return picked.user_coupon_id


async def _reserve_wallet(conn: AsyncConnection, uid: int, order_id: str, amount: Decimal) -> None:
    if amount <= 0:
        return
    w = wallets.c
    result = await conn.execute(
        update(wallets).where(w.user_id == uid, w.balance >= amount).values(balance=w.balance - amount)
    )
    if result.rowcount != 1:
        raise _WalletShort()
    await conn.execute(insert(wallet_ledger).values(
        user_id=uid, order_id=order_id, amount=amount, kind="reserve", created_at=now(),
    ))


async def _place(
    conn: AsyncConnection, uid: int, key: str, req: PriceRequest, expected: Decimal, payment_method: str | None,
    order_id: str, platform: str | None, app_version: str | None,
) -> dict[str, Any]:
    cart = await load(conn, req, uid)
    if not cart.lines:
        raise bad_request("items", "the cart has no selected lines")
    # A blocked address is blocked whatever the cart costs (a blacklisted country has no shipping rule either).
    address = await _address(conn, uid, req.address_id)  # type: ignore[arg-type]
    priced = compute(cart)
    if (req.user_coupon_id is not None or req.coupon_code is not None) and priced.applied is None:
        raise ApiError(422, envelope.COUPON_NOT_APPLICABLE, "coupon_not_applicable", {"reason": priced.coupon_error})
    shown = price_json(priced)
    summary: dict[str, str] = shown["summary"]
    if Decimal(summary["total"]) != expected:
        raise ApiError(409, envelope.PRICE_CHANGED, "price_changed", shown)

    # Lock order: SKU rows ascending, the user coupon, the wallet, then the order rows.
    await _take_stock(conn, priced)
    user_coupon_id = await _lock_coupon(conn, priced, uid, order_id)
    await _reserve_wallet(conn, uid, order_id, _usd(priced.wallet))

    created = now()
    expires = created + ORDER_TTL
    base_total = _usd(round(priced.subtotal - priced.mall - priced.coupon + priced.shipping + priced.tariff - priced.wallet, 2))
    await conn.execute(insert(orders).values(
        id=order_id,
        user_id=uid,
        status=PENDING_PAYMENT,
        region=cart.region,
        currency=cart.currency,
        fx_rate=Decimal(repr(cart.rate)).quantize(_RATE),
        subtotal=_amount(summary["subtotal"]),
        mall_discount=_amount(summary["mall_discount"]),
        coupon_discount=_amount(summary["coupon_discount"]),
        shipping_fee=_amount(summary["shipping_fee"]),
        tariff=_amount(summary["tariff"]),
        wallet_deduction=_amount(summary["wallet_deduction"]),
        total=_amount(summary["total"]),
        base_total=base_total,
        user_coupon_id=user_coupon_id,
        address={
            "name": address.name, "phone": address.phone, "country": address.country,
            "city": address.city, "zip": address.zip, "line1": address.line1,
        },
        platform=platform,
        app_version=app_version,
        idempotency_key=key,
        expires_at=expires,
        created_at=created,
        updated_at=created,
    ))
    await conn.execute(insert(order_items), [
        {
            "order_id": order_id,
            "sku_id": item["sku_id"],
            "name": item["name"],
            "qty": item["qty"],
            "unit_price": _amount(item["unit_price"]),
            "line_total": _amount(item["line_total"]),
            "mall_discount": _amount(item["mall_discount"]),
            "coupon_discount": _amount(item["coupon_discount"]),
            "tariff": _amount(item["tariff"]),
        }
        for item in shown["items"]
    ])
    await add_history(conn, order_id, None, PENDING_PAYMENT, "placed", created)
    await conn.execute(insert(outbox).values(
        topic="noti",
        key=order_id,
        payload={
            "user_id": uid,
            "template": "order_placed",
            "order_id": order_id,
            "vars": {"total": summary["total"], "currency": cart.currency, "payment_method": payment_method},
        },
        created_at=created,
    ))
    return {
        "order_id": order_id,
        "status": PENDING_PAYMENT,
        "total": summary["total"],
        "currency": cart.currency,
        "expires_at": iso(expires),
    }


async def _existing(engine: AsyncEngine, uid: int, key: str) -> dict[str, Any] | None:
    """The answer for the order already placed under this key, as it is now."""
    o = orders.c
    async with engine.connect() as conn:
        row = (await conn.execute(
            select(o.id, o.status, o.total, o.currency, o.expires_at, forex_rates.c.exponent)
            .select_from(orders.outerjoin(forex_rates, forex_rates.c.currency == o.currency))
            .where(o.user_id == uid, o.idempotency_key == key)
        )).first()
    if row is None:
        return None
    exponent = 2 if row.exponent is None else int(row.exponent)
    return {
        "order_id": row.id,
        "status": row.status,
        "total": fmt(row.total, exponent),
        "currency": row.currency,
        "expires_at": iso(row.expires_at),
    }


async def place_order(request: web.Request) -> web.Response:
    uid = require_user(request)
    key = _idempotency_key(request)
    body = await read_json(request)
    req, expected, payment_method = _parse(body)
    platform = _header(request, "X-Platform", 16)
    app_version = _header(request, "X-App-Version", 32)
    engine = request.app[ENGINE]

    replay = await _existing(engine, uid, key)
    if replay is not None:
        return ok(replay)

    for _ in range(3):
        order_id = new_order_id()

        async def attempt(order_id: str = order_id) -> dict[str, Any]:
            async with engine.begin() as conn:
                return await _place(conn, uid, key, req, expected, payment_method, order_id, platform, app_version)

        try:
            return ok(await retrying(attempt))
        except IntegrityError:
            # Lost the race on (user_id, idempotency_key); an id collision (75 random bits) just retries.
            replay = await _existing(engine, uid, key)
            if replay is not None:
                log.info("place_order: key raced, answering order %s (unique key)", replay["order_id"])
                return ok(replay)
        except (ApiError, _WalletShort) as exc:
            # A racing request with the same key may have taken the coupon, wallet or stock first.
            replay = await _existing(engine, uid, key)
            if replay is not None:
                log.info("place_order: key raced, answering order %s (%s)", replay["order_id"], exc)
                return ok(replay)
            if isinstance(exc, ApiError):
                raise
            async with engine.connect() as conn:
                fresh = compute(await load(conn, req, uid))
            raise ApiError(409, envelope.PRICE_CHANGED, "price_changed", price_json(fresh)) from None
    raise ApiError(500, envelope.INTERNAL_ERROR, "internal_error", None)
