"""The consumer's database going away mid-stream, through the real runner, broker and MariaDB.

The consumer reaches MariaDB through a TCP proxy the test cuts (tests/support/tcpproxy.py, as
tests/integration/test_db_faults.py does for the edge): every open connection aborted, new ones
refused, while events keep arriving on several partitions of two topics. Proves: nothing is applied
and nothing is dead-lettered while it is down (the partitions wait, retrying; `retried` counts it and
`consumer_lag` shows the backlog); once it is back every event is applied exactly once, including the
ones whose transaction was cut at its commit (a redelivered commit is a duplicate, not a second effect).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select

from common.settings import Settings
from consumers.runner import RunnerOptions
from shop import schema as t
from shop.bootstrap import Shop, shop_resources
from tests.builders import NOW
from tests.support.broker import Broker, running_broker, wait_until
from tests.support.event_stream import EventConsumers, captured, failed, history, new_order, payment_row, private_shop, write_consumers
from tests.support.tcpproxy import TcpProxy


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from running_broker(tmp_path_factory.mktemp("broker"))


@pytest.fixture
async def shops() -> AsyncIterator[tuple[Shop, Shop, TcpProxy]]:
    """(the shop as the test sees it, the same database through the proxy for the consumer, the proxy)."""
    async with private_shop("consumer_db_faults") as direct:
        proxy = TcpProxy("127.0.0.1", direct.db.url.port or 3306)
        await proxy.start()
        proxied = direct.db.url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        try:
            # Without pre-ping, as the consumers process runs (consumers/app.py): a cut connection is
            # found by its own error, invalidated, and the retried unit of work gets a fresh one.
            async with shop_resources(Settings.from_env({}, db_url=proxied), clock=lambda: NOW, pre_ping=False) as through_proxy:
                yield direct, through_proxy, proxy
        finally:
            await proxy.close()


async def test_the_database_down_mid_stream_pauses_the_partitions_and_then_every_event_is_applied_once(
    broker: Broker, shops: tuple[Shop, Shop, TcpProxy], tmp_path: Path,
) -> None:
    direct, through_proxy, proxy = shops
    paying = [f"DB{i:04d}" for i in range(90)]
    failing = [f"DF{i:04d}" for i in range(30)]
    for order_id in paying + failing:
        await new_order(direct, order_id)
    events = [("payment_notified", captured(o)) for o in paying]
    events += [("payment_failed", failed(o, await payment_row(direct, o))) for o in failing]
    events.sort(key=lambda e: e[1]["order_id"][2:])  # the two topics interleaved

    path = write_consumers(tmp_path / "routing.yaml", "http://127.0.0.1:1", {"payment_notified": "new", "payment_failed": "new"})
    options = RunnerOptions(backoff_initial=0.05, backoff_max=0.5, commit_interval=0.05)
    async with EventConsumers(broker, through_proxy, path, types=("payment_notified", "payment_failed"), options=options) as run:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()

        async def stream() -> None:
            for event_type, event in events:  # a steady 40 events/s
                await producer.send_and_wait(run.topics[event_type], key=event["order_id"].encode(), value=json.dumps(event).encode())
                await asyncio.sleep(0.025)

        try:
            streaming = asyncio.create_task(stream())
            await wait_until(lambda: run.total("processed") >= 25, timeout=30)
            proxy.refusing = True  # MariaDB gone mid-stream: connections reset, new ones refused
            proxy.cut()
            retried = run.total("retried")
            await wait_until(lambda: run.total("retried") > retried + 5, timeout=30)  # the partitions retry…
            stalled = run.total("processed") + run.total("duplicate")
            await asyncio.sleep(2)
            assert run.total("processed") + run.total("duplicate") == stalled  # …and apply nothing meanwhile
            assert run.total("dead_lettered") == 0
            await asyncio.wait_for(streaming, 30)
            await wait_until(lambda: run.lag() > 0, timeout=10)  # the backlog shows
            assert stalled < len(events)

            proxy.refusing = False  # back
            await wait_until(lambda: run.settled() == len(events), timeout=90)
            await wait_until(lambda: run.lag() == 0, timeout=10)
        finally:
            await producer.stop()
        outcomes = {o: run.total(o) for o in ("processed", "duplicate", "dead_lettered", "retried")}

    assert outcomes["dead_lettered"] == 0 and outcomes["processed"] + outcomes["duplicate"] == len(events), outcomes
    moves = await history(direct, paying + failing)
    assert {o: moves[o] for o in paying} == {o: [("pending_payment", "paid", "consumer")] for o in paying}
    assert {o: moves[o] for o in failing} == {o: [("pending_payment", "payment_failed", "consumer")] for o in failing}
    p, pe = t.payments.c, t.processed_events.c
    async with direct.db.connect() as conn:
        payments: dict[str, int] = dict((await conn.execute(select(p.order_id, func.count()).group_by(p.order_id))).all())
        claimed = (await conn.execute(select(func.count()).select_from(t.processed_events).where(
            pe.event_id.in_([e["event_id"] for _, e in events])))).scalar_one()
    assert set(payments.values()) == {1} and len(payments) == len(events)
    assert claimed == len(events)
