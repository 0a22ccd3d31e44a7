"""refund (internal): `/order2/refund`, legacy `POST /refund/refund` (legacy-api.md refund).

Internal callers only, with `Authorization: Bearer $SHOP_SERVICE_TOKEN`: without it (absent, wrong,
or no token configured) the answer is 401 and nothing is parsed, read or written. Thin: the body →
shop.refunds.request_refund (reserve, PSP call outside the transaction, apply) → `{"refund_id",
"status"}`. A PSP that errs or times out is not an error here: the refund is `retrying` and the
consumers' retrier submits it again with the same key.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import hdrs, web

from handlers.context import PSP_REFUNDS, REFUND_INFLIGHT, SERVICE_TOKEN, SHOP
from handlers.errors import to_response
from handlers.http import json_body, ok
from shop.errors import LoginRequired
from shop.refunds import parse_refund_request, request_refund
from shop.tokens import bearer_matches


async def refund(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    config = request.config_dict
    if not bearer_matches(request.headers.get(hdrs.AUTHORIZATION), config[SERVICE_TOKEN]):
        refused = to_response(LoginRequired(data={"reason": "service token required"}))
        refused.headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
        return refused
    req = parse_refund_request(await json_body(request))
    done = await request_refund(config[SHOP], config[PSP_REFUNDS], req, inflight=config[REFUND_INFLIGHT])
    return ok(done.view())
