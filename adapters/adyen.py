"""Adyen Checkout API v71: payments and refunds, a thin async client.

- ``X-API-Key`` on every call; ``Idempotency-Key`` on every POST, chosen by the caller once per
  logical operation and the same on every attempt (Adyen keeps keys at least 31 days and answers
  a repeat with the first answer; at most 64 characters).
- ``POST /v71/payments``: ``reference`` = our order id, ``amount`` in minor units by Adyen's own
  decimals (adapters.amounts: CLP 2, CVE 0, IDR 0, ISK 2 differ from ISO). ``resultCode``
  Authorised / Refused / Error / Cancelled are final; RedirectShopper, ChallengeShopper,
  IdentifyShopper and Pending come with an ``action`` the app performs (the payment stays
  payable); any other code (Received, PresentToShopper…) is not final and the AUTHORISATION
  webhook decides.
- ``POST /v71/payments/{pspReference}/refunds`` answers ``status: received`` and nothing more:
  the outcome is the REFUND (or REFUND_FAILED) webhook.

A 422 is a rejection (validation: nothing happened); a 5xx, 429 or an answer marked
``Transient-Error: true`` is an unknown outcome, retried with the same key. An answer for another
reference or amount than asked for is a ``PspProtocolError``, never a success.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from adapters.amounts import AmountError, adyen_minor
from adapters.errors import PspError, PspProtocolError, PspUnavailable
from adapters.http import Reply, failure, send, text_field
from adapters.psp_metrics import PspMetrics
from adapters.retry import RetryPolicy, retrying

if TYPE_CHECKING:
    from common.settings import Settings

PROVIDER = "adyen"
API_VERSION = "v71"
MAX_IDEMPOTENCY_KEY = 64
FINAL_RESULT_CODES = frozenset({"Authorised", "Refused", "Error", "Cancelled"})
ACTION_RESULT_CODES = frozenset({"RedirectShopper", "ChallengeShopper", "IdentifyShopper", "Pending"})


@dataclass(frozen=True, slots=True)
class AdyenPayment:
    result_code: str
    psp_reference: str | None
    merchant_reference: str
    amount: Decimal
    currency: str
    # What the app must do next (redirect, 3DS challenge…), passed to it untouched; None when final.
    action: Mapping[str, Any] | None = field(default=None, compare=False)
    refusal_reason: str | None = None
    refusal_reason_code: str | None = None

    @property
    def final(self) -> bool:
        return self.result_code in FINAL_RESULT_CODES

    @property
    def authorised(self) -> bool:
        return self.result_code == "Authorised"

    @property
    def needs_action(self) -> bool:
        return self.result_code in ACTION_RESULT_CODES


@dataclass(frozen=True, slots=True)
class AdyenRefund:
    psp_reference: str
    payment_psp_reference: str
    reference: str
    amount: Decimal
    currency: str
    status: str  # always "received": the outcome is the REFUND / REFUND_FAILED webhook


class AdyenClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        merchant_account: str,
        retry: RetryPolicy | None = None,
        metrics: PspMetrics | None = None,
    ) -> None:
        self._session = session
        self._base = f"{base_url.rstrip('/')}/{API_VERSION}"
        self._api_key = api_key
        self.merchant_account = merchant_account
        self._retry = retry or RetryPolicy()
        self._metrics = metrics

    @classmethod
    def from_settings(cls, session: aiohttp.ClientSession, settings: Settings, **kwargs: Any) -> AdyenClient:
        return cls(session, base_url=settings.adyen_base_url, api_key=settings.adyen_api_key,
                   merchant_account=settings.adyen_merchant_account, retry=RetryPolicy.from_settings(settings),
                   **kwargs)

    def __repr__(self) -> str:
        return f"AdyenClient(base_url={self._base!r}, merchant_account={self.merchant_account!r})"

    async def pay(
        self,
        *,
        reference: str,
        amount: Decimal,
        currency: str,
        payment_method: Mapping[str, Any],
        return_url: str,
        idempotency_key: str,
        browser_info: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> AdyenPayment:
        """``POST /payments`` for `amount` of order `reference`. `extra` adds fields; it cannot replace ours."""
        minor = adyen_minor(amount, currency)
        if minor <= 0:
            raise AmountError(f"{amount} {currency}: a payment is for a positive amount")
        body: dict[str, Any] = dict(extra or {})
        body.update({
            "merchantAccount": self.merchant_account,
            "reference": reference,
            "amount": {"currency": currency, "value": minor},
            "paymentMethod": dict(payment_method),
            "returnUrl": return_url,
        })
        if browser_info is not None:
            body["browserInfo"] = dict(browser_info)
        reply = await self._post("/payments", "pay", idempotency_key, body)
        doc = reply.body
        code = doc.get("resultCode")
        if not isinstance(code, str) or not code:
            raise PspProtocolError(PROVIDER, "pay", status=reply.status, detail="no resultCode in the answer")
        if doc.get("merchantReference", reference) != reference or doc.get("amount", body["amount"]) != body["amount"]:
            raise PspProtocolError(PROVIDER, "pay", status=reply.status, detail="answer is for another payment")
        action = doc.get("action")
        return AdyenPayment(
            result_code=code,
            psp_reference=text_field(doc, "pspReference", 64),
            merchant_reference=reference,
            amount=amount,
            currency=currency,
            action=action if isinstance(action, dict) else None,
            refusal_reason=text_field(doc, "refusalReason"),
            refusal_reason_code=text_field(doc, "refusalReasonCode", 16),
        )

    async def refund(
        self,
        psp_reference: str,
        *,
        amount: Decimal,
        currency: str,
        reference: str,
        idempotency_key: str,
    ) -> AdyenRefund:
        """Ask for a refund of `amount` of payment `psp_reference`; `reference` is ours (the refund's id)."""
        minor = adyen_minor(amount, currency)
        if minor <= 0:
            raise AmountError(f"{amount} {currency}: a refund is for a positive amount")
        if not isinstance(psp_reference, str) or not psp_reference:
            raise ValueError("a refund needs the payment's pspReference")
        body = {"merchantAccount": self.merchant_account, "amount": {"currency": currency, "value": minor},
                "reference": reference}
        reply = await self._post(f"/payments/{quote(psp_reference, safe='')}/refunds", "refund", idempotency_key, body)
        doc = reply.body
        refund_ref = text_field(doc, "pspReference", 64)
        if doc.get("status") != "received" or refund_ref is None:
            raise PspProtocolError(PROVIDER, "refund", status=reply.status, detail="not a received refund")
        if doc.get("paymentPspReference", psp_reference) != psp_reference or doc.get("amount", body["amount"]) != body["amount"]:
            raise PspProtocolError(PROVIDER, "refund", status=reply.status, detail="answer is for another refund")
        return AdyenRefund(refund_ref, psp_reference, reference, amount, currency, "received")

    async def _post(self, path: str, operation: str, key: str, body: Mapping[str, Any]) -> Reply:
        if not isinstance(key, str) or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
            raise ValueError(f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} printable ASCII characters")
        headers = {"X-API-Key": self._api_key, "Idempotency-Key": key, "Accept": "application/json"}
        url = self._base + path

        async def attempt() -> Reply:
            reply = await send(self._session, "POST", url, provider=PROVIDER, operation=operation,
                               headers=headers, json=body)
            if not reply.ok:
                raise self._failure(reply, operation)
            if not isinstance(reply.body, dict):
                raise PspProtocolError(PROVIDER, operation, status=reply.status, detail="answer is not a JSON object")
            return reply

        return await retrying(self._retry, attempt, provider=PROVIDER, operation=operation, key=key,
                              metrics=self._metrics)

    def _failure(self, reply: Reply, operation: str) -> PspError:
        doc = reply.body
        kwargs: dict[str, Any] = {"code": text_field(doc, "errorCode"), "detail": text_field(doc, "message"),
                                  "debug_id": text_field(doc, "pspReference")}
        if reply.headers.get("Transient-Error", "").lower() == "true":
            return PspUnavailable(PROVIDER, operation, status=reply.status, retry_after=reply.retry_after(), **kwargs)
        return failure(reply, PROVIDER, operation, **kwargs)
