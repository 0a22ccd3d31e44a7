"""The consumer loop against the real broker and a real database (SQLite and MariaDB).

The handler here is the runner's extension point used as production uses it: one transaction that
inserts `processed_events` and the effect (an `outbox` row carrying the event), so "applied once"
is counted in the database, not in memory. What is proven: every event across partitions applied
once and its offset committed; per-key order; duplicates counted and without effect; poison and
always-failing messages dead-lettered with their origin while the partition moves on; a transient
failure pausing one partition while the others go on; two runners in one group sharing the work
without doubling it; stop() committing what is done.

And for a handler that batches (`apply_batch`, one transaction per batch, as consumers/events.py):
batches really form, in offset order, duplicates inside and across them counted; a poison message
in a batch and an undecodable one go to the DLQ alone, in place, their neighbours applied; a
transient failure retries the batch whole; a failure nobody can place falls back to one by one;
and the real payment_notified handler on MariaDB with a refused event and two events of one order
in one batch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from consumers.app import is_transient
from consumers.events import owned_handler
from consumers.legacy_delivery import LegacyDelivery, legacy_session
from consumers.metrics import ConsumerMetrics
from consumers.ownership import ConsumersLoader, Ownership
from consumers.runner import BatchFailed, ConsumerRunner, Event, PoisonMessage, RunnerOptions, _GroupCommit
from shop import schema as t
from shop.bootstrap import shop_resources
from shop.db import create_all, drop_all
from shop.events import EVENT_TYPES
from shop.uow import UnitOfWork
from common.settings import Settings
from tests.builders import NOW, insert_order
from tests.support.broker import Broker, running_broker, unique_topic, wait_until

CONSUMER = "runner-test"
# Tansu answers a join after about half the session timeout: 1 s instead of 5 with the default 10 s.
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 200, "rebalance_timeout_ms": 2000}


class Unreachable(ConnectionError):
    """Stands for the outside world being down (old shopping, the DB): transient."""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from running_broker(tmp_path_factory.mktemp("broker"))


def recording(engine: AsyncEngine, fail: Callable[[Event], None] = lambda e: None) -> Callable[[Event], Any]:
    async def handle(event: Event) -> str:
        event_id = event.payload.get("event_id")
        if not isinstance(event_id, str):
            raise PoisonMessage("event_id missing")
        fail(event)
        try:
            async with engine.begin() as conn:
                await conn.execute(insert(t.processed_events).values(consumer=CONSUMER, event_id=event_id))
                await conn.execute(insert(t.outbox).values(topic=event.topic, key=event.key, payload=dict(event.payload)))
        except IntegrityError:
            return "duplicate"
        return "processed"

    return handle


async def applied(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(t.outbox.c.payload).order_by(t.outbox.c.id))).scalars().all()
    return [r if isinstance(r, dict) else json.loads(r) for r in rows]


class Batching:
    """`recording` with apply_batch: one transaction claims the batch's ids and writes their outbox rows.

    `poison` events fail the batch by index (and raise PoisonMessage alone); `fail_batch` may raise
    for a whole batch. The sizes of the batches that committed are kept.
    """

    def __init__(self, engine: AsyncEngine, *, fail_batch: Callable[[Sequence[Event]], None] = lambda events: None) -> None:
        self.engine, self.fail_batch = engine, fail_batch
        self.single = recording(engine, self._poison)
        self.sizes: list[int] = []

    @staticmethod
    def _poison(event: Event) -> None:
        if event.payload.get("poison"):
            raise PoisonMessage("poison")

    async def __call__(self, event: Event) -> str:
        return await self.single(event)

    async def apply_batch(self, events: Sequence[Event]) -> list[str]:
        for i, e in enumerate(events):
            if e.payload.get("poison") or not isinstance(e.payload.get("event_id"), str):
                raise BatchFailed(i)
        self.fail_batch(events)
        async with self.engine.begin() as conn:
            uow = UnitOfWork(conn, datetime.now(), "consumer")
            fresh = await uow.claim_many(CONSUMER, [e.payload["event_id"] for e in events])
            await uow.publish_many((e.topic, e.key, e.payload) for e, f in zip(events, fresh) if f)
        self.sizes.append(len(events))
        return ["processed" if f else "duplicate" for f in fresh]


class Running:
    def __init__(self, broker: Broker, topic: str, handler: Callable[[Event], Any], group: str, *,
                 transient: Callable[[BaseException], bool] = lambda exc: isinstance(exc, Unreachable), **options: Any) -> None:
        self.broker, self.topic, self.handler, self.group, self.transient = broker, topic, handler, group, transient
        self.options = RunnerOptions(**{"backoff_initial": 0.01, "backoff_max": 0.1, "commit_interval": 0.05, **options})
        self.metrics = ConsumerMetrics(CollectorRegistry(), (topic,))

    async def __aenter__(self) -> Running:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.broker.bootstrap, group_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest", **FAST_GROUP,
        )
        self.producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all")
        await self.consumer.start()
        await self.producer.start()
        self.runner = ConsumerRunner(
            self.consumer, self.producer, {self.topic: self.handler}, self.metrics,
            is_transient=self.transient, options=self.options,
        )
        self.task = asyncio.create_task(self.runner.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.runner.stop()
        await asyncio.wait_for(self.task, 30)
        await self.consumer.stop()
        await self.producer.stop()

    def count(self, outcome: str) -> float:
        return self.metrics.events.labels(self.topic, outcome)._value.get()


async def produce(broker: Broker, topic: str, messages: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, key=key.encode(), value=value)
    finally:
        await producer.stop()


def event(n: int, key: str, **extra: Any) -> tuple[str, bytes]:
    return key, json.dumps({"event_id": f"ev-{n}", "order_id": key, "seq": n, **extra}).encode()


async def committed(broker: Broker, topic: str, group: str, partitions: int = 4) -> list[int | None]:
    probe = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False, **FAST_GROUP)
    await probe.start()
    try:
        return [await probe.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        await probe.stop()


async def dead_letters(broker: Broker, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(f"{topic}.dlq", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=unique_topic("dlq-reader"), **FAST_GROUP)
    await consumer.start()
    try:
        out: list[Any] = []
        for _ in range(20):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
            if out:
                break
        return out
    finally:
        await consumer.stop()


@pytest.fixture
async def engine(fresh_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    yield fresh_engine


async def test_every_event_across_partitions_is_applied_once_in_key_order_and_committed(broker: Broker, engine: AsyncEngine) -> None:
    topic, group = unique_topic("payment_notified_cm"), unique_topic("g")
    await broker.create_topics(topic)
    messages = [event(n, f"order-{n % 10}") for n in range(200)]
    await produce(broker, topic, messages)
    async with Running(broker, topic, recording(engine), group) as run:
        await wait_until(lambda: run.count("processed") == 200)
    rows = await applied(engine)
    assert sorted(r["seq"] for r in rows) == list(range(200))
    for key in {r["order_id"] for r in rows}:
        seqs = [r["seq"] for r in rows if r["order_id"] == key]
        assert seqs == sorted(seqs), f"{key} applied out of order: {seqs}"
    offsets = await committed(broker, topic, group)
    assert sum(o or 0 for o in offsets) == 200  # offset + 1 of the last applied message, per partition
    assert len([o for o in offsets if o]) > 1, "the keys should spread over several partitions"


async def test_a_duplicate_event_has_one_effect_and_is_counted(broker: Broker, engine: AsyncEngine) -> None:
    topic, group = unique_topic("purchased"), unique_topic("g")
    await broker.create_topics(topic)
    await produce(broker, topic, [event(1, "o-1"), event(2, "o-2"), event(1, "o-1"), event(1, "o-1")])
    async with Running(broker, topic, recording(engine), group) as run:
        await wait_until(lambda: run.count("processed") + run.count("duplicate") == 4)
        assert run.count("duplicate") == 2
    assert sorted(r["seq"] for r in await applied(engine)) == [1, 2]


async def test_malformed_messages_go_to_the_dlq_with_their_origin_and_the_partition_moves_on(broker: Broker, engine: AsyncEngine) -> None:
    topic, group = unique_topic("refund_notified"), unique_topic("g")
    await broker.create_topics(topic, partitions=1)
    await produce(broker, topic, [("o-1", b"{not json"), ("o-1", b'["a list"]'), ("o-1", b'{"no": "event id"}'), event(4, "o-1")])
    async with Running(broker, topic, recording(engine), group) as run:
        await wait_until(lambda: run.count("processed") == 1)
        assert run.count("dead_lettered") == 3
    assert [r["seq"] for r in await applied(engine)] == [4]
    dlq = await dead_letters(broker, topic)
    assert [r.value for r in dlq] == [b"{not json", b'["a list"]', b'{"no": "event id"}']
    headers = dict(dlq[0].headers)
    assert headers["original_topic"] == topic.encode()
    assert headers["original_partition"] == b"0" and headers["original_offset"] == b"0"
    assert headers["error"].startswith(b"not JSON")
    assert await committed(broker, topic, group, partitions=1) == [4]


async def test_a_message_that_keeps_failing_is_dead_lettered_after_max_attempts(broker: Broker, engine: AsyncEngine) -> None:
    topic, group = unique_topic("payment_failed_cm"), unique_topic("g")
    await broker.create_topics(topic, partitions=1)
    attempts: list[int] = []

    def fail(e: Event) -> None:
        if e.payload["seq"] == 1:
            attempts.append(1)
            raise RuntimeError("a row that can never be written")

    await produce(broker, topic, [event(1, "o-1"), event(2, "o-1")])
    async with Running(broker, topic, recording(engine, fail), group, max_attempts=3) as run:
        await wait_until(lambda: run.count("processed") == 1)
        assert run.count("dead_lettered") == 1 and run.count("retried") == 2
    assert len(attempts) == 3
    assert [r["seq"] for r in await applied(engine)] == [2]
    assert dict((await dead_letters(broker, topic))[0].headers)["error"].startswith(b"RuntimeError")


async def test_a_transient_failure_pauses_its_partition_only_and_loses_nothing(broker: Broker, engine: AsyncEngine) -> None:
    topic, group = unique_topic("payment_notified_cm"), unique_topic("g")
    await broker.create_topics(topic)
    down = {"o-stuck"}

    def fail(e: Event) -> None:
        if e.key in down:
            raise Unreachable("old shopping is down")

    stuck = [event(n, "o-stuck") for n in range(5)]
    others = [event(n, f"o-{n}") for n in range(100, 160)]
    await produce(broker, topic, stuck + others)
    async with Running(broker, topic, recording(engine, fail), group, max_attempts=2) as run:
        # The stuck key's partition waits, far past max_attempts (transient errors never dead-letter),
        # while the events of the other partitions are applied.
        await wait_until(lambda: run.count("retried") > 10)
        await asyncio.sleep(0.5)
        rows = await applied(engine)
        assert not [r for r in rows if r["order_id"] == "o-stuck"]
        assert run.count("dead_lettered") == 0
        assert len(rows) >= 30, "the other partitions must go on"
        down.clear()
        await wait_until(lambda: run.count("processed") == 65)
    rows = await applied(engine)
    assert [r["seq"] for r in rows if r["order_id"] == "o-stuck"] == [0, 1, 2, 3, 4]
    assert len(rows) == 65


async def test_two_runners_in_one_group_share_the_partitions_and_apply_each_event_once(broker: Broker, engine: AsyncEngine) -> None:
    topic, group = unique_topic("purchased"), unique_topic("g")
    await broker.create_topics(topic)
    async with Running(broker, topic, recording(engine), group) as first, Running(broker, topic, recording(engine), group) as second:
        await produce(broker, topic, [event(n, f"order-{n % 17}") for n in range(300)])
        await wait_until(lambda: first.count("processed") + second.count("processed") == 300, timeout=40)
        assert first.count("duplicate") + second.count("duplicate") == 0
    rows = await applied(engine)
    assert sorted(r["seq"] for r in rows) == list(range(300))


async def test_stop_commits_what_is_done_so_the_next_runner_starts_after_it(broker: Broker, engine: AsyncEngine) -> None:
    topic, group = unique_topic("payment_notified_cm"), unique_topic("g")
    await broker.create_topics(topic)
    await produce(broker, topic, [event(n, f"order-{n % 7}") for n in range(50)])
    async with Running(broker, topic, recording(engine), group) as run:
        await wait_until(lambda: run.count("processed") == 50)
    assert sum(o or 0 for o in await committed(broker, topic, group)) == 50
    await produce(broker, topic, [event(n, f"order-{n % 7}") for n in range(50, 60)])
    async with Running(broker, topic, recording(engine), group) as again:
        await wait_until(lambda: again.count("processed") == 10)
        await asyncio.sleep(0.3)
        assert again.count("duplicate") == 0  # nothing from before the stop came back
    assert sorted(r["seq"] for r in await applied(engine)) == list(range(60))


async def test_a_batching_handler_gets_batches_in_offset_order_and_duplicates_are_counted(broker: Broker, engine: AsyncEngine) -> None:
    topic, group = unique_topic("payment_notified_cm"), unique_topic("g")
    await broker.create_topics(topic, partitions=2)
    messages = [event(n, f"order-{n % 5}") for n in range(300)]
    messages[100:100] = [event(7, "order-2"), event(7, "order-2")]  # a copy already applied, and a copy of that
    await produce(broker, topic, messages)
    handler = Batching(engine)
    async with Running(broker, topic, handler, group) as run:
        await wait_until(lambda: run.count("processed") + run.count("duplicate") == 302)
        assert run.count("duplicate") == 2 and run.count("processed") == 300
    assert max(handler.sizes) > 1 and len(handler.sizes) < 300, f"no batches formed: {handler.sizes[:20]}"
    rows = await applied(engine)
    assert sorted(r["seq"] for r in rows) == list(range(300))
    for key in {r["order_id"] for r in rows}:
        seqs = [r["seq"] for r in rows if r["order_id"] == key]
        assert seqs == sorted(seqs), f"{key} applied out of order: {seqs}"
    assert sum(o or 0 for o in await committed(broker, topic, group, partitions=2)) == 302


async def test_a_poison_message_inside_a_batch_goes_to_the_dlq_alone_and_its_neighbours_are_applied(broker: Broker, engine: AsyncEngine) -> None:
    topic, group = unique_topic("payment_notified_cm"), unique_topic("g")
    await broker.create_topics(topic, partitions=1)
    messages = [event(n, "o-1", poison=(n == 4)) for n in range(10)]
    messages.insert(7, ("o-1", b"{not json"))
    await produce(broker, topic, messages)
    handler = Batching(engine)
    async with Running(broker, topic, handler, group) as run:
        await wait_until(lambda: run.count("processed") == 9 and run.count("dead_lettered") == 2)
    assert [r["seq"] for r in await applied(engine)] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    dlq = await dead_letters(broker, topic)
    assert [dict(r.headers)["original_offset"] for r in dlq] == [b"4", b"7"]
    assert max(handler.sizes) > 1, "the neighbours go on in batches"
    assert await committed(broker, topic, group, partitions=1) == [11]


async def test_a_transient_failure_of_a_batch_retries_it_whole_and_loses_nothing(broker: Broker, engine: AsyncEngine) -> None:
    topic, group = unique_topic("purchased"), unique_topic("g")
    await broker.create_topics(topic, partitions=1)
    await produce(broker, topic, [event(n, f"o-{n % 3}") for n in range(40)])
    failures = [3]

    def down(events: Sequence[Event]) -> None:
        if failures[0]:
            failures[0] -= 1
            raise Unreachable("the database is down")

    async with Running(broker, topic, Batching(engine, fail_batch=down), group, max_attempts=1) as run:
        await wait_until(lambda: run.count("processed") == 40)
        assert run.count("retried") >= 3 and run.count("dead_lettered") == 0  # never the DLQ for a transient error
    assert sorted(r["seq"] for r in await applied(engine)) == list(range(40))


async def test_a_batch_failure_nobody_can_place_falls_back_to_one_by_one(broker: Broker, engine: AsyncEngine) -> None:
    topic, group = unique_topic("refund_notified"), unique_topic("g")
    await broker.create_topics(topic, partitions=1)
    await produce(broker, topic, [event(n, "o-1") for n in range(20)])

    def broken(events: Sequence[Event]) -> None:
        raise RuntimeError("a bug in the batch path")

    handler = Batching(engine, fail_batch=broken)
    async with Running(broker, topic, handler, group) as run:
        await wait_until(lambda: run.count("processed") == 20)
    assert handler.sizes == []  # every one applied by the one-event path
    assert [r["seq"] for r in await applied(engine)] == list(range(20))


async def test_the_payment_handler_batches_on_mariadb_refusing_one_event_and_applying_two_of_one_order(
    broker: Broker, mariadb_url: str, tmp_path: Path,
) -> None:
    async with shop_resources(Settings.from_env({}, db_url=mariadb_url), clock=lambda: NOW) as shop:
        await drop_all(shop.db)
        await create_all(shop.db)
        orders = [f"RB-{n}" for n in range(30)]
        async with shop.db.begin() as conn:
            for order_id in orders:
                await insert_order(conn, order_id)

        def paid(order_id: str, n: int, **changes: Any) -> tuple[str, bytes]:
            body = {"event_id": f"pn-{n}", "order_id": order_id, "payment_id": None, "provider": "adyen", "status": "captured",
                    "amount": "96.07", "currency": "EUR", "psp_reference": f"PSP-{order_id}", **changes}
            return order_id, json.dumps(body).encode()

        messages = [paid(o, n) for n, o in enumerate(orders)]
        messages[10] = paid(orders[10], 10, amount="1.00")  # refused: not the order's total
        messages.insert(5, paid(orders[20], 100, status="authorized"))  # RB-20 authorised, captured later in the batch
        messages.insert(6, paid(orders[3], 3))  # a redelivery of RB-3's event
        topic, group = unique_topic("payment_notified_cm"), unique_topic("g")
        await broker.create_topics(topic, partitions=1)
        await produce(broker, topic, messages)
        routing_file = tmp_path / "routing.yaml"
        routing_file.write_text("version: 1\nlegacy_url: http://127.0.0.1:1\nroutes: {}\nconsumers:\n  payment_notified: new\n")
        registry = CollectorRegistry()
        ownership = Ownership(routing_file, loader=ConsumersLoader(env={}, default_legacy_url="http://127.0.0.1:1", max_bytes=1 << 20),
                              registry=registry, drop_settle=0)
        async with legacy_session(2) as session:
            legacy = LegacyDelivery(session, lambda: ownership.legacy_url, timeout=1)
            handler = owned_handler(shop, EVENT_TYPES["payment_notified"], ownership, legacy)
            async with Running(broker, topic, handler, group, transient=is_transient) as run:
                await wait_until(lambda: run.count("processed") == 30 and run.count("dead_lettered") == 1, timeout=40)
                assert run.count("duplicate") == 1
        h = t.order_status_history.c
        async with shop.db.connect() as conn:
            rows = (await conn.execute(select(h.order_id, h.to_status).order_by(h.id))).all()
            processed = (await conn.execute(select(func.count()).select_from(t.processed_events))).scalar()
        moves: dict[str, list[str]] = {}
        for order_id, to in rows:
            moves.setdefault(order_id, []).append(to)
        assert moves.pop(orders[10], None) is None  # refused whole, for a person (the DLQ)
        assert moves.pop(orders[20]) == ["authorized", "paid"]
        assert moves == {o: ["paid"] for o in orders if o not in (orders[10], orders[20])}
        assert processed == 30
        dlq = await dead_letters(broker, topic)
        assert len(dlq) == 1 and b"amount_mismatch" in dict(dlq[0].headers)["error"]


class Calls:
    """A batch handler that records each call's events and answers `processed` for all, or raises."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    async def __call__(self, event: Event) -> str:
        return "processed"

    async def apply_batch(self, events: Sequence[Event]) -> list[str]:
        self.calls.append([e.payload["event_id"] for e in events])
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError("refused")
        return ["processed"] * len(events)


