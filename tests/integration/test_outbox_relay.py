"""The outbox relay (consumers/outbox_relay.py) against the real broker and MariaDB.

Proves: the `noti` a placed order wrote to the outbox is published, and rows go out in id order
per key with `published_at` set; with the broker unreachable (every connection to it reset and
refused, through a proxy that is its advertised address) the rows wait (counted errors,
`outbox_unpublished` shows them) and go out when it is back, none lost, none out of order; two
relays running at once publish every row once (one holds the lease, the other stands by), and when
the active one loses its database the other takes over after the lease runs out: no row is lost.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from consumers.outbox_relay import OutboxRelay, RelayMetrics
from shop import schema as t
from shop.bootstrap import Shop
from shop.checkout import parse_order_request, place_order
from shop.db import make_engine
from tests.builders import NOW
from tests.support.broker import Broker, running_broker, unique_topic, wait_until
from tests.support.event_stream import FAST_GROUP, private_shop
from tests.support.net import free_port
from tests.support.tcpproxy import TcpProxy

WORKED = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True, "expected_total": "96.07"}
TTL = timedelta(seconds=3)  # the lease: a relay that cannot renew it for this long is replaced


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from running_broker(tmp_path_factory.mktemp("broker"))


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    async with private_shop("outbox_relay") as s:
        yield s


class Relay:
    """One relay as the consumers process runs it (acks=all; idempotence off: Tansu refuses it), on `db`."""

    def __init__(self, broker: Broker, db: AsyncEngine, holder: str) -> None:
        self.broker, self.db, self.holder = broker, db, holder
        self.registry = CollectorRegistry()
        self.metrics = RelayMetrics(self.registry)

    async def __aenter__(self) -> Relay:
        # A short request timeout, so a send to an absent broker fails in seconds rather than 40.
        self.producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all", enable_idempotence=False,
                                         linger_ms=5, request_timeout_ms=3000)
        await self.producer.start()
        self.relay = OutboxRelay(self.db, self.producer, self.metrics, holder=self.holder, poll_seconds=0.05, lease_ttl=TTL)
        self.task = asyncio.create_task(self.relay.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.relay.stop()
        await asyncio.wait_for(self.task, 30)
        await self.producer.stop()

    def value(self, name: str) -> float:
        """A metric of this relay's registry, summed over its labels (outbox_published_total is per topic)."""
        return sum(s.value for m in self.registry.collect() for s in m.samples if s.name == name)


async def add_rows(db: AsyncEngine, topic: str, keys: list[str], per_key: int, start: int = 0) -> list[dict[str, Any]]:
    """`per_key` rows for each key, interleaved, each payload naming its key and its place in that key's sequence."""
    payloads = [{"key": k, "seq": n, "row": f"{k}:{n}"} for n in range(start, start + per_key) for k in keys]
    async with db.begin() as conn:
        await conn.execute(insert(t.outbox), [{"topic": topic, "key": p["key"], "payload": p, "created_at": NOW} for p in payloads])
    return payloads


async def unpublished(db: AsyncEngine) -> int:
    async with db.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(t.outbox).where(t.outbox.c.published_at.is_(None)))).scalar_one()


async def all_published(db: AsyncEngine) -> bool:
    return await unpublished(db) == 0


