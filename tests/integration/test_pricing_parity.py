"""calc_price at 50 % through the edge: old shopping (emulator) and the new side on one database.

Both sides answer the same shape; they agree to the cent on the worked example and on carts
whose arithmetic has no half-cent ties (old shopping's float rounding only differs on those).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from emulators.legacy import create_app as create_legacy_app
from proxy.app import create_app
from shop.seed import demo_rows
from tests.support.edge import calc_price_route, coupons_route, edge_settings, internal_headers, routing_doc, write_routing
from tests.support.shopdb import seed_database

CALC = "/shopping/cal_price/v4_4"


@pytest.fixture
async def sides(aiohttp_server: Callable[..., Awaitable[TestServer]], aiohttp_client, tmp_path: Path, db_url: str):
    await seed_database(db_url)
    legacy = await aiohttp_server(create_legacy_app(db_url))
    legacy_url = str(legacy.make_url("")).rstrip("/")
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(legacy_url, calc_price=calc_price_route(50), coupons=coupons_route(50)))
    edge = await aiohttp_client(create_app(edge_settings(routing, legacy_url, db_url=db_url), registry=CollectorRegistry()))
    legacy_client = TestClient(legacy)
    await legacy_client.start_server()
    yield edge, legacy_client
    await legacy_client.close()


def shape(value: Any) -> Any:
    """Keys and types, not values: what the app's parser relies on."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


async def both(edge: TestClient, legacy: TestClient, path_new: str, path_legacy: str, body: dict, user: str | None) -> tuple[dict, dict]:
    headers = {"X-User-Id": user} if user else {}
    new = await edge.post(path_new, json=body, headers=internal_headers(**headers))
    old = await legacy.post(path_legacy, json=body, headers=headers)
    assert new.status == old.status == 200, (await new.text(), await old.text())
    return await new.json(), await old.json()


async def test_both_sides_serve_through_the_edge_with_the_same_shape(sides) -> None:
    edge, _ = sides
    rows = demo_rows()
    inactive = {s["id"] for s in rows["skus"] if not s["active"]}
    blocked = {c["user_id"] for c in rows["cart_items"] if c["selected"] and c["sku_id"] in inactive}
    seen: dict[str, Any] = {}
    for user in [u for u in range(1, 60) if u not in blocked][:40]:
        resp = await edge.post(CALC, json={"address_id": user, "currency": "EUR", "use_wallet": True}, headers={"X-User-Id": str(user)})
        assert resp.status == 200, await resp.text()
        seen.setdefault(resp.headers["X-Edge-Backend"], shape(await resp.json()))
    assert set(seen) == {"new", "legacy"}
    assert seen["new"] == seen["legacy"]


async def test_worked_example_agrees_to_the_cent(sides) -> None:
    edge, legacy = sides
    body = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True}
    new, old = await both(edge, legacy, "/order2/calc_price", CALC, body, "1")
    assert new == old
    assert new["data"]["summary"]["total"] == "96.07"
    new_c, old_c = await both(edge, legacy, "/order2/coupons", "/shopping/user_coupons_for_order", body, "1")
    assert new_c == old_c


async def test_tie_free_carts_agree_to_the_cent(sides) -> None:
    edge, legacy = sides
    rows = demo_rows()
    discounted = {d["target_id"] for d in rows["mall_discounts"] if d["scope"] == "sku"}
    # Whole-cent prices, USD, no percentage anywhere (no mall discount, tariff below US de minimis, amount coupon).
    plain = [s["id"] for s in rows["skus"] if s["active"] and s["category_id"] in (20, 30) and s["id"] not in discounted and s["price"] < 100]
    rng = random.Random(3)
    for _ in range(30):
        items = [{"sku_id": s, "qty": rng.randint(1, 3)} for s in rng.sample(plain, rng.randint(1, 5))]
        body = {"items": items, "region": "US", "currency": "USD", "coupon_code": "SAVE15"}
        new, old = await both(edge, legacy, "/order2/calc_price", CALC, body, None)
        assert new == old, (items, new, old)
