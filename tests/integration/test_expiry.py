"""The expiry sweeper (shop/expiry.py, consumers/expiry.py) on MariaDB and SQLite.

An expired unpaid order gives back its stock, coupon and wallet reservation exactly once, also
when two sweepers run at once and when old shopping cancels the same order at the same moment.
The sweeper runs in shopping-consumers, not the edge: of two sweepers only the holder of the
`expiry_sweeper` lease sweeps, and the other takes over when it stops.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from consumers.expiry import ExpiryMetrics, ExpirySweeper
from proxy.app import create_app
from shop import schema as t
from shop.db import create_all, drop_all, make_engine
from shop.bootstrap import Shop
from shop.expiry import expire_due, expire_one
from shop.payments import IN_FLIGHT
from shop.reference import ReferenceCache
from common.settings import Settings, SettingsError
from tests.builders import insert_order, insert_payment, shop_at
from tests.support.edge import dead_url, edge_settings, routing_doc, sample, write_routing
from tests.support.net import free_port

STOCK = 50
WALLET = D("20.0000")
RESERVED = D("7.5000")


@dataclass(frozen=True)
class Placed:
    order_id: str
    user_id: int
    user_coupon_id: int
    lines: tuple[tuple[int, int], ...]


async def fresh(url: str) -> AsyncEngine:
    engine = make_engine(url)
    await drop_all(engine)
    await create_all(engine)
    async with engine.begin() as conn:
        await conn.execute(insert(t.skus), [
            {"id": sku, "name": f"SKU {sku}", "category_id": 10, "price": D("10.00"), "stock": STOCK, "active": True}
            for sku in range(1, 6)
        ])
        await conn.execute(insert(t.coupons).values(id=1, title="5 off", kind="amount", value=D(5), min_spend=D(0)))
    return engine


@pytest.fixture
async def engine(db_url: str):
    engine = await fresh(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def maria(mariadb_url: str):
    engine = await fresh(mariadb_url)
    yield engine
    await engine.dispose()


async def place(
    conn: AsyncConnection,
    order_id: str,
    *,
    user_id: int,
    expires_at: datetime | None,
    status: str = "pending_payment",
    lines: tuple[tuple[int, int], ...] = ((1, 2), (3, 1)),
) -> Placed:
    """An unpaid order holding what place_order takes: stock, a locked coupon, a wallet reservation."""
    await insert_order(conn, order_id, user_id=user_id, status=status, expires_at=expires_at, created_at=t.utcnow())
    for sku_id, qty in lines:
        await conn.execute(insert(t.order_items).values(
            order_id=order_id, sku_id=sku_id, name=f"SKU {sku_id}", qty=qty, unit_price=D("9.20"),
            line_total=D("9.20") * qty,
        ))
        await conn.execute(update(t.skus).where(t.skus.c.id == sku_id).values(stock=t.skus.c.stock - qty))
    uc = await conn.execute(insert(t.user_coupons).values(
        user_id=user_id, coupon_id=1, status="locked", order_id=order_id, created_at=t.utcnow(),
    ))
    existing = (await conn.execute(select(t.wallets.c.user_id).where(t.wallets.c.user_id == user_id))).first()
    if existing is None:
        await conn.execute(insert(t.wallets).values(user_id=user_id, balance=WALLET))
    await conn.execute(update(t.wallets).where(t.wallets.c.user_id == user_id).values(balance=t.wallets.c.balance - RESERVED))
    await conn.execute(insert(t.wallet_ledger).values(
        user_id=user_id, order_id=order_id, amount=RESERVED, kind="reserve", created_at=t.utcnow(),
    ))
    await conn.execute(insert(t.order_status_history).values(
        order_id=order_id, from_status=None, to_status=status, actor="new", created_at=t.utcnow(),
    ))
    return Placed(order_id, user_id, uc.inserted_primary_key[0], lines)


async def legacy_cancel(conn: AsyncConnection, order_id: str) -> bool:
    """Old shopping's cancel: a raw guarded UPDATE, then its own release when it won."""
    won = await conn.execute(
        update(t.orders)
        .where(t.orders.c.id == order_id, t.orders.c.status.in_(("pending_payment", "payment_failed", "authorized")))
        .values(status="cancelled", updated_at=t.utcnow())
    )
    if won.rowcount != 1:
        return False
    await conn.execute(insert(t.order_status_history).values(
        order_id=order_id, from_status="pending_payment", to_status="cancelled", actor="legacy", created_at=t.utcnow(),
    ))
    items = (await conn.execute(select(t.order_items.c.sku_id, t.order_items.c.qty)
                                .where(t.order_items.c.order_id == order_id).order_by(t.order_items.c.sku_id))).all()
    for sku_id, qty in items:
        await conn.execute(update(t.skus).where(t.skus.c.id == sku_id).values(stock=t.skus.c.stock + qty))
    await conn.execute(update(t.user_coupons).where(t.user_coupons.c.order_id == order_id, t.user_coupons.c.status == "locked")
                       .values(status="unused", order_id=None))
    user_id = (await conn.execute(select(t.orders.c.user_id).where(t.orders.c.id == order_id))).scalar_one()
    await conn.execute(update(t.wallets).where(t.wallets.c.user_id == user_id).values(balance=t.wallets.c.balance + RESERVED))
    await conn.execute(insert(t.wallet_ledger).values(
        user_id=user_id, order_id=order_id, amount=RESERVED, kind="release", created_at=t.utcnow(),
    ))
    return True


