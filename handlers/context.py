"""What the new side's handlers share: one Shop (shop/bootstrap.py) per process, under the SHOP key.

Built by ``shop_resources(settings)`` in one cleanup_ctx of the edge's root app (the consumers
build theirs the same way), so handlers reach it through ``request.config_dict[SHOP]`` both when
the edge dispatches a legacy path in-process and on direct ``/order2`` calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from adapters.adyen_hmac import AdyenHmac
from common.settings import Settings
from shop.bootstrap import Shop, shop_resources

SHOP = web.AppKey("shop", Shop)
# SHOP_SERVICE_TOKEN for the internal-only handlers (POST /event/{name}); "" = unset, refuses everyone.
SERVICE_TOKEN = web.AppKey("service_token", str)
# The Adyen webhook bridge (handlers/payment_callback.py): the HMAC key, and each event type's topic.
ADYEN_HMAC = web.AppKey("adyen_hmac", AdyenHmac)
EVENT_TOPICS = web.AppKey("event_topics", Mapping)


def setup_new_side(app: web.Application, settings: Settings) -> None:
    app[SERVICE_TOKEN] = settings.service_token or ""
    app[ADYEN_HMAC] = AdyenHmac.from_hex(settings.adyen_hmac_key)
    app[EVENT_TOPICS] = settings.consumer_topics

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with shop_resources(settings) as shop:
            app[SHOP] = shop
            yield

    app.cleanup_ctx.append(resources)


async def db_ready(app: web.Application) -> str | None:
    """Readiness: None when the database answers, else why not."""
    try:
        async with app[SHOP].db.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # any driver error means "not ready", with its class for the operator
        return f"database: {exc.__class__.__name__}"
    return None
