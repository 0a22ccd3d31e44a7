"""The event pipeline of shopping-consumers, assembled for tests: real broker, real runner, real ownership.

`EventConsumers` is what consumers/app.py builds for the events (one Kafka consumer on a topic of
the test's own per event type, the runner, `owned_handler` per type, the routing.yaml watch, the
delivery to old shopping), without the relay and the expiry sweeper, so a test controls every
other writer of its database. The events and the rows tests start from are built here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from common.settings import DEFAULT_TOPICS, Settings
from consumers.app import is_transient
from consumers.events import owned_handler
from consumers.legacy_delivery import LegacyDelivery, legacy_session
from consumers.metrics import ConsumerMetrics
from consumers.ownership import ConsumersLoader, Ownership
from consumers.runner import ConsumerRunner, RunnerOptions
from shop import schema as t
from shop.bootstrap import Shop, shop_resources
from shop.events import EVENT_TYPES
from tests.builders import NOW, insert_order
from tests.support.broker import Broker, unique_topic
from tests.support.edge import routing_doc, write_routing
from tests.support.legacydb import private_mariadb

# Tansu answers a join after about half the session timeout: 1 s instead of 5 with the default 10 s.
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 200, "rebalance_timeout_ms": 2000}
TOTAL = Decimal("96.07")  # tests.builders.insert_order's total


@contextlib.asynccontextmanager
async def private_shop(name: str) -> AsyncIterator[Shop]:
    """A freshly seeded MariaDB database of the test's own (private_mariadb), as a Shop whose clock stands at NOW."""
    url = await private_mariadb(name)
    async with shop_resources(Settings.from_env({}, db_url=url), clock=lambda: NOW) as shop:
        yield shop


def write_consumers(path: Path, legacy_url: str, owners: Mapping[str, str | int]) -> Path:
    """routing.yaml with this `consumers:` section (an int is `{new_percent: N}`), written atomically."""
    consumers = {name: {"new_percent": owner} if isinstance(owner, int) else owner for name, owner in owners.items()}
    return write_routing(path, {**routing_doc(legacy_url), "consumers": consumers})


class EventConsumers:
    """The consumers' event side on topics of the test's own; `async with` runs it, the exit stops it as SIGTERM does."""

    def __init__(
        self, broker: Broker, shop: Shop, routing_file: Path, *,
        types: Iterable[str] = tuple(EVENT_TYPES), partitions: int = 4, options: RunnerOptions | None = None,
        delivery_timeout: float = 2.0,
    ) -> None:
        self.broker, self.shop, self.partitions = broker, shop, partitions
        self.topics = {name: unique_topic(DEFAULT_TOPICS[name]) for name in types}
        self.registry = CollectorRegistry()
        self.metrics = ConsumerMetrics(self.registry, tuple(self.topics.values()))
        loader = ConsumersLoader(env={}, default_legacy_url="http://127.0.0.1:1", max_bytes=1 << 20)
        self.ownership = Ownership(routing_file, loader=loader, registry=self.registry, drop_settle=0)
        self.options = options or RunnerOptions(backoff_initial=0.05, backoff_max=0.3, commit_interval=0.05)
        self.delivery_timeout = delivery_timeout

    @property
    def topic(self) -> str:
        """The topic of the first (often the only) event type."""
        return next(iter(self.topics.values()))

    async def __aenter__(self) -> EventConsumers:
        await self.broker.create_topics(*self.topics.values(), partitions=self.partitions)
        self.session = legacy_session(8)
        legacy = LegacyDelivery(self.session, lambda: self.ownership.legacy_url, timeout=self.delivery_timeout)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.broker.bootstrap, group_id=unique_topic("g"),
                                         enable_auto_commit=False, auto_offset_reset="earliest", **FAST_GROUP)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all")
        await self.consumer.start()
        await self.producer.start()
        handlers = {topic: owned_handler(self.shop, EVENT_TYPES[name], self.ownership, legacy) for name, topic in self.topics.items()}
        self.runner = ConsumerRunner(self.consumer, self.producer, handlers, self.metrics, is_transient=is_transient,
                                     options=self.options)
        self.tasks = [asyncio.create_task(self.runner.run()), asyncio.create_task(self.ownership.watch(0.05))]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.runner.stop()
        await asyncio.wait_for(self.tasks[0], 30)
        self.tasks[1].cancel()
        await self.consumer.stop()
        await self.producer.stop()
        await self.session.close()

    def count(self, outcome: str, event_type: str | None = None) -> float:
        """consumer_events_total for one event type's topic (the first one by default)."""
        topic = self.topics[event_type] if event_type else self.topic
        return self.metrics.events.labels(topic, outcome)._value.get()

    def total(self, outcome: str) -> float:
        return sum(self.count(outcome, name) for name in self.topics)

    def settled(self) -> float:
        """Messages the runner is done with, whatever the outcome (retries are attempts, not messages)."""
        return sum(self.total(o) for o in ("processed", "duplicate", "forwarded_legacy", "dead_lettered"))

    def lag(self) -> float:
        return sum(s.value for m in self.metrics.lag.collect() for s in m.samples)


