"""calc_price (/order2/calc_price) and the coupon list (/order2/coupons)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from handlers.context import DB_READ, REFERENCE
from handlers.http import caller_id, json_body, ok
from shop.money import money_str
from shop.pricing import PriceResult
from shop.quote import CouponOption, coupon_options, parse_price_request, quote
from shop.schema import utcnow


def price_json(r: PriceResult) -> dict[str, Any]:
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


async def calc_price(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    req = parse_price_request(await json_body(request))
    cfg = request.config_dict
    q = await quote(cfg[DB_READ], cfg[REFERENCE], req, user_id, utcnow())
    return ok(price_json(q.result))


def _option_json(o: CouponOption, exponent: int) -> dict[str, Any]:
    c = o.choice.coupon
    out: dict[str, Any] = {
        "user_coupon_id": o.choice.user_coupon_id,
        "coupon_id": c.coupon_id,
        "code": c.code,
        "title": c.title,
        "kind": c.kind,
        "discount": None if o.discount is None else money_str(o.discount, exponent),
        "expires_at": None if c.ends_at is None else c.ends_at.isoformat(timespec="seconds") + "Z",
    }
    if o.reason is not None:
        out["reason"] = o.reason
    return out


async def coupons(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    req = parse_price_request(await json_body(request))
    cfg = request.config_dict
    options, exponent = await coupon_options(cfg[DB_READ], cfg[REFERENCE], req, user_id, utcnow())
    return ok({
        "usable": [_option_json(o, exponent) for o in options if o.reason is None],
        "unusable": [_option_json(o, exponent) for o in options if o.reason is not None],
    })
