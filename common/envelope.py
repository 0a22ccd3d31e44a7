"""The legacy envelope ``{"code", "msg", "data"}`` and its numeric codes, written here only.

Every answer the apps see (success, a domain error of shop/, the edge's own refusals) has this
body (shared/spec/legacy-api.md "Errors"). The codes are a contract: the apps branch on them.
Which HTTP status goes with a code is the HTTP layer's business: handlers/errors.py's table.
Old shopping's emulator keeps its own copy (it stands for a separately written service).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

OK = 0
BAD_REQUEST = 40001
LOGIN_REQUIRED = 40101
ADMIN_TOKEN_REQUIRED = 40102
SIGNATURE_INVALID = 40103  # a webhook whose HMAC signature is missing or wrong
FORBIDDEN = 40301
NOT_FOUND = 40401
REQUEST_TIMEOUT = 40801
CONFLICT = 40901
BODY_TOO_LARGE = 41301
HEADERS_TOO_LARGE = 43101
# One code per 422 reason, numbered in the order legacy-api.md lists them; old shopping's emulator uses the same.
COUPON_NOT_APPLICABLE = 42201
ADDRESS_BLOCKED = 42202
OUT_OF_STOCK = 42203
SKU_NOT_FOUND = 42204
SKU_UNAVAILABLE = 42205
REGION_NOT_SERVED = 42206
PAYMENT_METHOD_UNAVAILABLE = 42207
EVENT_NOT_APPLICABLE = 42298
UNPROCESSABLE = 42299  # a 422 reason without a code of its own
INTERNAL_ERROR = 50000
NOT_MIGRATED = 50101
UPSTREAM_UNAVAILABLE = 50201
EDGE_NOT_STARTED = 50301
DB_UNAVAILABLE = 50302
UPSTREAM_BUSY = 50303
UPSTREAM_TIMEOUT = 50401

# Each code's reason (the envelope's msg) when the answer does not name a more precise one
# (40401 is also order_not_found, 40901 price_changed / invalid_state / status_contended).
REASONS: Mapping[int, str] = MappingProxyType({
    OK: "ok",
    BAD_REQUEST: "bad_request",
    LOGIN_REQUIRED: "login_required",
    ADMIN_TOKEN_REQUIRED: "admin_token_required",
    SIGNATURE_INVALID: "invalid_signature",
    FORBIDDEN: "forbidden",
    NOT_FOUND: "not_found",
    REQUEST_TIMEOUT: "request_timeout",
    CONFLICT: "conflict",
    BODY_TOO_LARGE: "body_too_large",
    HEADERS_TOO_LARGE: "headers_too_large",
    COUPON_NOT_APPLICABLE: "coupon_not_applicable",
    ADDRESS_BLOCKED: "address_blocked",
    OUT_OF_STOCK: "out_of_stock",
    SKU_NOT_FOUND: "sku_not_found",
    SKU_UNAVAILABLE: "sku_unavailable",
    REGION_NOT_SERVED: "region_not_served",
    PAYMENT_METHOD_UNAVAILABLE: "payment_method_unavailable",
    EVENT_NOT_APPLICABLE: "event_not_applicable",
    UNPROCESSABLE: "unprocessable",
    INTERNAL_ERROR: "internal_error",
    NOT_MIGRATED: "not_migrated",
    UPSTREAM_UNAVAILABLE: "upstream_unavailable",
    EDGE_NOT_STARTED: "edge_not_started",
    DB_UNAVAILABLE: "db_unavailable",
    UPSTREAM_BUSY: "upstream_busy",
    UPSTREAM_TIMEOUT: "upstream_timeout",
})
# The 422 reasons that have a code of their own.
UNPROCESSABLE_CODES: Mapping[str, int] = MappingProxyType({
    REASONS[code]: code for code in range(COUPON_NOT_APPLICABLE, PAYMENT_METHOD_UNAVAILABLE + 1)
})


def envelope(code: int, msg: str, data: Any = None) -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": data}


def ok_body(data: Any) -> bytes:
    """A success body, compact: the hot paths (calc_price) answer with it."""
    return json.dumps(envelope(OK, REASONS[OK], data), separators=(",", ":")).encode()


def error_body(code: int, msg: str, data: Any = None) -> bytes:
    # default=str: an error's data may hold a Decimal or a datetime; it must still go out.
    return json.dumps(envelope(code, msg, data), default=str).encode()