def batch_of(partition: int, *ids: str) -> list[Event]:
    return [Event("t", partition, n, "k", {"event_id": i}) for n, i in enumerate(ids)]


async def test_group_commit_puts_the_partitions_ready_batches_in_one_call_and_hands_each_its_outcomes() -> None:
    handler = Calls()
    group = _GroupCommit(handler, asyncio.Semaphore(8), batch_max=500)
    first = asyncio.create_task(group.apply(batch_of(0, "a")))
    await asyncio.sleep(0)  # the first round starts with a alone
    rest = [asyncio.create_task(group.apply(batch_of(p, f"b{p}", f"c{p}"))) for p in (1, 2, 3)]
    assert await first == ["processed"]
    assert [await r for r in rest] == [["processed", "processed"]] * 3
    # Submitted while the first round ran, the three went together in the next.
    assert handler.calls == [["a"], ["b1", "c1", "b2", "c2", "b3", "c3"]]


async def test_group_commit_takes_a_batch_submitted_right_after_a_round_ended() -> None:
    # The worker of a round that just emptied the queue must not make the next batch wait for ever.
    handler = Calls()
    group = _GroupCommit(handler, asyncio.Semaphore(8), batch_max=500)
    assert await group.apply(batch_of(0, "a")) == ["processed"]
    assert await asyncio.wait_for(group.apply(batch_of(1, "b")), 5) == ["processed"]
    assert await asyncio.wait_for(group.apply(batch_of(0, "c")), 5) == ["processed"]


