"""place_order: turn a priced cart into a pending order in one guarded transaction.

Steps (legacy-api.md place_order, domain.md): re-price with the one pricing engine, compare
with the total the user saw, check the address and its blacklist, then in ONE transaction take
stock (SKUs ascending), lock the coupon, reserve wallet money, insert the order, its items, its
first history row and an outbox `noti`. Every write is a guarded compare-and-set (old shopping
writes the same rows), so a lost race is a clean 4xx and the transaction rolls back whole.

Idempotency: the same Idempotency-Key from the same user returns the first order. The unique
key (user_id, idempotency_key) on `orders` settles races: the loser's transaction rolls back
(its stock, coupon and wallet holds with it) and it answers with the winner's order.
Isolation READ COMMITTED, lock order SKUs → coupon → wallet → order: docs/orders.md.

The pieces: `plan_order` (reads on the autocommit engine, the clock passed in), `write_order`
(the one unit of work, its `now` and actor from the UoW), and `place_order`, the command that
owns the transaction and its retries through the caller's `Shop`. Per new order that is the
same statements as before: the reads, then one transaction of take-stock (one UPDATE), coupon,
wallet, order, items, history and outbox INSERTs, and its COMMIT.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shop import schema as t
from shop.bootstrap import Shop
from shop.errors import BadRequest, Conflict, LoginRequired, ShopError, Unprocessable
from shop.json_input import has_lone_surrogate
from shop.money import money_str
from shop.order_states import HISTORY_INSERT
from shop.price_view import price_view
from shop.pricing import PriceResult
from shop.quote import PriceRequest, Quote, parse_price_request, quote
from shop.reference import BlacklistEntry, ReferenceCache
from shop.reservations import StockShort, lock_coupon, reserve_wallet, short_sku, take_stock
from shop.uow import UnitOfWork

log = structlog.get_logger("shop.checkout")

ORDER_TTL = timedelta(minutes=30)
_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Crockford base32 without look-alikes: ids people can read out on the phone.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RETRIES = 3  # a stock shortfall that was gone on the re-read (deadlock victims: Shop.run)


def new_order_id() -> str:
    """A unique id safe to show users: random, not sequential (no order counts leak), 16 chars."""
    bits = int.from_bytes(secrets.token_bytes(10), "big")  # 80 random bits; 15 base-32 digits use 75
    return "N" + "".join(_ALPHABET[(bits >> (5 * i)) & 31] for i in range(15))


@dataclass(frozen=True, slots=True)
class OrderRequest:
    price: PriceRequest
    address_id: int
    expected_total: Decimal
    payment_method: str | None
    idempotency_key: str
    platform: str | None
    app_version: str | None


def parse_order_request(
    body: object, idempotency_key: str | None, platform: str | None, app_version: str | None
) -> OrderRequest:
    if not idempotency_key or not _KEY.match(idempotency_key):
        raise BadRequest(data={"field": "Idempotency-Key", "reason": "required: 1-64 letters, digits or ._:-"})
    price = parse_price_request(body)
    assert isinstance(body, dict)  # parse_price_request refused anything else
    if price.address_id is None:
        raise BadRequest(data={"field": "address_id", "reason": "required"})
    raw_total = body.get("expected_total")
    try:
        if isinstance(raw_total, bool) or not isinstance(raw_total, str | int):
            raise InvalidOperation
        expected = Decimal(str(raw_total))
        if not expected.is_finite() or expected < 0:
            raise InvalidOperation
    except InvalidOperation:
        raise BadRequest(data={"field": "expected_total", "reason": "the total the user saw, as a decimal string"}) from None
    method = body.get("payment_method")
    if method is not None and (not isinstance(method, str) or not 0 < len(method) <= 32):
        raise BadRequest(data={"field": "payment_method", "reason": "a method code or null"})
    return OrderRequest(
        price=price,
        address_id=price.address_id,
        expected_total=expected,
        payment_method=method,
        idempotency_key=idempotency_key,
        platform=_stored_header("X-Platform", platform, 16),
        app_version=_stored_header("X-App-Version", app_version, 32),
    )


def _stored_header(name: str, value: str | None, max_len: int) -> str | None:
    """A header the order row keeps; bytes that were not UTF-8 would fail the row's write, so they are a 400."""
    if value and has_lone_surrogate(value):
        raise BadRequest(data={"field": name, "reason": "not valid UTF-8"})
    return (value or "")[:max_len] or None


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    order_id: str
    status: str
    total: Decimal
    currency: str
    exponent: int
    expires_at: datetime
    created: bool  # False: an earlier request with the same key made it

    def view(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "status": self.status,
            "total": money_str(self.total, self.exponent),
            "currency": self.currency,
            "expires_at": self.expires_at.isoformat(timespec="seconds") + "Z",
        }


