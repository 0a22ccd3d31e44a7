"""The legacy body envelope: ``{"code": 0, "msg": "ok", "data": ...}`` and its error form.

Errors carry a real HTTP status plus a legacy code (see the table in legacy-api.md).
Handlers raise :class:`ApiError`; the error middleware (``errors.py``) renders it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

# Legacy error codes used by the emulator (legacy-api.md). 422 sub-codes follow the
# order the spec lists the reasons in.
BAD_REQUEST = 40001
LOGIN_REQUIRED = 40101
NOT_FOUND = 40400
ORDER_NOT_FOUND = 40401
METHOD_NOT_ALLOWED = 40500
INVALID_STATE = 40901
PRICE_CHANGED = 40901
REQUEST_ID_REUSED = 40901
BODY_TOO_LARGE = 41301
COUPON_NOT_APPLICABLE = 42201
ADDRESS_BLOCKED = 42202
OUT_OF_STOCK = 42203
SKU_NOT_FOUND = 42204
SKU_UNAVAILABLE = 42205
REGION_NOT_SERVED = 42206
PAYMENT_METHOD_UNAVAILABLE = 42207
INTERNAL_ERROR = 50000
NOT_MIGRATED = 50101
PSP_ERROR = 50201
UPSTREAM_TIMEOUT = 50401


class ApiError(Exception):
    """An expected failure answered with the error envelope."""

    def __init__(self, status: int, code: int, msg: str, data: Any = None) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status = status
        self.code = code
        self.msg = msg
        self.data = data
        # True: nothing may have been done yet, the same request may be sent again after a pause.
        self.retry_after = False


def bad_request(field: str, reason: str) -> ApiError:
    """400 ``bad_request``; ``data`` names the offending field."""
    return ApiError(400, BAD_REQUEST, "bad_request", {"field": field, "reason": reason})


def ok(data: Any) -> web.Response:
    return web.json_response({"code": 0, "msg": "ok", "data": data})


def error_response(status: int, code: int, msg: str, data: Any = None, *, retry_after: bool = False) -> web.Response:
    resp = web.json_response({"code": code, "msg": msg, "data": data}, status=status)
    if retry_after:
        resp.headers["Retry-After"] = "1"
    return resp