# --- what the database says ----------------------------------------------------------------------


async def status_of(engine: AsyncEngine, order_id: str) -> str:
    async with engine.connect() as conn:
        return (await conn.execute(select(t.orders.c.status).where(t.orders.c.id == order_id))).scalar_one()


async def stock(engine: AsyncEngine) -> dict[int, int]:
    async with engine.connect() as conn:
        return {r.id: r.stock for r in await conn.execute(select(t.skus.c.id, t.skus.c.stock))}


async def balance(engine: AsyncEngine, user_id: int) -> D:
    async with engine.connect() as conn:
        return (await conn.execute(select(t.wallets.c.balance).where(t.wallets.c.user_id == user_id))).scalar_one()


async def coupon(engine: AsyncEngine, user_coupon_id: int) -> tuple[str, str | None]:
    u = t.user_coupons.c
    async with engine.connect() as conn:
        row = (await conn.execute(select(u.status, u.order_id).where(u.id == user_coupon_id))).one()
        return row.status, row.order_id


async def ledger(engine: AsyncEngine, order_id: str) -> list[tuple[str, D]]:
    lg = t.wallet_ledger.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(lg.kind, lg.amount).where(lg.order_id == order_id).order_by(lg.id))
        return [(r.kind, r.amount) for r in rows]


async def history(engine: AsyncEngine, order_id: str) -> list[tuple[str | None, str, str, str | None]]:
    h = t.order_status_history.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(h.from_status, h.to_status, h.actor, h.reason).where(h.order_id == order_id).order_by(h.id)
        )
        return [tuple(r) for r in rows]


async def assert_released_once(engine: AsyncEngine, p: Placed) -> None:
    assert await status_of(engine, p.order_id) == "cancelled"
    assert await coupon(engine, p.user_coupon_id) == ("unused", None)
    assert await ledger(engine, p.order_id) == [("reserve", RESERVED), ("release", RESERVED)]
    cancels = [row for row in await history(engine, p.order_id) if row[1] == "cancelled"]
    assert len(cancels) == 1, cancels


async def assert_untouched(engine: AsyncEngine, p: Placed, status: str) -> None:
    assert await status_of(engine, p.order_id) == status
    assert await coupon(engine, p.user_coupon_id) == ("locked", p.order_id)
    assert await ledger(engine, p.order_id) == [("reserve", RESERVED)]
    assert len(await history(engine, p.order_id)) == 1


# --- tests ---------------------------------------------------------------------------------------


