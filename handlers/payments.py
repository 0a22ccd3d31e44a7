"""paypal_pay, paypal_finished, adyen_pay (/order2/paypal/pay, /order2/Paypal, /order2/adyen/any).

Thin: the caller and the path's ids (and adyen_pay's JSON body) in, shop.payments does the rest with
the process's PSP clients (handlers/context.py PSP), the envelope out. Owner only: another user's
order is 404 order_not_found, as every order route.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from handlers.context import PSP, SHOP
from handlers.http import caller_id, json_body, ok
from shop import payments


async def paypal_pay(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    config = request.config_dict
    return ok(await payments.paypal_pay(config[SHOP], config[PSP], params.get("order_id", ""), user_id,
                                        params.get("ptype", "")))


async def paypal_finished(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    config = request.config_dict
    return ok(await payments.paypal_finished(config[SHOP], config[PSP], params.get("order_id", ""),
                                             params.get("pay_id", ""), user_id))


async def adyen_pay(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    body = payments.parse_adyen_pay(await json_body(request))
    config = request.config_dict
    return ok(await payments.adyen_pay(config[SHOP], config[PSP], params.get("order_id", ""), user_id, body))
