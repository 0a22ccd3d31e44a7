"""What the new side's handlers share: one Shop (shop/bootstrap.py) per process, under the SHOP key,
and the PSP clients (shop.payments.Gateways) under PSP.

Built by ``shop_resources(settings)`` in one cleanup_ctx of the edge's root app (the consumers
build theirs the same way), so handlers reach it through ``request.config_dict[SHOP]`` both when
the edge dispatches a legacy path in-process and on direct ``/order2`` calls. The PayPal and Adyen
clients of the pay routes and of the refund API share one aiohttp ClientSession, opened and closed by a
cleanup_ctx of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import timedelta

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from adapters.adyen import AdyenClient
from adapters.adyen_hmac import AdyenHmac
from adapters.amounts import AmountError
from adapters.errors import PspAuthRejected, PspError, PspTimeout
from adapters.paypal import PayPalClient
from adapters.psp_metrics import PspMetrics
from adapters.retry import RetryPolicy
from adapters.refunds import PspRefunds, psp_session, refund_clients
from common.settings import Settings
from handlers.payment_metrics import PaymentMetrics
from shop.bootstrap import Shop, shop_resources
from shop.payments import Gateways, PspFailure

SHOP = web.AppKey("shop", Shop)
# SHOP_SERVICE_TOKEN for the internal-only handlers (POST /event/{name}); "" = unset, refuses everyone.
SERVICE_TOKEN = web.AppKey("service_token", str)
PSP = web.AppKey("psp", Gateways)
# The refund API's PSP calls (handlers/refund.py) and how long one may take before the retrier takes over.
PSP_REFUNDS = web.AppKey("psp_refunds", PspRefunds)
REFUND_INFLIGHT = web.AppKey("refund_inflight", timedelta)
# The Adyen webhook bridge (handlers/payment_callback.py): the HMAC key, and each event type's topic.
ADYEN_HMAC = web.AppKey("adyen_hmac", AdyenHmac)
EVENT_TOPICS = web.AppKey("event_topics", Mapping)
PAYMENT_METRICS = web.AppKey("payment_metrics", PaymentMetrics)


def setup_new_side(app: web.Application, settings: Settings, registry: CollectorRegistry) -> None:
    """The new side's resources on the edge's root app; its metrics go into the edge's `registry`."""
    app[SERVICE_TOKEN] = settings.service_token or ""
    app[PAYMENT_METRICS] = PaymentMetrics(registry)
    # The pay routes' clients and the refund API's count into the same series.
    psp_metrics = PspMetrics(registry)
    app[ADYEN_HMAC] = AdyenHmac.from_hex(settings.adyen_hmac_key)
    app[EVENT_TOPICS] = settings.consumer_topics

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with shop_resources(settings) as shop:
            app[SHOP] = shop
            yield

    app.cleanup_ctx.append(resources)

    app[REFUND_INFLIGHT] = timedelta(seconds=settings.refund_inflight_seconds)

    async def psp(app: web.Application) -> AsyncIterator[None]:
        # One session (one connection pool per PSP) for the pay routes' clients and the refund API's.
        async with psp_session() as session:
            app[PSP] = psp_gateways(session, settings, psp_metrics)
            app[PSP_REFUNDS] = refund_clients(session, settings, psp_metrics)
            yield

    app.cleanup_ctx.append(psp)


def person_waiting(settings: Settings) -> RetryPolicy:
    """The retry policy of a PSP call a person waits for (the pay routes; routing.yaml gives them 10 s):
    two attempts of at most 4 s and a short pause, ≈ 8.5 s at worst, where the background default is ≈ 34 s.
    The SHOP_PSP_* settings can only make it tighter."""
    return RetryPolicy(attempts=min(2, settings.psp_max_attempts), timeout=min(4.0, settings.psp_timeout_seconds),
                       base_delay=min(0.2, settings.psp_backoff_seconds),
                       max_delay=min(0.5, settings.psp_backoff_max_seconds))


def classify(exc: Exception) -> PspFailure | None:
    """What an adapters/ exception means to shop.payments; None for anything else (a bug: raised as it is)."""
    if isinstance(exc, AmountError):
        return PspFailure("amount")
    if not isinstance(exc, PspError):
        return None
    if isinstance(exc, PspTimeout):
        return PspFailure("timeout", exc.code, exc.status)
    if exc.retryable:
        return PspFailure("unknown", exc.code, exc.status)
    return PspFailure("auth" if isinstance(exc, PspAuthRejected) else "rejected", exc.code, exc.status)


def psp_gateways(session: aiohttp.ClientSession, settings: Settings, metrics: PspMetrics | None = None) -> Gateways:
    """The pay routes' clients on `session`, with the policy of a call a person waits for."""
    policy = person_waiting(settings)
    paypal = PayPalClient(session, base_url=settings.paypal_base_url, client_id=settings.paypal_client_id,
                          secret=settings.paypal_secret, retry=policy, metrics=metrics)
    adyen = AdyenClient(session, base_url=settings.adyen_base_url, api_key=settings.adyen_api_key,
                        merchant_account=settings.adyen_merchant_account, retry=policy, metrics=metrics)
    return Gateways(paypal, adyen, classify)


async def db_ready(app: web.Application) -> str | None:
    """Readiness: None when the database answers, else why not."""
    try:
        async with app[SHOP].db.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # any driver error means "not ready", with its class for the operator
        return f"database: {exc.__class__.__name__}"
    return None
