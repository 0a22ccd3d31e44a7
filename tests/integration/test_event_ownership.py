"""Event gray through the real consumer runner, the real broker, MariaDB and old shopping's emulator.

Proves: an event type owned by `legacy` is delivered to the emulator's `POST /event/{name}`,
which applies it (history actor `legacy`), counted `forwarded_legacy`; flipping routing.yaml to
`new` makes the next events the consumer's (actor `consumer`) without a restart; old shopping
down pauses the partition and everything is delivered once when it is back; a 4xx from old
shopping sends the event to the DLQ with the answer as the reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from consumers.app import is_transient
from consumers.events import owned_handler
from consumers.legacy_delivery import LegacyDelivery, legacy_session
from consumers.metrics import ConsumerMetrics
from consumers.ownership import ConsumersLoader, Ownership
from consumers.runner import ConsumerRunner, RunnerOptions
from emulators.legacy.app import create_app
from shop import schema as t
from shop.bootstrap import Shop, shop_resources
from shop.checkout import parse_order_request, place_order
from shop.errors import Conflict
from shop.events import EVENT_TYPES
from common.settings import Settings
from tests.builders import NOW, shop_at
from tests.support.broker import Broker, running_broker, unique_topic, wait_until
from tests.support.legacydb import private_mariadb
from tests.support.net import free_port

WORKED = {"user_coupon_id": None, "address_id": 1, "currency": "EUR", "use_wallet": False}
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 200, "rebalance_timeout_ms": 2000}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from running_broker(tmp_path_factory.mktemp("broker"))


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    url = await private_mariadb("event_ownership")
    async with shop_resources(Settings.from_env({}, db_url=url), clock=lambda: NOW) as s:
        yield s


def routing(path: Path, legacy_url: str, owner: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"version: 1\nlegacy_url: {legacy_url}\nroutes: {{}}\nconsumers:\n  payment_notified: {owner}\n")
    tmp.replace(path)


async def placed(shop: Shop, n: int) -> list[tuple[str, str]]:
    """n orders of user 1's sku 1, placed by the checkout service at the price it quotes."""
    out = []
    for i in range(n):
        body = {**WORKED, "items": [{"sku_id": 1, "qty": 1}], "expected_total": "0.00"}
        key = f"own-{i}-{time.monotonic_ns()}"
        try:
            await place_order(shop_at(shop.db, NOW, reader=shop.db_read), parse_order_request(body, key, "ios", "5.10.0"), 1)
        except Conflict as exc:  # price_changed: the quote to place it at
            body["expected_total"] = exc.data["summary"]["total"]
        order = await place_order(shop_at(shop.db, NOW, reader=shop.db_read), parse_order_request(body, key, "ios", "5.10.0"), 1)
        out.append((order.order_id, str(order.total)))
    return out


def captured(order_id: str, total: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"pn-{order_id}", "order_id": order_id, "payment_id": None, "provider": "adyen", "status": "captured",
            "amount": total, "currency": "EUR", "psp_reference": f"PSP-{order_id}", **extra}


async def produce(broker: Broker, topic: str, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for e in events:
            await producer.send_and_wait(topic, key=e["order_id"].encode(), value=json.dumps(e).encode())
    finally:
        await producer.stop()


class Consumer:
    def __init__(self, broker: Broker, shop: Shop, routing_file: Path) -> None:
        self.broker, self.shop = broker, shop
        self.topic = unique_topic("payment_notified_cm")
        self.registry = CollectorRegistry()
        self.metrics = ConsumerMetrics(self.registry, (self.topic,))
        loader = ConsumersLoader(env={}, default_legacy_url="http://127.0.0.1:1", max_bytes=1 << 20)
        self.ownership = Ownership(routing_file, loader=loader, registry=self.registry, drop_settle=0)

    async def __aenter__(self) -> Consumer:
        await self.broker.create_topics(self.topic, partitions=3)
        self.session = legacy_session(8)
        legacy = LegacyDelivery(self.session, lambda: self.ownership.legacy_url, timeout=2)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.broker.bootstrap, group_id=unique_topic("g"),
                                         enable_auto_commit=False, auto_offset_reset="earliest", **FAST_GROUP)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all")
        await self.consumer.start()
        await self.producer.start()
        handler = owned_handler(self.shop, EVENT_TYPES["payment_notified"], self.ownership, legacy)
        self.runner = ConsumerRunner(self.consumer, self.producer, {self.topic: handler}, self.metrics, is_transient=is_transient,
                                     options=RunnerOptions(backoff_initial=0.05, backoff_max=0.3, commit_interval=0.05))
        self.tasks = [asyncio.create_task(self.runner.run()), asyncio.create_task(self.ownership.watch(0.05))]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.runner.stop()
        await asyncio.wait_for(self.tasks[0], 30)
        self.tasks[1].cancel()
        await self.consumer.stop()
        await self.producer.stop()
        await self.session.close()

    def count(self, outcome: str) -> float:
        return self.metrics.events.labels(self.topic, outcome)._value.get()


