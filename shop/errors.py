"""The few domain exceptions; one middleware (handlers/errors.py) turns them into HTTP answers.

Each carries the legacy envelope's numeric code and reason string (shared/spec/legacy-api.md).
"""

from __future__ import annotations

from typing import Any


class ShopError(Exception):
    status = 400
    code = 40001
    msg = "bad_request"

    def __init__(self, msg: str | None = None, data: Any = None) -> None:
        super().__init__(msg or self.msg)
        if msg is not None:
            self.msg = msg
        self.data = data


class BadRequest(ShopError):
    status, code, msg = 400, 40001, "bad_request"


class LoginRequired(ShopError):
    status, code, msg = 401, 40101, "login_required"


class Forbidden(ShopError):
    status, code, msg = 403, 40301, "forbidden"


class NotFound(ShopError):
    status, code, msg = 404, 40401, "not_found"


class Conflict(ShopError):
    status, code, msg = 409, 40901, "conflict"


# One code per 422 reason, numbered in the order legacy-api.md lists them; old shopping's emulator uses the same.
UNPROCESSABLE_CODES = {
    "coupon_not_applicable": 42201,
    "address_blocked": 42202,
    "out_of_stock": 42203,
    "sku_not_found": 42204,
    "sku_unavailable": 42205,
    "region_not_served": 42206,
    "payment_method_unavailable": 42207,
}


class Unprocessable(ShopError):
    """422s: the request is well-formed but the shop can't do it; msg is one of UNPROCESSABLE_CODES."""

    status, code, msg = 422, 42299, "unprocessable"

    def __init__(self, msg: str, data: Any = None) -> None:
        super().__init__(msg, data)
        self.code = UNPROCESSABLE_CODES.get(msg, 42299)


class NotMigrated(ShopError):
    """A migrated route whose new handler is not written yet."""

    status, code, msg = 501, 50101, "not_migrated"


class UpstreamError(ShopError):
    status, code, msg = 502, 50201, "upstream_unavailable"


class UpstreamTimeout(ShopError):
    status, code, msg = 504, 50401, "upstream_timeout"


def envelope(code: int, msg: str, data: Any = None) -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": data}


class Unavailable(ShopError):
    """The database can't be reached or gave up on us (restart, failover, pool exhausted, lock wait):
    nothing was written, and the same request may be sent again (place_order's Idempotency-Key makes
    even a retried checkout whose commit did land answer with that order)."""

    status, code, msg = 503, 50302, "db_unavailable"
