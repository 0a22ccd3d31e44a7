"""The PayPal capture reconciler of the consumers process: every `SHOP_CAPTURE_RECONCILE_SECONDS`, settle the
PayPal captures paypal_finished left in doubt (shop/capture_reconcile.py: read the PayPal order, record a
COMPLETED capture, finish a capture the payer asked for with the key paypal_finished sends).

One active reconciler across instances: only the holder of the `capture_reconciler` lease asks PayPal
(consumers/leased_job.py). A pass stops at the first PSP error (PayPal down: one failed call a period,
not fifty) and the next period starts again from the least recently looked at.

Metrics (every child at 0 from the start): `paypal_captures_reconciled_total{outcome}` (captured, declined,
pending, not_approved, awaiting_payer, settled: what each payment looked at came to),
`paypal_captures_in_doubt` (payments in doubt when the lease holder's last pass began, all of them, not
only the batch it looked at; 0 on the other instances; the awaiting_payer ones stay there for a person:
alert PayPalCapturesInDoubt), `capture_reconciler_leader`, `capture_reconcile_errors_total`.
"""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from common.settings import Settings
from consumers.leased_job import LeasedJob
from shop.bootstrap import Shop
from shop.capture_reconcile import (BATCH, OUTCOMES, PayPalReconcileGateway, captures_in_doubt, count_in_doubt,
                                    reconcile)
from shop.payments import IN_FLIGHT

log = structlog.get_logger("consumers.capture_reconcile")

LEASE = "capture_reconciler"
ACTOR = "consumer"


class CaptureReconcileMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciled = Counter("paypal_captures_reconciled_total",
                                  "PayPal payments in doubt the reconciler looked at, by what each came to",
                                  ("outcome",), registry=registry)
        self.in_doubt = Gauge("paypal_captures_in_doubt",
                              "PayPal payments in doubt found by the reconciler's last pass", registry=registry)
        self.leader = Gauge("capture_reconciler_leader", "1 while this process holds the capture reconciler lease",
                            registry=registry)
        self.errors = Counter("capture_reconcile_errors_total",
                              "Reconciler passes stopped by a failure (the next period tries again)", registry=registry)
        for outcome in OUTCOMES:
            self.reconciled.labels(outcome)


class CaptureReconciler(LeasedJob):
    def __init__(self, shop: Shop, paypal: PayPalReconcileGateway, metrics: CaptureReconcileMetrics, *,
                 holder: str, period: float, batch: int = BATCH) -> None:
        super().__init__(shop, lease=LEASE, holder=holder, period=period, leader=metrics.leader)
        self._paypal = paypal
        self._metrics = metrics
        self._batch = batch

    async def pass_once(self) -> dict[str, int]:
        return await self.reconcile_once()

    async def reconcile_once(self) -> dict[str, int]:
        """One pass if this process holds the lease: how many payments came to each outcome. Never raises."""
        counts: dict[str, int] = {}
        try:
            if not await self.lead():
                self._metrics.in_doubt.set(0)  # the holder's count is the one: max across instances reads it
                return counts
            now = self._shop.clock()
            doubts = await captures_in_doubt(self._shop.db_read, now, older_than=IN_FLIGHT, limit=self._batch)
            # A batch that is not full is all of them; only a full one needs the count.
            in_doubt = len(doubts) if len(doubts) < self._batch else await count_in_doubt(self._shop.db_read, now)
            self._metrics.in_doubt.set(in_doubt)
            for doubt in doubts:
                done = await reconcile(self._shop, self._paypal, doubt, actor=ACTOR)
                counts[done.outcome] = counts.get(done.outcome, 0) + 1
                self._metrics.reconciled.labels(done.outcome).inc()
                log.info("paypal_capture_reconciled", order_id=done.order_id, pay_id=done.pay_id,
                         outcome=done.outcome, status=done.status)
        except Exception as exc:
            self._metrics.errors.inc()
            log.warning("capture_reconcile_failed", error=exc.__class__.__name__, detail=str(exc)[:200])
        return counts


def capture_reconciler(shop: Shop, settings: Settings, registry: CollectorRegistry, holder: str,
                       paypal: PayPalReconcileGateway) -> CaptureReconciler | None:
    """The reconciler of the consumers process (consumers/app.py runs it); None when
    SHOP_CAPTURE_RECONCILE_SECONDS=0 turns it off. Its metrics are registered either way."""
    metrics = CaptureReconcileMetrics(registry)
    if settings.capture_reconcile_seconds <= 0:
        return None
    return CaptureReconciler(shop, paypal, metrics, holder=holder, period=settings.capture_reconcile_seconds)
