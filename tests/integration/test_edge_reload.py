"""routing.yaml hot reload: file watch, SIGHUP, admin API; bad files keep the last good table."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from prometheus_client import CollectorRegistry

from proxy.admin import _authorised
from proxy.app import ADMIN_APP, ROUTING, create_app
from tests.support.edge import calc_price_route, detail_route, edge_settings, routing_doc, write_routing
from tests.support.shopdb import seed_database
from tests.support.upstream import create_echo_app


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await aiohttp_server(create_echo_app())


@pytest.fixture
def legacy_url(upstream: TestServer) -> str:
    return str(upstream.make_url("")).rstrip("/")


PRICE_BODY = {"items": [{"sku_id": 1, "qty": 2}, {"sku_id": 3, "qty": 1}], "region": "DE", "currency": "EUR"}


class Edge:
    def __init__(self, client: TestClient, admin: TestClient, registry: CollectorRegistry, path: Path, legacy_url: str) -> None:
        self.client, self.admin, self.registry, self.path, self.legacy_url = client, admin, registry, path, legacy_url

    def write(self, **routes: dict) -> None:
        write_routing(self.path, routing_doc(self.legacy_url, **routes))

    def reloads(self, result: str) -> float:
        return self.registry.get_sample_value("edge_routing_reload_total", {"result": result}) or 0.0

    async def side(self, user: str = "1") -> str:
        resp = await self.client.post("/shopping/cal_price/v4_4", json=PRICE_BODY, headers={"X-User-Id": user})
        assert resp.status == 200, await resp.text()
        return resp.headers["X-Edge-Backend"]


@pytest.fixture
async def make_edge(aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path, legacy_url: str):
    admins: list[TestClient] = []

    async def make(poll: float = 0.05, **settings) -> Edge:
        path = write_routing(tmp_path / "routing.yaml", routing_doc(legacy_url, calc_price=calc_price_route(0)))
        settings.setdefault("db_url", await seed_database(f"sqlite+aiosqlite:///{tmp_path / 'seeded.db'}"))
        registry = CollectorRegistry()
        app = create_app(edge_settings(path, legacy_url, routing_poll_seconds=poll, **settings), registry=registry)
        client = await aiohttp_client(app)
        admin = TestClient(TestServer(app[ADMIN_APP]))
        await admin.start_server()
        admins.append(admin)
        return Edge(client, admin, registry, path, legacy_url)

    yield make
    for admin in admins:
        await admin.close()


async def wait_for(predicate: Callable[[], Awaitable[bool]], within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await predicate():
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {within}s")


async def test_file_change_is_picked_up_within_one_second(make_edge) -> None:
    edge = await make_edge(poll=0.25)  # the production default
    assert await edge.side() == "legacy"
    edge.write(calc_price=calc_price_route(100))

    async def is_new() -> bool:
        return await edge.side() == "new"

    assert await wait_for(is_new, within=1.0) < 1.0
    assert edge.reloads("ok") == 2


async def test_bad_file_keeps_last_good_table_counts_and_reports(make_edge) -> None:
    edge = await make_edge()
    edge.write(calc_price=calc_price_route(100))

    async def is_new() -> bool:
        return await edge.side() == "new"

    await wait_for(is_new, within=1.0)
    edge.path.write_text("version: 1\nroutes:\n  calc_price:\n    match: {methods: [POST], path: /x}\n    new_percent: 250\n")

    async def rejected() -> bool:
        return edge.reloads("error") >= 1

    await wait_for(rejected, within=1.0)
    assert await edge.side() == "new"  # still the last good table
    routes = await (await edge.admin.get("/_edge/routes")).json()
    assert routes["last_reload"]["ok"] is False
    assert "routes.calc_price.new_percent (line 5)" in routes["last_reload"]["error"]
    assert routes["routes"]["calc_price"]["new_percent"] == 100.0


async def test_deleted_file_keeps_last_good_table(make_edge) -> None:
    edge = await make_edge()
    edge.write(calc_price=calc_price_route(100))

    async def is_new() -> bool:
        return await edge.side() == "new"

    await wait_for(is_new, within=1.0)
    edge.path.unlink()

    async def rejected() -> bool:
        return edge.reloads("error") >= 1

    await wait_for(rejected, within=1.0)
    assert await edge.side() == "new"
    assert "FileNotFoundError" in (await (await edge.admin.get("/_edge/routes")).json())["last_reload"]["error"]
    edge.write(calc_price=calc_price_route(0))  # and it comes back when the file does

    async def is_legacy() -> bool:
        return await edge.side() == "legacy"

    await wait_for(is_legacy, within=1.0)


async def test_sighup_reloads(make_edge) -> None:
    edge = await make_edge(poll=1.0)
    # Same size and mtime tricks aside, SIGHUP must reload at once, without waiting for the poll.
    edge.write(calc_price=calc_price_route(100))
    os.kill(os.getpid(), signal.SIGHUP)
    await asyncio.sleep(0.05)
    assert await edge.side() == "new"


async def test_admin_reload_needs_the_token_when_set(make_edge) -> None:
    edge = await make_edge(poll=1.0, admin_token="s3cret")
    edge.write(calc_price=calc_price_route(100))
    assert (await edge.admin.post("/_edge/reload")).status == 401
    assert (await edge.admin.post("/_edge/reload", headers={"Authorization": "Bearer wrong"})).status == 401
    resp = await edge.admin.post("/_edge/reload", headers={"Authorization": "Bearer s3cret"})
    assert resp.status == 200 and (await resp.json())["changed"] is True
    assert await edge.side() == "new"
    edge.path.write_text("version: 1\nroutes: [\n")
    bad = await edge.admin.post("/_edge/reload", headers={"Authorization": "Bearer s3cret"})
    assert bad.status == 422 and "not valid YAML" in (await bad.json())["error"]


def test_without_token_only_loopback_may_reload() -> None:
    local = make_mocked_request("POST", "/_edge/reload")
    assert _authorised(_with_remote(local, "127.0.0.1"), None) is None
    assert _authorised(_with_remote(local, "::1"), None) is None
    refused = _authorised(_with_remote(local, "10.1.2.3"), None)
    assert refused is not None and refused.status == 403


def _with_remote(request, remote: str):
    return request.clone(remote=remote)


async def test_fifty_reloads_under_concurrent_load_fail_nothing(make_edge) -> None:
    edge = await make_edge(poll=0.02)
    stop = asyncio.Event()
    outcomes: list[tuple[int, float]] = []

    async def caller(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            started = time.monotonic()
            headers = {"X-User-Id": str(n * 1000 + i)}
            async with edge.client.post("/shopping/cal_price/v4_4", json=PRICE_BODY, headers=headers) as resp:
                await resp.read()
                outcomes.append((resp.status, time.monotonic() - started))

    callers = [asyncio.create_task(caller(n)) for n in range(20)]
    for i in range(50):
        if i % 2:
            edge.write(calc_price=calc_price_route(100), detail=detail_route(50))
        else:
            edge.write(calc_price=calc_price_route(i), detail=detail_route(0))
        await asyncio.sleep(0.03)
        assert edge.client.server.app[ROUTING].reload("test") is not None  # explicit reloads race the watcher too
    stop.set()
    await asyncio.gather(*callers)
    assert edge.reloads("error") == 0
    assert edge.reloads("ok") >= 50
    # Old shopping (the echo stand-in) and the new calc_price both answer 200: anything else is a failure.
    assert {s for s, _ in outcomes} == {200}
    assert len(outcomes) > 300
    assert max(d for _, d in outcomes) < 1.0