async def produce(broker: Broker, topic: str, events: Iterable[Mapping[str, Any]]) -> None:
    """Each event keyed by its order id, as the payment system publishes them."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for e in events:
            await producer.send_and_wait(topic, key=str(e["order_id"]).encode(), value=json.dumps(e).encode())
    finally:
        await producer.stop()


# --- events ---------------------------------------------------------------------------------------


def captured(order_id: str, total: str | Decimal = TOTAL, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"pn-{order_id}", "order_id": order_id, "payment_id": None, "provider": "adyen", "status": "captured",
            "amount": str(total), "currency": "EUR", "psp_reference": f"PSP-{order_id}", **extra}


def authorized(order_id: str, total: str | Decimal = TOTAL, **extra: Any) -> dict[str, Any]:
    return captured(order_id, total, **{"event_id": f"pa-{order_id}", "status": "authorized", **extra})


def failed(order_id: str, payment_id: int | None, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"pf-{order_id}", "order_id": order_id, "payment_id": None if payment_id is None else str(payment_id),
            "provider": "adyen", "reason": "Refused", **extra}


def purchased(order_id: str, user_id: int | None = 1, **extra: Any) -> dict[str, Any]:
    # The id both sides' outbox rows give the purchased event of a paid order.
    return {"event_id": f"purchased:{order_id}", "order_id": order_id, "user_id": user_id, **extra}


def refund_done(order_id: str, refund_id: int, amount: str | Decimal, status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    return {"event_id": f"rn-{refund_id}-{status}", "refund_id": str(refund_id), "order_id": order_id, "status": status,
            "amount": str(amount), "currency": "EUR", "psp_reference": f"R-{refund_id}", "reason": None, **extra}


# --- rows the events apply to -----------------------------------------------------------------------


def inserted_id(result: Any) -> int:
    """The id the database gave the row an INSERT just wrote."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


async def new_order(shop: Shop, order_id: str, *, status: str = "pending_payment", user_id: int = 1) -> None:
    """A bare order row (tests.builders.insert_order: 96.07 EUR), as either side's checkout leaves it."""
    async with shop.db.begin() as conn:
        await insert_order(conn, order_id, status=status, user_id=user_id)


async def payment_row(shop: Shop, order_id: str, status: str = "created", psp_reference: str | None = None) -> int:
    """A payments row as a pay route writes it (before the PSP's event)."""
    async with shop.db.begin() as conn:
        inserted = await conn.execute(t.payments.insert().values(
            order_id=order_id, provider="adyen", status=status, amount=TOTAL, currency="EUR", psp_reference=psp_reference,
            created_at=NOW, updated_at=NOW,
        ))
        return inserted_id(inserted)


async def refund_row(shop: Shop, order_id: str, amount: str | Decimal, *, attempts: int = 1) -> int:
    """A refund row as the refund API writes it once the PSP has the request (status submitted)."""
    async with shop.db.begin() as conn:
        payment = (await conn.execute(select(func.min(t.payments.c.id)).where(t.payments.c.order_id == order_id))).scalar_one()
        inserted = await conn.execute(t.refunds.insert().values(
            order_id=order_id, payment_id=payment, amount=Decimal(amount), currency="EUR", status="submitted",
            attempts=attempts, request_id=f"rq-{order_id}-{amount}-{attempts}", created_at=NOW, updated_at=NOW,
        ))
        return inserted_id(inserted)


async def paid_order(shop: Shop, order_id: str) -> None:
    """An order paid before the test (a captured payment, status paid), for refunds."""
    await new_order(shop, order_id, status="paid")
    await payment_row(shop, order_id, "captured", f"PSP-{order_id}")


async def history(shop: Shop, order_ids: Iterable[str]) -> dict[str, list[tuple[str | None, str, str]]]:
    """Each order's (from, to, actor) transitions, oldest first."""
    ids = list(order_ids)
    h = t.order_status_history.c
    out: dict[str, list[tuple[str | None, str, str]]] = {o: [] for o in ids}
    async with shop.db.connect() as conn:
        rows = await conn.execute(select(h.order_id, h.from_status, h.to_status, h.actor).where(h.order_id.in_(ids)).order_by(h.id))
        for order_id, from_status, to_status, actor in rows:
            out[order_id].append((from_status, to_status, actor))
    return out
