"""Event gray through the real consumer runner, the real broker, MariaDB and old shopping's emulator.

Proves: an event type owned by `legacy` is delivered to the emulator's `POST /event/{name}`,
which applies it (history actor `legacy`), counted `forwarded_legacy`; flipping routing.yaml to
`new` makes the next events the consumer's (actor `consumer`) without a restart; old shopping
down pauses the partition and everything is delivered once when it is back; a 4xx from old
shopping sends the event to the DLQ with the answer as the reason; and, under a steady stream of
every event type while `consumers:` flips legacy ↔ new ↔ {new_percent: 50}, with some of old
shopping's answers lost after it applied the event and duplicates in the stream, every event is
applied exactly once by one side or the other (history rows, payments, outbox rows, processed_events).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import func, select

from emulators.legacy.app import create_app
from shop import schema as t
from shop.bootstrap import Shop
from shop.checkout import parse_order_request, place_order
from shop.errors import Conflict
from shop.events import EVENT_TYPES
from common.settings import DEFAULT_TOPICS
from consumers.runner import RunnerOptions
from tests.support.broker import Broker, running_broker, unique_topic, wait_until
from tests.support.edge import url_of
from tests.support.event_stream import (
    FAST_GROUP,
    EventConsumers,
    authorized,
    captured,
    failed,
    history,
    new_order,
    paid_order,
    payment_row,
    private_shop,
    produce,
    purchased,
    refund_done,
    refund_row,
    write_consumers,
)
from tests.support.net import free_port

WORKED = {"user_coupon_id": None, "address_id": 1, "currency": "EUR", "use_wallet": False}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from running_broker(tmp_path_factory.mktemp("broker"))


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    async with private_shop("event_ownership") as s:
        yield s


def routing(path: Path, legacy_url: str, owner: str) -> None:
    write_consumers(path, legacy_url, {"payment_notified": owner})


def legacy_app(shop: Shop) -> web.Application:
    return create_app(shop.db.url.render_as_string(hide_password=False))


async def placed(shop: Shop, n: int) -> list[tuple[str, str]]:
    """n orders of user 1's sku 1, placed by the checkout service at the price it quotes."""
    out = []
    for i in range(n):
        body = {**WORKED, "items": [{"sku_id": 1, "qty": 1}], "expected_total": "0.00"}
        key = f"own-{i}-{time.monotonic_ns()}"
        try:
            await place_order(shop, parse_order_request(body, key, "ios", "5.10.0"), 1)
        except Conflict as exc:  # price_changed: the quote to place it at
            body["expected_total"] = exc.data["summary"]["total"]
        order = await place_order(shop, parse_order_request(body, key, "ios", "5.10.0"), 1)
        out.append((order.order_id, str(order.total)))
    return out


def Consumer(broker: Broker, shop: Shop, routing_file: Path) -> EventConsumers:
    return EventConsumers(broker, shop, routing_file, types=("payment_notified",), partitions=3)


async def paid_by(shop: Shop, order_ids: list[str]) -> dict[str, list[str]]:
    h = t.order_status_history.c
    async with shop.db.connect() as conn:
        rows = (await conn.execute(select(h.order_id, h.actor).where(h.to_status == "paid", h.order_id.in_(order_ids)))).all()
    out: dict[str, list[str]] = {o: [] for o in order_ids}
    for order_id, actor in rows:
        out[order_id].append(actor)
    return out


async def test_legacy_events_are_delivered_to_old_shopping_and_a_flip_to_new_applies_them_here(broker: Broker, shop: Shop, tmp_path: Path) -> None:
    legacy = TestServer(legacy_app(shop), port=free_port())
    await legacy.start_server()
    try:
        path = tmp_path / "routing.yaml"
        routing(path, url_of(legacy), "legacy")
        orders = await placed(shop, 6)
        async with Consumer(broker, shop, path) as run:
            await produce(broker, run.topic, [captured(o, total) for o, total in orders[:3]])
            await wait_until(lambda: run.count("forwarded_legacy") == 3)
            routing(path, url_of(legacy), "new")
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
        legacy = TestServer(legacy_app(shop), port=port)
        await legacy.start_server()
        try:
            await wait_until(lambda: run.count("forwarded_legacy") == 4)
        finally:
            await legacy.close()
    by = await paid_by(shop, [o for o, _ in orders])
    assert all(actors == ["legacy"] for actors in by.values())


