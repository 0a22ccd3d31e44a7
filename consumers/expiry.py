"""The expiry sweeper of the consumers process: every `SHOP_EXPIRY_SWEEP_SECONDS`, cancel unpaid orders past
their deadline (shop.expiry.expire_due), giving back stock, coupon and wallet.

One active sweeper across instances: only the holder of the `expiry_sweeper` lease sweeps
(shop/leases.py, the mechanism of the outbox relay). Correctness does not depend on it (each order
is expired by a guarded compare-and-set, so a second sweeper or old shopping's cancel loses and
skips), but N processes scanning the same rows every period would be N times the load for nothing.
The lease outlives a period (three of them, at least 10 s), so the holder keeps it from one sweep
to the next; a holder that dies is replaced after that, a clean stop releases it at once.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from shop import leases
from shop.bootstrap import Shop
from shop.expiry import expire_due

log = structlog.get_logger("consumers.expiry")

LEASE = "expiry_sweeper"
ACTOR = "consumer"  # order_status_history.actor: the consumers process cancelled it


class ExpiryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.expired = Counter("expiry_orders_expired_total", "Unpaid orders this process cancelled at their deadline",
                               registry=registry)
        self.errors = Counter("expiry_sweep_errors_total", "Sweeps that failed (the next period tries again)",
                              registry=registry)
        self.leader = Gauge("expiry_sweeper_leader", "1 while this process holds the expiry sweeper lease",
                            registry=registry)


def lease_ttl(period: float) -> timedelta:
    return timedelta(seconds=max(10.0, 3 * period))


class ExpirySweeper:
    def __init__(
        self,
        shop: Shop,
        metrics: ExpiryMetrics,
        *,
        holder: str,
        period: float,
    ) -> None:
        self._shop = shop
        self._db = shop.db
        self._metrics = metrics
        self._holder = holder
        self._period = period
        self._ttl = lease_ttl(period)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        try:
            # Wait first: a process that just started (or a test) gets one period before the first sweep.
            while not await self._stopped_within(self._period):
                await self.sweep_once()
        finally:
            self._metrics.leader.set(0)
            await leases.release_quietly(self._db, LEASE, self._holder)

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def sweep_once(self) -> int:
        """One sweep if this process holds the lease; how many orders it expired. Never raises:
        a DB outage is logged and counted, and the next period tries again."""
        try:
            now = self._shop.clock()
            if not await leases.hold(self._db, LEASE, self._holder, now, self._ttl):
                self._metrics.leader.set(0)
                return 0
            self._metrics.leader.set(1)
            expired = await expire_due(self._shop, actor=ACTOR)
        except Exception as exc:
            self._metrics.errors.inc()
            log.warning("expiry_sweep_failed", error=exc.__class__.__name__, detail=str(exc)[:200])
            return 0
        if expired:
            self._metrics.expired.inc(expired)
            log.info("orders_expired", count=expired)
        return expired
