"""The one pricing engine: calc_price, the coupon list and place_order all call `price()`.

Pure: no I/O, no clock (the caller passes `now`), no globals. Rules and the worked example:
shared/spec/domain.md § Pricing. Everything is computed in USD, rounded per line to cents,
then each summary component is converted on its own so the displayed parts add up exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP
from typing import NamedTuple
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType

from shop.errors import Unprocessable
from shop.money import CENT, HUNDRED, ZERO, quantum, usd, usd_floor

HALF = Decimal("0.5")

# Reasons a coupon cannot be used (legacy-api.md); the loader decides the first three.
NOT_FOUND = "not_found"
NOT_OWNER = "not_owner"
LOGIN_REQUIRED = "login_required"
USED = "used"
EXPIRED = "expired"
REGION_NOT_ALLOWED = "region_not_allowed"
CATEGORY_MISMATCH = "category_mismatch"
MIN_SPEND_NOT_MET = "min_spend_not_met"


@dataclass(frozen=True, slots=True)
class PriceLine:
    sku_id: int
    name: str
    category_id: int
    unit_price: Decimal  # USD
    qty: int


@dataclass(frozen=True, slots=True)
class MallDiscount:
    scope: str  # "sku" | "category"
    target_id: int
    kind: str  # "percent" | "amount"
    value: Decimal
    starts_at: datetime | None = None
    ends_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Coupon:
    coupon_id: int
    code: str | None
    title: str
    kind: str  # "amount" | "percent" | "free_shipping"
    value: Decimal
    min_spend: Decimal = ZERO
    max_discount: Decimal | None = None
    category_ids: frozenset[int] | None = None
    regions: frozenset[str] | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CouponChoice:
    """A coupon the caller asked for: one of their user_coupons, or a public code."""

    coupon: Coupon
    user_coupon_id: int | None = None
    status: str = "unused"  # the user_coupon's status; a public code with no row is unused
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ShippingRule:
    fee: Decimal
    free_threshold: Decimal | None


@dataclass(frozen=True, slots=True)
class TariffRule:
    default_rate: Decimal  # percent
    de_minimis: Decimal
    by_category: Mapping[int, Decimal] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class PricingInput:
    lines: Sequence[PriceLine]
    region: str
    currency: str
    fx_rate: Decimal
    exponent: int
    shipping: ShippingRule | None
    tariff: TariffRule | None
    mall_discounts: Sequence[MallDiscount]
    now: datetime
    coupon: CouponChoice | None = None
    # Set by the loader when the coupon could not even be resolved (not_found, not_owner, login_required).
    coupon_error: str | None = None
    wallet_balance: Decimal = ZERO  # USD
    use_wallet: bool = False


# Results are NamedTuples: built many times per price, and a frozen dataclass's __init__ costs
# several times more. They are just as immutable.
class Amounts(NamedTuple):
    subtotal: Decimal
    mall_discount: Decimal
    coupon_discount: Decimal
    shipping_fee: Decimal
    tariff: Decimal
    wallet_deduction: Decimal
    total: Decimal


class LineAmounts(NamedTuple):
    unit_price: Decimal
    line_total: Decimal
    mall_discount: Decimal
    coupon_discount: Decimal
    tariff: Decimal


class PricedLine(NamedTuple):
    sku_id: int
    name: str
    category_id: int
    qty: int
    usd: LineAmounts
    shown: LineAmounts  # in the request currency


class PriceResult(NamedTuple):
    region: str
    currency: str
    exponent: int
    fx_rate: Decimal
    lines: tuple[PricedLine, ...]
    usd: Amounts
    shown: Amounts  # in the request currency; shown.total is what the user pays
    coupon: CouponChoice | None  # applied
    coupon_error: str | None
    free_shipping_threshold: Decimal | None  # shown currency
    wallet_balance: Decimal  # shown currency
    free_shipping: bool = False


def _active(starts: datetime | None, ends: datetime | None, now: datetime) -> bool:
    return (starts is None or starts <= now) and (ends is None or now < ends)


def _discount_index(discounts: Sequence[MallDiscount], now: datetime) -> dict[tuple[str, int], list[MallDiscount]]:
    """Active discounts by (scope, target): each line then looks up two keys instead of scanning all."""
    index: dict[tuple[str, int], list[MallDiscount]] = {}
    for d in discounts:
        if _active(d.starts_at, d.ends_at, now):
            index.setdefault((d.scope, d.target_id), []).append(d)
    return index


def _mall_discount(line: PriceLine, line_total: Decimal, index: dict[tuple[str, int], list[MallDiscount]]) -> Decimal:
    best = ZERO
    for key in (("sku", line.sku_id), ("category", line.category_id)):
        for d in index.get(key, ()):
            amount = line_total * d.value / HUNDRED if d.kind == "percent" else min(d.value * line.qty, line_total)
            if amount > best:
                best = amount
    return min(best, line_total).quantize(CENT, ROUND_HALF_UP)


def coupon_problem(choice: CouponChoice, region: str, eligible_base: Decimal, has_eligible: bool, now: datetime) -> str | None:
    """Why the coupon can't be used here, or None. Order matters: the first reason is the one shown."""
    c = choice.coupon
    if choice.status in ("used", "locked"):
        return USED
    if choice.status == "expired" or not _active(c.starts_at, c.ends_at, now):
        return EXPIRED
    if choice.expires_at is not None and now >= choice.expires_at:
        return EXPIRED
    if c.regions is not None and region not in c.regions:
        return REGION_NOT_ALLOWED
    if not has_eligible:
        return CATEGORY_MISMATCH
    if eligible_base < c.min_spend:
        return MIN_SPEND_NOT_MET
    return None


