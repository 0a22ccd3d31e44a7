"""The outbox relay: rows written in the same transaction as a change go to Kafka after it commits.

At least once, in order per key: rows are read in id order and sent with `acks="all"` (and the
idempotent producer where the broker supports it: a setting); `published_at` is set only after
the broker acknowledged every row of the batch. A broker that is down leaves the rows waiting; a
crash between the send and the update publishes them again (consumers dedupe by event id).

Only the holder of the `outbox_relay` lease publishes (shop/leases.py): with two consumers
processes running, one relays and the other stands by, taking over when the lease runs out.
That keeps per-key order, which two relays claiming rows side by side would not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import leases
from shop import schema as t

log = structlog.get_logger("consumers.outbox")

LEASE = "outbox_relay"


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.unpublished = Gauge("outbox_unpublished", "Outbox rows not yet published", registry=registry)
        self.published = Counter("outbox_published_total", "Outbox rows published, by topic", ("topic",), registry=registry)
        self.errors = Counter("outbox_publish_errors_total", "Failed publish attempts (the rows wait)", registry=registry)
        self.leader = Gauge("outbox_relay_leader", "1 while this process holds the relay lease", registry=registry)


def _value(payload: Any) -> bytes:
    if isinstance(payload, str | bytes):  # SQLite hands a JSON column back parsed; be safe with raw text too
        return payload.encode() if isinstance(payload, str) else payload
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class OutboxRelay:
    def __init__(
        self,
        db: AsyncEngine,
        producer: AIOKafkaProducer,
        metrics: RelayMetrics,
        *,
        holder: str,
        clock: Callable[[], datetime] = t.utcnow,
        batch: int = 500,
        poll_seconds: float = 0.1,
        lease_ttl: timedelta = timedelta(seconds=10),
    ) -> None:
        self._db = db
        self._producer = producer
        self._metrics = metrics
        self._holder = holder
        self._clock = clock
        self._batch = batch
        self._poll = poll_seconds
        self._ttl = lease_ttl
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    published = await self.relay_once()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # broker or DB away: the rows wait, nothing is lost
                    failures += 1
                    self._metrics.errors.inc()
                    # Not renewed, so not known to be held: a relay cut off from its database must not go
                    # on showing 1 beside the one that took over when the lease ran out.
                    self._metrics.leader.set(0)
                    log.warning("outbox_relay_failed", error=exc.__class__.__name__, failures=failures)
                    published = 0
                    await self._pause(min(5.0, 0.1 * 2 ** min(failures, 6)))
                    continue
                if published < self._batch:
                    await self._pause(self._poll)
        finally:
            self._metrics.leader.set(0)
            await leases.release_quietly(self._db, LEASE, self._holder)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def relay_once(self) -> int:
        """One batch if this process holds the lease; the number of rows published."""
        if not await leases.hold(self._db, LEASE, self._holder, self._clock(), self._ttl):
            self._metrics.leader.set(0)
            return 0
        self._metrics.leader.set(1)
        o = t.outbox.c
        async with self._db.connect() as conn:
            rows = (await conn.execute(
                select(o.id, o.topic, o.key, o.payload).where(o.published_at.is_(None)).order_by(o.id).limit(self._batch)
            )).all()
            waiting = (await conn.execute(select(func.count()).select_from(t.outbox).where(o.published_at.is_(None)))).scalar_one()
            await conn.rollback()
        self._metrics.unpublished.set(waiting)
        if not rows:
            return 0
        sent = [
            await self._producer.send(row.topic, value=_value(row.payload), key=row.key.encode() if row.key else None)
            for row in rows
        ]
        await asyncio.gather(*sent)  # every row acknowledged (acks=all) before any is marked
        async with self._db.begin() as conn:
            await conn.execute(
                update(t.outbox).where(o.id.in_([row.id for row in rows]), o.published_at.is_(None))
                .values(published_at=self._clock())
            )
        for row in rows:
            self._metrics.published.labels(row.topic).inc()
        self._metrics.unpublished.set(max(0, waiting - len(rows)))
        return len(rows)