async def test_an_expired_unpaid_order_gives_everything_back(engine: AsyncEngine) -> None:
    now = t.utcnow()
    past, future = now - timedelta(minutes=1), now + timedelta(minutes=29)
    async with engine.begin() as conn:
        due = await place(conn, "DUE1", user_id=1, expires_at=past, lines=((1, 2), (3, 1)))
        failed = await place(conn, "DUE2", user_id=2, expires_at=now, status="payment_failed", lines=((2, 4),))
        not_yet = await place(conn, "LATER", user_id=3, expires_at=future, lines=((1, 1),))
        paid = await place(conn, "PAID", user_id=4, expires_at=past, status="paid", lines=((4, 1),))
        authorized = await place(conn, "AUTH", user_id=5, expires_at=past, status="authorized", lines=((4, 2),))
        confirming = await place(conn, "CONF", user_id=6, expires_at=past, status="payment_confirming", lines=((5, 1),))
        no_deadline = await place(conn, "NODL", user_id=7, expires_at=None, lines=((5, 2),))
    assert await stock(engine) == {1: STOCK - 3, 2: STOCK - 4, 3: STOCK - 1, 4: STOCK - 3, 5: STOCK - 3}

    assert await expire_due(shop_at(engine, now)) == 2

    for p in (due, failed):
        await assert_released_once(engine, p)
        assert await balance(engine, p.user_id) == WALLET
    assert (await history(engine, "DUE1"))[-1] == ("pending_payment", "cancelled", "new", "expired")
    assert (await history(engine, "DUE2"))[-1] == ("payment_failed", "cancelled", "new", "expired")
    # Only the not-yet-due / paid / authorized / confirming / deadline-less orders still hold stock.
    assert await stock(engine) == {1: STOCK - 1, 2: STOCK, 3: STOCK, 4: STOCK - 3, 5: STOCK - 3}
    for p, status in ((not_yet, "pending_payment"), (paid, "paid"), (authorized, "authorized"),
                      (confirming, "payment_confirming"), (no_deadline, "pending_payment")):
        await assert_untouched(engine, p, status)
        assert await balance(engine, p.user_id) == WALLET - RESERVED

    # A second sweep finds nothing and changes nothing.
    assert await expire_due(shop_at(engine, now)) == 0
    await assert_released_once(engine, due)
    assert await balance(engine, due.user_id) == WALLET
    # Later, the other one is due too.
    assert await expire_due(shop_at(engine, future), actor="consumer") == 1
    assert (await history(engine, "LATER"))[-1] == ("pending_payment", "cancelled", "consumer", "expired")
    assert await stock(engine) == {1: STOCK, 2: STOCK, 3: STOCK, 4: STOCK - 3, 5: STOCK - 3}


async def test_an_order_paid_between_the_scan_and_the_expiry_is_left_alone(engine: AsyncEngine) -> None:
    """The scan saw it unpaid; by the time its transaction starts, the payment was authorized."""
    now = t.utcnow()
    async with engine.begin() as conn:
        p = await place(conn, "LATE", user_id=700, expires_at=now - timedelta(seconds=1), status="authorized")
    # (The state machine itself would allow expire from authorized; the sweeper's claim must not.)
    assert await shop_at(engine, now).run("new", lambda uow: expire_one(uow, "LATE")) is False
    await assert_untouched(engine, p, "authorized")
    assert await shop_at(engine, now).run("new", lambda uow: expire_one(uow, "NO-SUCH-ORDER")) is False


