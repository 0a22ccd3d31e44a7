"""``POST /shopping/cal_price/v4_4`` (route calc_price): old shopping's price calculation.

Written the way old shopping did it, separately from the new engine (``shop.pricing``):
every amount read from the database is turned into a binary ``float`` on read, the steps
of domain.md § Pricing run in float arithmetic, per-line amounts are rounded with the
built-in ``round(x, 2)`` (``round(x)`` for JPY, ``round(x, 3)`` for KWD after conversion)
and strings are formatted at the very end (``f"{x:.2f}"``). Half-cent cases therefore come
out the way float rounding takes them (``round(2.675, 2) == 2.67``), which is exactly the
±0.01 the shadow diff is meant to show. Sums of rounded cents are rounded back to cents so
float noise (``0.1 + 0.2``) never moves a threshold comparison.

Nothing is cached: every request reads the rows it needs from the shared database.
The coupon list (``coupons.py``) re-runs :func:`compute` with each of the caller's coupons.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, TypeGuard

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from emulators.legacy import envelope
from emulators.legacy.body import read_json
from emulators.legacy.caller import user_id as caller_user_id
from emulators.legacy.envelope import ApiError, bad_request, ok
from emulators.legacy.state import ENGINE
from shop.schema import (
    addresses, cart_items, coupons, forex_rates, mall_discounts, shipping_rules, skus, tariff_rules,
    user_coupons, wallets,
)

MAX_LINES = 200
MAX_QTY = 999
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_REGION = re.compile(r"^[A-Z]{2,8}$")

# Coupon reasons (legacy-api.md); the first three are decided while loading.
NOT_FOUND = "not_found"
NOT_OWNER = "not_owner"
LOGIN_REQUIRED = "login_required"
USED = "used"
EXPIRED = "expired"
REGION_NOT_ALLOWED = "region_not_allowed"
CATEGORY_MISMATCH = "category_mismatch"
MIN_SPEND_NOT_MET = "min_spend_not_met"


# --- request ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceRequest:
    items: tuple[tuple[int, int], ...] | None  # None: the caller's selected cart lines
    user_coupon_id: int | None
    coupon_code: str | None
    address_id: int | None
    region: str | None
    currency: str
    use_wallet: bool


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_id(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value) or not 0 < value < 2**63:
        raise bad_request(name, "must be a positive integer or null")
    return value


def _opt_code(body: dict[str, Any], name: str, pattern: re.Pattern[str] | None = None, max_len: int = 64) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise bad_request(name, f"must be a string of at most {max_len} characters or null")
    value = value.strip()
    if pattern is not None:
        value = value.upper()
        if not pattern.match(value):
            raise bad_request(name, "is not a valid code")
    return value


def parse_request(body: Any) -> PriceRequest:
    """The calc_price / coupons body; a bad field is 400 ``bad_request`` naming it."""
    if not isinstance(body, dict):
        raise bad_request("body", "must be a JSON object")
    items: tuple[tuple[int, int], ...] | None = None
    raw = body.get("items")
    if raw is not None:
        if not isinstance(raw, list):
            raise bad_request("items", "must be a list")
        if not raw:
            raise bad_request("items", "must not be empty")
        if len(raw) > MAX_LINES:
            raise bad_request("items", f"at most {MAX_LINES} lines")
        out: list[tuple[int, int]] = []
        seen: set[int] = set()
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise bad_request(f"items[{i}]", "must be an object")
            sku_id, qty = item.get("sku_id"), item.get("qty")
            if not _is_int(sku_id) or not 0 < sku_id < 2**31:
                raise bad_request(f"items[{i}].sku_id", "must be a positive integer")
            if not _is_int(qty) or not 1 <= qty <= MAX_QTY:
                raise bad_request(f"items[{i}].qty", f"must be an integer from 1 to {MAX_QTY}")
            if sku_id in seen:
                raise bad_request(f"items[{i}].sku_id", "appears twice")
            seen.add(sku_id)
            out.append((sku_id, qty))
        items = tuple(out)
    use_wallet = body.get("use_wallet")
    if use_wallet is None:
        use_wallet = False
    if not isinstance(use_wallet, bool):
        raise bad_request("use_wallet", "must be true or false")
    return PriceRequest(
        items=items,
        user_coupon_id=_opt_id(body, "user_coupon_id"),
        coupon_code=_opt_code(body, "coupon_code"),
        address_id=_opt_id(body, "address_id"),
        region=_opt_code(body, "region", _REGION, 8),
        currency=_opt_code(body, "currency", _CURRENCY, 3) or "USD",
        use_wallet=use_wallet,
    )


# --- what one pricing needs, read from the database --------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    sku_id: int
    name: str
    category_id: int
    price: float  # USD
    qty: int


@dataclass(frozen=True, slots=True)
class CouponRow:
    coupon_id: int
    code: str | None
    title: str
    kind: str  # amount / percent / free_shipping
    value: float
    min_spend: float
    max_discount: float | None
    category_ids: frozenset[int] | None
    regions: frozenset[str] | None
    starts_at: datetime | None
    ends_at: datetime | None


@dataclass(frozen=True, slots=True)
class Picked:
    """The coupon the caller picked: one of their user_coupons, or a public code without a row."""

    coupon: CouponRow
    user_coupon_id: int | None
    status: str  # the user_coupon's status; "unused" for a bare public code


@dataclass(frozen=True, slots=True)
class Cart:
    lines: tuple[Line, ...]
    region: str
    currency: str
    rate: float
    exponent: int
    shipping_fee: float | None  # None: no shipping rule, region not served
    free_threshold: float | None
    tariff_default: float  # percent
    tariff_by_category: dict[int, float]
    de_minimis: float
    has_tariff: bool
    discounts: tuple[tuple[str, int, str, float, datetime | None, datetime | None], ...]
    now: datetime
    picked: Picked | None = None
    coupon_error: str | None = None
    balance: float = 0.0  # USD
    use_wallet: bool = False


def _now() -> datetime:
    # The shared database keeps naive UTC timestamps.
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _csv_ints(raw: str | None) -> frozenset[int] | None:
    if raw is None or not raw.strip():
        return None
    return frozenset(int(x) for x in raw.split(",") if x.strip())


def _csv_codes(raw: str | None) -> frozenset[str] | None:
    if raw is None or not raw.strip():
        return None
    return frozenset(x.strip().upper() for x in raw.split(",") if x.strip())


def coupon_row(r: Any) -> CouponRow:
    return CouponRow(
        coupon_id=r.id,
        code=r.code,
        title=r.title,
        kind=r.kind,
        value=float(r.value),
        min_spend=float(r.min_spend or 0),
        max_discount=None if r.max_discount is None else float(r.max_discount),
        category_ids=_csv_ints(r.category_ids),
        regions=_csv_codes(r.regions),
        starts_at=r.starts_at,
        ends_at=r.ends_at,
    )


async def _coupon(conn: AsyncConnection, coupon_id: int) -> CouponRow | None:
    row = (await conn.execute(select(coupons).where(coupons.c.id == coupon_id))).first()
    return None if row is None else coupon_row(row)


async def coupon_by_code(conn: AsyncConnection, code: str) -> CouponRow | None:
    row = (await conn.execute(
        select(coupons).where(func.upper(coupons.c.code) == code.upper()).order_by(coupons.c.id).limit(1)
    )).first()
    return None if row is None else coupon_row(row)


async def _pick_user_coupon(conn: AsyncConnection, uid: int | None, user_coupon_id: int) -> tuple[Picked | None, str | None]:
    if uid is None:
        return None, LOGIN_REQUIRED
    u = user_coupons.c
    row = (await conn.execute(select(u.user_id, u.coupon_id, u.status).where(u.id == user_coupon_id))).first()
    coupon = None if row is None else await _coupon(conn, row.coupon_id)
    if row is None or coupon is None:
        return None, NOT_FOUND
    if row.user_id != uid:
        return None, NOT_OWNER
    return Picked(coupon, user_coupon_id, row.status), None


async def _pick_code(conn: AsyncConnection, uid: int | None, code: str) -> tuple[Picked | None, str | None]:
    coupon = await coupon_by_code(conn, code)
    if coupon is None:
        return None, NOT_FOUND
    if uid is not None:
        # A caller who holds this coupon uses their own row: a used one reads as used.
        u = user_coupons.c
        rows = (await conn.execute(
            select(u.id, u.status).where(u.user_id == uid, u.coupon_id == coupon.coupon_id).order_by(u.id)
        )).all()
        if rows:
            row = next((r for r in rows if r.status == "unused"), rows[0])
            return Picked(coupon, row.id, row.status), None
    return Picked(coupon, None, "unused"), None


async def load(conn: AsyncConnection, req: PriceRequest, uid: int | None, *, with_coupon: bool = True) -> Cart:
    """Everything one pricing reads, straight from the database; 4xx for bad input."""
    now = _now()
    fx = (await conn.execute(
        select(forex_rates.c.rate, forex_rates.c.exponent).where(forex_rates.c.currency == req.currency)
    )).first()
    if fx is None:
        raise bad_request("currency", "unknown currency")

    items = req.items
    if items is None:
        if uid is None:
            raise ApiError(401, envelope.LOGIN_REQUIRED, "login_required",
                           {"reason": "pricing the cart needs a logged-in caller; send items"})
        c = cart_items.c
        rows = await conn.execute(
            select(c.sku_id, c.qty).where(c.user_id == uid, c.selected).order_by(c.created_at, c.id)
        )
        items = tuple((r.sku_id, r.qty) for r in rows)

    if req.address_id is not None:
        # Another user's address answers exactly like a missing one.
        region = None
        if uid is not None:
            a = addresses.c
            region = (await conn.execute(
                select(a.country).where(a.id == req.address_id, a.user_id == uid)
            )).scalar()
        if region is None:
            raise bad_request("address_id", "not_found")
        region = region.upper()
    else:
        region = req.region
        if region is None:
            raise bad_request("region", "give region or address_id")

    picked, coupon_error = None, None
    if with_coupon and req.user_coupon_id is not None:
        picked, coupon_error = await _pick_user_coupon(conn, uid, req.user_coupon_id)
    elif with_coupon and req.coupon_code is not None:
        picked, coupon_error = await _pick_code(conn, uid, req.coupon_code)

    balance = 0.0
    if uid is not None and req.use_wallet:
        raw = (await conn.execute(select(wallets.c.balance).where(wallets.c.user_id == uid))).scalar()
        balance = float(raw or 0)

    found = {}
    if items:
        rows = await conn.execute(
            select(skus.c.id, skus.c.name, skus.c.category_id, skus.c.price, skus.c.active)
            .where(skus.c.id.in_([sku_id for sku_id, _ in items]))
        )
        found = {r.id: r for r in rows}
    lines = []
    for sku_id, qty in items:
        sku = found.get(sku_id)
        if sku is None:
            raise ApiError(422, envelope.SKU_NOT_FOUND, "sku_not_found", {"sku_id": sku_id})
        if not sku.active:
            raise ApiError(422, envelope.SKU_UNAVAILABLE, "sku_unavailable", {"sku_id": sku_id})
        lines.append(Line(sku.id, sku.name, sku.category_id, float(sku.price), qty))

    rule = (await conn.execute(
        select(shipping_rules.c.fee, shipping_rules.c.free_threshold).where(shipping_rules.c.region == region)
    )).first()
    tariff_default, de_minimis, by_category, has_tariff = 0.0, 0.0, {}, False
    for t in await conn.execute(select(tariff_rules).where(tariff_rules.c.region == region).order_by(tariff_rules.c.id)):
        has_tariff = True
        if t.category_id is None:
            tariff_default, de_minimis = float(t.rate_percent), float(t.de_minimis)
        else:
            by_category[t.category_id] = float(t.rate_percent)

    m = mall_discounts.c
    discounts = tuple(
        (d.scope, d.target_id, d.kind, float(d.value), d.starts_at, d.ends_at)
        for d in await conn.execute(
            select(m.scope, m.target_id, m.kind, m.value, m.starts_at, m.ends_at).where(m.active).order_by(m.id)
        )
    )
    return Cart(
        lines=tuple(lines),
        region=region,
        currency=req.currency,
        rate=float(fx.rate),
        exponent=int(fx.exponent),
        shipping_fee=None if rule is None else float(rule.fee),
        free_threshold=None if rule is None or rule.free_threshold is None else float(rule.free_threshold),
        tariff_default=tariff_default,
        tariff_by_category=by_category,
        de_minimis=de_minimis,
        has_tariff=has_tariff,
        discounts=discounts,
        now=now,
        picked=picked,
        coupon_error=coupon_error,
        balance=balance,
        use_wallet=req.use_wallet and uid is not None,
    )


# --- the float calculation --------------------------------------------------------------------


def cents(x: float) -> float:
    return round(x, 2)


def floor_cents(x: float) -> float:
    # "At most" caps round down; the epsilon keeps 62.21 (stored as 62.2099999…) at 62.21.
    return math.floor(x * 100 + 1e-6) / 100


def _active(starts: datetime | None, ends: datetime | None, now: datetime) -> bool:
    return (starts is None or starts <= now) and (ends is None or now < ends)


def coupon_reason(p: Picked, region: str, base: float, has_eligible: bool, now: datetime) -> str | None:
    """Why the picked coupon can't be used on this cart; the first reason found is the one shown."""
    c = p.coupon
    if p.status in ("used", "locked"):
        return USED
    if p.status == "expired" or not _active(c.starts_at, c.ends_at, now):
        return EXPIRED
    if c.regions is not None and region not in c.regions:
        return REGION_NOT_ALLOWED
    if not has_eligible:
        return CATEGORY_MISMATCH
    if base < c.min_spend:
        return MIN_SPEND_NOT_MET
    return None