async def paid_by(shop: Shop, order_ids: list[str]) -> dict[str, list[str]]:
    h = t.order_status_history.c
    async with shop.db.connect() as conn:
        rows = (await conn.execute(select(h.order_id, h.actor).where(h.to_status == "paid", h.order_id.in_(order_ids)))).all()
    out: dict[str, list[str]] = {o: [] for o in order_ids}
    for order_id, actor in rows:
        out[order_id].append(actor)
    return out


async def test_legacy_events_are_delivered_to_old_shopping_and_a_flip_to_new_applies_them_here(broker: Broker, shop: Shop, tmp_path: Path) -> None:
    legacy = TestServer(create_app(str(shop.db.url.render_as_string(hide_password=False))), port=free_port())
    await legacy.start_server()
    try:
        path = tmp_path / "routing.yaml"
        routing(path, str(legacy.make_url("")).rstrip("/"), "legacy")
        orders = await placed(shop, 6)
        async with Consumer(broker, shop, path) as run:
            await produce(broker, run.topic, [captured(o, total) for o, total in orders[:3]])
            await wait_until(lambda: run.count("forwarded_legacy") == 3)
            routing(path, str(legacy.make_url("")).rstrip("/"), "new")
            await wait_until(lambda: run.ownership.owner("payment_notified", "x") == "new", timeout=1.0)
            await produce(broker, run.topic, [captured(o, total) for o, total in orders[3:]])
            await wait_until(lambda: run.count("processed") == 3)
        by = await paid_by(shop, [o for o, _ in orders])
        assert [by[o] for o, _ in orders] == [["legacy"]] * 3 + [["consumer"]] * 3
        async with shop.db.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(t.payments).where(
                t.payments.c.order_id.in_([o for o, _ in orders])))).scalar() == 6
    finally:
        await legacy.close()


async def test_old_shopping_down_pauses_and_everything_is_delivered_once_when_it_is_back(broker: Broker, shop: Shop, tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "routing.yaml"
    routing(path, f"http://127.0.0.1:{port}", "legacy")
    orders = await placed(shop, 4)
    async with Consumer(broker, shop, path) as run:
        await produce(broker, run.topic, [captured(o, total) for o, total in orders])
        await wait_until(lambda: run.count("retried") >= 3)  # nothing listening: transient, retried
        assert run.count("forwarded_legacy") == 0 and run.count("dead_lettered") == 0
        legacy = TestServer(create_app(str(shop.db.url.render_as_string(hide_password=False))), port=port)
        await legacy.start_server()
        try:
            await wait_until(lambda: run.count("forwarded_legacy") == 4)
        finally:
            await legacy.close()
    by = await paid_by(shop, [o for o, _ in orders])
    assert all(actors == ["legacy"] for actors in by.values())


async def test_a_4xx_from_old_shopping_sends_the_event_to_the_dlq_with_the_reason(broker: Broker, shop: Shop, tmp_path: Path) -> None:
    legacy = TestServer(create_app(str(shop.db.url.render_as_string(hide_password=False))), port=free_port())
    await legacy.start_server()
    try:
        path = tmp_path / "routing.yaml"
        routing(path, str(legacy.make_url("")).rstrip("/"), "legacy")
        (order, total), (other, other_total) = await placed(shop, 2)
        async with Consumer(broker, shop, path) as run:
            await produce(broker, run.topic, [captured(order, "0.01"), captured(other, other_total)])
            await wait_until(lambda: run.count("dead_lettered") == 1 and run.count("forwarded_legacy") == 1)
            reader = AIOKafkaConsumer(f"{run.topic}.dlq", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                      group_id=unique_topic("dlq"), enable_auto_commit=False, **FAST_GROUP)
            await reader.start()
            try:
                records: list[Any] = []
                for _ in range(30):
                    for batch in (await reader.getmany(timeout_ms=200)).values():
                        records += batch
                    if records:
                        break
            finally:
                await reader.stop()
        error = dict(records[0].headers)["error"].decode()
        assert "422" in error and "amount_mismatch" in error
        assert (await paid_by(shop, [order]))[order] == []
    finally:
        await legacy.close()
