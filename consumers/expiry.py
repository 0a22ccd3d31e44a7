"""The expiry sweeper of the consumers process: every `SHOP_EXPIRY_SWEEP_SECONDS`, cancel unpaid orders past
their deadline (shop.expiry.expire_due), giving back stock, coupon and wallet.

One active sweeper across instances: only the holder of the `expiry_sweeper` lease sweeps
(consumers/leased_job.py). Correctness does not depend on it: each order is expired by a guarded
compare-and-set, so a second sweeper or old shopping's cancel loses and skips.
"""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from common.settings import Settings
from consumers.leased_job import LeasedJob
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


class ExpirySweeper(LeasedJob):
    def __init__(self, shop: Shop, metrics: ExpiryMetrics, *, holder: str, period: float) -> None:
        super().__init__(shop, lease=LEASE, holder=holder, period=period, leader=metrics.leader)
        self._metrics = metrics

    async def pass_once(self) -> int:
        return await self.sweep_once()

    async def sweep_once(self) -> int:
        """One sweep if this process holds the lease; how many orders it expired. Never raises:
        a DB outage is logged and counted, and the next period tries again."""
        try:
            if not await self.lead():
                return 0
            expired = await expire_due(self._shop, actor=ACTOR)
        except Exception as exc:
            self._metrics.errors.inc()
            log.warning("expiry_sweep_failed", error=exc.__class__.__name__, detail=str(exc)[:200])
            return 0
        if expired:
            self._metrics.expired.inc(expired)
            log.info("orders_expired", count=expired)
        return expired


def expiry_sweeper(shop: Shop, settings: Settings, registry: CollectorRegistry, holder: str) -> ExpirySweeper | None:
    """The sweeper of the consumers process (consumers/app.py runs it: the database only, so it
    sweeps while the broker is still away too); None when SHOP_EXPIRY_SWEEP_SECONDS=0 turns it off."""
    metrics = ExpiryMetrics(registry)
    if settings.expiry_sweep_seconds <= 0:
        return None
    return ExpirySweeper(shop, metrics, holder=holder, period=settings.expiry_sweep_seconds)
