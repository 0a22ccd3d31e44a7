"""The PSP emulator for tests: its public port on a real socket, its control API, a webhook sink.

The fixtures are in ``tests/support/psp_fixtures.py`` (a test module names it in
``pytest_plugins``). The ``Psp`` handle sets fault knobs and reads the call log and state through
the control API, as a person at a terminal would, and builds PayPal and Adyen clients pointed at it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from adapters.adyen import AdyenClient
from adapters.paypal import PayPalClient
from adapters.retry import RetryPolicy

PAYPAL_CLIENT_ID = "test-client-id"
PAYPAL_SECRET = "pp-secret-7f3a9c1e5b2d4f60"
ADYEN_API_KEY = "AQEyhmfxK4-adyen-api-key-19ce0a7b"
MERCHANT = "TestMerchantECOM"
HMAC_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
SECRETS = (PAYPAL_SECRET, ADYEN_API_KEY, HMAC_KEY, HMAC_KEY.lower())
# Quick backoff so a retried test takes milliseconds; 10 s per attempt, far above the box's worst.
FAST = RetryPolicy(attempts=3, timeout=10.0, base_delay=0.01, max_delay=0.05)


@dataclass
class WebhookSink:
    """Answers Adyen's webhooks like the bridge will: ``[accepted]`` (or `status` while set)."""

    received: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    url: str = ""

    def items(self) -> list[dict[str, Any]]:
        return [entry["NotificationRequestItem"] for body in self.received for entry in body["notificationItems"]]

    async def wait_for(self, count: int, within: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        while len(self.items()) < count:
            assert time.monotonic() < deadline, f"{len(self.items())} webhooks of {count}: {self.items()}"
            await asyncio.sleep(0.02)
        return self.items()

    async def handle(self, request: web.Request) -> web.Response:
        if self.status != 200:
            return web.Response(status=self.status, text="try later")
        self.received.append(await request.json())
        return web.Response(text="[accepted]")


@dataclass
class Psp:
    server: TestServer
    admin: TestClient
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def paypal(self, retry: RetryPolicy = FAST, **kwargs: Any) -> PayPalClient:
        return PayPalClient(self.session, base_url=self.url, client_id=PAYPAL_CLIENT_ID, secret=PAYPAL_SECRET,
                            retry=retry, **kwargs)

    def adyen(self, retry: RetryPolicy = FAST, **kwargs: Any) -> AdyenClient:
        return AdyenClient(self.session, base_url=self.url, api_key=ADYEN_API_KEY, merchant_account=MERCHANT,
                           retry=retry, **kwargs)

    async def fault(self, **body: Any) -> dict[str, Any]:
        resp = await self.admin.post("/_psp/faults", json=body)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def calls(self, method: str | None = None, path_suffix: str = "") -> list[dict[str, Any]]:
        calls = (await (await self.admin.get("/_psp/calls")).json())["calls"]
        return [c for c in calls if (method is None or c["method"] == method) and c["path"].endswith(path_suffix)]

    async def state(self) -> dict[str, Any]:
        return await (await self.admin.get("/_psp/state")).json()

    async def webhooks(self) -> dict[str, Any]:
        return await (await self.admin.get("/_psp/webhooks")).json()

    async def approve(self, approve_url: str) -> int:
        async with self.session.get(approve_url, allow_redirects=False) as resp:
            return resp.status

    async def paypal_capture(self, reference: str, amount: Decimal, currency: str) -> str:
        """A PayPal order for `amount`, approved and captured (COMPLETED) in the emulator: its capture id."""
        client = self.paypal()
        order = await client.create_order(reference=reference, amount=amount, currency=currency,
                                          request_id=f"create-{reference}")
        assert order.approve_url and await self.approve(order.approve_url) == 200
        captured = await client.capture_order(order.id, request_id=f"capture-{reference}")
        assert captured.paid and captured.capture is not None
        return captured.capture.id

    async def adyen_payment(self, reference: str, amount: Decimal, currency: str) -> str:
        """An Adyen card payment for `amount`, authorised (and auto-captured) in the emulator: its pspReference."""
        payment = await self.adyen().pay(reference=reference, amount=amount, currency=currency,
                                         payment_method={"type": "scheme", "number": "4111111111111111",
                                                         "holderName": "Ada"},
                                         return_url="https://shop.example/r", idempotency_key=f"pay-{reference}")
        assert payment.authorised and payment.psp_reference
        return payment.psp_reference
