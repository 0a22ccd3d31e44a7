"""The one error table: envelope code → HTTP status, and every error answer of the process built from it.

Domain errors (shop/errors.py) carry code, reason and data; the edge's own refusals (413, 408,
431, 400 before routing, 502/503/504 from the forwarder, the admin's 401/403/503) name a code of
common/envelope.py. Both become a response through ``answer`` (or ``to_response`` for an
exception), so a code always goes out with the same status, and the body is always the legacy
envelope (starlette's one exception-handler lookup for routes and middleware).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import structlog
from aiohttp import web

from common import envelope as codes
from common.envelope import error_body
from shop.db import is_unavailable
from shop.errors import ShopError, Unavailable

log = structlog.get_logger("handlers")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS: Mapping[int, int] = MappingProxyType({
    codes.BAD_REQUEST: 400,
    codes.LOGIN_REQUIRED: 401,
    codes.ADMIN_TOKEN_REQUIRED: 401,
    codes.SIGNATURE_INVALID: 401,
    codes.FORBIDDEN: 403,
    codes.NOT_FOUND: 404,
    codes.REQUEST_TIMEOUT: 408,
    codes.CONFLICT: 409,
    codes.BODY_TOO_LARGE: 413,
    **{code: 422 for code in codes.UNPROCESSABLE_CODES.values()},
    codes.EVENT_NOT_APPLICABLE: 422,
    codes.UNPROCESSABLE: 422,
    codes.HEADERS_TOO_LARGE: 431,
    codes.INTERNAL_ERROR: 500,
    codes.NOT_MIGRATED: 501,
    codes.UPSTREAM_UNAVAILABLE: 502,
    codes.EDGE_NOT_STARTED: 503,
    codes.DB_UNAVAILABLE: 503,
    codes.UPSTREAM_BUSY: 503,
    codes.UPSTREAM_TIMEOUT: 504,
})


def _response(status: int, code: int, reason: str, data: Any) -> web.Response:
    return web.Response(status=status, body=error_body(code, reason, data), content_type="application/json")


def answer(code: int, data: Any = None, *, reason: str | None = None, retryable: bool = False) -> web.Response:
    """The error answer for `code`: its status from STATUS, its reason unless a more precise one is given."""
    resp = _response(STATUS[code], code, reason or codes.REASONS[code], data)
    if retryable:
        # Nothing was done: the same request may be sent again, after a pause.
        resp.headers["Retry-After"] = "1"
    return resp


def to_response(exc: ShopError) -> web.Response:
    return answer(exc.code, exc.data, reason=exc.reason, retryable=exc.retryable)


def unavailable_response(request: web.Request, exc: Exception) -> web.Response:
    # The cause goes to the log (one line, no stack: the DB being down is not a bug), never to the client.
    # The driver's own message (error code and text), not SQLAlchemy's, which appends the statement.
    detail = str(getattr(exc, "orig", None) or exc)[:200]
    log.warning("db_unavailable", path=request.path, error=type(exc).__name__, detail=detail)
    return to_response(Unavailable())


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
        return to_response(exc)
    except Exception as exc:
        if is_unavailable(exc):
            return unavailable_response(request, exc)
        raise


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ShopError as exc:
        return to_response(exc)
    except web.HTTPException as exc:
        if exc.status == 413:
            return answer(codes.BODY_TOO_LARGE)
        if exc.status < 400:
            raise
        # aiohttp's own 404/405s still answer in the envelope the apps parse.
        return _response(exc.status, exc.status * 100 + 1, exc.reason.lower().replace(" ", "_"), None)
    except Exception as exc:
        if is_unavailable(exc):
            return unavailable_response(request, exc)
        # Never a stack trace to the client; the log has it, keyed by request id.
        log.exception("unhandled_error", path=request.path)
        return answer(codes.INTERNAL_ERROR)
