"""The `shopping-consumers` process against the real broker and a real database (SQLite and MariaDB).

An order placed by the checkout service goes placed → paid → fulfilling through the process:
`payment_notified_cm` applied by the consumer, `purchased` and `noti` written to the outbox in
the same transaction, published by the relay, and `purchased` consumed back. The admin port's
/metrics shows it. A SIGKILL after the DB commit but before the offset commit redelivers the
event on restart as a counted duplicate with no second effect. SIGTERM leaves cleanly. A PayPal
capture paypal_finished left in doubt is finished by the process's capture reconciler (against the PSP
emulator), and the order goes on to fulfilling.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import func, select

from shop import schema as t
from shop.db import make_engine
from shop.payments import capture_key, finish_reason
from common.settings import DEFAULT_TOPICS
from tests.builders import NOW, insert_payment, shop_at
from tests.support.broker import Broker, running_broker, wait_until
from tests.support.consumers_process import Consumers
from tests.support.consumers_process import captured as _captured
from tests.support.consumers_process import order_status as _status
from tests.support.consumers_process import placed_order as _placed
from tests.support.consumers_process import produce as _produce
from tests.support.psp import PAYPAL_CLIENT_ID, PAYPAL_SECRET, Psp
from tests.support.shopdb import seed_database

pytest_plugins = ["tests.support.psp_fixtures"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from running_broker(tmp_path_factory.mktemp("broker"))


async def _count(db_url: str, stmt: Any) -> int:
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar() or 0)
    finally:
        await engine.dispose()


async def _noti_for(broker: Broker, order_id: str) -> list[dict[str, Any]]:
    reader = AIOKafkaConsumer("noti", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                              group_id=f"noti-{time.monotonic_ns()}", enable_auto_commit=False,
                              session_timeout_ms=2000, heartbeat_interval_ms=200)
    await reader.start()
    try:
        found: list[dict[str, Any]] = []
        for _ in range(40):
            for records in (await reader.getmany(timeout_ms=200)).values():
                found += [json.loads(r.value) for r in records if r.key == order_id.encode()]
            if len(found) >= 2:
                break
        return found
    finally:
        await reader.stop()


@pytest.fixture
async def topics(broker: Broker) -> None:
    try:
        await broker.create_topics(*DEFAULT_TOPICS.values(), "noti", partitions=3)
    except Exception:
        pass  # the module's broker has them already


async def test_an_order_goes_placed_paid_fulfilling_through_the_process(broker: Broker, db_url: str, tmp_path: Path, topics: None) -> None:
    await seed_database(db_url)
    order_id = await _placed(db_url, "e2e-1")
    consumers = Consumers(broker, db_url, tmp_path / "consumers.log")
    consumers.start()
    try:
        await _produce(broker, "payment_notified_cm", order_id, _captured(order_id, f"pn-{order_id}"))
        await wait_until(lambda: _status(db_url, order_id), timeout=30)
        await wait_until(lambda: _equals(_status(db_url, order_id), "fulfilling"), timeout=30)
        assert consumers.count("payment_notified_cm", "processed") == 1
        await wait_until(lambda: consumers.count("purchased", "processed") == 1, timeout=10)
        o = t.outbox.c
        assert await _count(db_url, select(func.count()).select_from(t.outbox).where(o.published_at.is_(None))) == 0
        templates = sorted(n["template"] for n in await _noti_for(broker, order_id))
        assert templates == ["order_paid", "order_placed"]
        assert "outbox_unpublished 0.0" in consumers.metrics()
    finally:
        assert consumers.stop() == 0, (tmp_path / "consumers.log").read_text()[-3000:]
    text = (tmp_path / "consumers.log").read_text()
    assert "Traceback" not in text and "consumers_stopped" in text


async def _equals(value: Any, want: Any) -> bool:
    return (await value) == want


async def test_a_paypal_capture_left_in_doubt_is_finished_by_the_process_and_the_order_goes_on(
    broker: Broker, db_url: str, tmp_path: Path, topics: None, psp: Psp,
) -> None:
    """The reconciler wired into the process: an order paypal_finished left payment_confirming (its capture never
    reached PayPal, the shopper gone) is captured with paypal_finished's key, paid, and purchased takes it on."""
    await seed_database(db_url)
    order_id = await _placed(db_url, "e2e-pp")
    paypal_order = await psp.paypal().create_order(reference=order_id, amount=Decimal("96.07"), currency="EUR",
                                                   request_id="e2e-pp-create")
    assert paypal_order.approve_url and await psp.approve(paypal_order.approve_url) == 200
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            pay_id = await insert_payment(conn, order_id, status="created", paypal_order_id=paypal_order.id,
                                          idempotency_key="new-pp-e2e")
        async with shop_at(engine, NOW).tx("new") as uow:  # paypal_finished's first step, long ago
            await uow.transition(order_id, "paid_from_client", reason=finish_reason(pay_id), expected="pending_payment")
    finally:
        await engine.dispose()
    consumers = Consumers(broker, db_url, tmp_path / "consumers.log", SHOP_CAPTURE_RECONCILE_SECONDS="0.3",
                          PAYPAL_BASE_URL=psp.url, PAYPAL_CLIENT_ID=PAYPAL_CLIENT_ID, PAYPAL_SECRET=PAYPAL_SECRET)
    consumers.start()
    try:
        await wait_until(lambda: _equals(_status(db_url, order_id), "fulfilling"), timeout=30)
        [capture] = await psp.calls("POST", "/capture")
        assert (capture["key"], capture["status"]) == (capture_key("new-pp-e2e", pay_id), 201)
        assert 'paypal_captures_reconciled_total{outcome="captured"} 1.0' in consumers.metrics()
    finally:
        assert consumers.stop() == 0, (tmp_path / "consumers.log").read_text()[-3000:]
    assert "Traceback" not in (tmp_path / "consumers.log").read_text()


