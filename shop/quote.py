"""Pricing a caller's cart: validate the request, load the snapshot, call the pricing engine.

Transport-free: the calc_price and coupons handlers (and later place_order) call these with
the caller's user id; the same functions would serve a Kafka consumer or a CLI.
"""

from __future__ import annotations

import re
from functools import lru_cache
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, and_, bindparam, literal, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shop import schema as t
from shop.errors import BadRequest, LoginRequired, Unprocessable
from shop.pricing import (
    LOGIN_REQUIRED, NOT_FOUND, NOT_OWNER, CouponChoice, PriceLine, PriceResult, PricingInput, price,
)
from shop.reference import ReferenceCache, ReferenceData

MAX_LINES = 200
MAX_QTY = 999
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_REGION = re.compile(r"^[A-Z]{2,8}$")


@dataclass(frozen=True, slots=True)
class PriceRequest:
    items: tuple[tuple[int, int], ...] | None  # (sku_id, qty); None = the caller's selected cart lines
    user_coupon_id: int | None
    coupon_code: str | None
    address_id: int | None
    region: str | None
    currency: str
    use_wallet: bool


def _bad(field: str, reason: str) -> BadRequest:
    return BadRequest(data={"field": field, "reason": reason})


def _opt_int(body: Mapping[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise _bad(field, "must be a positive integer or null")
    return value


def _opt_str(body: Mapping[str, Any], field: str, pattern: re.Pattern[str] | None = None, max_len: int = 64) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise _bad(field, f"must be a string of at most {max_len} characters or null")
    value = value.strip().upper() if pattern is not None else value.strip()
    if pattern is not None and not pattern.match(value):
        raise _bad(field, "is not a valid code")
    return value


def parse_price_request(body: object) -> PriceRequest:
    """The calc_price / coupons request body, validated; BadRequest names the field."""
    if not isinstance(body, dict):
        raise _bad("body", "must be a JSON object")
    items: tuple[tuple[int, int], ...] | None = None
    raw_items = body.get("items")
    if raw_items is not None:
        if not isinstance(raw_items, list):
            raise _bad("items", "must be a list")
        if not raw_items:
            raise _bad("items", "must not be empty")
        if len(raw_items) > MAX_LINES:
            raise _bad("items", f"at most {MAX_LINES} lines")
        seen: set[int] = set()
        parsed = []
        for i, item in enumerate(raw_items):
            if not isinstance(item, dict):
                raise _bad(f"items[{i}]", "must be an object")
            sku_id, qty = item.get("sku_id"), item.get("qty")
            if isinstance(sku_id, bool) or not isinstance(sku_id, int) or not 0 < sku_id < 2**31:
                raise _bad(f"items[{i}].sku_id", "must be a positive integer")
            if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
                raise _bad(f"items[{i}].qty", f"must be an integer from 1 to {MAX_QTY}")
            if sku_id in seen:
                raise _bad(f"items[{i}].sku_id", "appears twice")
            seen.add(sku_id)
            parsed.append((sku_id, qty))
        items = tuple(parsed)
    use_wallet = body.get("use_wallet", False)
    if use_wallet is None:
        use_wallet = False
    if not isinstance(use_wallet, bool):
        raise _bad("use_wallet", "must be true or false")
    return PriceRequest(
        items=items,
        user_coupon_id=_opt_int(body, "user_coupon_id"),
        coupon_code=_opt_str(body, "coupon_code"),
        address_id=_opt_int(body, "address_id"),
        region=_opt_str(body, "region", _REGION, 8),
        currency=_opt_str(body, "currency", _CURRENCY, 3) or "USD",
        use_wallet=use_wallet,
    )


@dataclass(frozen=True, slots=True)
class CallerFacts:
    """What a request reads that is the caller's own, besides cart lines."""

    region: str | None = None  # of the address asked for; None = not the caller's or missing
    wallet: Decimal = Decimal(0)
    coupon_owner: int | None = None  # of the user_coupon asked for; None = missing
    coupon_id: int | None = None
    coupon_status: str | None = None


@lru_cache(maxsize=16)
def _caller_statement(address: bool, wallet: bool, coupon: bool, cart: bool) -> Select[Any]:
    """Everything a price request reads that is the caller's own, in one round trip.

    Address region, wallet and user coupon are scalar subqueries; the cart's selected lines
    come as rows of a LEFT JOIN from a one-row table, so a caller with an empty cart still
    gets one row of facts. Built once per combination: building Core statements per request
    costs more than running them.
    """
    a, w, u, c = t.addresses.c, t.wallets.c, t.user_coupons.c, t.cart_items
    cols = []
    if address:
        # Another user's address is answered exactly like a missing one.
        cols.append(select(a.country).where(a.id == bindparam("address_id"), a.user_id == bindparam("user_id"))
                    .scalar_subquery().label("region"))
    if wallet:
        cols.append(select(w.balance).where(w.user_id == bindparam("user_id")).scalar_subquery().label("wallet"))
    if coupon:
        one = u.id == bindparam("user_coupon_id")
        cols += [
            select(u.user_id).where(one).scalar_subquery().label("coupon_owner"),
            select(u.coupon_id).where(one).scalar_subquery().label("coupon_id"),
            select(u.status).where(one).scalar_subquery().label("coupon_status"),
        ]
    if not cart:
        return select(*cols)
    dual = select(literal(1).label("one")).subquery("dual")
    lines = dual.outerjoin(c, and_(c.c.user_id == bindparam("user_id"), c.c.selected))
    return select(c.c.sku_id, c.c.qty, *cols).select_from(lines).order_by(c.c.created_at, c.c.id)


async def _caller_facts(
    conn: AsyncConnection, user_id: int, req: PriceRequest
) -> tuple[CallerFacts, tuple[tuple[int, int], ...] | None]:
    """The caller's facts and, when the request names no items, their selected cart lines."""
    flags = (req.address_id is not None, req.use_wallet, req.user_coupon_id is not None, req.items is None)
    if not any(flags):
        return CallerFacts(), None
    params = {"user_id": user_id, "address_id": req.address_id, "user_coupon_id": req.user_coupon_id}
    rows = (await conn.execute(_caller_statement(*flags), params)).mappings().all()
    row = rows[0]
    facts = CallerFacts(
        region=row["region"].upper() if row.get("region") else None,
        wallet=row.get("wallet") or Decimal(0),
        coupon_owner=row.get("coupon_owner"),
        coupon_id=row.get("coupon_id"),
        coupon_status=row.get("coupon_status"),
    )
    cart = tuple((r["sku_id"], r["qty"]) for r in rows if r["sku_id"] is not None) if req.items is None else None
    return facts, cart


def _user_coupon(facts: CallerFacts, ref: ReferenceData, user_id: int, user_coupon_id: int) -> tuple[CouponChoice | None, str | None]:
    if facts.coupon_owner is None or facts.coupon_id is None or facts.coupon_id not in ref.coupons_by_id:
        return None, NOT_FOUND
    if facts.coupon_owner != user_id:
        return None, NOT_OWNER
    return CouponChoice(ref.coupons_by_id[facts.coupon_id], user_coupon_id, facts.coupon_status or "unused"), None


async def _coupon_by_code(
    conn: AsyncConnection, ref: ReferenceData, user_id: int | None, code: str
) -> tuple[CouponChoice | None, str | None]:
    coupon = ref.coupons_by_code.get(code.upper())
    if coupon is None:
        return None, NOT_FOUND
    if user_id is not None:
        # A caller who already holds this coupon uses their own row, so a used one reads as used.
        u = t.user_coupons.c
        rows = (await conn.execute(
            select(u.id, u.status).where(u.user_id == user_id, u.coupon_id == coupon.coupon_id).order_by(u.id)
        )).all()
        if rows:
            best = next((r for r in rows if r.status == "unused"), rows[0])
            return CouponChoice(coupon, best.id, best.status), None
    return CouponChoice(coupon), None


@dataclass(frozen=True, slots=True)
class Quote:
    """A priced cart plus what the coupon list needs to re-price it with other coupons."""

    result: PriceResult
    input: PricingInput


async def quote(
    db: AsyncEngine, cache: ReferenceCache, req: PriceRequest, user_id: int | None, now: datetime
) -> Quote:
    ref = await cache.get(now)
    fx = ref.forex.get(req.currency)
    if fx is None:
        raise _bad("currency", "unknown currency")
    if req.items is None and user_id is None:
        raise LoginRequired(data={"reason": "pricing the cart needs a logged-in caller; send items"})
    if req.address_id is not None and user_id is None:
        raise _bad("address_id", "not_found")
    for attempt in (1, 2):
        try:
            items, facts, choice, coupon_error = await _caller_rows(db, ref, req, user_id)
            break
        except DBAPIError as exc:
            # A pooled connection the server dropped (restart, failover): invalidated now, retry once.
            if attempt == 2 or not exc.connection_invalidated:
                raise
    region = facts.region if req.address_id is not None else req.region
    if req.address_id is not None and region is None:
        raise _bad("address_id", "not_found")
    if region is None:
        raise _bad("region", "give region or address_id")
    wallet = facts.wallet if user_id is not None and req.use_wallet else Decimal(0)
    lines = await _price_lines(cache, items)
    inp = PricingInput(
        lines=lines,
        region=region,
        currency=req.currency,
        fx_rate=fx.rate,
        exponent=fx.exponent,
        shipping=ref.shipping.get(region),
        tariff=ref.tariffs.get(region),
        mall_discounts=ref.mall_discounts,
        now=now,
        coupon=choice,
        coupon_error=coupon_error,
        wallet_balance=wallet,
        use_wallet=req.use_wallet and user_id is not None,
    )
    return Quote(price(inp), inp)


async def _caller_rows(
    db: AsyncEngine, ref: ReferenceData, req: PriceRequest, user_id: int | None
) -> tuple[Sequence[tuple[int, int]], CallerFacts, CouponChoice | None, str | None]:
    items: Sequence[tuple[int, int]] | None = req.items
    facts = CallerFacts()
    choice, coupon_error = None, None
    async with db.connect() as conn:
        if user_id is not None:
            facts, cart = await _caller_facts(conn, user_id, req)
            if items is None:
                items = cart
        if req.user_coupon_id is not None:
            if user_id is None:
                coupon_error = LOGIN_REQUIRED
            else:
                choice, coupon_error = _user_coupon(facts, ref, user_id, req.user_coupon_id)
        elif req.coupon_code is not None:
            choice, coupon_error = await _coupon_by_code(conn, ref, user_id, req.coupon_code)
    assert items is not None  # anonymous callers without items were refused above
    return items, facts, choice, coupon_error


async def _price_lines(cache: ReferenceCache, items: Sequence[tuple[int, int]]) -> tuple[PriceLine, ...]:
    skus = await cache.skus(sku_id for sku_id, _ in items)
    lines = []
    for sku_id, qty in items:
        sku = skus.get(sku_id)
        if sku is None:
            raise Unprocessable("sku_not_found", {"sku_id": sku_id})
        if not sku.active:
            raise Unprocessable("sku_unavailable", {"sku_id": sku_id})
        lines.append(PriceLine(sku.id, sku.name, sku.category_id, sku.price, qty))
    return tuple(lines)


@dataclass(frozen=True, slots=True)
class CouponOption:
    choice: CouponChoice
    discount: Decimal | None  # in the request currency; None when unusable
    reason: str | None


async def coupon_options(
    db: AsyncEngine, cache: ReferenceCache, req: PriceRequest, user_id: int | None, now: datetime
) -> tuple[list[CouponOption], int]:
    """Every coupon the caller could pick for this cart, priced, usable first by discount; and the currency exponent."""
    base = await quote(db, cache, replace(req, user_coupon_id=None, coupon_code=None), user_id, now)
    ref = await cache.get(now)
    choices: list[CouponChoice] = []
    if user_id is not None:
        u = t.user_coupons.c
        async with db.connect() as conn:
            rows = (await conn.execute(
                select(u.id, u.coupon_id, u.status)
                .where(u.user_id == user_id, u.status.in_(("unused", "locked", "expired")))
                .order_by(u.id)
            )).all()
        choices = [CouponChoice(ref.coupons_by_id[r.coupon_id], r.id, r.status) for r in rows if r.coupon_id in ref.coupons_by_id]
    if req.coupon_code is not None:
        held = {c.coupon.coupon_id for c in choices}
        coupon = ref.coupons_by_code.get(req.coupon_code.upper())
        if coupon is not None and coupon.coupon_id not in held:
            choices.append(CouponChoice(coupon))
    options = []
    for choice in choices:
        priced = price(replace(base.input, coupon=choice, coupon_error=None))
        if priced.coupon_error is not None:
            options.append(CouponOption(choice, None, priced.coupon_error))
        elif priced.free_shipping:
            options.append(CouponOption(choice, base.result.shown.shipping_fee, None))
        else:
            options.append(CouponOption(choice, priced.shown.coupon_discount, None))
    options.sort(key=lambda o: (o.discount is None, -(o.discount or 0), o.choice.user_coupon_id or 0))
    return options, base.result.exponent
