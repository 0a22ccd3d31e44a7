"""The consumers' Prometheus metrics. Names and labels are a contract (shared/spec/edge.md)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema as t

log = structlog.get_logger("consumers.metrics")

OUTCOMES = ("processed", "duplicate", "retried", "dead_lettered", "skipped_not_owner", "forwarded_legacy")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# An event's age spans a steady stream (tens of ms) and a backlog drained after an outage (an hour).
_AGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
AGE_STAGES = ("fetched", "applied")


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry, topics: tuple[str, ...] = ()) -> None:
        self.registry = registry
        self.events = Counter(
            "consumer_events_total", "Kafka events by outcome", ("topic", "outcome"), registry=registry,
        )
        self.lag = Gauge(
            "consumer_lag", "Messages in a partition not yet applied (high watermark − next offset)",
            ("topic", "partition"), registry=registry,
        )
        self.processing = Histogram(
            "consumer_processing_seconds", "Time to apply one event, DB commit included", ("topic",),
            buckets=_BUCKETS, registry=registry,
        )
        # Lag says how many events wait, not how long: the age of an event (now − its Kafka timestamp)
        # when this process fetched it and when its outcome was final (effect committed, delivered to
        # old shopping, or dead-lettered). `applied` − `fetched` is this process's share of the delay;
        # `fetched` alone is the producer's, the broker's and the network's.
        self.age = Histogram(
            "consumer_event_age_seconds", "Age of an event (since its Kafka timestamp) when fetched and when applied",
            ("topic", "stage"), buckets=_AGE_BUCKETS, registry=registry,
        )
        # Zero-valued children from the start: the first dead letter is an increase alerts can see, and
        # the first events' processing times are a rate the dashboard can see.
        for topic in topics:
            self.processing.labels(topic)
            for stage in AGE_STAGES:
                self.age.labels(topic, stage)
            for outcome in OUTCOMES:
                self.events.labels(topic, outcome)


class OutboxAge:
    """`outbox_oldest_unpublished_seconds`: how long the oldest unpublished outbox row has waited (0: none).

    Read from the database by every consumers process, whether it holds the relay lease or not, so it
    tells the truth when no relay runs at all (the case an alert most needs to see); the relay's own
    `outbox_unpublished` is only kept up to date by the lease holder.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.gauge = Gauge(
            "outbox_oldest_unpublished_seconds", "Age of the oldest outbox row not yet published (0: none waiting)",
            registry=registry,
        )

    async def refresh(self, db: AsyncEngine, clock: Callable[[], datetime]) -> None:
        o = t.outbox.c
        async with db.connect() as conn:
            oldest = (await conn.execute(select(func.min(o.created_at)).where(o.published_at.is_(None)))).scalar()
        self.gauge.set(0.0 if oldest is None else max(0.0, (clock() - oldest).total_seconds()))

    async def watch(self, db: AsyncEngine, clock: Callable[[], datetime], stopping: asyncio.Event,
                    period: float = 5.0) -> None:
        """Refresh every `period` seconds until `stopping`; the database away keeps the last value (logged once)."""
        failing = False
        while not stopping.is_set():
            try:
                await self.refresh(db, clock)
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("outbox_age_unavailable", error=exc.__class__.__name__)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), period)
