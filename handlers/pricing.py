"""calc_price (/order2/calc_price) and the coupon list (/order2/coupons)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from handlers.context import SHOP
from handlers.http import caller_id, json_body, ok
from shop.money import money_str
from shop.price_view import price_view
from shop.quote import CouponOption, coupon_options, parse_price_request, quote


async def calc_price(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    req = parse_price_request(await json_body(request))
    shop = request.config_dict[SHOP]
    q = await quote(shop.db_read, shop.reference, req, user_id, shop.clock())
    return ok(price_view(q.result))


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
    shop = request.config_dict[SHOP]
    options, exponent = await coupon_options(shop.db_read, shop.reference, req, user_id, shop.clock())
    return ok({
        "usable": [_option_json(o, exponent) for o in options if o.reason is None],
        "unusable": [_option_json(o, exponent) for o in options if o.reason is not None],
    })
