"""A priced cart as the apps see it (legacy-api.md calc_price `data`): money as strings."""

from __future__ import annotations

from typing import Any

from shop.money import money_str
from shop.pricing import PriceResult


def price_view(r: PriceResult) -> dict[str, Any]:
    exp = r.exponent

    def m(amount: Any) -> str:
        return money_str(amount, exp)

    s = r.shown
    coupon = None
    if r.coupon is not None:
        c = r.coupon.coupon
        coupon = {"user_coupon_id": r.coupon.user_coupon_id, "code": c.code, "title": c.title, "kind": c.kind}
    return {
        "currency": r.currency,
        "region": r.region,
        "items": [
            {
                "sku_id": line.sku_id,
                "name": line.name,
                "qty": line.qty,
                "unit_price": m(line.shown.unit_price),
                "line_total": m(line.shown.line_total),
                "mall_discount": m(line.shown.mall_discount),
                "coupon_discount": m(line.shown.coupon_discount),
                "tariff": m(line.shown.tariff),
            }
            for line in r.lines
        ],
        "summary": {
            "subtotal": m(s.subtotal),
            "mall_discount": m(s.mall_discount),
            "coupon_discount": m(s.coupon_discount),
            "shipping_fee": m(s.shipping_fee),
            "tariff": m(s.tariff),
            "wallet_deduction": m(s.wallet_deduction),
            "total": m(s.total),
        },
        "coupon": coupon,
        "coupon_error": r.coupon_error,
        "free_shipping_threshold": None if r.free_shipping_threshold is None else m(r.free_shipping_threshold),
        "wallet_balance": m(r.wallet_balance),
    }
