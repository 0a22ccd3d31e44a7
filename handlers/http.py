"""Small HTTP helpers for the new handlers: the caller, the JSON body, the success envelope."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shop.caller import CALLER_HEADER, InvalidCallerId, canonical_caller_id
from common.envelope import ok_body
from shop.errors import BadRequest
from shop.json_input import parse_json_body


def caller_id(request: web.Request) -> int | None:
    """The logged-in user the API gateway vouches for (X-User-Id), or None for anonymous."""
    try:
        canonical = canonical_caller_id(request.headers.get(CALLER_HEADER))
    except InvalidCallerId as exc:
        raise BadRequest(data={"field": CALLER_HEADER, "reason": str(exc)}) from None
    return None if canonical is None else int(canonical)


async def json_body(request: web.Request) -> Any:
    """The request's JSON body, held to shop.json_input's rules (depth, lone surrogates): 400 otherwise."""
    return parse_json_body(await request.read(), request.charset)


def ok(data: Any) -> web.Response:
    return web.Response(body=ok_body(data), content_type="application/json")