async def test_group_commit_hands_a_failed_round_and_a_big_lone_batch_back_untouched() -> None:
    failing = _GroupCommit(Calls(fail=True), asyncio.Semaphore(8), batch_max=500)
    assert await asyncio.gather(failing.apply(batch_of(0, "a")), failing.apply(batch_of(1, "b"))) == [(), ()]
    handler = Calls()
    big = _GroupCommit(handler, asyncio.Semaphore(8), batch_max=20)
    assert await big.apply(batch_of(0, *[f"e{n}" for n in range(5)])) == ()  # its partition applies it itself
    assert handler.calls == []


def _age_buckets(run: Running, stage: str) -> dict[float, float]:
    """consumer_event_age_seconds{topic=run.topic, stage} as cumulative bucket counts by upper bound."""
    out: dict[float, float] = {}
    for metric in run.metrics.age.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket") and sample.labels["topic"] == run.topic and sample.labels["stage"] == stage:
                out[float(sample.labels["le"])] = sample.value
    return out


async def test_the_age_of_each_event_is_observed_when_fetched_and_when_applied_or_dead_lettered(
    broker: Broker, engine: AsyncEngine,
) -> None:
    """Events produced a minute ago (their Kafka timestamp) count as a minute old at both stages, whether
    applied in a batch or dead-lettered; one from a producer whose clock runs ahead counts as 0, not negative."""
    topic, group = unique_topic("payment_notified_cm"), unique_topic("g")
    await broker.create_topics(topic, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    now_ms = int(datetime.now().timestamp() * 1000)
    try:
        for n, (key, value) in enumerate([event(1, "o-1"), event(2, "o-2"), ("o-3", b"{not json")]):
            await producer.send_and_wait(topic, key=key.encode(), value=value, timestamp_ms=now_ms - 60_000 + n)
        key, value = event(4, "o-4")
        await producer.send_and_wait(topic, key=key.encode(), value=value, timestamp_ms=now_ms + 3_600_000)
    finally:
        await producer.stop()
    async with Running(broker, topic, Batching(engine), group) as run:
        await wait_until(lambda: run.count("processed") == 3 and run.count("dead_lettered") == 1)
    for stage in ("fetched", "applied"):
        buckets = _age_buckets(run, stage)
        assert buckets[float("inf")] == 4, stage
        assert buckets[0.005] == 1, f"{stage}: the event from the future counts as 0 s old"
        assert buckets[30.0] == 1 and buckets[300.0] == 4, f"{stage}: the three others are a minute old: {buckets}"
