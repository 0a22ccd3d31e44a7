"""Builders for the payment tests: orders to pay, old shopping pointed at the PSP emulator, Adyen notifications.

Shared by tests/integration/test_legacy_payments.py (old shopping's pay and refund routes) and
test_adyen_webhook.py (the new side's webhook bridge), so both pay the same kind of order
through the same emulator configuration.
"""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.adyen_hmac import AdyenHmac
from emulators.legacy.psp_calls import PspSettings
from shop import schema as t
from tests.builders import insert_order
from tests.support.psp import ADYEN_API_KEY, HMAC_KEY, MERCHANT, PAYPAL_CLIENT_ID, PAYPAL_SECRET, Psp

CARD = {"type": "scheme", "number": "4111111111111111", "holderName": "Ada Lovelace"}
ADYEN_BODY = {"paymentMethod": CARD, "returnUrl": "https://shop.example/return", "browserInfo": {"userAgent": "t"}}
SIGNER = AdyenHmac.from_hex(HMAC_KEY)


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