async def _existing(conn: AsyncConnection, cache: ReferenceCache, user_id: int, key: str, now: datetime) -> PlacedOrder | None:
    o = t.orders.c
    row = (await conn.execute(
        select(o.id, o.status, o.total, o.currency, o.expires_at).where(o.user_id == user_id, o.idempotency_key == key)
    )).first()
    if row is None:
        return None
    fx = (await cache.get(now)).forex.get(row.currency)
    return PlacedOrder(row.id, row.status, row.total, row.currency, fx.exponent if fx else 2, row.expires_at, created=False)


def _blocked(address: Any, blacklist: Iterable[BlacklistEntry]) -> str | None:
    """The blacklist kind that matches the address, if any."""
    for entry in blacklist:
        value = entry.value.strip().lower()
        if entry.kind == "zip" and address.zip.strip().lower() == value:
            return "zip"
        if entry.kind == "phone" and address.phone.replace(" ", "") == entry.value.replace(" ", ""):
            return "phone"
        if entry.kind == "country" and address.country.strip().lower() == value:
            return "country"
        if entry.kind == "line_contains" and value and value in address.line1.lower():
            return "line_contains"
    return None


@dataclass(frozen=True, slots=True)
class OrderPlan:
    """A checkout that passed every check outside the transaction: what write_order takes."""

    req: OrderRequest
    user_id: int
    address: Any
    quote: Quote


async def plan_order(
    db_read: AsyncEngine, cache: ReferenceCache, req: OrderRequest, user_id: int | None, now: datetime,
) -> OrderPlan | PlacedOrder:
    """The reads and checks before the transaction, on the autocommit read engine: the order an
    earlier request with this Idempotency-Key placed, or the plan (address, blacklist, re-price,
    the total the user saw)."""
    if user_id is None:
        raise LoginRequired()
    async with db_read.connect() as conn:
        earlier = await _existing(conn, cache, user_id, req.idempotency_key, now)
        if earlier is not None:
            return earlier
        a = t.addresses.c
        address = (await conn.execute(
            select(t.addresses).where(a.id == req.address_id, a.user_id == user_id)
        )).first()
        if address is None:  # another user's address is answered exactly like a missing one
            raise BadRequest(data={"field": "address_id", "reason": "not_found"})
    kind = _blocked(address, (await cache.get(now)).blacklist)
    if kind is not None:
        raise Unprocessable("address_blocked", {"address_id": req.address_id, "kind": kind})

    q = await quote(db_read, cache, req.price, user_id, now)
    result = q.result
    if not result.lines:
        raise BadRequest(data={"field": "items", "reason": "the cart has no selected lines"})
    if (req.price.user_coupon_id is not None or req.price.coupon_code is not None) and result.coupon is None:
        raise Unprocessable("coupon_not_applicable", {"reason": result.coupon_error})
    if result.shown.total != req.expected_total:
        raise Conflict("price_changed", price_view(result))
    return OrderPlan(req, user_id, address, q)


async def write_order(uow: UnitOfWork, plan: OrderPlan) -> PlacedOrder:
    """The order's one unit of work: stock, coupon, wallet, the order, its items, history and `noti`.

    Raises StockShort, a ShopError (coupon or wallet lost to another writer) or IntegrityError
    (the same Idempotency-Key won the race): the caller's transaction then rolls back whole.
    """
    order_id = new_order_id()
    await _write_order(uow, plan.quote, plan.req, plan.user_id, plan.address, order_id)
    result = plan.quote.result
    return PlacedOrder(order_id, "pending_payment", result.shown.total, result.currency, result.exponent, uow.now + ORDER_TTL, True)