def split(total: float, weights: Sequence[float]) -> list[float]:
    """Pro rata by weight, in cents, the last line taking the remainder; no share below 0 or above its line."""
    weight_sum = cents(sum(weights))
    if total == 0 or weight_sum == 0:
        return [0.0] * len(weights)
    shares = [cents(total * w / weight_sum) for w in weights[:-1]]
    shares.append(cents(total - sum(shares)))
    # With a few cents to share, rounding can push the remainder out of its line: move the excess on.
    excess = 0.0
    for order in (range(len(shares) - 1, -1, -1), range(len(shares))):
        for i in order:
            want = cents(shares[i] + excess)
            shares[i] = min(max(want, 0.0), weights[i])
            excess = cents(want - shares[i])
        if excess == 0:
            break
    return shares


@dataclass(slots=True)
class Priced:
    cart: Cart
    # USD, per line
    totals: list[float] = field(default_factory=list)
    malls: list[float] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)
    tariffs: list[float] = field(default_factory=list)
    # USD, summary
    subtotal: float = 0.0
    mall: float = 0.0
    coupon: float = 0.0
    shipping: float = 0.0
    tariff: float = 0.0
    wallet: float = 0.0
    applied: Picked | None = None
    coupon_error: str | None = None
    free_shipping: bool = False
    # In the request currency
    shown: dict[str, float] = field(default_factory=dict)


