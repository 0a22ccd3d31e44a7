"""paypal_pay, paypal_finished, adyen_pay (/order2/paypal/pay, /order2/Paypal, /order2/adyen/any).

Thin: the caller and the path's ids (and adyen_pay's JSON body) in, shop.payments does the rest with
the process's PSP clients (handlers/context.py PSP), the envelope out. Owner only: another user's
order is 404 order_not_found, as every order route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from handlers.context import PAYMENT_METRICS, PSP, SHOP
from handlers.http import caller_id, json_body, ok
from handlers.payment_metrics import adyen_result, paypal_finished_result
from shop import payments
from shop.errors import UpstreamError, UpstreamTimeout


async def _counted(request: web.Request, provider: str, call: Awaitable[dict[str, Any]],
                   result_of: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """`call`'s answer, counted in payments_total as `result_of(answer)`; a PSP failure (502/504) as "error"."""
    metrics = request.config_dict[PAYMENT_METRICS]
    try:
        answer = await call
    except (UpstreamError, UpstreamTimeout):
        metrics.answered(provider, "error")
        raise
    metrics.answered(provider, result_of(answer))
    return answer


async def paypal_pay(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    config = request.config_dict
    # Created at PayPal: the shopper still has to approve it there.
    return ok(await _counted(request, "paypal", payments.paypal_pay(
        config[SHOP], config[PSP], params.get("order_id", ""), user_id, params.get("ptype", "")), lambda _: "pending"))


async def paypal_finished(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    config = request.config_dict
    return ok(await _counted(request, "paypal", payments.paypal_finished(
        config[SHOP], config[PSP], params.get("order_id", ""), params.get("pay_id", ""), user_id),
        lambda answer: paypal_finished_result(answer["status"])))


async def adyen_pay(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    body = payments.parse_adyen_pay(await json_body(request))
    config = request.config_dict
    return ok(await _counted(request, "adyen", payments.adyen_pay(
        config[SHOP], config[PSP], params.get("order_id", ""), user_id, body), lambda answer: adyen_result(answer["resultCode"])))
