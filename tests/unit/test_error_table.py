"""The one error table: every envelope code has one HTTP status and one default reason, and domain errors carry no status.

Proves: each code of common/envelope.py is in handlers/errors.STATUS and REASONS (an answer can
never be built for a code without a status); the codes are legacy-api.md's (status = code // 100,
except the 43101 of 431); a domain error answers with its code's status, reason and data; a
retryable one says Retry-After; and a ShopError subclass written the old way (its own `status`
or `msg`) is refused at import instead of answering with its parent's reason.
"""

from __future__ import annotations

import json

import pytest

from common import envelope as codes
from handlers.errors import STATUS, answer, to_response
from shop.errors import Conflict, NotFound, ShopError, Unavailable, Unprocessable

CODES = {name: value for name, value in vars(codes).items() if name.isupper() and isinstance(value, int)}


@pytest.mark.parametrize("name", sorted(set(CODES) - {"OK"}))
def test_every_code_has_a_status_and_a_reason(name: str) -> None:
    code = CODES[name]
    assert code in STATUS and code in codes.REASONS
    assert STATUS[code] == (431 if code == codes.HEADERS_TOO_LARGE else code // 100)


def test_an_edge_refusal_answers_in_the_envelope_with_the_codes_status() -> None:
    resp = answer(codes.BODY_TOO_LARGE, {"limit": 10})
    assert resp.status == 413 and resp.content_type == "application/json"
    assert resp.body is not None
    assert json.loads(bytes(resp.body)) == {"code": 41301, "msg": "body_too_large", "data": {"limit": 10}}


@pytest.mark.parametrize("exc, status, body", [
    (NotFound("order_not_found"), 404, {"code": 40401, "msg": "order_not_found", "data": None}),
    (Conflict("price_changed", {"total": "1.00"}), 409, {"code": 40901, "msg": "price_changed", "data": {"total": "1.00"}}),
    (Unprocessable("out_of_stock", {"sku_id": 7}), 422, {"code": 42203, "msg": "out_of_stock", "data": {"sku_id": 7}}),
    (Unprocessable("something_new"), 422, {"code": 42299, "msg": "something_new", "data": None}),
])
def test_a_domain_error_answers_with_its_codes_status(exc: ShopError, status: int, body: dict[str, object]) -> None:
    resp = to_response(exc)
    assert resp.body is not None
    assert resp.status == status and json.loads(bytes(resp.body)) == body and "Retry-After" not in resp.headers


def test_a_retryable_error_says_when_to_try_again() -> None:
    resp = to_response(Unavailable())
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert Unavailable().retryable and not NotFound().retryable


def test_a_domain_error_carrying_an_http_status_is_refused() -> None:
    with pytest.raises(TypeError, match="sets status"):
        type("Teapot", (ShopError,), {"status": 418})
    with pytest.raises(TypeError, match="sets msg"):
        type("Renamed", (Conflict,), {"msg": "renamed"})
