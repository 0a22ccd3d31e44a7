"""Old shopping's own calls to PayPal and Adyen: a few aiohttp requests in the PSPs' real shapes.

Old shopping is an older, separate codebase: it does not use the new side's ``adapters/``. What it
keeps of the PSPs' contracts is what a double charge would teach anyone:

* every POST that acts carries an idempotency key (``PayPal-Request-Id``, ``Idempotency-Key``)
  chosen by the caller once per logical operation, and a retry sends the same one;
* a call is tried ``attempts`` times (a short pause between), each within ``timeout_seconds``,
  and only when the outcome is unknown (no answer, a timeout, 5xx, 408/409/425/429): a 4xx is the
  PSP saying nothing happened and is raised at once;
* PayPal's OAuth2 token is cached until a minute before ``expires_in`` and fetched again once
  when a call answers 401.

Secrets (the PayPal secret, the Adyen API key, tokens) go only into request headers: never into
a log line, a ``repr`` or a :class:`PspFailed` message, which name provider, operation, status and
the PSP's error name only.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

log = logging.getLogger(__name__)

# An unknown outcome: the PSP may or may not have acted, the same request (same key) may be sent again.
_UNKNOWN_STATUSES = {408, 409, 425, 429}
# Under the edge's 10 s route timeout with both attempts and the pause between them.
DEFAULT_TIMEOUT_SECONDS = 4.0
DEFAULT_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class PspSettings:
    """Where old shopping finds the PSPs and what it tells them (the same variables as the new side)."""

    paypal_url: str = "http://127.0.0.1:8091"
    paypal_client_id: str = "emulator"
    paypal_secret: str = field(default="emulator", repr=False)
    adyen_url: str = "http://127.0.0.1:8091"
    adyen_api_key: str = field(default="emulator", repr=False)
    adyen_merchant_account: str = "EmulatorMerchant"
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    attempts: int = DEFAULT_ATTEMPTS
    retry_pause_seconds: float = 0.2


class PspFailed(Exception):
    """A PSP call that did not succeed. ``rejected``: the PSP answered 4xx, nothing happened.
    Otherwise the outcome is unknown (``timed_out`` when no answer came in time)."""

    def __init__(self, provider: str, operation: str, *, status: int | None = None, name: str | None = None,
                 rejected: bool = False, timed_out: bool = False, body: Any = None) -> None:
        what = f"{provider} {operation}: " + (f"HTTP {status}" if status is not None else
                                              "timed out" if timed_out else "no answer")
        super().__init__(what + (f" {name}" if name else ""))
        self.provider = provider
        self.operation = operation
        self.status = status
        self.name = name
        self.rejected = rejected
        self.timed_out = timed_out
        self.body = body


def _paypal_error_name(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    details = body.get("details")
    if isinstance(details, list) and details and isinstance(details[0], dict) and isinstance(details[0].get("issue"), str):
        return details[0]["issue"][:64]
    return body["name"][:64] if isinstance(body.get("name"), str) else None


def _adyen_error_name(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("errorCode"), str):
        return body["errorCode"][:64]
    return None


class PspClient:
    def __init__(self, session: aiohttp.ClientSession, settings: PspSettings) -> None:
        self._session = session
        self.settings = settings
        self._token: tuple[str, float] | None = None  # (access token, monotonic time to refresh at)
        self._token_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PspClient(paypal={self.settings.paypal_url!r}, adyen={self.settings.adyen_url!r})"

    # --- the one request loop -------------------------------------------------------------------

    async def _call(self, provider: str, operation: str, method: str, url: str, headers: dict[str, str],
                    body: Any = None) -> tuple[int, Any]:
        s = self.settings
        timeout = aiohttp.ClientTimeout(total=s.timeout_seconds)
        last: PspFailed | None = None
        for attempt in range(1, s.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(s.retry_pause_seconds * attempt)
            try:
                async with self._session.request(method, url, headers=headers, json=body, timeout=timeout) as resp:
                    status = resp.status
                    try:
                        answer = await resp.json(content_type=None)
                    except ValueError:
                        answer = None
            except TimeoutError:
                last = PspFailed(provider, operation, timed_out=True)
            except aiohttp.ClientError as exc:
                last = PspFailed(provider, operation)
                log.info("%s %s attempt %d: %s", provider, operation, attempt, exc.__class__.__name__)
            else:
                if 200 <= status < 300:
                    return status, answer
                name = _paypal_error_name(answer) if provider == "paypal" else _adyen_error_name(answer)
                if status < 500 and status not in _UNKNOWN_STATUSES:
                    raise PspFailed(provider, operation, status=status, name=name, rejected=True, body=answer)
                last = PspFailed(provider, operation, status=status, name=name)
            log.warning("%s %s attempt %d of %d failed: %s", provider, operation, attempt, s.attempts, last)
        assert last is not None
        raise last

    # --- PayPal ---------------------------------------------------------------------------------

    async def _paypal_token(self, *, fresh: bool = False) -> str:
        async with self._token_lock:
            if not fresh and self._token is not None and time.monotonic() < self._token[1]:
                return self._token[0]
            s = self.settings
            basic = base64.b64encode(f"{s.paypal_client_id}:{s.paypal_secret}".encode()).decode()
            try:
                async with self._session.post(
                    f"{s.paypal_url.rstrip('/')}/v1/oauth2/token", data={"grant_type": "client_credentials"},
                    headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=s.timeout_seconds),
                ) as resp:
                    status = resp.status
                    answer = await resp.json(content_type=None) if status == 200 else None
            except (TimeoutError, aiohttp.ClientError, ValueError):
                raise PspFailed("paypal", "token") from None
            if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
                raise PspFailed("paypal", "token", status=status, rejected=400 <= status < 500)
            ttl = float(answer.get("expires_in") or 0)
            self._token = (answer["access_token"], time.monotonic() + ttl - min(60.0, ttl / 10))
            return self._token[0]

    async def _paypal(self, operation: str, method: str, path: str, *, request_id: str | None = None,
                      body: Any = None) -> tuple[int, Any]:
        url = f"{self.settings.paypal_url.rstrip('/')}{path}"
        for fresh in (False, True):
            headers = {"Authorization": f"Bearer {await self._paypal_token(fresh=fresh)}",
                       "Accept": "application/json"}
            if request_id is not None:
                headers["PayPal-Request-Id"] = request_id
            try:
                return await self._call("paypal", operation, method, url, headers, body)
            except PspFailed as exc:
                if exc.status != 401 or fresh:
                    raise
        raise AssertionError("unreachable")

    async def paypal_create_order(self, *, reference: str, custom_id: str, currency: str, value: str, request_id: str,
                                  return_url: str | None = None, cancel_url: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "intent": "CAPTURE",
            "purchase_units": [{"reference_id": reference, "custom_id": custom_id,
                                "amount": {"currency_code": currency, "value": value}}],
        }
        if return_url or cancel_url:
            # Old shopping still sends the (deprecated, still honoured) application_context.
            body["application_context"] = {k: v for k, v in (("return_url", return_url), ("cancel_url", cancel_url)) if v}
        _, answer = await self._paypal("create_order", "POST", "/v2/checkout/orders", request_id=request_id, body=body)
        return _object(answer, "paypal", "create_order")

    async def paypal_capture(self, paypal_order_id: str, *, request_id: str) -> dict[str, Any]:
        _, answer = await self._paypal("capture", "POST", f"/v2/checkout/orders/{quote(paypal_order_id, safe='')}/capture",
                                       request_id=request_id, body={})
        return _object(answer, "paypal", "capture")

    async def paypal_order(self, paypal_order_id: str) -> dict[str, Any]:
        _, answer = await self._paypal("get_order", "GET", f"/v2/checkout/orders/{quote(paypal_order_id, safe='')}")
        return _object(answer, "paypal", "get_order")

    async def paypal_refund(self, capture_id: str, *, currency: str, value: str, request_id: str,
                            invoice_id: str) -> dict[str, Any]:
        body = {"amount": {"currency_code": currency, "value": value}, "invoice_id": invoice_id}
        _, answer = await self._paypal("refund", "POST", f"/v2/payments/captures/{quote(capture_id, safe='')}/refund",
                                       request_id=request_id, body=body)
        return _object(answer, "paypal", "refund")

    # --- Adyen ----------------------------------------------------------------------------------

    async def _adyen(self, operation: str, path: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        headers = {"X-API-Key": s.adyen_api_key, "Idempotency-Key": key, "Accept": "application/json"}
        _, answer = await self._call("adyen", operation, "POST", f"{s.adyen_url.rstrip('/')}/v71{path}", headers,
                                     {"merchantAccount": s.adyen_merchant_account, **body})
        return _object(answer, "adyen", operation)

    async def adyen_payment(self, *, reference: str, currency: str, value: int, key: str,
                            payment_method: dict[str, Any], return_url: str, browser_info: dict[str, Any] | None,
                            metadata: dict[str, str]) -> dict[str, Any]:
        body: dict[str, Any] = {"reference": reference, "amount": {"currency": currency, "value": value},
                                "paymentMethod": payment_method, "returnUrl": return_url, "metadata": metadata}
        if browser_info is not None:
            body["browserInfo"] = browser_info
        return await self._adyen("pay", "/payments", key, body)

    async def adyen_refund(self, psp_reference: str, *, currency: str, value: int, reference: str,
                           key: str) -> dict[str, Any]:
        body = {"amount": {"currency": currency, "value": value}, "reference": reference}
        return await self._adyen("refund", f"/payments/{quote(psp_reference, safe='')}/refunds", key, body)


def _object(answer: Any, provider: str, operation: str) -> dict[str, Any]:
    if not isinstance(answer, dict):
        # A 2xx that is not the documented shape: whether it acted is unknown.
        raise PspFailed(provider, operation, name="not_a_json_object")
    return answer