async def place_order(shop: Shop, req: OrderRequest, user_id: int | None) -> PlacedOrder:
    """The checkout command: plan on the read engine, then write_order in a unit of work of the
    caller's Shop, owning its retries (docs/orders.md "Who owns the transaction").

    A deadlock victim is run again whole by Shop.run; a stock shortfall that is gone on the re-read
    (a cancel in between) tries again with a new order id; a refusal after the rollback answers
    with the order of a request with the same key that won the race, if there is one.
    """
    plan = await plan_order(shop.db_read, shop.reference, req, user_id, shop.clock())
    if isinstance(plan, PlacedOrder):
        return plan
    result = plan.quote.result
    for attempt in range(1, _RETRIES + 1):
        try:
            try:
                placed = await shop.run("new", lambda uow: write_order(uow, plan))
            except StockShort as short:
                # Rolled back; name the SKU from what the shop holds now.
                async with shop.db_read.connect() as conn:
                    sku = await short_sku(conn, short.lines)
                if sku is None and attempt < _RETRIES:
                    continue  # stock came back (a cancel) between our update and this read: try again
                raise Unprocessable("out_of_stock", {"sku_id": sku if sku is not None else short.lines[0][0]}) from None
            log.info("order_placed", order_id=placed.order_id, user_id=plan.user_id, total=str(result.shown.total),
                     currency=result.currency)
            return placed
        except (IntegrityError, ShopError):
            # Everything here rolled back. When a request with the same key won a race — at the
            # unique (user_id, idempotency_key), or first to the stock, coupon or wallet — this one
            # answers with that order; otherwise the refusal stands.
            async with shop.db_read.connect() as conn:
                earlier = await _existing(conn, shop.reference, plan.user_id, req.idempotency_key, shop.clock())
            if earlier is not None:
                return earlier
            raise
    raise AssertionError("unreachable")


# Executed with parameter dicts: the statements (and their compiled forms) are reused, not rebuilt per order.
_ORDER_INSERT = insert(t.orders)
_ITEMS_INSERT = insert(t.order_items)


async def _write_order(uow: UnitOfWork, q: Quote, req: OrderRequest, user_id: int, address: Any, order_id: str) -> None:
    conn, now = uow.conn, uow.now
    result: PriceResult = q.result
    await take_stock(conn, [(line.sku_id, line.qty) for line in result.lines])
    choice = result.coupon
    user_coupon_id = None
    if choice is not None:
        if choice.user_coupon_id is not None:
            if not await lock_coupon(conn, choice.user_coupon_id, user_id, order_id):
                raise Unprocessable("coupon_not_applicable", {"reason": "used"})
            user_coupon_id = choice.user_coupon_id
        else:
            # A public code the caller holds no row for: the order claims one, locked from the start.
            inserted = await conn.execute(insert(t.user_coupons).values(
                user_id=user_id, coupon_id=choice.coupon.coupon_id, status="locked", order_id=order_id, created_at=now,
            ))
            user_coupon_id = inserted.inserted_primary_key[0]  # type: ignore[index]  # an INSERT always has a key
    if not await reserve_wallet(conn, user_id, order_id, result.usd.wallet_deduction, now=now):
        raise Conflict("price_changed", price_view(result))
    s = result.shown
    await conn.execute(_ORDER_INSERT, dict(
        id=order_id, user_id=user_id, status="pending_payment", region=result.region, currency=result.currency,
        fx_rate=result.fx_rate, subtotal=s.subtotal, mall_discount=s.mall_discount, coupon_discount=s.coupon_discount,
        shipping_fee=s.shipping_fee, tariff=s.tariff, wallet_deduction=s.wallet_deduction, total=s.total,
        base_total=result.usd.total, user_coupon_id=user_coupon_id,
        address={k: address._mapping[k] for k in ("name", "phone", "country", "city", "zip", "line1")},
        platform=req.platform, app_version=req.app_version, idempotency_key=req.idempotency_key,
        expires_at=now + ORDER_TTL, created_at=now, updated_at=now,
    ))
    await conn.execute(_ITEMS_INSERT, [
        {
            "order_id": order_id, "sku_id": line.sku_id, "name": line.name, "qty": line.qty,
            "unit_price": line.shown.unit_price, "line_total": line.shown.line_total,
            "mall_discount": line.shown.mall_discount, "coupon_discount": line.shown.coupon_discount,
            "tariff": line.shown.tariff,
        }
        for line in result.lines
    ])
    await conn.execute(HISTORY_INSERT, dict(
        order_id=order_id, from_status=None, to_status="pending_payment", reason="placed", actor=uow.actor, created_at=now,
    ))
    await uow.publish("noti", order_id, {
        "user_id": user_id, "template": "order_placed", "order_id": order_id,
        "vars": {"total": money_str(s.total, result.exponent), "currency": result.currency,
                 "payment_method": req.payment_method},
    })
