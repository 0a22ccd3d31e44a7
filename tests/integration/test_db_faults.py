"""The database going away under the new side: a clean 503 in the legacy envelope, nothing half-written,
and checkouts retried with their Idempotency-Key end with exactly one order each.

MariaDB is reached through a TCP proxy the tests cut (tests/support/tcpproxy.py): every open connection
aborted at once is what a server restart looks like from the edge.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.app import create_app
from shop import schema as t
from shop.db import make_engine
from tests.conftest import MARIADB_DATABASE
from tests.support.edge import calc_price_route, dead_url, detail_route, edge_settings, routing_doc, write_routing
from tests.support.shopdb import demo_buyers, seed_database
from tests.support.tcpproxy import TcpProxy

PLACE = "/shopping/cart/checkout/entries"
CALC = "/shopping/cal_price/v4_4"


@pytest.fixture
async def shop(mariadb_url: str) -> AsyncIterator[AsyncEngine]:
    """The seeded shop, read directly (not through the proxy), with stock for every buyer below."""
    await seed_database(mariadb_url)
    engine = make_engine(mariadb_url)
    async with engine.begin() as conn:
        await conn.execute(update(t.skus).where(t.skus.c.active, t.skus.c.stock > 0).values(stock=1000))
    yield engine
    await engine.dispose()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", 3306)
    await p.start()
    yield p
    await p.close()


@pytest.fixture
async def edge(aiohttp_client, tmp_path: Path, shop: AsyncEngine, proxy: TcpProxy) -> TestClient:
    legacy = dead_url()
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(
        legacy, calc_price=calc_price_route(100), detail=detail_route(100),
        place_order={"match": {"methods": ["POST"], "path": PLACE}, "new_percent": 100, "writes": True},
    ))
    url = f"mysql+aiomysql://root@127.0.0.1:{proxy.port}/{MARIADB_DATABASE}"
    return await aiohttp_client(create_app(edge_settings(routing, legacy, db_url=url), registry=CollectorRegistry()))


async def post(client: TestClient, path: str, user: int, body: dict, key: str | None = None) -> tuple[int, dict, Any]:
    headers = {"X-User-Id": str(user), "X-Platform": "app"}
    if key:
        headers["Idempotency-Key"] = key
    resp = await client.post(path, json=body, headers=headers)
    return resp.status, await resp.json(), resp.headers


async def counts(shop: AsyncEngine) -> dict[str, Any]:
    async with shop.connect() as conn:
        return {
            "orders": (await conn.execute(select(func.count()).select_from(t.orders))).scalar_one(),
            "items": (await conn.execute(select(func.count()).select_from(t.order_items))).scalar_one(),
            "stock": (await conn.execute(select(func.sum(t.skus.c.stock)))).scalar_one(),
            "wallets": (await conn.execute(select(func.sum(t.wallets.c.balance)))).scalar_one(),
            "ledger": (await conn.execute(select(func.count()).select_from(t.wallet_ledger))).scalar_one(),
            "outbox": (await conn.execute(select(func.count()).select_from(t.outbox))).scalar_one(),
        }


async def quoted(edge: TestClient, users: list[int]) -> dict[int, dict]:
    bodies = {}
    for user in users:
        body = {"address_id": user, "currency": "USD", "use_wallet": True}
        status, doc, _ = await post(edge, CALC, user, body)
        assert status == 200, doc
        bodies[user] = {**body, "expected_total": doc["data"]["summary"]["total"]}
    return bodies


def assert_unavailable(status: int, doc: dict, headers: Any) -> None:
    assert (status, doc["code"], doc["msg"], doc["data"]) == (503, 50302, "db_unavailable", None)
    assert headers["Retry-After"] == "1"


async def test_database_down_is_a_clean_503_and_writes_nothing(edge: TestClient, shop: AsyncEngine, proxy: TcpProxy) -> None:
    bodies = await quoted(edge, [2])
    before = await counts(shop)
    proxy.refusing = True
    proxy.cut()
    status, doc, headers = await post(edge, PLACE, 2, bodies[2], key="down-1")
    assert_unavailable(status, doc, headers)
    assert_unavailable(*await post(edge, CALC, 2, {"address_id": 2, "currency": "USD"}))
    resp = await edge.get("/shopping/orders_v43/N0000000000000000", headers={"X-User-Id": "2"})
    assert_unavailable(resp.status, await resp.json(), resp.headers)
    assert await counts(shop) == before

    # Back up: the same key places the order, once.
    proxy.refusing = False
    status, doc, _ = await post(edge, PLACE, 2, bodies[2], key="down-1")
    assert status == 200, doc
    assert (await counts(shop))["orders"] == before["orders"] + 1


async def test_a_restart_is_survived_without_a_500(edge: TestClient, shop: AsyncEngine, proxy: TcpProxy) -> None:
    bodies = await quoted(edge, [2, 3])
    assert (await post(edge, PLACE, 2, bodies[2], key="before"))[0] == 200
    assert proxy.cut() >= 1  # the pooled connections, as a restart drops them
    # The first calls after the restart may find a dead pooled connection (503, retry); never a 500.
    for path, user, body, key in ((CALC, 3, {"address_id": 3, "currency": "USD"}, None), (PLACE, 3, bodies[3], "after")):
        for attempt in range(3):
            status, doc, headers = await post(edge, path, user, body, key=key)
            if status == 200:
                break
            assert_unavailable(status, doc, headers)
        assert status == 200, doc


async def test_checkouts_cut_mid_flight_end_with_exactly_one_order_each(
    edge: TestClient, shop: AsyncEngine, proxy: TcpProxy
) -> None:
    users = demo_buyers(24)
    bodies = await quoted(edge, users)
    async with shop.connect() as conn:
        stock0 = dict((await conn.execute(select(t.skus.c.id, t.skus.c.stock))).all())
        wallet0 = dict((await conn.execute(select(t.wallets.c.user_id, t.wallets.c.balance))).all())

    async def cutter() -> None:
        # A restart soon after the checkouts start, then every 30 ms while they run: some get through, some are cut.
        await asyncio.sleep(0.005)
        while True:
            proxy.cut()
            await asyncio.sleep(0.03)

    cutting = asyncio.create_task(cutter())
    first = await asyncio.gather(*(post(edge, PLACE, u, bodies[u], key=f"cut-{u}") for u in users))
    cutting.cancel()
    assert any(status == 503 for status, _, _ in first)  # the cuts did hit checkouts in flight
    for status, doc, headers in first:
        if status != 200:
            assert_unavailable(status, doc, headers)  # 503 or 200, nothing else

    # The apps retry a 503 with the same key; whatever the first attempt did, each ends with one order.
    order_ids = {}
    for user, (status, doc, _) in zip(users, first, strict=True):
        for _ in range(5):
            if status == 200:
                break
            status, doc, _ = await post(edge, PLACE, user, bodies[user], key=f"cut-{user}")
        assert status == 200, doc
        order_ids[user] = doc["data"]["order_id"]

    async with shop.connect() as conn:
        o = t.orders.c
        rows = (await conn.execute(select(o.user_id, o.id).where(o.idempotency_key.like("cut-%")))).all()
        assert sorted(rows) == sorted(order_ids.items())  # one order per key, the one the retries answered
        ordered = dict((await conn.execute(
            select(t.order_items.c.sku_id, func.sum(t.order_items.c.qty)).group_by(t.order_items.c.sku_id)
        )).all())
        stock1 = dict((await conn.execute(select(t.skus.c.id, t.skus.c.stock))).all())
        reserved = dict((await conn.execute(
            select(t.wallet_ledger.c.user_id, func.sum(t.wallet_ledger.c.amount)).group_by(t.wallet_ledger.c.user_id)
        )).all())
        wallet1 = dict((await conn.execute(select(t.wallets.c.user_id, t.wallets.c.balance))).all())
        outbox = (await conn.execute(select(func.count()).select_from(t.outbox))).scalar_one()
        history = (await conn.execute(select(func.count()).select_from(t.order_status_history))).scalar_one()
    # Nothing taken twice, nothing taken for an order that does not exist.
    assert {sku: stock0[sku] - stock1[sku] for sku in stock0 if stock0[sku] != stock1[sku]} == \
        {sku: int(q) for sku, q in ordered.items()}
    assert {u: wallet0[u] - wallet1[u] for u in wallet0 if wallet0[u] != wallet1[u]} == \
        {u: Decimal(a) for u, a in reserved.items() if a}
    assert outbox == history == len(users)
