"""PayPal's sandbox as the emulator plays it: OAuth2 tokens, Orders v2, capture refunds.

- ``POST /v1/oauth2/token`` (HTTP Basic client id:secret, ``grant_type=client_credentials``) →
  ``{"access_token": "A21AA…", "token_type": "Bearer", "expires_in": …}``; an API call with a
  missing, unknown or expired token is 401 ``invalid_token``.
- ``POST /v2/checkout/orders`` → 201, status CREATED (PAYER_ACTION_REQUIRED with a
  ``payment_source.paypal`` experience context), links ``self``, ``approve`` (``payer-action``)
  and ``capture``. Amounts are checked like PayPal does: a string, no decimals for HUF/JPY/TWD
  (422 DECIMAL_PRECISION), more than zero.
- ``GET /checkoutnow?token={id}`` is the approve link: fetching it marks the order APPROVED (the
  payer said yes) and redirects to the order's ``return_url`` (``?token=…&PayerID=…``) if it has one.
- ``POST /v2/checkout/orders/{id}/capture`` → 201 with the order, its capture under
  ``purchase_units[0].payments.captures``; not approved → 422 ORDER_NOT_APPROVED, captured
  already → 422 ORDER_ALREADY_CAPTURED (an intent=CAPTURE order has one capture).
- ``POST /v2/payments/captures/{id}/refund`` → 201 COMPLETED refund (all that is left when no
  amount is given); more than is left → 422 REFUND_AMOUNT_EXCEEDED, nothing left → 422
  CAPTURE_FULLY_REFUNDED.
- ``PayPal-Request-Id`` on the POSTs: a repeat gets the first answer, 200 instead of 201.

PayPal accepts fewer currencies than ISO has; the emulator takes any code (it checks decimals
only), so the other currencies' formats can be tested here too.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from aiohttp import web

from emulators.psp.idempotency import Act, Refusal
from emulators.psp.state import STATE, PspState, call_hits, note, respond_once

PROVIDER = "paypal"
_VALUE = re.compile(r"^\d{1,15}(\.\d{1,3})?$")
# PayPal's decimals where they are not 2 (its currency page; ISO's thousandths currencies have 3).
_DECIMALS = {"HUF": 0, "JPY": 0, "TWD": 0, "BHD": 3, "JOD": 3, "KWD": 3, "OMR": 3, "TND": 3, "CLP": 0,
             "ISK": 0, "KRW": 0, "VND": 0}


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/oauth2/token", token)
    r.add_post("/v2/checkout/orders", create_order)
    r.add_get("/v2/checkout/orders/{order_id}", get_order)
    r.add_post("/v2/checkout/orders/{order_id}/capture", capture_order)
    r.add_post("/v2/payments/captures/{capture_id}/refund", refund_capture)
    r.add_get("/checkoutnow", approve)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error(status: int, name: str, issue: str | None = None, description: str = "") -> web.Response:
    body: dict[str, Any] = {"name": name, "message": description or name.replace("_", " ").lower(),
                            "debug_id": secrets.token_hex(7)}
    if issue is not None:
        body["details"] = [{"issue": issue, "description": description}]
    return web.json_response(body, status=status)


def unprocessable(issue: str, description: str) -> Refusal:
    return Refusal(422, {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": issue, "description": description}],
                         "message": "The requested action could not be performed, semantically incorrect, or failed "
                                    "business validation.", "debug_id": secrets.token_hex(7)})


def not_found() -> Refusal:
    return Refusal(404, {"name": "RESOURCE_NOT_FOUND", "message": "The specified resource does not exist.",
                         "details": [{"issue": "INVALID_RESOURCE_ID",
                                      "description": "Specified resource ID does not exist."}],
                         "debug_id": secrets.token_hex(7)})


def reused() -> tuple[int, Any]:
    refusal = unprocessable("IDEMPOTENCY_KEY_REUSED",
                            "This PayPal-Request-Id was first used for another request (emulator check).")
    return refusal.status, refusal.body


# --- OAuth2 --------------------------------------------------------------------------------------


async def token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cfg = state.config
    expected = "Basic " + base64.b64encode(f"{cfg.paypal_client_id}:{cfg.paypal_secret}".encode()).decode()
    if not secrets.compare_digest(request.headers.get("Authorization", "").encode(), expected.encode()):
        return web.json_response({"error": "invalid_client", "error_description": "Client Authentication failed"},
                                 status=401)
    form = await request.post()
    if form.get("grant_type") != "client_credentials":
        return web.json_response({"error": "unsupported_grant_type",
                                  "error_description": "Grant Type is NULL or not supported"}, status=400)
    value = "A21AA" + secrets.token_urlsafe(48)
    state.tokens[value] = time.monotonic() + cfg.paypal_token_ttl
    note(request, token_issued=True)
    return web.json_response({"scope": "https://uri.paypal.com/services/payments/payment", "access_token": value,
                              "token_type": "Bearer", "app_id": "APP-80W284485P519543T",
                              "expires_in": cfg.paypal_token_ttl, "nonce": now() + secrets.token_hex(8)})


def authorised(request: web.Request) -> bool:
    tokens = request.app[STATE].tokens
    header = request.headers.get("Authorization", "")
    value = header[len("Bearer "):] if header.startswith("Bearer ") else ""
    expiry = tokens.get(value)
    return expiry is not None and time.monotonic() < expiry


def invalid_token() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(text=orjson.dumps({"error": "invalid_token",
                                                   "error_description": "Access Token not found in cache"}).decode(),
                                content_type="application/json")


async def json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        bad = {"name": "INVALID_REQUEST", "message": "Request is not well-formed, syntactically incorrect, or violates "
               "schema.", "details": [{"issue": "MALFORMED_REQUEST_JSON",
                                       "description": "The request JSON is not well formed."}]}
        raise web.HTTPBadRequest(text=orjson.dumps(bad).decode(), content_type="application/json") from None


async def respond(request: web.Request, body: Any, act: Act) -> web.Response:
    return await respond_once(request, PROVIDER, "PayPal-Request-Id", body, act,
                              replay_status=lambda s: 200 if s == 201 else s, reused=reused)


async def api_request(request: web.Request) -> tuple[PspState, Any, str]:
    """The state, the JSON body and the origin of a PayPal API call with a live token (401 otherwise)."""
    if not authorised(request):
        raise invalid_token()
    return request.app[STATE], await json_body(request), origin_of(request)


# --- orders --------------------------------------------------------------------------------------


def check_amount(amount: Any) -> tuple[Decimal, str]:
    if not isinstance(amount, dict):
        raise unprocessable("MISSING_REQUIRED_PARAMETER", "amount is required")
    currency, value = amount.get("currency_code"), amount.get("value")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise unprocessable("INVALID_CURRENCY_CODE", "Currency code is invalid or is not currently supported.")
    if not isinstance(value, str) or not _VALUE.match(value):
        raise unprocessable("INVALID_PARAMETER_SYNTAX", "amount.value is not a decimal string")
    places = len(value.partition(".")[2])
    if places > _DECIMALS.get(currency, 2):
        raise unprocessable("DECIMAL_PRECISION",
                             f"If the currency supports decimals, only {_DECIMALS.get(currency, 2)} decimal place "
                             "precision is supported.")
    try:
        number = Decimal(value)
    except InvalidOperation:  # the pattern admits only numbers
        raise unprocessable("INVALID_PARAMETER_SYNTAX", "amount.value is not a number")
    if number <= 0:
        raise unprocessable("CANNOT_BE_ZERO_OR_NEGATIVE", "Must be greater than zero.")
    return number, currency


def order_view(state: PspState, order: dict[str, Any], origin: str) -> dict[str, Any]:
    oid = order["id"]
    units = []
    for unit in order["purchase_units"]:
        view = {k: v for k, v in unit.items() if k != "captures"}
        if unit["captures"]:
            view["payments"] = {"captures": [capture_view(state.captures[c], origin) for c in unit["captures"]]}
        units.append(view)
    rel = "payer-action" if order["payer_action"] else "approve"
    links = [{"href": f"{origin}/v2/checkout/orders/{oid}", "rel": "self", "method": "GET"}]
    if order["status"] in ("CREATED", "PAYER_ACTION_REQUIRED"):
        links.append({"href": f"{origin}/checkoutnow?token={oid}", "rel": rel, "method": "GET"})
    if order["status"] == "APPROVED":
        links.append({"href": f"{origin}/v2/checkout/orders/{oid}/capture", "rel": "capture", "method": "POST"})
    view_doc: dict[str, Any] = {"id": oid, "intent": "CAPTURE", "status": order["status"], "purchase_units": units,
                                "create_time": order["create_time"], "links": links}
    if order.get("payer"):
        view_doc["payer"] = order["payer"]
    return view_doc


def capture_view(capture: dict[str, Any], origin: str) -> dict[str, Any]:
    return {"id": capture["id"], "status": capture["status"], "amount": capture["amount"], "final_capture": True,
            "create_time": capture["create_time"],
            "links": [{"href": f"{origin}/v2/payments/captures/{capture['id']}", "rel": "self", "method": "GET"},
                      {"href": f"{origin}/v2/payments/captures/{capture['id']}/refund", "rel": "refund",
                       "method": "POST"}]}


def origin_of(request: web.Request) -> str:
    return str(request.url.origin())


async def create_order(request: web.Request) -> web.Response:
    state, body, origin = await api_request(request)

    def act() -> tuple[int, Any]:
        if not isinstance(body, dict) or body.get("intent") != "CAPTURE":
            raise unprocessable("INVALID_PARAMETER_VALUE", "intent must be CAPTURE (the emulator has no AUTHORIZE)")
        units = body.get("purchase_units")
        if not isinstance(units, list) or len(units) != 1 or not isinstance(units[0], dict):
            raise unprocessable("INVALID_ARRAY_LENGTH", "exactly one purchase unit (the emulator's limit)")
        check_amount(units[0].get("amount"))
        source = body.get("payment_source")
        paypal = source.get("paypal") if isinstance(source, dict) else None
        context = paypal.get("experience_context") if isinstance(paypal, dict) else None
        if context is None:
            app_ctx = body.get("application_context")
            context = app_ctx if isinstance(app_ctx, dict) else {}
        oid = state.new_id(17)
        state.orders[oid] = {
            "id": oid, "status": "PAYER_ACTION_REQUIRED" if paypal is not None else "CREATED",
            "payer_action": paypal is not None, "create_time": now(),
            "return_url": context.get("return_url") if isinstance(context, dict) else None,
            "purchase_units": [{**{k: v for k, v in units[0].items() if k in ("reference_id", "custom_id",
                                                                               "invoice_id", "description")},
                                "amount": units[0]["amount"], "captures": []}],
        }
        return 201, order_view(state, state.orders[oid], origin)

    return await respond(request, body, act)


async def get_order(request: web.Request) -> web.Response:
    if not authorised(request):
        raise invalid_token()
    state = request.app[STATE]
    order = state.orders.get(request.match_info["order_id"])
    if order is None:
        return error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID", "Specified resource ID does not exist.")
    return web.json_response(order_view(state, order, origin_of(request)))


async def approve(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    order = state.orders.get(request.query.get("token", ""))
    if order is None:
        return web.Response(status=404, text="This checkout session is not known (emulator).")
    if order["status"] in ("CREATED", "PAYER_ACTION_REQUIRED"):
        order["status"] = "APPROVED"
        order["payer"] = {"payer_id": state.new_id(13), "email_address": "buyer@example.com",
                          "name": {"given_name": "Emulated", "surname": "Buyer"}}
    payer = order.get("payer", {}).get("payer_id", "")
    if order["return_url"]:
        sep = "&" if "?" in order["return_url"] else "?"
        raise web.HTTPFound(f"{order['return_url']}{sep}token={order['id']}&PayerID={payer}")
    return web.Response(text=f"PayPal order {order['id']} is {order['status']} (emulator).", content_type="text/html")


async def capture_order(request: web.Request) -> web.Response:
    state, body, origin = await api_request(request)
    oid = request.match_info["order_id"]
    capture_status = call_hits(request).paypal_capture_status or "COMPLETED"

    def act() -> tuple[int, Any]:
        order = state.orders.get(oid)
        if order is None:
            raise not_found()
        if order["status"] == "COMPLETED":
            raise unprocessable("ORDER_ALREADY_CAPTURED", "Order already captured.If 'intent=CAPTURE' only one "
                                 "capture per order is allowed.")
        if order["status"] != "APPROVED":
            raise unprocessable("ORDER_NOT_APPROVED", "Payer has not yet approved the Order for payment.")
        cid = state.new_id(17)
        unit = order["purchase_units"][0]
        state.captures[cid] = {"id": cid, "order_id": oid, "status": capture_status, "amount": unit["amount"],
                               "create_time": now(), "refunds": []}
        unit["captures"].append(cid)
        order["status"] = "COMPLETED"
        return 201, order_view(state, order, origin)

    return await respond(request, body, act)


PENDING_ENDS = ("COMPLETED", "DECLINED")


def settle_pending_capture(state: PspState, capture_id: str, status: str) -> dict[str, Any]:
    """A PENDING capture's end (the control API's knob): KeyError for an unknown capture, ValueError if not PENDING."""
    capture = state.captures[capture_id]
    if capture["status"] != "PENDING":
        raise ValueError(f"capture {capture_id} is {capture['status']}, not PENDING")
    capture["status"] = status
    return {"id": capture_id, "status": status}


async def refund_capture(request: web.Request) -> web.Response:
    state, body, origin = await api_request(request)
    cid = request.match_info["capture_id"]

    def act() -> tuple[int, Any]:
        capture = state.captures.get(cid)
        if capture is None:
            raise not_found()
        if capture["status"] not in ("COMPLETED", "PARTIALLY_REFUNDED"):
            if capture["status"] == "REFUNDED":
                raise unprocessable("CAPTURE_FULLY_REFUNDED", "The capture has already been fully refunded.")
            raise unprocessable("REFUND_NOT_ALLOWED", f"A {capture['status']} capture cannot be refunded.")
        currency = capture["amount"]["currency_code"]
        captured = Decimal(capture["amount"]["value"])
        refunded = sum((Decimal(state.paypal_refunds[r]["amount"]["value"]) for r in capture["refunds"]), Decimal(0))
        left = captured - refunded
        asked = body.get("amount") if isinstance(body, dict) else None
        if asked is None:
            places = _DECIMALS.get(currency, 2)
            amount = {"currency_code": currency, "value": format(left.quantize(Decimal(1).scaleb(-places)), "f")}
            value = left
        else:
            value, asked_currency = check_amount(asked)
            if asked_currency != currency:
                raise unprocessable("REFUND_CURRENCY_MISMATCH", "Refund must be in the currency of the capture.")
            amount = asked
        if value > left:
            raise unprocessable("REFUND_AMOUNT_EXCEEDED", "The refund amount must be less than or equal to the "
                                 "capture amount that has not yet been refunded.")
        rid = state.new_id(17)
        refund = {"id": rid, "status": "COMPLETED", "amount": amount, "create_time": now(), "capture_id": cid}
        if isinstance(body, dict) and isinstance(body.get("invoice_id"), str):
            refund["invoice_id"] = body["invoice_id"]
        state.paypal_refunds[rid] = refund
        capture["refunds"].append(rid)
        capture["status"] = "REFUNDED" if value == left else "PARTIALLY_REFUNDED"
        return 201, {"id": rid, "status": "COMPLETED", "amount": amount,
                     "links": [{"href": f"{origin}/v2/payments/refunds/{rid}", "rel": "self", "method": "GET"},
                               {"href": f"{origin}/v2/payments/captures/{cid}", "rel": "up", "method": "GET"}]}

    return await respond(request, body, act)


def snapshot(state: PspState) -> dict[str, Any]:
    return {"orders": {oid: {"status": o["status"], "reference_id": o["purchase_units"][0].get("reference_id"),
                             "amount": o["purchase_units"][0]["amount"], "captures": o["purchase_units"][0]["captures"]}
                       for oid, o in state.orders.items()},
            "captures": {cid: {k: v for k, v in c.items() if k != "create_time"} for cid, c in state.captures.items()},
            "refunds": {rid: {k: v for k, v in r.items() if k != "create_time"} for rid, r in state.paypal_refunds.items()},
            "tokens_issued": len(state.tokens)}
