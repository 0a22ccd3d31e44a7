"""Adyen's Checkout API v71 test environment as the emulator plays it: payments, refunds, webhooks.

- ``X-API-Key`` on every call (401 ``security`` otherwise); the body's ``merchantAccount`` must
  be the configured one (403 ``901 Invalid Merchant Account``).
- ``POST /v71/payments`` → 200 with ``resultCode``, by Adyen's test behaviour:
  ``paymentMethod.holderName`` ``REFUSED`` → Refused, ``ERROR`` → Error; card number
  ``4212345678910006`` (``number``, or ``encryptedCardNumber`` as ``test_4212345678910006``) →
  RedirectShopper with a redirect ``action``; anything else → Authorised. Final outcomes send the
  AUTHORISATION webhook (success "true"/"false"), and an authorisation is followed by CAPTURE
  (the merchant account captures at once, with capture notifications on).
- The action's URL (``GET /checkoutshopper/threeDS/redirect?MD=…``) plays the issuer's page:
  fetching it authorises the payment (webhooks as above) and redirects to the payment's
  ``returnUrl`` with ``redirectResult``.
- ``POST /v71/payments/{pspReference}/refunds`` → 201 ``status: received``; the outcome follows
  as a webhook: REFUND success "true", or success "false" when more than is left is asked (or
  the payment was never authorised), and with the ``adyen_refund_failed`` fault REFUND "true"
  then REFUND_FAILED (which Adyen sends with success "true" too).
- ``Idempotency-Key`` on the POSTs: a repeat gets the first answer (same status) and sends no
  second webhook, because nothing happened a second time.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import orjson
from aiohttp import web

from emulators.psp.idempotency import Act, Refusal
from emulators.psp.state import STATE, PspState, call_hits, respond_once

PROVIDER = "adyen"
REDIRECT_CARD = "4212345678910006"


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v71/payments", payments)
    r.add_post("/v71/payments/{psp_reference}/refunds", refunds)
    r.add_get("/checkoutshopper/threeDS/redirect", issuer_page)


def refusal(status: int, code: str, message: str, error_type: str = "validation") -> Refusal:
    return Refusal(status, {"status": status, "errorCode": code, "message": message, "errorType": error_type,
                            "pspReference": secrets.token_hex(8).upper()})


def reused() -> tuple[int, Any]:
    r = refusal(422, "emulator_key_reused", "This Idempotency-Key was first used for another request (emulator check)")
    return r.status, r.body


def authorised(request: web.Request) -> bool:
    expected = request.app[STATE].config.adyen_api_key.encode()
    return secrets.compare_digest(request.headers.get("X-API-Key", "").encode(), expected)


def unauthorised() -> web.Response:
    return web.json_response({"status": 401, "errorCode": "000", "message": "HTTP Status Response - Unauthorized",
                              "errorType": "security"}, status=401)


async def json_body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        bad = refusal(400, "702", "Unexpected input: the body is not JSON")
        raise web.HTTPBadRequest(text=orjson.dumps(bad.body).decode(), content_type="application/json") from None


async def respond(request: web.Request, body: Any, act: Act) -> web.Response:
    return await respond_once(request, PROVIDER, "Idempotency-Key", body, act, replay_status=lambda s: s,
                              reused=reused, echo_key=True)


def check_common(state: PspState, body: Any) -> dict[str, Any]:
    """The body's merchant account and amount, as Adyen checks them; returns the amount."""
    if not isinstance(body, dict):
        raise refusal(422, "702", "Unexpected input: the body is not an object")
    if body.get("merchantAccount") != state.config.adyen_merchant_account:
        raise refusal(403, "901", "Invalid Merchant Account", "security")
    amount = body.get("amount")
    if not isinstance(amount, dict):
        raise refusal(422, "100", "Required field 'amount' is not provided.")
    currency, value = amount.get("currency"), amount.get("value")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise refusal(422, "702", "Unexpected input: amount.currency is not a currency code")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise refusal(422, "702", "Unexpected input: amount.value is not a whole number of minor units")
    return {"currency": currency, "value": value}


def authorise(state: PspState, payment: dict[str, Any]) -> None:
    """The payment is authorised: AUTHORISATION, then CAPTURE when the account captures at once."""
    payment["status"] = "Authorised"
    send(state, payment, "AUTHORISATION", True)
    if state.config.adyen_auto_capture:
        payment["captured"] = True
        send(state, payment, "CAPTURE", True, psp_reference=state.new_id(16),
             original_reference=payment["pspReference"])


def send(state: PspState, payment: dict[str, Any], event: str, success: bool, *, reason: str | None = None,
         psp_reference: str | None = None, original_reference: str | None = None,
         merchant_reference: str | None = None, amount: dict[str, Any] | None = None) -> None:
    state.webhooks.emit(
        pspReference=psp_reference or payment["pspReference"],
        originalReference=original_reference,
        merchantAccountCode=state.config.adyen_merchant_account,
        merchantReference=merchant_reference or payment["merchantReference"],
        amount=amount or payment["amount"],
        eventCode=event,
        success="true" if success else "false",
        paymentMethod=payment["brand"],
        reason=reason,
        operations=["CANCEL", "CAPTURE", "REFUND"] if event == "AUTHORISATION" and success else None,
    )


