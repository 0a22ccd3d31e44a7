"""place_order (/order2/place_order, legacy /shopping/cart/checkout/entries)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from handlers.context import DB, DB_READ, REFERENCE
from handlers.http import caller_id, json_body, ok
from shop.checkout import parse_order_request, place_order as place
from shop.schema import utcnow


async def place_order(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    user_id = caller_id(request)
    h = request.headers
    req = parse_order_request(await json_body(request), h.get("Idempotency-Key"), h.get("X-Platform"), h.get("X-App-Version"))
    cfg = request.config_dict
    placed = await place(cfg[DB], cfg[DB_READ], cfg[REFERENCE], req, user_id, utcnow())
    return ok(placed.view())
