"""What the edge refuses before routing: oversized headers, slow or broken bodies, malformed HTTP.

Two layers, one set of answers (all in the legacy envelope, connection closed, one
``bad_http_request`` log line and ``edge_bad_requests_total{reason}``):

- aiohttp's HTTP parser, bounded by :func:`parser_limits` (``web.Application(handler_args=…)``, so
  ``run_app``, the gunicorn workers and test servers all get the same bounds): one header line
  (name and value) at most ``EDGE_MAX_HEADER_BYTES``, at most ``MAX_HEADERS`` of them, a request
  line of at most ``REQUEST_LINE_BYTES``. What the parser rejects is answered by
  ``proxy.server.EdgeRequestHandler`` through :func:`refusal`.
- :func:`limits_middleware`, for what only a whole request shows: all header lines together over
  ``EDGE_MAX_HEADER_BYTES`` (431), a body over ``EDGE_MAX_BODY_BYTES`` (413), a body not received
  within ``EDGE_BODY_READ_TIMEOUT_SECONDS`` (408) or with broken framing (400). It reads the body
  for every handler, so the new side's /order2 handlers (which read it themselves) get the same
  bound: their later ``request.read()`` returns the bytes already read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestPayloadError

from common import envelope as codes
from handlers.errors import Handler, answer
from proxy.metrics import EdgeMetrics
from common.settings import Settings

log = structlog.get_logger("edge.limits")

# aiohttp's own default for the request line: longer URLs than any app sends.
REQUEST_LINE_BYTES = 8190
MAX_HEADERS = 128
# ": " and CRLF around each header's name and value on the wire.
_HEADER_FRAMING = 4



def parser_limits(settings: Settings) -> dict[str, Any]:
    """aiohttp server arguments bounding what its parser accepts (web.Application handler_args)."""
    return {"max_line_size": REQUEST_LINE_BYTES, "max_field_size": settings.max_header_bytes, "max_headers": MAX_HEADERS}


def parse_error_reason(exc: HttpProcessingError, max_field_size: int) -> str:
    """A bounded reason for what aiohttp's parser rejected (the label of edge_bad_requests_total)."""
    if isinstance(exc, LineTooLong):
        # The limit it names tells a header line from the request line (REQUEST_LINE_BYTES < 8 KiB ≤ the header cap).
        return "headers_too_large" if str(exc.args[1]) == str(max_field_size) else "request_line_too_long"
    if isinstance(exc, BadHttpMethod):
        return "bad_method"
    if isinstance(exc, BadStatusLine):
        return "bad_request_line"
    if isinstance(exc, InvalidURLError):
        return "bad_url"
    if "Too many headers" in exc.message:
        return "headers_too_large"
    return "bad_request"


def refusal(reason: str, settings: Settings) -> web.Response:
    """The answer to a request refused for ``reason``; the connection is closed after it."""
    if reason == "headers_too_large":
        refused = answer(codes.HEADERS_TOO_LARGE, {"limit_bytes": settings.max_header_bytes, "max_headers": MAX_HEADERS})
    elif reason == "body_timeout":
        refused = answer(codes.REQUEST_TIMEOUT, {"limit_seconds": settings.body_read_timeout_seconds})
    else:
        refused = answer(codes.BAD_REQUEST, {"reason": reason})
    # Whatever the client still sends is not a next request we could trust to find the start of.
    refused.force_close()
    return refused


def refuse(reason: str, settings: Settings, metrics: EdgeMetrics, peer: str | None) -> web.Response:
    """Count, log (one line, no traceback, nothing of the request's content) and answer a refusal."""
    metrics.bad_request(reason)
    log.warning("bad_http_request", reason=reason, peer=peer)
    return refusal(reason, settings)


def header_bytes(request: web.BaseRequest) -> int:
    return sum(len(name) + len(value) + _HEADER_FRAMING for name, value in request.raw_headers)


def limits_middleware(settings: Settings, metrics: EdgeMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    max_body = settings.max_body_bytes

    def too_large() -> web.Response:
        metrics.body_too_large.inc()
        return answer(codes.BODY_TOO_LARGE, {"limit": max_body})

    @web.middleware
    async def limits(request: web.Request, handler: Handler) -> web.StreamResponse:
        if header_bytes(request) > settings.max_header_bytes:
            return refuse("headers_too_large", settings, metrics, request.remote)
        if request.body_exists:
            length = request.content_length
            if length is not None and length > max_body:
                return too_large()
            try:
                async with asyncio.timeout(settings.body_read_timeout_seconds):
                    await request.read()  # kept by the request: the handler's read() returns it
            except TimeoutError:
                return refuse("body_timeout", settings, metrics, request.remote)
            except web.HTTPRequestEntityTooLarge:
                return too_large()
            except RequestPayloadError:
                return refuse("bad_body", settings, metrics, request.remote)
        return await handler(request)

    return limits
