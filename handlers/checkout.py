"""place_order (/order2/place_order, legacy /shopping/cart/checkout/entries)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from handlers.context import SHOP
from handlers.http import caller_id, json_body, ok
from shop.checkout import parse_order_request, place_order as place


async def place_order(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    h = request.headers
    req = parse_order_request(await json_body(request), h.get("Idempotency-Key"), h.get("X-Platform"), h.get("X-App-Version"))
    placed = await place(request.config_dict[SHOP], req, user_id)
    return ok(placed.view())