async def payments(request: web.Request) -> web.Response:
    if not authorised(request):
        return unauthorised()
    body = await json_body(request)
    state = request.app[STATE]
    origin = str(request.url.origin())

    def act() -> tuple[int, Any]:
        amount = check_common(state, body)
        reference = body.get("reference")
        if not isinstance(reference, str) or not reference or len(reference) > 80:
            raise refusal(422, "130", "Required field 'reference' is not provided.")
        method = body.get("paymentMethod")
        if not isinstance(method, dict) or not isinstance(method.get("type"), str):
            raise refusal(422, "702", "Unexpected input: paymentMethod.type is required")
        if not isinstance(body.get("returnUrl"), str):
            raise refusal(422, "702", "Required field 'returnUrl' is not provided.")
        psp = state.new_id(16)
        number = str(method.get("number") or method.get("encryptedCardNumber") or "").removeprefix("test_")
        payment: dict[str, Any] = {
            "pspReference": psp, "merchantReference": reference, "amount": amount, "status": None,
            "brand": "visa" if method["type"] == "scheme" else method["type"], "returnUrl": body["returnUrl"],
            "refunded": 0, "captured": False,
        }
        state.payments[psp] = payment
        answer: dict[str, Any] = {"pspReference": psp, "amount": amount, "merchantReference": reference}
        holder = method.get("holderName")
        if holder == "REFUSED":
            payment["status"] = "Refused"
            answer.update(resultCode="Refused", refusalReason="Refused", refusalReasonCode="2")
            send(state, payment, "AUTHORISATION", False, reason="Refused")
        elif holder == "ERROR":
            payment["status"] = "Error"
            answer.update(resultCode="Error", refusalReason="Acquirer Error", refusalReasonCode="4")
            send(state, payment, "AUTHORISATION", False, reason="Acquirer Error")
        elif number == REDIRECT_CARD:
            payment["status"] = "RedirectShopper"
            md = secrets.token_urlsafe(24)
            state.redirects[md] = psp
            answer.update(resultCode="RedirectShopper", action={
                "paymentMethodType": method["type"], "url": f"{origin}/checkoutshopper/threeDS/redirect?MD={md}",
                "method": "GET", "type": "redirect"})
        else:
            authorise(state, payment)
            answer.update(resultCode="Authorised", additionalData={"authCode": f"{state.rng.randrange(10**6):06d}"})
        return 200, answer

    return await respond(request, body, act)


async def issuer_page(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    psp = state.redirects.get(request.query.get("MD", ""))
    payment = state.payments.get(psp or "")
    if payment is None:
        return web.Response(status=404, text="Unknown authentication session (emulator).")
    if payment["status"] == "RedirectShopper":
        authorise(state, payment)
    sep = "&" if "?" in payment["returnUrl"] else "?"
    raise web.HTTPFound(f"{payment['returnUrl']}{sep}redirectResult={secrets.token_urlsafe(16)}")


async def refunds(request: web.Request) -> web.Response:
    if not authorised(request):
        return unauthorised()
    body = await json_body(request)
    state = request.app[STATE]
    psp = request.match_info["psp_reference"]
    fails_later = call_hits(request).adyen_refund_failed

    def act() -> tuple[int, Any]:
        amount = check_common(state, body)
        payment = state.payments.get(psp)
        if payment is None:
            raise refusal(422, "167", "Original pspReference required for this operation")
        if amount["currency"] != payment["amount"]["currency"]:
            raise refusal(422, "702", "Unexpected input: the refund's currency is not the payment's")
        reference = body.get("reference") if isinstance(body.get("reference"), str) else None
        rid = state.new_id(16)
        refund = {"pspReference": rid, "paymentPspReference": psp, "reference": reference, "amount": amount}
        state.adyen_refunds[rid] = refund
        left = payment["amount"]["value"] - payment["refunded"]
        common = {"psp_reference": rid, "original_reference": psp,
                  "merchant_reference": reference or payment["merchantReference"], "amount": amount}
        if payment["status"] != "Authorised":
            refund["outcome"] = "rejected"
            send(state, payment, "REFUND", False, reason="Transaction hasn't been authorised", **common)
        elif amount["value"] > left:
            refund["outcome"] = "rejected"
            send(state, payment, "REFUND", False, reason="Insufficient in-process funds on paymentPspReference",
                 **common)
        elif fails_later:
            refund["outcome"] = "failed"
            send(state, payment, "REFUND", True, **common)
            send(state, payment, "REFUND_FAILED", True, reason="Refund failed at the acquirer (emulated)", **common)
        else:
            refund["outcome"] = "refunded"
            payment["refunded"] += amount["value"]
            send(state, payment, "REFUND", True, **common)
        return 201, {"merchantAccount": state.config.adyen_merchant_account, "paymentPspReference": psp,
                     "pspReference": rid, "reference": reference, "status": "received", "amount": amount}

    return await respond(request, body, act)


def snapshot(state: PspState) -> dict[str, Any]:
    return {"payments": {k: {f: v for f, v in p.items() if f != "returnUrl"} for k, p in state.payments.items()},
            "refunds": dict(state.adyen_refunds)}