def convert(cart: Cart, usd: float) -> float:
    value = usd * cart.rate
    return float(round(value)) if cart.exponent == 0 else round(value, cart.exponent)


def compute(cart: Cart) -> Priced:
    """Price the cart (domain.md § Pricing, steps 1-6) in floats; 422 region_not_served without a rule."""
    if cart.shipping_fee is None:
        raise ApiError(422, envelope.REGION_NOT_SERVED, "region_not_served", {"region": cart.region})
    now = cart.now
    out = Priced(cart)

    # 1. Lines and the mall discount (largest matching one per line).
    for line in cart.lines:
        total = cents(line.price * line.qty)
        best = 0.0
        for scope, target, kind, value, starts, ends in cart.discounts:
            hit = (scope == "sku" and target == line.sku_id) or (scope == "category" and target == line.category_id)
            if not hit or not _active(starts, ends, now):
                continue
            amount = total * value / 100 if kind == "percent" else min(value * line.qty, total)
            best = max(best, amount)
        out.totals.append(total)
        out.malls.append(cents(min(best, total)))
    nets = [cents(t - m) for t, m in zip(out.totals, out.malls)]
    out.subtotal = cents(sum(out.totals))
    out.mall = cents(sum(out.malls))

    # 2. Coupon.
    out.shares = [0.0] * len(cart.lines)
    out.coupon_error = cart.coupon_error
    if cart.picked is not None and cart.coupon_error is None:
        c = cart.picked.coupon
        eligible = [i for i, line in enumerate(cart.lines) if c.category_ids is None or line.category_id in c.category_ids]
        base = cents(sum(nets[i] for i in eligible))
        out.coupon_error = coupon_reason(cart.picked, cart.region, base, bool(eligible), now)
        if out.coupon_error is None:
            out.applied = cart.picked
            if c.kind == "amount":
                out.coupon = cents(min(c.value, base))
            elif c.kind == "percent":
                out.coupon = cents(base * c.value / 100)
                if c.max_discount is not None:
                    out.coupon = min(out.coupon, cents(c.max_discount))
            else:
                out.free_shipping = True
            for i, share in zip(eligible, split(out.coupon, [nets[i] for i in eligible])):
                out.shares[i] = share

    # 3. Shipping.
    goods_net = cents(out.subtotal - out.mall - out.coupon)
    free = cart.free_threshold is not None and goods_net >= cart.free_threshold
    out.shipping = 0.0 if not cart.lines or out.free_shipping or free else cents(cart.shipping_fee)

    # 4. Tariff per line, nothing at or under de minimis.
    out.tariffs = [0.0] * len(cart.lines)
    if cart.has_tariff and goods_net > cart.de_minimis:
        for i, line in enumerate(cart.lines):
            rate = cart.tariff_by_category.get(line.category_id, cart.tariff_default)
            out.tariffs[i] = cents((nets[i] - out.shares[i]) * rate / 100)
    out.tariff = cents(sum(out.tariffs))

    # 5. Wallet: at most the balance and at most half of what is left to pay.
    before_wallet = cents(goods_net + out.shipping + out.tariff)
    if cart.use_wallet:
        out.wallet = max(0.0, min(floor_cents(cart.balance), floor_cents(before_wallet * 0.5)))

    # 6. Forex: each component converted on its own; the total from the converted parts.
    exp = cart.exponent
    sub_c, mall_c = convert(cart, out.subtotal), convert(cart, out.mall)
    # A fully discounted cart can convert a unit below zero: clamp the discounts, not the total.
    coupon_c = min(convert(cart, out.coupon), round(sub_c - mall_c, exp))
    ship_c, tariff_c = convert(cart, out.shipping), convert(cart, out.tariff)
    payable = round(sub_c - mall_c - coupon_c + ship_c + tariff_c, exp)
    wallet_c = min(convert(cart, out.wallet), payable)
    out.shown = {
        "subtotal": sub_c,
        "mall_discount": mall_c,
        "coupon_discount": coupon_c,
        "shipping_fee": ship_c,
        "tariff": tariff_c,
        "wallet_deduction": wallet_c,
        "total": payable - wallet_c,
    }
    return out


