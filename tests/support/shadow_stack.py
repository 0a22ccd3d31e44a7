"""A shadowing edge in-process for the tests: old shopping's emulator on SQLite, the edge app, its admin
app and the emulator's knobs, each through aiohttp's test client (tests/integration/test_edge_shadow.py,
test_edge_diff_page.py); the ``make_stack`` fixture is in tests/support/shadow_fixtures.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import insert

from proxy.app import SHADOWER
from shop import schema as t
from shop.db import make_engine

CALC = "/shopping/cal_price/v4_4"
TIE_SKU = 9001  # 26.75 in category 10 (10 % off): 2.675 rounds to 2.68 in Decimal, 2.67 in float
PLAIN_BODY = {"items": [{"sku_id": 2, "qty": 2}], "region": "US", "currency": "USD"}
TIE_BODY = {"items": [{"sku_id": TIE_SKU, "qty": 1}], "region": "US", "currency": "USD"}


async def add_tie_sku(url: str) -> None:
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(insert(t.skus).values(id=TIE_SKU, name="Tie", category_id=10, price="26.75", stock=100, active=True))
    await engine.dispose()


class Stack:
    def __init__(self, edge: TestClient, admin: TestClient, legacy_admin: TestClient, registry: CollectorRegistry) -> None:
        self.edge, self.admin, self.legacy_admin, self.registry = edge, admin, legacy_admin, registry

    @property
    def shadower(self):
        return self.edge.server.app[SHADOWER]

    async def settle(self, timeout: float = 10.0) -> None:
        """Until every shadow call has finished and the diff queue is empty."""
        deadline = time.monotonic() + timeout
        while self.shadower.inflight or self.shadower.worker.queue_depth or self.shadower.worker.done < self.shadower.worker.submitted:
            assert time.monotonic() < deadline, "shadow work did not settle"
            await asyncio.sleep(0.02)

    def outcome(self, route: str, outcome: str) -> float:
        return self.registry.get_sample_value("edge_shadow_requests_total", {"route": route, "outcome": outcome}) or 0.0

    async def report(self, route: str = "calc_price") -> dict[str, Any]:
        resp = await self.admin.get("/_edge/shadow", params={"route": route})
        assert resp.status == 200
        return (await resp.json())["routes"].get(route, {})

    async def fault(self, **rule: Any) -> None:
        resp = await self.legacy_admin.post("/_emulator/faults", json=rule)
        assert resp.status == 200, await resp.text()