async def test_an_order_with_a_psp_call_in_flight_is_not_expired_until_the_call_is_over(engine: AsyncEngine) -> None:
    """adyen_pay started a second before the deadline and the PSP has not answered yet (or answered and the answer
    was lost): cancelling now could take money for a cancelled order whose stock went back. An attempt answered,
    or older than IN_FLIGHT (its process died), holds nothing."""
    now = t.utcnow()
    async with engine.begin() as conn:
        flying = await place(conn, "FLY", user_id=801, expires_at=now - timedelta(seconds=1))
        await insert_payment(conn, "FLY", provider="adyen", status="created", idempotency_key="new-ad-fly",
                             created_at=now - timedelta(seconds=2))
        paypal = await place(conn, "PPFLY", user_id=802, expires_at=now - timedelta(seconds=1))
        await insert_payment(conn, "PPFLY", provider="paypal", status="created", idempotency_key="new-pp-fly",
                             created_at=now - timedelta(seconds=2))
        answered = await place(conn, "ANS", user_id=803, expires_at=now - timedelta(seconds=1))
        await insert_payment(conn, "ANS", provider="adyen", status="created", psp_reference="RDR-1",
                             created_at=now - timedelta(seconds=2))
        refused = await place(conn, "REF", user_id=804, expires_at=now - timedelta(seconds=1), status="payment_failed")
        await insert_payment(conn, "REF", provider="adyen", status="failed", created_at=now - timedelta(seconds=2))

    assert await expire_due(shop_at(engine, now)) == 2
    assert await shop_at(engine, now).run("new", lambda uow: expire_one(uow, "FLY")) is False  # the claim too

    for p in (answered, refused):
        await assert_released_once(engine, p)
    await assert_untouched(engine, flying, "pending_payment")
    await assert_untouched(engine, paypal, "pending_payment")
    later = now + IN_FLIGHT
    assert await expire_due(shop_at(engine, later)) == 2
    for p in (flying, paypal):
        await assert_released_once(engine, p)


async def test_batches_cover_every_due_order(engine: AsyncEngine) -> None:
    now = t.utcnow()
    async with engine.begin() as conn:
        placed = [await place(conn, f"B{i}", user_id=100 + i, expires_at=now - timedelta(seconds=i), lines=((1, 1),))
                  for i in range(7)]
    assert await expire_due(shop_at(engine, now), batch=3) == 7
    assert await stock(engine) == {1: STOCK, 2: STOCK, 3: STOCK, 4: STOCK, 5: STOCK}
    for p in placed:
        await assert_released_once(engine, p)


async def test_two_sweepers_at_once_release_exactly_once(engine: AsyncEngine) -> None:
    now = t.utcnow()
    async with engine.begin() as conn:
        placed = [await place(conn, f"C{i}", user_id=200 + i % 4, expires_at=now - timedelta(seconds=1),
                              lines=((1 + i % 5, 1), (1 + (i + 2) % 5, 2)))
                  for i in range(12)]
    counts = await asyncio.gather(expire_due(shop_at(engine, now), batch=5), expire_due(shop_at(engine, now), batch=5),
                                  expire_due(shop_at(engine, now), batch=5))
    assert sum(counts) == 12, counts
    assert await stock(engine) == {sku: STOCK for sku in range(1, 6)}
    for user_id in range(200, 204):
        assert await balance(engine, user_id) == WALLET
    for p in placed:
        await assert_released_once(engine, p)


async def test_two_sweepers_race_for_one_order_on_mariadb(maria: AsyncEngine) -> None:
    engine = maria
    for round_ in range(10):
        now = t.utcnow()
        async with engine.begin() as conn:
            p = await place(conn, f"R{round_}", user_id=300 + round_, expires_at=now - timedelta(seconds=1))
        counts = await asyncio.gather(expire_due(shop_at(engine, now)), expire_due(shop_at(engine, now)))
        assert sorted(counts) == [0, 1], counts
        await assert_released_once(engine, p)
        assert await balance(engine, p.user_id) == WALLET
    assert await stock(engine) == {sku: STOCK for sku in range(1, 6)}