async def test_a_4xx_from_old_shopping_sends_the_event_to_the_dlq_with_the_reason(broker: Broker, shop: Shop, tmp_path: Path) -> None:
    legacy = TestServer(legacy_app(shop), port=free_port())
    await legacy.start_server()
    try:
        path = tmp_path / "routing.yaml"
        routing(path, url_of(legacy), "legacy")
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


# --- a flip under load --------------------------------------------------------------------------------

# What each kind of order goes through, and the transitions that must end up in its history, once each.
EXPECTED = {
    "pay": [("pending_payment", "paid"), ("paid", "fulfilling")],
    "auth": [("pending_payment", "authorized"), ("authorized", "paid"), ("paid", "fulfilling")],
    "fail": [("pending_payment", "payment_failed")],
    "refund": [("paid", "refunded")],
    "refund2": [("paid", "partially_refunded"), ("partially_refunded", "refunded")],
}
# Every type's owner walks this cycle, each type a step apart, so at any moment the sides are mixed.
FLIPS: list[str | int] = ["legacy", "new", 50, "legacy", 50, "new"]


class LosingAnswers:
    """Old shopping applies the event and commits, then its answer is lost (a 503 instead): the
    consumer must retry, and by then a flip may send the event to the new side."""

    def __init__(self, share: float, delay: float, seed: int = 7) -> None:
        self.share, self.delay, self.random, self.lost = share, delay, random.Random(seed), 0

    def middleware(self) -> Any:
        @web.middleware
        async def lose(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            response = await handler(request)
            if request.path.startswith("/event/") and response.status == 200 and self.random.random() < self.share:
                self.lost += 1
                await asyncio.sleep(self.delay)  # slow, then lost: long enough for a flip to come between
                return web.Response(status=503, text="answer lost after the commit")
            return response

        return lose


class Stream:
    """The payment system: every order's first events at a steady pace, `purchased` for an order once it
    is paid (as both sides' outbox does), and duplicates: the same message again, and the PSP's resend of
    a capture under a new event id, sent after the order may have moved on."""

    def __init__(self, shop: Shop, broker: Broker, topics: dict[str, str], kinds: dict[str, str], seed: int = 11) -> None:
        self.shop, self.broker, self.topics, self.kinds = shop, broker, topics, kinds
        self.random = random.Random(seed)
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.purchase_sent: set[str] = set()
        self.first_wave_done = False

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all", linger_ms=2)
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(self, event_type: str, event: dict[str, Any]) -> None:
        await self.producer.send_and_wait(self.topics[event_type], key=event["order_id"].encode(),
                                          value=json.dumps(event).encode())
        self.sent.append((event_type, event))

    async def first_wave(self, plans: dict[str, list[tuple[str, dict[str, Any]]]], per_second: float) -> None:
        """Each order's own events in its order, orders interleaved at random, about `per_second`."""
        queues = {o: list(p) for o, p in plans.items() if p}
        while queues:
            order_id = self.random.choice(sorted(queues))
            await self.send(*queues[order_id].pop(0))
            if not queues[order_id]:
                del queues[order_id]
            if self.random.random() < 0.1:  # group_update: deprecated, mixed in, keyed by some order
                await self.send("group_update", {"event_id": f"gu-{uuid.uuid4().hex[:10]}", "order_id": order_id})
            await asyncio.sleep(1 / per_second)
        self.first_wave_done = True

    async def purchases(self) -> None:
        """`purchased` once the order is paid; for a third of them, duplicates after it."""
        payable = sorted(o for o, k in self.kinds.items() if k in ("pay", "auth"))
        o = t.orders.c
        while len(self.purchase_sent) < len(payable):
            async with self.shop.db.connect() as conn:
                paid = (await conn.execute(select(o.id).where(o.id.in_(payable), o.status == "paid"))).scalars().all()
            for order_id in sorted(set(paid) - self.purchase_sent):
                self.purchase_sent.add(order_id)
                await self.send("purchased", purchased(order_id))
                if self.random.random() < 1 / 3:
                    await self.send("payment_notified", captured(order_id))  # the same message again
                    await self.send("payment_notified", captured(order_id, event_id=f"pn-resend-{order_id}"))
                    await self.send("purchased", purchased(order_id))
            await asyncio.sleep(0.05)


async def flipping(path: Path, legacy_url: str, until: Callable[[], bool], every: float) -> int:
    """Walk every event type's owner through FLIPS until `until()`, then two more steps; the number of steps."""
    names = list(EVENT_TYPES)
    step, extra = 0, 2
    while extra > 0:
        write_consumers(path, legacy_url, {name: FLIPS[(step + i) % len(FLIPS)] for i, name in enumerate(names)})
        step += 1
        await asyncio.sleep(every)
        if until():
            extra -= 1
    return step


async def test_flipping_every_event_type_under_a_steady_stream_applies_each_event_exactly_once(
    broker: Broker, shop: Shop, tmp_path: Path,
) -> None:
    # Fixed ids (the database is fresh): the same orders fall on each side of a 50 % split every run.
    kinds = {f"FL{i:04d}": kind for i, kind in enumerate(
        ["pay"] * 50 + ["auth"] * 30 + ["fail"] * 25 + ["refund"] * 15 + ["refund2"] * 15)}
    plans: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for order_id, kind in kinds.items():
        if kind in ("pay", "auth"):
            await new_order(shop, order_id)
            plans[order_id] = ([("payment_notified", authorized(order_id))] if kind == "auth" else []) + [
                ("payment_notified", captured(order_id))]
        elif kind == "fail":
            await new_order(shop, order_id)
            plans[order_id] = [("payment_failed", failed(order_id, await payment_row(shop, order_id)))]
        else:
            await paid_order(shop, order_id)
            amounts = ["96.07"] if kind == "refund" else ["40.00", "56.07"]
            plans[order_id] = [("refund_notified", refund_done(order_id, await refund_row(shop, order_id, a), a)) for a in amounts]
    # Duplicates of the first wave too: a payment_failed and a refund sent twice.
    for order_id in [o for o, k in kinds.items() if k in ("fail", "refund2")][::4]:
        plans[order_id].append(plans[order_id][-1])

    losing = LosingAnswers(0.15, delay=0.3)
    app = legacy_app(shop)
    app.middlewares.append(losing.middleware())
    legacy = TestServer(app, port=free_port())
    await legacy.start_server()
    path = tmp_path / "routing.yaml"
    write_consumers(path, url_of(legacy), {name: "legacy" for name in EVENT_TYPES})
    options = RunnerOptions(backoff_initial=0.05, backoff_max=0.3, commit_interval=0.05, max_attempts=5)
    try:
        async with EventConsumers(broker, shop, path, options=options) as run:
            stream = Stream(shop, broker, run.topics, kinds)
            await stream.start()
            try:
                flips = asyncio.create_task(flipping(path, url_of(legacy), lambda: stream.first_wave_done, every=0.7))
                await asyncio.gather(stream.first_wave(plans, per_second=60), stream.purchases())
                steps = await asyncio.wait_for(flips, 30)
            finally:
                await stream.stop()
            await wait_until(lambda: run.settled() == len(stream.sent), timeout=120)
            outcomes = {o: run.total(o) for o in ("processed", "duplicate", "forwarded_legacy", "dead_lettered", "retried")}
    finally:
        await legacy.close()

    assert steps >= len(FLIPS), steps
    assert outcomes["dead_lettered"] == 0, outcomes
    assert losing.lost > 0 and outcomes["forwarded_legacy"] > 0 and outcomes["processed"] > 0, (losing.lost, outcomes)

    # Every event applied once: each order's history is its transitions, each exactly once, by one side.
    by_order = await history(shop, kinds)
    wrong = {o: h for o, h in by_order.items() if [(f, to) for f, to, _ in h] != EXPECTED[kinds[o]]}
    assert not wrong, wrong
    actors = Counter(actor for h in by_order.values() for _, _, actor in h)
    assert set(actors) == {"legacy", "consumer"} and min(actors.values()) >= 20, actors

    p, r, ob, pe = t.payments.c, t.refunds.c, t.outbox.c, t.processed_events.c
    async with shop.db.connect() as conn:
        payments = Counter((row.order_id, row.status) for row in await conn.execute(
            select(p.order_id, p.status).where(p.order_id.in_(kinds))))
        refunds = Counter(row.status for row in await conn.execute(select(r.status).where(r.order_id.in_(kinds))))
        outbox = Counter((row.key, row.topic, (row.payload or {}).get("template")) for row in await conn.execute(
            select(ob.key, ob.topic, ob.payload).where(ob.key.in_(kinds))))
        claimed = {(row.consumer, row.event_id) for row in await conn.execute(select(pe.consumer, pe.event_id))}
    for order_id, kind in kinds.items():
        if kind in ("pay", "auth"):
            assert payments[(order_id, "captured")] == 1 and sum(n for (o, _), n in payments.items() if o == order_id) == 1
            assert outbox[(order_id, "purchased", None)] == 1 and outbox[(order_id, "noti", "order_paid")] == 1, order_id
        elif kind == "fail":
            assert payments[(order_id, "failed")] == 1 and outbox[(order_id, "noti", "payment_failed")] == 1, order_id
        else:
            assert outbox[(order_id, "noti", "refund_succeeded")] == (1 if kind == "refund" else 2), order_id
    assert refunds == {"succeeded": 15 + 30}

    # Each event id was claimed by the side(s) that handled it, under that side's name for its type.
    names = {name: {f"legacy:{DEFAULT_TOPICS[name]}", f"shopping-new:{name}"} for name in EVENT_TYPES}
    sides: dict[str, set[str]] = {}
    for consumer, event_id in claimed:
        sides.setdefault(event_id, set()).add(consumer)
    for event_type, event in stream.sent:
        if event_type != "group_update":  # old shopping acknowledges it without a record
            assert sides.get(event["event_id"], set()) & names[event_type], event
    # And the hard case happened: events applied by one side that reached the other side too.
    crossed = {e["event_id"] for name, e in stream.sent if names[name] <= sides.get(e["event_id"], set())}
    assert crossed, "no event reached both sides: the flips did not exercise redelivery across them"


async def repay(shop: Shop, order_id: str) -> None:
    """The buyer pays again after a failure: the order is payment_confirming, as paid_from_client leaves it."""
    async with shop.tx("new") as uow:
        assert (await uow.transition(order_id, "paid_from_client")).changed


def failed_routing(path: Path, legacy_url: str, owner: str) -> None:
    write_consumers(path, legacy_url, {"payment_failed": owner})


async def test_an_event_one_side_applied_is_a_duplicate_for_the_other_after_a_flip(broker: Broker, shop: Shop, tmp_path: Path) -> None:
    """A `payment_failed` without payment_id (nothing in the order's rows tells it was applied) redelivered
    to the other side after the buyer paid again must not fail the new attempt, in either direction."""
    legacy = TestServer(legacy_app(shop), port=free_port())
    await legacy.start_server()
    try:
        path = tmp_path / "routing.yaml"
        to_new, to_legacy = "own-f-ln", "own-f-nl"
        await new_order(shop, to_new)
        await new_order(shop, to_legacy)
        failed_routing(path, url_of(legacy), "legacy")
        async with EventConsumers(broker, shop, path, types=("payment_failed",), partitions=2) as run:

            async def applied_repaid_flipped_redelivered(order_id: str, first: str, second: str, duplicates: int) -> None:
                """The failure applied by the `first` side; the buyer pays again; the flip gives the
                redelivery to the `second` side, which must take it for the duplicate it is."""
                await produce(broker, run.topic, [failed(order_id, None)])
                await wait_until(lambda: run.count("forwarded_legacy" if first == "legacy" else "processed") == 1)
                await repay(shop, order_id)
                failed_routing(path, url_of(legacy), second)
                await wait_until(lambda: run.ownership.owner("payment_failed", "x") == second, timeout=1.0)
                await produce(broker, run.topic, [failed(order_id, None)])
                await wait_until(lambda: run.count("duplicate") == duplicates)

            await applied_repaid_flipped_redelivered(to_new, "legacy", "new", duplicates=1)
            await applied_repaid_flipped_redelivered(to_legacy, "new", "legacy", duplicates=2)
            assert run.count("forwarded_legacy") == 1
        got = await history(shop, [to_new, to_legacy])
        assert got[to_new] == [("pending_payment", "payment_failed", "legacy"), ("payment_failed", "payment_confirming", "new")]
        assert got[to_legacy] == [("pending_payment", "payment_failed", "consumer"), ("payment_failed", "payment_confirming", "new")]
    finally:
        await legacy.close()
