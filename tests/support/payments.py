"""An edge whose pay routes go to the new side, its PSP clients pointed at the PSP emulator, and the rows to look at;
old shopping pointed at the same emulator; Adyen notifications signed as Adyen signs them.

Used by tests/integration/test_payments_*.py, test_legacy_payments.py and test_adyen_webhook.py (with
``pytest_plugins = ["tests.support.psp_fixtures"]``).
Orders are inserted as either side writes them (tests.builders.insert_order), owned by user 1 unless
said otherwise, so each test picks the currency, total and status it is about.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.adyen_hmac import AdyenHmac
from emulators.legacy.psp_calls import PspSettings
from shop import schema as t
from shop.db import make_engine
from tests.builders import insert_order
from tests.support.edge import dead_url, edge_settings, routing_doc, write_routing
from tests.support.psp import ADYEN_API_KEY, HMAC_KEY, MERCHANT, PAYPAL_CLIENT_ID, PAYPAL_SECRET, Psp
from tests.support.shopdb import seed_database

PAY_ROUTES = {
    "paypal_pay": "/shopping/orders/{order_id}/pay/{ptype}/paypal",
    "paypal_finished": "/shopping/orders/{order_id}/paypal_finished/{pay_id}",
    "adyen_pay": "/shopping/orders/{order_id}/pay/any/adyen",
}
CARD = {"type": "scheme", "number": "4111111111111111", "expiryMonth": "03", "expiryYear": "2030", "cvc": "737",
        "holderName": "A Shopper"}
REDIRECT_CARD = {**CARD, "number": "4212345678910006"}
RETURN_URL = "https://shop.example/checkout/return"
ADYEN_BODY = {"paymentMethod": CARD, "returnUrl": RETURN_URL, "browserInfo": {"userAgent": "t"}}
SIGNER = AdyenHmac.from_hex(HMAC_KEY)


def pay_path(order_id: str) -> str:
    """paypal_pay's legacy path (ptype paypal)."""
    return f"/shopping/orders/{order_id}/pay/paypal/paypal"


def finish_path(order_id: str, pay_id: str) -> str:
    return f"/shopping/orders/{order_id}/paypal_finished/{pay_id}"


def adyen_path(order_id: str) -> str:
    return f"/shopping/orders/{order_id}/pay/any/adyen"


def psp_settings(psp: Psp, **overrides: Any) -> dict[str, Any]:
    """Edge settings that point both PSP clients at `psp` with its credentials; quick backoff."""
    return {"paypal_base_url": psp.url, "adyen_base_url": psp.url, "paypal_client_id": PAYPAL_CLIENT_ID,
            "paypal_secret": PAYPAL_SECRET, "adyen_api_key": ADYEN_API_KEY, "adyen_merchant_account": MERCHANT,
            "adyen_hmac_key": HMAC_KEY, "psp_backoff_seconds": 0.01, "psp_backoff_max_seconds": 0.05, **overrides}


async def pay_edge(aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path, db_url: str, psp: Psp,
                   *, seed: bool = True, route_timeout_ms: int = 10000, registry: CollectorRegistry | None = None,
                   **settings: Any) -> TestClient:
    """A seeded database (``seed=False``: the one there) and an edge in front of it with the three pay
    routes at 100 % new (old shopping: nowhere); `settings` override the edge's Settings; the edge's
    metrics go into `registry` (a fresh one if None)."""
    if seed:
        await seed_database(db_url)
    routes = {name: {"match": {"methods": ["POST"], "path": path}, "new_percent": 100, "writes": True,
                     "timeout_ms": route_timeout_ms} for name, path in PAY_ROUTES.items()}
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(dead_url(), **routes))
    app_settings = edge_settings(routing, dead_url(), db_url=db_url, **psp_settings(psp, **settings))
    from proxy.app import create_app

    return await aiohttp_client(create_app(app_settings, registry=registry or CollectorRegistry()))


