"""PayPal Orders v2 and Payments v2 (refunds): a thin async client.

- **Token**: OAuth2 client credentials (``POST /v1/oauth2/token``, HTTP Basic client id:secret),
  cached until ``expires_in`` minus a margin (a tenth of the lifetime, at most a minute), fetched
  by one caller at a time (a lock, so a burst after expiry costs one token call), and dropped and
  fetched again once when an API call answers 401 (revoked or expired early).
- **Create** ``POST /v2/checkout/orders``: ``intent: CAPTURE``, one purchase unit whose
  ``reference_id`` is our order id and whose amount is a string with PayPal's decimals
  (adapters.amounts); the approve link is ``rel=approve`` or ``rel=payer-action``.
- **Capture** ``POST /v2/checkout/orders/{id}/capture``; **refund**
  ``POST /v2/payments/captures/{id}/refund``.
- ``PayPal-Request-Id`` on every POST that acts, chosen by the caller once per logical operation
  (one payment's create, its capture, one refund) and the same on every attempt; the token call
  has none (it has no effect to deduplicate). 201 and the 200 of a replay are the same answer.
- A 422 ``ORDER_ALREADY_CAPTURED`` means another attempt (ours with another key, or old shopping's)
  captured first: the order is read back and the capture found there is the answer.
- **Paid is decided by the capture** (``purchase_units[].payments.captures[].status ==
  COMPLETED``), never by the order's status: an order is COMPLETED with a PENDING capture (an
  eCheck, a review), and that is not money yet.

An answer that does not match the request (another order's id, another amount) is a
``PspProtocolError``, never a success: a reused request id is how a client gets somebody else's
first answer.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import structlog

from adapters.amounts import AmountError, paypal_amount, paypal_value
from adapters.errors import PspProtocolError, PspRejected, PspUnavailable
from adapters.http import Reply, failure, send, text_field
from adapters.psp_metrics import PspMetrics
from adapters.retry import RetryPolicy, retrying

if TYPE_CHECKING:
    from common.settings import Settings

log = structlog.get_logger("adapters.paypal")

PROVIDER = "paypal"
MAX_REQUEST_ID = 108  # PayPal-Request-Id's documented maximum length
TOKEN_MARGIN_SECONDS = 60.0
# 422 issues after which the same request may succeed (PayPal is still working on the first one).
BUSY_ISSUES = frozenset({"PREVIOUS_REQUEST_IN_PROGRESS"})
APPROVE_RELS = ("approve", "payer-action")


@dataclass(frozen=True, slots=True)
class Capture:
    id: str
    status: str  # COMPLETED, PENDING, DECLINED, PARTIALLY_REFUNDED, REFUNDED, FAILED
    amount: Decimal | None
    currency: str | None


@dataclass(frozen=True, slots=True)
class PayPalOrder:
    id: str
    status: str  # CREATED, PAYER_ACTION_REQUIRED, APPROVED, COMPLETED, VOIDED, SAVED
    approve_url: str | None = None
    captures: tuple[Capture, ...] = ()

    @property
    def completed_capture(self) -> Capture | None:
        return next((c for c in self.captures if c.status == "COMPLETED"), None)


@dataclass(frozen=True, slots=True)
class CaptureResult:
    order: PayPalOrder
    # True when PayPal answered ORDER_ALREADY_CAPTURED and the order was read back.
    already_captured: bool = False

    @property
    def capture(self) -> Capture | None:
        """The COMPLETED capture, else the latest one PayPal reports (PENDING, DECLINED…)."""
        return self.order.completed_capture or (self.order.captures[-1] if self.order.captures else None)

    @property
    def paid(self) -> bool:
        return self.order.completed_capture is not None


@dataclass(frozen=True, slots=True)
class PayPalRefund:
    id: str
    status: str  # COMPLETED, PENDING, FAILED, CANCELLED
    amount: Decimal | None
    currency: str | None

    @property
    def succeeded(self) -> bool:
        return self.status == "COMPLETED"


@dataclass(slots=True)
class _Token:
    value: str = field(repr=False)
    refresh_at: float


class PayPalClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        client_id: str,
        secret: str,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: PspMetrics | None = None,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._client_id = client_id
        self._basic = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        self._retry = retry or RetryPolicy()
        self._metrics = metrics
        self._clock = clock
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, session: aiohttp.ClientSession, settings: Settings, **kwargs: Any) -> PayPalClient:
        return cls(session, base_url=settings.paypal_base_url, client_id=settings.paypal_client_id,
                   secret=settings.paypal_secret, retry=RetryPolicy.from_settings(settings), **kwargs)

    def __repr__(self) -> str:
        return f"PayPalClient(base_url={self._base!r}, client_id={self._client_id!r})"

    # --- operations ------------------------------------------------------------------------------

    async def create_order(
        self,
        *,
        reference: str,
        amount: Decimal,
        currency: str,
        request_id: str,
        return_url: str | None = None,
        cancel_url: str | None = None,
        custom_id: str | None = None,
    ) -> PayPalOrder:
        """A PayPal order for `amount` (intent CAPTURE), its approve link to send the payer to."""
        value = paypal_value(amount, currency)
        if amount <= 0:
            raise AmountError(f"{amount} {currency}: PayPal orders are for a positive amount")
        unit: dict[str, Any] = {"reference_id": reference, "amount": {"currency_code": currency, "value": value}}
        if custom_id is not None:
            unit["custom_id"] = custom_id
        body: dict[str, Any] = {"intent": "CAPTURE", "purchase_units": [unit]}
        context = {k: v for k, v in (("return_url", return_url), ("cancel_url", cancel_url)) if v}
        if context:
            body["payment_source"] = {"paypal": {"experience_context": {**context, "user_action": "PAY_NOW"}}}
        reply = await self._call("POST", "/v2/checkout/orders", "create_order", request_id=request_id, json=body)
        order = self._order(reply.body, "create_order")
        units = reply.body.get("purchase_units")
        if isinstance(units, list) and units and isinstance(units[0], dict) and "amount" in units[0]:
            if self._amount(units[0]["amount"], "create_order") != (amount, currency):
                raise PspProtocolError(PROVIDER, "create_order", status=reply.status,
                                       detail="the order's amount is not the one asked for")
        return order

    async def capture_order(self, order_id: str, *, request_id: str) -> CaptureResult:
        """Capture `order_id`. ``result.paid`` is the answer to "is the money ours"; nothing else is."""
        path = f"/v2/checkout/orders/{_segment(order_id)}/capture"
        try:
            reply = await self._call("POST", path, "capture", request_id=request_id, json={})
        except PspRejected as exc:
            if exc.code != "ORDER_ALREADY_CAPTURED":
                raise
            order = await self.get_order(order_id)
            log.info("paypal_order_already_captured", order_id=order_id, request_id=request_id,
                     paid=order.completed_capture is not None)
            return CaptureResult(order, already_captured=True)
        order = self._order(reply.body, "capture")
        if order.id != order_id:
            raise PspProtocolError(PROVIDER, "capture", status=reply.status, detail="answer is for another order")
        return CaptureResult(order)

    async def get_order(self, order_id: str) -> PayPalOrder:
        reply = await self._call("GET", f"/v2/checkout/orders/{_segment(order_id)}", "get_order")
        order = self._order(reply.body, "get_order")
        if order.id != order_id:
            raise PspProtocolError(PROVIDER, "get_order", status=reply.status, detail="answer is for another order")
        return order

    async def refund_capture(
        self,
        capture_id: str,
        *,
        amount: Decimal | None,
        currency: str,
        request_id: str,
        invoice_id: str | None = None,
        note_to_payer: str | None = None,
    ) -> PayPalRefund:
        """Refund `amount` of a capture (None: what is left of it). The refund's own status says if it went through."""
        body: dict[str, Any] = {}
        if amount is not None:
            value = paypal_value(amount, currency)
            if amount <= 0:
                raise AmountError(f"{amount} {currency}: a refund is for a positive amount")
            body["amount"] = {"currency_code": currency, "value": value}
        if invoice_id is not None:
            body["invoice_id"] = invoice_id
        if note_to_payer is not None:
            body["note_to_payer"] = note_to_payer
        path = f"/v2/payments/captures/{_segment(capture_id)}/refund"
        reply = await self._call("POST", path, "refund", request_id=request_id, json=body)
        doc = reply.body
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not isinstance(doc.get("status"), str):
            raise PspProtocolError(PROVIDER, "refund", status=reply.status, detail="no refund id/status in the answer")
        refunded, refunded_currency = self._amount(doc.get("amount"), "refund")
        if amount is not None and refunded is not None and (refunded, refunded_currency) != (amount, currency):
            raise PspProtocolError(PROVIDER, "refund", status=reply.status, detail="refund amount is not the one asked for")
        return PayPalRefund(doc["id"], doc["status"], refunded, refunded_currency)

    # --- plumbing --------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, operation: str, *, request_id: str | None = None,
                    json: Any = None) -> Reply:
        headers = {"Accept": "application/json", "Prefer": "return=representation"}
        if method == "POST":
            headers["PayPal-Request-Id"] = _request_id(request_id)
        url = self._base + path

        async def attempt() -> Reply:
            token = await self._access_token()
            reply = await send(self._session, method, url, provider=PROVIDER, operation=operation,
                               headers={**headers, "Authorization": f"Bearer {token.value}"}, json=json)
            if reply.status == 401:  # revoked or expired before its time: one fresh token, same request
                self._drop(token)
                token = await self._access_token()
                reply = await send(self._session, method, url, provider=PROVIDER, operation=operation,
                                   headers={**headers, "Authorization": f"Bearer {token.value}"}, json=json)
            if not reply.ok:
                raise self._failure(reply, operation)
            if not isinstance(reply.body, dict):
                raise PspProtocolError(PROVIDER, operation, status=reply.status, detail="answer is not a JSON object")
            return reply

        return await retrying(self._retry, attempt, provider=PROVIDER, operation=operation, key=request_id,
                              metrics=self._metrics)

    async def _access_token(self) -> _Token:
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return token
        async with self._token_lock:
            token = self._token
            if token is not None and self._clock() < token.refresh_at:
                return token  # another caller fetched it while this one waited
            self._token = token = await self._fetch_token()
            return token

    def _drop(self, token: _Token) -> None:
        if self._token is token:
            self._token = None

    async def _fetch_token(self) -> _Token:
        reply = await send(
            self._session, "POST", self._base + "/v1/oauth2/token", provider=PROVIDER, operation="token",
            headers={"Authorization": self._basic, "Accept": "application/json"},
            form={"grant_type": "client_credentials"},
        )
        if not reply.ok:
            raise self._failure(reply, "token")
        doc = reply.body if isinstance(reply.body, dict) else {}
        value, lifetime = doc.get("access_token"), doc.get("expires_in")
        if not isinstance(value, str) or not value or isinstance(lifetime, bool) or not isinstance(lifetime, int):
            raise PspProtocolError(PROVIDER, "token", status=reply.status, detail="no access_token/expires_in")
        margin = min(TOKEN_MARGIN_SECONDS, lifetime / 10)
        return _Token(value, self._clock() + lifetime - margin)

    def _failure(self, reply: Reply, operation: str) -> Exception:
        doc = reply.body
        details = doc.get("details") if isinstance(doc, dict) else None
        first = details[0] if isinstance(details, list) and details and isinstance(details[0], dict) else {}
        code = text_field(first, "issue") or text_field(doc, "name") or text_field(doc, "error")
        detail = text_field(first, "description") or text_field(doc, "error_description") or text_field(doc, "message")
        debug_id = text_field(doc, "debug_id")
        if reply.status == 422 and code in BUSY_ISSUES:
            return PspUnavailable(PROVIDER, operation, status=reply.status, code=code, detail=detail,
                                  debug_id=debug_id, retry_after=reply.retry_after())
        return failure(reply, PROVIDER, operation, code=code, detail=detail, debug_id=debug_id)

    def _order(self, doc: Any, operation: str) -> PayPalOrder:
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not isinstance(doc.get("status"), str):
            raise PspProtocolError(PROVIDER, operation, detail="no order id/status in the answer")
        found = doc.get("links")
        links: list[Any] = found if isinstance(found, list) else []
        approve = next((link.get("href") for rel in APPROVE_RELS for link in links
                        if isinstance(link, dict) and link.get("rel") == rel and isinstance(link.get("href"), str)), None)
        captures: list[Capture] = []
        units = doc.get("purchase_units")
        for unit in units if isinstance(units, list) else []:
            payments = unit.get("payments") if isinstance(unit, dict) else None
            found = payments.get("captures") if isinstance(payments, dict) else None
            for c in found if isinstance(found, list) else []:
                if not isinstance(c, dict) or not isinstance(c.get("id"), str) or not isinstance(c.get("status"), str):
                    raise PspProtocolError(PROVIDER, operation, detail="a capture without id/status")
                value, currency = self._amount(c.get("amount"), operation)
                captures.append(Capture(c["id"], c["status"], value, currency))
        return PayPalOrder(doc["id"], doc["status"], approve, tuple(captures))

    def _amount(self, doc: Any, operation: str) -> tuple[Decimal | None, str | None]:
        if doc is None:
            return None, None
        try:
            currency = doc["currency_code"]
            return paypal_amount(doc["value"], currency), currency
        except (TypeError, KeyError, AmountError):
            raise PspProtocolError(PROVIDER, operation, detail="an amount that is not PayPal's shape") from None


def _request_id(key: str | None) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_REQUEST_ID or not key.isascii() or not key.isprintable():
        raise ValueError(f"PayPal-Request-Id must be 1..{MAX_REQUEST_ID} printable ASCII characters")
    return key


def _segment(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a PayPal id is a non-empty string")
    return quote(value, safe="")
