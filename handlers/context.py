"""What the new side's handlers share: one Shop (shop/bootstrap.py) per process, under the SHOP key.

Built by ``shop_resources(settings)`` in one cleanup_ctx of the edge's root app (the consumers
build theirs the same way), so handlers reach it through ``request.config_dict[SHOP]`` both when
the edge dispatches a legacy path in-process and on direct ``/order2`` calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web

from adapters.refunds import PspRefunds, psp_refunds
from common.settings import Settings
from shop.bootstrap import Shop, shop_resources

SHOP = web.AppKey("shop", Shop)
# SHOP_SERVICE_TOKEN for the internal-only handlers (POST /event/{name}); "" = unset, refuses everyone.
SERVICE_TOKEN = web.AppKey("service_token", str)
# The refund API's PSP calls (handlers/refund.py) and how long one may take before the retrier takes over.
PSP_REFUNDS = web.AppKey("psp_refunds", PspRefunds)
REFUND_INFLIGHT = web.AppKey("refund_inflight", timedelta)


def setup_new_side(app: web.Application, settings: Settings) -> None:
    app[SERVICE_TOKEN] = settings.service_token or ""

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with shop_resources(settings) as shop:
            app[SHOP] = shop
            yield

    app.cleanup_ctx.append(resources)

    app[REFUND_INFLIGHT] = timedelta(seconds=settings.refund_inflight_seconds)

    async def refunds(app: web.Application) -> AsyncIterator[None]:
        async with psp_refunds(settings) as psp:
            app[PSP_REFUNDS] = psp
            yield

    app.cleanup_ctx.append(refunds)


async def db_ready(app: web.Application) -> str | None:
    """Readiness: None when the database answers, else why not."""
    try:
        async with app[SHOP].db.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # any driver error means "not ready", with its class for the operator
        return f"database: {exc.__class__.__name__}"
    return None
