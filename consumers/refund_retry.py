"""The refund retrier of the consumers process: every `SHOP_REFUND_RETRY_SECONDS`, submit the refunds that are
due again (shop.refunds.retry_due: `retrying` past `next_attempt_at`, or `pending` whose first submission's
process died), each with its own idempotency key, the same one every time.

One active retrier across instances: only the holder of the `refund_retrier` lease submits
(consumers/leased_job.py). Correctness does not hang on it: each submission is claimed by a guarded update, so
a second retrier loses the claim and skips; the lease saves N processes scanning and calling for nothing.

Metrics (registered when the process starts, every child at 0, so the first failure is an increase
Prometheus can see): `refunds_retried_total{provider}` (submissions made again),
`refunds_failed_total{provider}` (refunds this process moved to `failed`, for a person: alert
RefundFailedForGood), `refunds_in_state{status}` (refunds per status, read from the database by every
instance, the lease holder or not, so `failed` counts what any side or path failed), `refund_retrier_leader`,
`refund_retry_errors_total`.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from common.settings import Settings
from consumers.leased_job import LeasedJob
from shop.bootstrap import Shop
from shop.refunds import STATUSES, RefundGateway, count_by_status, retry_due

log = structlog.get_logger("consumers.refund_retry")

LEASE = "refund_retrier"
ACTOR = "consumer"
PROVIDERS = ("adyen", "paypal")


class RefundRetryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.retried = Counter("refunds_retried_total", "Refund submissions the retrier sent again (same key)",
                               ("provider",), registry=registry)
        self.failed = Counter("refunds_failed_total", "Refunds this process moved to failed, for a person",
                              ("provider",), registry=registry)
        self.in_state = Gauge("refunds_in_state", "Refunds per status (read from the database)", ("status",),
                              registry=registry)
        self.leader = Gauge("refund_retrier_leader", "1 while this process holds the refund retrier lease",
                            registry=registry)
        self.errors = Counter("refund_retry_errors_total", "Retrier passes that failed (the next period tries again)",
                              registry=registry)
        for provider in PROVIDERS:
            self.retried.labels(provider)
            self.failed.labels(provider)
        for status in STATUSES:
            self.in_state.labels(status)


class RefundRetrier(LeasedJob):
    def __init__(
        self,
        shop: Shop,
        gateway: RefundGateway,
        metrics: RefundRetryMetrics,
        *,
        holder: str,
        period: float,
        inflight: timedelta,
    ) -> None:
        # A pass may wait on PSP calls (each up to the in-flight window); the lease must outlive it.
        super().__init__(shop, lease=LEASE, holder=holder, period=period, leader=metrics.leader, longest_pass=inflight)
        self._gateway = gateway
        self._metrics = metrics
        self._inflight = inflight

    async def started(self) -> None:
        await self.refresh_gauge()  # true counts from the first scrape, before the first period ends

    async def pass_once(self) -> int:
        return await self.retry_once()

    async def refresh_gauge(self) -> None:
        try:
            counts = await count_by_status(self._shop.db_read)
        except Exception as exc:  # the database away: keep the last values
            log.info("refund_counts_unavailable", error=exc.__class__.__name__)
            return
        for status, n in counts.items():
            self._metrics.in_state.labels(status).set(n)

    async def retry_once(self) -> int:
        """One pass if this process holds the lease; how many refunds it submitted again. Never raises:
        a DB outage is logged and counted, and the next period tries again."""
        submitted = 0
        try:
            if await self.lead():
                for done in await retry_due(self._shop, self._gateway, inflight=self._inflight, actor=ACTOR):
                    if done.submitted:
                        submitted += 1
                        self._metrics.retried.labels(done.provider).inc()
                    if done.settled.failed_now:
                        self._metrics.failed.labels(done.provider).inc()
                    log.info("refund_retried", refund_id=done.refund_id, provider=done.provider,
                             submitted=done.submitted, status=done.settled.status)
        except Exception as exc:
            self._metrics.errors.inc()
            log.warning("refund_retry_failed", error=exc.__class__.__name__, detail=str(exc)[:200])
        await self.refresh_gauge()
        return submitted


def refund_retrier(shop: Shop, settings: Settings, registry: CollectorRegistry, holder: str,
                   gateway: RefundGateway) -> RefundRetrier | None:
    """The refund retrier of the consumers process (consumers/app.py runs it: the database and the
    PSPs only, so it runs while the broker is away too); None when SHOP_REFUND_RETRY_SECONDS=0 turns it off.
    Its metrics are registered either way."""
    metrics = RefundRetryMetrics(registry)
    if settings.refund_retry_seconds <= 0:
        return None
    return RefundRetrier(shop, gateway, metrics, holder=holder, period=settings.refund_retry_seconds,
                         inflight=timedelta(seconds=settings.refund_inflight_seconds))