def _allocate(total: Decimal, weights: Sequence[Decimal]) -> list[Decimal]:
    """Split `total` over lines pro rata by weight, in cents; the last line takes the remainder.

    With amounts of a few cents, half-up rounding can leave the last line a remainder below
    zero or above its own weight; the difference then moves to lines with room, so no line's
    share is negative or larger than the line.
    """
    weight_sum = sum(weights, ZERO)
    if total == 0 or weight_sum == 0:
        return [ZERO] * len(weights)
    shares = [(total * w / weight_sum).quantize(CENT, ROUND_HALF_UP) for w in weights[:-1]]
    shares.append(total - sum(shares, ZERO))
    carry = ZERO
    for order in (range(len(shares) - 1, -1, -1), range(len(shares))):
        for i in order:
            wanted = shares[i] + carry
            shares[i] = min(max(wanted, ZERO), weights[i])
            carry = wanted - shares[i]
        if carry == 0:
            break
    return shares


def price(inp: PricingInput) -> PriceResult:
    """Every line and summary amount of a cart, or Unprocessable(region_not_served)."""
    if inp.shipping is None:
        raise Unprocessable("region_not_served", {"region": inp.region})
    now = inp.now
    totals = [(line.unit_price * line.qty).quantize(CENT, ROUND_HALF_UP) for line in inp.lines]
    index = _discount_index(inp.mall_discounts, now)
    malls = [_mall_discount(line, t, index) for line, t in zip(inp.lines, totals)]
    nets = [t - m for t, m in zip(totals, malls)]
    subtotal = sum(totals, ZERO)
    mall = sum(malls, ZERO)

    # Coupon.
    coupon_error = inp.coupon_error
    applied: CouponChoice | None = None
    coupon_shares = [ZERO] * len(inp.lines)
    coupon_total = ZERO
    free_shipping = False
    if inp.coupon is not None and coupon_error is None:
        c = inp.coupon.coupon
        eligible = [i for i, line in enumerate(inp.lines) if c.category_ids is None or line.category_id in c.category_ids]
        base = sum((nets[i] for i in eligible), ZERO)
        coupon_error = coupon_problem(inp.coupon, inp.region, base, bool(eligible), now)
        if coupon_error is None:
            applied = inp.coupon
            if c.kind == "amount":
                coupon_total = usd(min(c.value, base))
            elif c.kind == "percent":
                coupon_total = usd(base * c.value / HUNDRED)
                if c.max_discount is not None:
                    coupon_total = min(coupon_total, usd(c.max_discount))
            else:
                free_shipping = True
            for i, share in zip(eligible, _allocate(coupon_total, [nets[i] for i in eligible])):
                coupon_shares[i] = share

    goods_net = subtotal - mall - coupon_total
    rule = inp.shipping
    if not inp.lines or free_shipping or (rule.free_threshold is not None and goods_net >= rule.free_threshold):
        shipping = ZERO
    else:
        shipping = usd(rule.fee)

    tariffs = [ZERO] * len(inp.lines)
    if inp.tariff is not None and goods_net > inp.tariff.de_minimis:
        by_category, default_rate = inp.tariff.by_category, inp.tariff.default_rate
        for i, line in enumerate(inp.lines):
            rate_pct = by_category.get(line.category_id, default_rate)
            tariffs[i] = ((nets[i] - coupon_shares[i]) * rate_pct / HUNDRED).quantize(CENT, ROUND_HALF_UP)
    tariff = sum(tariffs, ZERO)

    before_wallet = goods_net + shipping + tariff
    wallet = ZERO
    if inp.use_wallet:
        wallet = max(ZERO, min(usd_floor(inp.wallet_balance), usd_floor(before_wallet * HALF)))
    usd_amounts = Amounts(subtotal, mall, coupon_total, shipping, tariff, wallet, before_wallet - wallet)

    rate, exp = inp.fx_rate, inp.exponent
    q = quantum(exp)

    def conv(amount: Decimal) -> Decimal:
        return (amount * rate).quantize(q, ROUND_HALF_UP)

    sub_c, mall_c = conv(subtotal), conv(mall)
    # Converting parts one by one can round a fully discounted cart a unit below zero: clamp
    # the discounts, never the total, so the displayed parts still add up.
    coupon_c = min(conv(coupon_total), sub_c - mall_c)
    ship_c, tariff_c = conv(shipping), conv(tariff)
    wallet_c = min(conv(wallet), sub_c - mall_c - coupon_c + ship_c + tariff_c)
    shown = Amounts(sub_c, mall_c, coupon_c, ship_c, tariff_c, wallet_c, sub_c - mall_c - coupon_c + ship_c + tariff_c - wallet_c)

    # The hot loop of the whole engine (5 conversions per line): positional tuples, local names.
    up = ROUND_HALF_UP
    lines = tuple(
        PricedLine(
            line.sku_id,
            line.name,
            line.category_id,
            line.qty,
            LineAmounts(line.unit_price.quantize(CENT, up), total, mall_i, share, tariff_i),
            LineAmounts(
                (line.unit_price * rate).quantize(q, up),
                (total * rate).quantize(q, up),
                (mall_i * rate).quantize(q, up),
                (share * rate).quantize(q, up),
                (tariff_i * rate).quantize(q, up),
            ),
        )
        for line, total, mall_i, share, tariff_i in zip(inp.lines, totals, malls, coupon_shares, tariffs)
    )
    return PriceResult(
        inp.region,
        inp.currency,
        exp,
        rate,
        lines,
        usd_amounts,
        shown,
        applied,
        coupon_error,
        None if rule.free_threshold is None else conv(rule.free_threshold),
        conv(inp.wallet_balance),
        free_shipping,
    )
