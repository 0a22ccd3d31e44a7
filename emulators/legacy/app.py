"""Composition root of the old-shopping emulator: ``create_app(db_url)``.

Middlewares, outermost first: request stats (counts every request), errors (legacy
envelope, never a stack trace), faults (injected latency, errors, resets). The knobs
that drive faults and read the stats are not on this app: ``admin.create_admin_app``
serves them on a loopback listener of their own. The database engine and the HTTP
session old shopping calls PayPal and Adyen with live in cleanup contexts; nothing is
created at import time.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from emulators.legacy import routes
from emulators.legacy.errors import error_middleware
from emulators.legacy.faults import FAULTS, FaultTable, fault_middleware
from emulators.legacy.psp_calls import PspClient, PspSettings
from emulators.legacy.state import ENGINE, PSP, SERVICE_TOKEN
from emulators.legacy.stats import STATS, RequestStats, stats_middleware
from shop.db import create_all, make_engine

log = logging.getLogger(__name__)


def create_app(
    db_url: str,
    *,
    create_schema: bool = False,
    random_seed: int = 0,
    psp: PspSettings | None = None,
    service_token: str | None = None,
) -> web.Application:
    """The emulator app on the shared database at ``db_url``.

    ``create_schema`` creates missing tables at startup (demo data: ``shopping-db seed
    --demo``); ``random_seed`` seeds the fault knobs' random source; ``psp`` says where PayPal
    and Adyen are (default: the PSP emulator on :8091); ``service_token`` is the bearer token
    ``/refund/refund`` requires (unset: it refuses everyone).
    """
    app = web.Application(middlewares=[stats_middleware, error_middleware, fault_middleware])
    app[FAULTS] = FaultTable(random.Random(random_seed))
    app[STATS] = RequestStats()
    app[SERVICE_TOKEN] = service_token or ""
    app.cleanup_ctx.append(_database(db_url, create_schema=create_schema))
    app.cleanup_ctx.append(_psp_session(psp or PspSettings()))
    routes.add_routes(app)
    return app


def _database(db_url: str, *, create_schema: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def database(app: web.Application) -> AsyncIterator[None]:
        engine = make_engine(db_url)
        try:
            if create_schema:
                await create_all(engine)
            app[ENGINE] = engine
            yield
        finally:
            await engine.dispose()

    return database


def _psp_session(settings: PspSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def psp_session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app[PSP] = PspClient(session, settings)
            yield

    return psp_session
