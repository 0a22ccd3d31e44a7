"""The order detail (v43), its payment methods and "I have paid" (/order2/detail, /payment_methods, /paid_from_client).

Thin: the caller and the path's order id in, shop.order_views does the rest, the envelope out.
Owner only; another user's order, an anonymous caller and an id that is not an id are all
404 order_not_found (shop/order_views.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from handlers.context import SHOP
from handlers.http import caller_id, ok
from shop import order_views


async def detail(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    shop = request.config_dict[SHOP]
    return ok(await order_views.order_detail(shop.db_read, params.get("order_id", ""), user_id, shop.clock()))


async def payment_methods(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    methods = await order_views.payment_methods_for(
        request.config_dict[SHOP].db_read, params.get("order_id", ""), user_id, request.headers.get("X-Platform"),
    )
    return ok({"methods": methods})


async def paid_from_client(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    order_id = params.get("order_id", "")
    return ok(await request.config_dict[SHOP].run("new", lambda uow: order_views.paid_from_client(uow, order_id, user_id)))