def money(value: float, exponent: int) -> str:
    """``f"{x:.2f}"`` with the currency's exponent; never ``-0.00``."""
    if abs(value) < 0.5 * 10.0**-exponent:
        value = 0.0
    return f"{value:.{exponent}f}"


def price_json(p: Priced) -> dict[str, Any]:
    cart, exp = p.cart, p.cart.exponent

    def m(usd: float) -> str:
        return money(convert(cart, usd), exp)

    coupon = None
    if p.applied is not None:
        c = p.applied.coupon
        coupon = {"user_coupon_id": p.applied.user_coupon_id, "code": c.code, "title": c.title, "kind": c.kind}
    return {
        "currency": cart.currency,
        "region": cart.region,
        "items": [
            {
                "sku_id": line.sku_id,
                "name": line.name,
                "qty": line.qty,
                "unit_price": m(line.price),
                "line_total": m(p.totals[i]),
                "mall_discount": m(p.malls[i]),
                "coupon_discount": m(p.shares[i]),
                "tariff": m(p.tariffs[i]),
            }
            for i, line in enumerate(cart.lines)
        ],
        "summary": {name: money(value, exp) for name, value in p.shown.items()},
        "coupon": coupon,
        "coupon_error": p.coupon_error,
        "free_shipping_threshold": None if cart.free_threshold is None else m(cart.free_threshold),
        "wallet_balance": m(cart.balance),
    }


def with_coupon(cart: Cart, picked: Picked | None) -> Cart:
    return replace(cart, picked=picked, coupon_error=None)


async def calc_price(request: web.Request) -> web.Response:
    uid = caller_user_id(request)
    req = parse_request(await read_json(request))
    async with request.app[ENGINE].connect() as conn:
        cart = await load(conn, req, uid)
    return ok(price_json(compute(cart)))
