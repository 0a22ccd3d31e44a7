"""The one place domain exceptions become HTTP answers in the legacy envelope."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from shop.db import is_unavailable
from shop.errors import ShopError, Unavailable, envelope

log = structlog.get_logger("handlers")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: int, msg: str, data: object = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(envelope(code, msg, data), default=str).encode(),
        content_type="application/json",
    )


def shop_error_response(exc: ShopError) -> web.Response:
    resp = error_response(exc.status, exc.code, exc.msg, exc.data)
    if isinstance(exc, Unavailable):
        resp.headers["Retry-After"] = "1"
    return resp


def unavailable_response(request: web.Request, exc: Exception) -> web.Response:
    # The cause goes to the log (one line, no stack: the DB being down is not a bug), never to the client.
    # The driver's own message (error code and text), not SQLAlchemy's, which appends the statement.
    detail = str(getattr(exc, "orig", None) or exc)[:200]
    log.warning("db_unavailable", path=request.path, error=type(exc).__name__, detail=detail)
    return shop_error_response(Unavailable())


async def answer_new(
    handler: Callable[[web.Request, Mapping[str, str]], Awaitable[web.StreamResponse]],
    request: web.Request,
    params: Mapping[str, str],
) -> web.StreamResponse:
    """A new handler's answer with domain errors already turned into their HTTP form.

    The edge needs the final status and body in hand (for metrics and shadow diffs), so it
    calls this rather than letting the error middleware convert after the fact.
    """
    try:
        return await handler(request, params)
    except ShopError as exc:
        return shop_error_response(exc)
    except Exception as exc:
        if is_unavailable(exc):
            return unavailable_response(request, exc)
        raise


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ShopError as exc:
        return shop_error_response(exc)
    except web.HTTPException as exc:
        if exc.status == 413:
            return error_response(413, 41301, "body_too_large")
        if exc.status < 400:
            raise
        # aiohttp's own 404/405s still answer in the envelope the apps parse.
        return error_response(exc.status, exc.status * 100 + 1, exc.reason.lower().replace(" ", "_"))
    except Exception as exc:
        if is_unavailable(exc):
            return unavailable_response(request, exc)
        # Never a stack trace to the client; the log has it, keyed by request id.
        log.exception("unhandled_error", path=request.path)
        return error_response(500, 50000, "internal_error")
