"""Fixtures for the PSP emulator tests (``pytest_plugins = ["tests.support.psp_fixtures"]``).

``make_psp(**config)`` starts ``emulators.psp`` in-process on a free loopback port with its
control API (PspConfig fields as keywords; webhooks go to the ``webhook_sink`` fixture's server);
``psp`` is one with the defaults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from emulators.psp import PspConfig, create_admin_app, create_app
from tests.support.psp import ADYEN_API_KEY, HMAC_KEY, MERCHANT, PAYPAL_CLIENT_ID, PAYPAL_SECRET, Psp, WebhookSink


@pytest.fixture
async def webhook_sink(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> WebhookSink:
    sink = WebhookSink()
    app = web.Application()
    app.router.add_post("/payment_callback/adyen", sink.handle)
    server = await aiohttp_server(app)
    sink.url = str(server.make_url("/payment_callback/adyen"))
    return sink


@pytest.fixture
async def make_psp(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    webhook_sink: WebhookSink,
) -> AsyncIterator[Callable[..., Awaitable[Psp]]]:
    session = aiohttp.ClientSession()

    async def make(**config: Any) -> Psp:
        settings = {"paypal_client_id": PAYPAL_CLIENT_ID, "paypal_secret": PAYPAL_SECRET,
                    "adyen_api_key": ADYEN_API_KEY, "adyen_merchant_account": MERCHANT, "hmac_key_hex": HMAC_KEY,
                    "webhook_url": webhook_sink.url, "webhook_retry_seconds": 0.05, "random_seed": 11, **config}
        app = create_app(PspConfig(**settings))
        server = await aiohttp_server(app)
        admin = await aiohttp_client(create_admin_app(app))
        return Psp(server, admin, session)

    try:
        yield make
    finally:
        await session.close()


@pytest.fixture
async def psp(make_psp: Callable[..., Awaitable[Psp]]) -> Psp:
    return await make_psp()