async def test_old_shopping_cancelling_while_the_sweeper_runs(engine: AsyncEngine) -> None:
    """Old shopping holds its cancel transaction open while the sweeper reaches the same order."""
    now = t.utcnow()
    async with engine.begin() as conn:
        p = await place(conn, "L1", user_id=400, expires_at=now - timedelta(seconds=1))
    legacy_in = asyncio.Event()

    async def old_shopping() -> bool:
        async with engine.begin() as conn:
            won = await legacy_cancel(conn, "L1")
            legacy_in.set()
            await asyncio.sleep(0.3)  # the sweeper starts meanwhile and must wait for, then lose to, this commit
            return won

    async def sweeper() -> int:
        await legacy_in.wait()
        return await expire_due(shop_at(engine, now))

    legacy_won, swept = await asyncio.gather(old_shopping(), sweeper())
    assert (legacy_won, swept) == (True, 0)
    await assert_released_once(engine, p)
    assert (await history(engine, "L1"))[-1][2] == "legacy"
    assert await balance(engine, 400) == WALLET
    assert await stock(engine) == {sku: STOCK for sku in range(1, 6)}


async def test_old_shopping_and_two_sweepers_race_on_mariadb(maria: AsyncEngine) -> None:
    """Everyone starts at once on many orders; each order is released by exactly one of them."""
    engine = maria
    now = t.utcnow()
    async with engine.begin() as conn:
        placed = [await place(conn, f"X{i}", user_id=500 + i, expires_at=now - timedelta(seconds=1),
                              lines=((1 + i % 5, 1),)) for i in range(20)]
    gate = asyncio.Event()

    async def old_shopping(order_id: str) -> bool:
        await gate.wait()
        async with engine.begin() as conn:
            return await legacy_cancel(conn, order_id)

    async def sweeper() -> int:
        await gate.wait()
        return await expire_due(shop_at(engine, now), batch=7)

    tasks = [asyncio.create_task(old_shopping(p.order_id)) for p in reversed(placed)]
    tasks += [asyncio.create_task(sweeper()), asyncio.create_task(sweeper())]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*tasks)
    legacy_wins = sum(1 for r in results[:20] if r is True)
    assert legacy_wins + sum(results[20:]) == 20, results
    assert await stock(engine) == {sku: STOCK for sku in range(1, 6)}
    for p in placed:
        await assert_released_once(engine, p)
        assert await balance(engine, p.user_id) == WALLET
    async with engine.connect() as conn:
        releases = (await conn.execute(select(func.count()).where(t.wallet_ledger.c.kind == "release"))).scalar_one()
    assert releases == 20


# --- the consumers' sweeper (consumers/expiry.py) -----------------------------------------------


def sweeper(engine: AsyncEngine, holder: str, period: float = 0.05) -> tuple[ExpirySweeper, CollectorRegistry]:
    registry = CollectorRegistry()
    shop = Shop(engine, engine, ReferenceCache(engine, 0.0))
    return ExpirySweeper(shop, ExpiryMetrics(registry), holder=holder, period=period), registry


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "not true in time"
        await asyncio.sleep(0.05)


async def test_two_sweepers_at_once_one_holds_the_lease_and_each_order_is_expired_once(engine: AsyncEngine) -> None:
    due = t.utcnow() - timedelta(seconds=1)
    async with engine.begin() as conn:
        first = [await place(conn, f"S{i}", user_id=800 + i, expires_at=due, lines=((1 + i % 5, 1),)) for i in range(6)]
    (a, a_metrics), (b, b_metrics) = sweeper(engine, "host-a:1"), sweeper(engine, "host-b:2")
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    try:
        async def all_cancelled() -> bool:
            return all([await status_of(engine, p.order_id) == "cancelled" for p in first])

        await until(all_cancelled)
        await asyncio.sleep(0.3)  # several more periods: the lease stays where it is
        leaders = [sample(r, "expiry_sweeper_leader") for r in (a_metrics, b_metrics)]
        assert sorted(leaders) == [0.0, 1.0], leaders
        leader, standby = (a, b) if leaders[0] == 1.0 else (b, a)
        lead_reg, standby_reg = (a_metrics, b_metrics) if leaders[0] == 1.0 else (b_metrics, a_metrics)
        assert (sample(lead_reg, "expiry_orders_expired_total"), sample(standby_reg, "expiry_orders_expired_total")) == (6, 0)
        for p in first:
            await assert_released_once(engine, p)
            assert (await history(engine, p.order_id))[-1] == ("pending_payment", "cancelled", "consumer", "expired")

        # The holder stops (a clean shutdown releases the lease): the other takes over at once.
        leader.stop()
        async with engine.begin() as conn:
            later = await place(conn, "S-LATER", user_id=900, expires_at=t.utcnow() - timedelta(seconds=1))
        await until(lambda: _is(status_of(engine, later.order_id), "cancelled"))
        await assert_released_once(engine, later)
        assert sample(standby_reg, "expiry_orders_expired_total") == 1
        assert sample(standby_reg, "expiry_sweeper_leader") == 1
    finally:
        a.stop(), b.stop()
        await asyncio.gather(*tasks)
    assert await stock(engine) == {sku: STOCK for sku in range(1, 6)}


