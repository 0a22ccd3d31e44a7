"""The edge's background expiry sweeper: every N seconds, cancel unpaid orders past their deadline.

Issue 5 asks for the sweeper in the consumers process, or as an edge background task while
consumers do not exist yet; this is the interim edge task. A later issue moves it to the
consumers process (it only needs a Shop and ``shop.expiry.expire_due``), and then this
module and its line in proxy/app.py go.

Every edge process (every gunicorn worker) runs one. That is safe: each order is expired in its
own transaction by a guarded compare-and-set, so concurrent sweepers (and old shopping's own
cancel) release stock, coupon and wallet exactly once; the losers skip the order silently.
``SHOP_EXPIRY_SWEEP_SECONDS`` (Settings.expiry_sweep_seconds, default 30) sets the period;
0 disables the task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from handlers.context import SHOP
from shop.bootstrap import Shop
from shop.expiry import expire_due
from common.settings import Settings

log = structlog.get_logger("expiry")


async def sweep_once(shop: Shop) -> int:
    """One sweep; failures are logged (the next tick tries again), never raised."""
    try:
        expired = await expire_due(shop)
    except Exception:  # a DB outage must not kill the task: log it and try again next tick
        log.exception("expiry_sweep_failed")
        return 0
    if expired:
        log.info("orders_expired", count=expired)
    else:
        log.debug("orders_expired", count=0)
    return expired


async def run_sweeper(shop: Shop, interval: float) -> None:
    while True:
        # Sleep first: a freshly started edge (or a test) gets one period before the first sweep.
        await asyncio.sleep(interval)
        await sweep_once(shop)


def expiry_sweeper(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup_ctx running the sweeper; append it after the new side's resources (it uses app[SHOP])."""
    interval = settings.expiry_sweep_seconds

    async def sweeper(app: web.Application) -> AsyncIterator[None]:
        if interval <= 0:
            yield
            return
        task = asyncio.create_task(run_sweeper(app[SHOP], interval), name="expiry-sweep")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return sweeper