class Shopper:
    """One user's calls through the edge, and the database the edge writes."""

    def __init__(self, edge: TestClient, db_url: str, user: int = 1) -> None:
        self.edge, self.db_url, self.user = edge, db_url, user

    def as_user(self, user: int) -> Shopper:
        return Shopper(self.edge, self.db_url, user)

    async def post(self, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        headers = {"X-User-Id": str(self.user), "X-Platform": "ios"}
        resp = await self.edge.post(path, json=body, headers=headers)
        assert resp.headers.get("X-Edge-Backend") == "new", resp.headers
        return resp.status, await resp.json()

    async def paypal_pay(self, order_id: str, ptype: str = "paypal") -> tuple[int, dict[str, Any]]:
        return await self.post(f"/shopping/orders/{order_id}/pay/{ptype}/paypal")

    async def paypal_finished(self, order_id: str, pay_id: str) -> tuple[int, dict[str, Any]]:
        return await self.post(f"/shopping/orders/{order_id}/paypal_finished/{pay_id}")

    async def adyen_pay(self, order_id: str, method: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        body = {"paymentMethod": method or CARD, "returnUrl": RETURN_URL,
                "browserInfo": {"userAgent": "test", "acceptHeader": "*/*"}}
        return await self.post(f"/shopping/orders/{order_id}/pay/any/adyen", body)

    async def order(self, order_id: str, **values: Any) -> str:
        """A pending order of this user (worked-example amounts in EUR unless `values` say otherwise)."""
        engine = make_engine(self.db_url)
        try:
            async with engine.begin() as conn:
                await insert_order(conn, order_id, user_id=self.user, **values)
        finally:
            await engine.dispose()
        return order_id

    async def rows(self, table: Any, order_id: str) -> list[dict[str, Any]]:
        engine = make_engine(self.db_url)
        try:
            async with engine.connect() as conn:
                order_col = table.c.key if table is t.outbox else table.c.order_id
                result = await conn.execute(select(table).where(order_col == order_id).order_by(table.c.id))
                return [dict(r) for r in result.mappings()]
        finally:
            await engine.dispose()

    async def status(self, order_id: str) -> str:
        engine = make_engine(self.db_url)
        try:
            async with engine.connect() as conn:
                return (await conn.execute(select(t.orders.c.status).where(t.orders.c.id == order_id))).scalar_one()
        finally:
            await engine.dispose()

    async def payments(self, order_id: str) -> list[tuple[str, str, Decimal]]:
        return [(p["provider"], p["status"], p["amount"]) for p in await self.rows(t.payments, order_id)]

    async def history(self, order_id: str) -> list[tuple[str | None, str]]:
        return [(h["from_status"], h["to_status"]) for h in await self.rows(t.order_status_history, order_id)]

    async def outbox(self, order_id: str) -> list[tuple[str, str | None]]:
        return [(o["topic"], o["payload"].get("template") or o["payload"].get("event_id"))
                for o in await self.rows(t.outbox, order_id)]


# --- old shopping and the webhook bridge ------------------------------------------------------


def legacy_psp(psp: Psp, **overrides: Any) -> PspSettings:
    """Old shopping's PSP settings for the emulator `psp`: its credentials, short timeouts for tests."""
    base: dict[str, Any] = {
        "paypal_url": psp.url, "paypal_client_id": PAYPAL_CLIENT_ID, "paypal_secret": PAYPAL_SECRET,
        "adyen_url": psp.url, "adyen_api_key": ADYEN_API_KEY, "adyen_merchant_account": MERCHANT,
        "timeout_seconds": 3.0, "attempts": 2, "retry_pause_seconds": 0.01,
    }
    return PspSettings(**{**base, **overrides})


async def new_order(engine: AsyncEngine, *, user_id: int = 1, currency: str = "EUR", total: str = "96.07",
                    status: str = "pending_payment") -> str:
    """An order row of `user_id` for `total` `currency` (the worked example's by default), its id."""
    order_id = "T" + secrets.token_hex(7).upper()
    async with engine.begin() as conn:
        await insert_order(conn, order_id, user_id=user_id, status=status, currency=currency, total=Decimal(total))
    return order_id


async def order_status(engine: AsyncEngine, order_id: str) -> str:
    async with engine.connect() as conn:
        return str((await conn.execute(select(t.orders.c.status).where(t.orders.c.id == order_id))).scalar_one())


async def rows(engine: AsyncEngine, table: Any, *where: Any) -> list[Any]:
    async with engine.connect() as conn:
        order = table.c.id if "id" in table.c else table.primary_key.columns.values()[0]
        return list((await conn.execute(select(table).where(*where).order_by(order))).all())


def notification(event: str, psp_reference: str, merchant_reference: str, value: int, *, success: str = "true",
                 currency: str = "EUR", original_reference: str | None = None, reason: str | None = None,
                 signer: AdyenHmac | None = SIGNER) -> dict[str, Any]:
    """One NotificationRequestItem as Adyen sends it, signed by adapters/adyen_hmac.py (unsigned: signer None)."""
    item: dict[str, Any] = {
        "pspReference": psp_reference, "merchantAccountCode": MERCHANT, "merchantReference": merchant_reference,
        "amount": {"currency": currency, "value": value}, "eventCode": event, "success": success,
        "eventDate": "2026-06-01T12:00:00+02:00", "paymentMethod": "visa",
    }
    if original_reference is not None:
        item["originalReference"] = original_reference
    if reason is not None:
        item["reason"] = reason
    if signer is not None:
        item["additionalData"] = {"hmacSignature": signer.sign(item)}
    return item


def notification_body(*items: dict[str, Any]) -> dict[str, Any]:
    return {"live": "false", "notificationItems": [{"NotificationRequestItem": item} for item in items]}