async def _is(value: Any, want: Any) -> bool:
    return (await value) == want


async def test_a_sweep_that_cannot_reach_the_database_is_counted_and_the_next_one_tries_again(engine: AsyncEngine) -> None:
    dead = make_engine("mysql+aiomysql://root@127.0.0.1:1/nothing")
    try:
        s, registry = sweeper(dead, "host-a:1")
        assert await s.sweep_once() == 0
        assert sample(registry, "expiry_sweep_errors_total") == 1
    finally:
        await dead.dispose()


async def test_the_edge_no_longer_sweeps(aiohttp_client, tmp_path: Path, sqlite_url: str) -> None:
    """The sweeper moved into shopping-consumers (issue 10 §7): an edge, even told a short period, expires nothing."""
    engine = await fresh(sqlite_url)
    try:
        async with engine.begin() as conn:
            p = await place(conn, "EDGE1", user_id=600, expires_at=t.utcnow() - timedelta(seconds=1))
        path = write_routing(tmp_path / "routing.yaml", routing_doc(dead_url()))
        settings = edge_settings(path, dead_url(), db_url=sqlite_url, expiry_sweep_seconds=0.05)
        await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
        await asyncio.sleep(0.5)
        await assert_untouched(engine, p, "pending_payment")
    finally:
        await engine.dispose()


def test_the_consumers_process_sweeps_even_while_the_broker_is_away(tmp_path: Path, sqlite_url: str) -> None:
    """A real shopping-consumers (no broker reachable): the sweeper needs the database only, and reports on /metrics."""
    async def setup() -> Placed:
        engine = await fresh(sqlite_url)
        try:
            async with engine.begin() as conn:
                return await place(conn, "PROC1", user_id=610, expires_at=t.utcnow() - timedelta(seconds=1))
        finally:
            await engine.dispose()

    placed = asyncio.run(setup())
    admin = free_port()
    env = {**os.environ, "SHOP_DB_URL": sqlite_url, "SHOP_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "SHOP_EXPIRY_SWEEP_SECONDS": "0.2", "SHOP_CONSUMER_ADMIN_PORT": str(admin)}
    log = tmp_path / "consumers.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "shopping-consumers")], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    async def check() -> None:
        engine = make_engine(sqlite_url)
        try:
            await until(lambda: _is(status_of(engine, "PROC1"), "cancelled"), timeout=20)
            await assert_released_once(engine, placed)
            assert (await history(engine, "PROC1"))[-1][2] == "consumer"
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert "expiry_sweeper_leader 1.0" in text and "expiry_orders_expired_total 1.0" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]


def test_sweep_period_setting() -> None:
    assert Settings.from_env({}).expiry_sweep_seconds == 30.0
    assert Settings.from_env({"SHOP_EXPIRY_SWEEP_SECONDS": "0"}).expiry_sweep_seconds == 0.0
    assert Settings.from_env({"SHOP_EXPIRY_SWEEP_SECONDS": "2.5"}).expiry_sweep_seconds == 2.5
    with pytest.raises(SettingsError, match="SHOP_EXPIRY_SWEEP_SECONDS"):
        Settings.from_env({"SHOP_EXPIRY_SWEEP_SECONDS": "-1"})