async def test_sigkill_between_the_db_commit_and_the_offset_commit_redelivers_a_counted_duplicate(
    broker: Broker, db_url: str, tmp_path: Path, topics: None,
) -> None:
    await seed_database(db_url)
    order_id = await _placed(db_url, "e2e-kill")
    # Offsets committed only every 60 s: the kill surely lands after the DB commit and before the offset's.
    consumers = Consumers(broker, db_url, tmp_path / "consumers.log", SHOP_CONSUMER_COMMIT_SECONDS="60")
    consumers.start()
    await _produce(broker, "payment_notified_cm", order_id, _captured(order_id, f"pn-kill-{order_id}"))
    await wait_until(lambda: _equals(_status(db_url, order_id), "fulfilling"), timeout=30)
    consumers.stop(signal.SIGKILL)
    h = t.order_status_history.c
    transitions = select(func.count()).select_from(t.order_status_history).where(h.order_id == order_id)
    assert await _count(db_url, transitions) == 3  # placed, paid, fulfilling

    again = Consumers(broker, db_url, tmp_path / "again.log", SHOP_CONSUMER_GROUP=consumers.env["SHOP_CONSUMER_GROUP"])
    again.start()
    try:
        await wait_until(lambda: again.count("payment_notified_cm", "duplicate") == 1, timeout=30)
        await asyncio.sleep(0.5)
        assert again.count("payment_notified_cm", "processed") == 0
    finally:
        again.stop()
    assert await _count(db_url, transitions) == 3
    assert await _count(db_url, select(func.count()).select_from(t.payments).where(t.payments.c.order_id == order_id)) == 1


async def test_sigterm_while_the_broker_is_down_still_ends_the_process(db_url: str, tmp_path: Path) -> None:
    # Found by hand: with the broker gone, the final offset commit and leaving the group waited for a
    # coordinator for ever, and the process ignored SIGTERM.
    await seed_database(db_url)
    order_id = await _placed(db_url, "e2e-broker-down")
    for broker in running_broker(tmp_path):
        await broker.create_topics(*DEFAULT_TOPICS.values(), "noti", partitions=2)
        consumers = Consumers(broker, db_url, tmp_path / "consumers.log")
        consumers.start()
        await _produce(broker, "payment_notified_cm", order_id, _captured(order_id, f"pn-down-{order_id}"))
        await wait_until(lambda: _equals(_status(db_url, order_id), "fulfilling"), timeout=30)
        broker.stop()
        started = time.monotonic()
        consumers.stop()  # waits at most 20 s, then kills
        assert consumers.proc is not None and consumers.proc.returncode == 0, (tmp_path / "consumers.log").read_text()[-2000:]
        assert time.monotonic() - started < 20
