"""The pure pricing engine (shop/pricing.py): the worked example and properties."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal as D
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shop.errors import Unprocessable
from shop.pricing import (
    CATEGORY_MISMATCH, EXPIRED, MIN_SPEND_NOT_MET, REGION_NOT_ALLOWED, USED,
    Coupon, CouponChoice, MallDiscount, PriceLine, PricingInput, ShippingRule, TariffRule, price,
)
from tests.builders import NOW, SAVE15, worked_example


def test_worked_example_usd_figures() -> None:
    r = price(worked_example())
    assert r.usd.subtotal == D("124.48")
    assert r.usd.mall_discount == D("4.00")
    assert r.usd.coupon_discount == D("15.00")
    assert [l.usd.coupon_discount for l in r.lines] == [D("4.48"), D("3.17"), D("7.35")]
    assert r.usd.shipping_fee == D("9.90")
    assert [l.usd.tariff for l in r.lines] == [D("3.78"), D("2.68"), D("2.58")]
    assert r.usd.tariff == D("9.04")
    assert r.usd.wallet_deduction == D("20.00")


def test_worked_example_eur_figures() -> None:
    r = price(worked_example())
    s = r.shown
    assert (s.subtotal, s.mall_discount, s.coupon_discount, s.shipping_fee, s.tariff, s.wallet_deduction, s.total) == (
        D("114.52"), D("3.68"), D("13.80"), D("9.11"), D("8.32"), D("18.40"), D("96.07"),
    )
    first = r.lines[0].shown
    assert (first.unit_price, first.line_total, first.mall_discount, first.coupon_discount, first.tariff) == (
        D("18.39"), D("36.78"), D("3.68"), D("4.12"), D("3.48"),
    )
    assert r.free_shipping_threshold == D("184.00") and r.wallet_balance == D("18.40")
    assert r.coupon is not None and r.coupon_error is None


def test_region_without_shipping_rule_is_not_served() -> None:
    with pytest.raises(Unprocessable) as err:
        price(worked_example(shipping=None, region="KP"))
    assert err.value.msg == "region_not_served" and err.value.code == 42206


@pytest.mark.parametrize(
    ("choice", "changes", "reason"),
    [
        (CouponChoice(SAVE15, 1, status="used"), {}, USED),
        (CouponChoice(SAVE15, 1, status="locked"), {}, USED),
        (CouponChoice(SAVE15, 1, status="expired"), {}, EXPIRED),
        (CouponChoice(replace(SAVE15, ends_at=NOW - timedelta(seconds=1)), 1), {}, EXPIRED),
        (CouponChoice(replace(SAVE15, starts_at=NOW + timedelta(days=1)), 1), {}, EXPIRED),
        (CouponChoice(replace(SAVE15, regions=frozenset({"US", "GB"})), 1), {}, REGION_NOT_ALLOWED),
        (CouponChoice(replace(SAVE15, category_ids=frozenset({99})), 1), {}, CATEGORY_MISMATCH),
        (CouponChoice(replace(SAVE15, min_spend=D("200")), 1), {}, MIN_SPEND_NOT_MET),
    ],
)
def test_unusable_coupon_prices_without_it_and_names_the_reason(choice: CouponChoice, changes: dict, reason: str) -> None:
    r = price(worked_example(coupon=choice, **changes))
    assert r.coupon is None and r.coupon_error == reason
    assert r.usd.coupon_discount == 0 and all(l.usd.coupon_discount == 0 for l in r.lines)
    assert r.usd.subtotal == D("124.48")


def test_loader_reasons_pass_through() -> None:
    r = price(worked_example(coupon=None, coupon_error="not_owner"))
    assert r.coupon_error == "not_owner" and r.usd.coupon_discount == 0


def test_percent_coupon_capped_and_category_restricted() -> None:
    pct = Coupon(2, None, "20% audio", "percent", D("20"), max_discount=D("10.00"), category_ids=frozenset({30}))
    r = price(worked_example(coupon=CouponChoice(pct, 2)))
    assert r.usd.coupon_discount == D("10.00")  # 20 % of 59.00 = 11.80, capped at 10
    assert [l.usd.coupon_discount for l in r.lines] == [D("0"), D("0"), D("10.00")]


def test_free_shipping_coupon_zeroes_shipping_only() -> None:
    fs = Coupon(3, "SHIPFREE", "Free shipping", "free_shipping", D("0"))
    r = price(worked_example(coupon=CouponChoice(fs)))
    assert r.free_shipping and r.usd.shipping_fee == 0 and r.usd.coupon_discount == 0


def test_largest_mall_discount_wins_and_amount_is_per_unit() -> None:
    discounts = (
        MallDiscount("category", 10, "percent", D("10")),  # 4.00 on 39.98
        MallDiscount("sku", 1, "amount", D("3.00")),  # 3.00 × 2 = 6.00: larger
        MallDiscount("sku", 2, "amount", D("50.00")),  # capped at the line, 25.50
        MallDiscount("sku", 3, "percent", D("90"), ends_at=NOW),  # over: ignored
    )
    r = price(worked_example(mall_discounts=discounts, coupon=None))
    assert [l.usd.mall_discount for l in r.lines] == [D("6.00"), D("25.50"), D("0.00")]


def test_tariff_zero_at_or_below_de_minimis_and_shipping_free_from_threshold() -> None:
    small = price(worked_example(lines=(PriceLine(2, "Mug", 20, D("8.50"), 2),), coupon=None))
    assert small.usd.tariff == 0  # goods net 17.00 ≤ 22.00
    big = price(worked_example(lines=(PriceLine(3, "Headphones", 30, D("59.00"), 4),), coupon=None))
    assert big.usd.shipping_fee == 0  # 236.00 ≥ 200.00


def test_jpy_and_kwd_exponents() -> None:
    jpy = price(worked_example(currency="JPY", fx_rate=D("151.23"), exponent=0))
    assert all(v == v.to_integral_value() for v in vars_of(jpy.shown))
    assert jpy.shown.total == jpy.shown.subtotal - jpy.shown.mall_discount - jpy.shown.coupon_discount + jpy.shown.shipping_fee + jpy.shown.tariff - jpy.shown.wallet_deduction
    kwd = price(worked_example(currency="KWD", fx_rate=D("0.30712345"), exponent=3))
    assert all(v.as_tuple().exponent == -3 for v in vars_of(kwd.shown))


def vars_of(amounts) -> list[D]:
    return [amounts.subtotal, amounts.mall_discount, amounts.coupon_discount, amounts.shipping_fee, amounts.tariff, amounts.wallet_deduction, amounts.total]


# --- properties ------------------------------------------------------------------------------

money = st.decimals(min_value=D("0.01"), max_value=D("2000"), places=2)
lines_st = st.lists(
    st.builds(PriceLine, st.integers(1, 50), st.just("x"), st.sampled_from([10, 20, 30, 40]), money, st.integers(1, 20)),
    min_size=1, max_size=8, unique_by=lambda l: l.sku_id,
)
coupons_st = st.one_of(
    st.none(),
    st.builds(
        Coupon, st.just(9), st.none(), st.just("c"), st.sampled_from(["amount", "percent", "free_shipping"]),
        st.decimals(min_value=D("1"), max_value=D("100"), places=2),
        min_spend=st.decimals(min_value=D("0"), max_value=D("300"), places=2),
        max_discount=st.one_of(st.none(), money),
        category_ids=st.one_of(st.none(), st.frozensets(st.sampled_from([10, 20, 30, 40]), min_size=1)),
    ),
)
currencies = st.sampled_from([("USD", D("1"), 2), ("EUR", D("0.92"), 2), ("JPY", D("151.23"), 0), ("KWD", D("0.30712345"), 3), ("GBP", D("0.7891"), 2)])
discounts_st = st.lists(
    st.builds(MallDiscount, st.sampled_from(["sku", "category"]), st.integers(1, 50) | st.sampled_from([10, 20, 30, 40]),
              st.sampled_from(["percent", "amount"]), st.decimals(min_value=D("0"), max_value=D("100"), places=2)),
    max_size=5,
)


@st.composite
def pricing_inputs(draw) -> PricingInput:
    cur, rate, exp = draw(currencies)
    coupon = draw(coupons_st)
    return PricingInput(
        lines=tuple(draw(lines_st)),
        region="DE",
        currency=cur,
        fx_rate=rate,
        exponent=exp,
        shipping=ShippingRule(draw(st.decimals(min_value=D("0"), max_value=D("30"), places=2)), draw(st.one_of(st.none(), money))),
        tariff=TariffRule(draw(st.decimals(min_value=D("0"), max_value=D("40"), places=2)), draw(st.decimals(min_value=D("0"), max_value=D("100"), places=2)),
                          MappingProxyType({30: D("5")})),
        mall_discounts=tuple(draw(discounts_st)),
        now=NOW,
        coupon=None if coupon is None else CouponChoice(coupon),
        wallet_balance=draw(st.decimals(min_value=D("0"), max_value=D("5000"), places=4)),
        use_wallet=draw(st.booleans()),
    )


@settings(max_examples=400, deadline=None)
@given(pricing_inputs())
def test_properties_hold_for_any_cart(inp: PricingInput) -> None:
    r = price(inp)
    for a in (r.usd, r.shown):
        # The summary always adds up, in USD and in the shown currency.
        assert a.total == a.subtotal - a.mall_discount - a.coupon_discount + a.shipping_fee + a.tariff - a.wallet_deduction
        assert all(v >= 0 for v in vars_of(a)), a
    # Coupon allocations sum exactly to the coupon discount.
    assert sum(l.usd.coupon_discount for l in r.lines) == r.usd.coupon_discount
    assert all(l.usd.mall_discount + l.usd.coupon_discount <= l.usd.line_total for l in r.lines)
    # Shown amounts carry exactly the currency's places.
    assert all(v.as_tuple().exponent == -inp.exponent for v in vars_of(r.shown))
    if r.coupon is not None and r.coupon.coupon.kind == "percent" and r.coupon.coupon.max_discount is not None:
        assert r.usd.coupon_discount <= r.coupon.coupon.max_discount
    # The wallet never exceeds half the order nor the balance.
    before = r.usd.total + r.usd.wallet_deduction
    assert r.usd.wallet_deduction <= inp.wallet_balance
    assert r.usd.wallet_deduction * 2 <= before
    if not inp.use_wallet:
        assert r.usd.wallet_deduction == 0


def test_coupon_remainder_never_lands_on_a_line_with_no_room() -> None:
    # Half-up rounding of the first shares would leave the last (fully mall-discounted) line 0.01.
    lines = (
        PriceLine(2, "a", 10, D("0.01"), 1), PriceLine(3, "b", 10, D("0.03"), 1),
        PriceLine(4, "c", 10, D("0.30"), 20), PriceLine(1, "d", 10, D("0.01"), 1),
    )
    one_off = Coupon(9, None, "c", "amount", D("1.00"))
    r = price(worked_example(lines=lines, coupon=CouponChoice(one_off), mall_discounts=(MallDiscount("sku", 1, "amount", D("0.01")),)))
    assert r.usd.coupon_discount == D("1.00")
    assert [l.usd.coupon_discount for l in r.lines][-1] == D("0.00")
    assert sum(l.usd.coupon_discount for l in r.lines) == D("1.00")
