"""Error middleware: every failure leaves as the legacy error envelope, never a stack trace."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from emulators.legacy import envelope
from emulators.legacy.envelope import ApiError, error_response

log = logging.getLogger(__name__)

# aiohttp's own HTTP exceptions (no route, wrong method, body over client_max_size).
_HTTP_CODES: dict[int, tuple[int, str]] = {
    404: (envelope.NOT_FOUND, "not_found"),
    405: (envelope.METHOD_NOT_ALLOWED, "method_not_allowed"),
    413: (envelope.BODY_TOO_LARGE, "body_too_large"),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.msg, exc.data, retry_after=exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, msg = _HTTP_CODES.get(exc.status, (exc.status * 100, exc.reason.lower().replace(" ", "_")))
        return error_response(exc.status, code, msg, None)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, envelope.INTERNAL_ERROR, "internal_error", None)