async def read(broker: Broker, topic: str, until: int, timeout: float = 30) -> list[Any]:
    """Records of `topic` from the beginning, until at least `until` have come (or the timeout)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=unique_topic("reader"),
                                auto_offset_reset="earliest", enable_auto_commit=False, **FAST_GROUP)
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < until and asyncio.get_running_loop().time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


def per_key(records: list[Any]) -> dict[str, list[int]]:
    """Each key's sequence numbers in the order the broker holds them (one key, one partition)."""
    out: dict[str, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        payload = json.loads(record.value)
        assert record.key.decode() == payload["key"]
        out[payload["key"]].append(payload["seq"])
    return out


async def test_the_noti_of_a_placed_order_is_published_and_rows_go_out_in_order_per_key(broker: Broker, shop: Shop) -> None:
    order_id = (await place_order(shop, parse_order_request(WORKED, "relay-1", "ios", "5.10.0"), 1)).order_id
    topic = unique_topic("relay-order")
    await broker.create_topics(topic, partitions=4)
    keys = [f"order-{k}" for k in range(8)]
    payloads = await add_rows(shop.db, topic, keys, per_key=30)
    async with Relay(broker, shop.db, "relay-a") as relay:
        await wait_until(lambda: relay.value("outbox_published_total") == len(payloads) + 1, timeout=30)
        assert await unpublished(shop.db) == 0
        assert relay.value("outbox_relay_leader") == 1
        assert relay.value("outbox_unpublished") == 0
    records = await read(broker, topic, len(payloads))
    assert per_key(records) == {k: list(range(30)) for k in keys}  # each once, in order
    noti = [json.loads(r.value) for r in await read(broker, "noti", 1) if r.key == order_id.encode()]
    assert [(n["template"], n["order_id"], n["user_id"]) for n in noti] == [("order_placed", order_id, 1)]
    async with shop.db.connect() as conn:
        stamps = (await conn.execute(select(t.outbox.c.published_at))).scalars().all()
    assert stamps and all(s is not None for s in stamps)


@pytest.fixture
async def broker_behind_proxy(tmp_path: Path) -> AsyncIterator[tuple[Broker, TcpProxy]]:
    """A broker of this test's own that clients reach only through a TcpProxy (its advertised address):
    cutting the proxy takes the broker away from every client while it keeps its topics (Tansu's memory
    storage would lose them in a process restart, and then acknowledge writes to the missing topic)."""
    port = free_port()
    proxy = TcpProxy("127.0.0.1", port)
    await proxy.start()
    broker = Broker(f"127.0.0.1:{proxy.port}", port, tmp_path / "broker.log", advertised=f"tcp://127.0.0.1:{proxy.port}")
    broker.start()
    try:
        yield broker, proxy
    finally:
        broker.stop()
        await proxy.close()


async def test_with_the_broker_down_rows_wait_and_go_out_when_it_is_back(
    broker_behind_proxy: tuple[Broker, TcpProxy], shop: Shop,
) -> None:
    broker, proxy = broker_behind_proxy
    topic = unique_topic("relay-outage")
    await broker.create_topics(topic, partitions=4)
    async with Relay(broker, shop.db, "relay-a") as relay:
        first = await add_rows(shop.db, topic, ["k1", "k2"], per_key=5)
        await wait_until(lambda: relay.value("outbox_published_total") == len(first), timeout=30)

        proxy.refusing = True  # the broker is unreachable: open connections reset, new ones refused
        proxy.cut()
        waiting = await add_rows(shop.db, topic, ["k1", "k2"], per_key=20, start=5)
        await wait_until(lambda: relay.value("outbox_publish_errors_total") >= 2, timeout=60)
        assert await unpublished(shop.db) == len(waiting)  # nothing marked that the broker did not take
        assert relay.value("outbox_unpublished") == len(waiting)

        proxy.refusing = False  # back
        await wait_until(lambda: all_published(shop.db), timeout=60)
        await wait_until(lambda: relay.value("outbox_unpublished") == 0, timeout=10)
    seqs = per_key(await read(broker, topic, len(first) + len(waiting)))
    # At least once: what the broker had not acknowledged before it went may come again, never out of order.
    for key in ("k1", "k2"):
        assert sorted(set(seqs[key])) == list(range(25)), seqs[key]
        firsts = list(dict.fromkeys(seqs[key]))
        assert firsts == sorted(firsts), seqs[key]


async def test_two_relays_publish_each_row_once_and_a_takeover_loses_none(broker: Broker, shop: Shop) -> None:
    topic = unique_topic("relay-pair")
    await broker.create_topics(topic, partitions=4)
    proxy = TcpProxy("127.0.0.1", shop.db.url.port or 3306)
    await proxy.start()
    through_proxy = make_engine(shop.db.url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    keys = [f"key-{k}" for k in range(6)]
    try:
        async with Relay(broker, through_proxy, "relay-a") as a:
            await wait_until(lambda: a.value("outbox_relay_leader") == 1, timeout=10)  # a holds the lease
            async with Relay(broker, shop.db, "relay-b") as b:
                sent = []
                for wave in range(6):  # rows keep coming while both run
                    sent += await add_rows(shop.db, topic, keys, per_key=10, start=wave * 10)
                    await asyncio.sleep(0.2)
                await wait_until(lambda: a.value("outbox_published_total") + b.value("outbox_published_total") == len(sent), timeout=30)
                assert (a.value("outbox_relay_leader"), b.value("outbox_relay_leader")) == (1, 0)
                assert b.value("outbox_published_total") == 0
                normal = per_key(await read(broker, topic, len(sent)))
                assert normal == {k: list(range(60)) for k in keys}  # the normal case: each row once, in order

                # a loses its database (it can neither publish nor renew): b takes over once the lease runs out.
                proxy.refusing = True
                proxy.cut()
                later = []
                for wave in range(6, 10):
                    later += await add_rows(shop.db, topic, keys, per_key=10, start=wave * 10)
                    await asyncio.sleep(0.3)
                await wait_until(lambda: b.value("outbox_relay_leader") == 1, timeout=TTL.total_seconds() * 5)
                await wait_until(lambda: all_published(shop.db), timeout=30)
                assert a.value("outbox_relay_leader") == 0  # cut off: it no longer claims the lease
                proxy.refusing = False  # a is back, and finds the lease b's
                a_published = a.value("outbox_published_total")
                await asyncio.sleep(TTL.total_seconds())
                assert (a.value("outbox_relay_leader"), b.value("outbox_relay_leader")) == (0, 1)
                assert a.value("outbox_published_total") == a_published  # standing by again
                assert b.value("outbox_published_total") >= len(later)
        seqs = per_key(await read(broker, topic, len(sent) + len(later)))
        for key in keys:
            assert sorted(set(seqs[key])) == list(range(100)), (key, seqs[key])  # none lost
            firsts = list(dict.fromkeys(seqs[key]))
            assert firsts == sorted(firsts), (key, seqs[key])  # and per key in order
    finally:
        await through_proxy.dispose()
        await proxy.close()
