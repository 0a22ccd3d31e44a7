"""routing.yaml hot reload: file watch, SIGHUP, admin API; bad files keep the last good table.

No file, however malformed, large, deep or half-written, ends the watch, stalls requests or goes
live: each is a counted, logged rejection shown by /_edge/routes, and the next good file (a
rollback to 0 above all) still lands.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from prometheus_client import CollectorRegistry

from proxy.admin import _authorised
from proxy.app import ADMIN_APP, ROUTING, create_app
from tests.support.bad_routing import BAD_FILES, BadFile, remove, routing_text
from tests.support.edge import calc_price_route, detail_route, edge_settings, place_order_route, raw_request, routing_doc, write_routing
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

    def last_reload_ok(self) -> float | None:
        return self.registry.get_sample_value("edge_routing_last_reload_ok")

    async def described(self) -> dict:
        resp = await self.admin.get("/_edge/routes")
        assert resp.status == 200
        return await resp.json()

    async def side(self, user: str = "1") -> str:
        resp = await self.client.post("/shopping/cal_price/v4_4", json=PRICE_BODY, headers={"X-User-Id": user})
        assert resp.status == 200, await resp.text()
        return resp.headers["X-Edge-Backend"]


@pytest.fixture
async def make_edge(aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path, legacy_url: str):
    admins: list[TestClient] = []

    async def make(poll: float = 0.05, env: dict[str, str] | None = None, **settings) -> Edge:
        path = write_routing(tmp_path / "routing.yaml", routing_doc(legacy_url, calc_price=calc_price_route(0)))
        settings.setdefault("db_url", await seed_database(f"sqlite+aiosqlite:///{tmp_path / 'seeded.db'}"))
        registry = CollectorRegistry()
        app = create_app(edge_settings(path, legacy_url, env=env, routing_poll_seconds=poll, **settings), registry=registry)
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


async def test_last_reload_gauge_clears_when_a_bad_edit_is_reverted(make_edge) -> None:
    """The alert's signal: a revert to the table in force counts no ok load, yet the rejection is over."""
    edge = await make_edge()
    assert edge.last_reload_ok() == 1.0
    good = edge.path.read_text()
    edge.path.write_text("version: 1\nroutes:\n  calc_price:\n    match: {methods: [POST], path: /x}\n    new_percent: 250\n")

    async def rejected() -> bool:
        return edge.reloads("error") >= 1

    await wait_for(rejected, within=1.0)
    assert edge.last_reload_ok() == 0.0
    oks = edge.reloads("ok")
    edge.path.write_text(good)

    async def cleared() -> bool:
        return edge.last_reload_ok() == 1.0

    await wait_for(cleared, within=1.0)
    assert edge.reloads("ok") == oks  # the counters alone would still say "last result: error"


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
    assert "No such file or directory (FileNotFoundError)" in (await edge.described())["last_reload"]["error"]
    edge.write(calc_price=calc_price_route(0))  # and it comes back when the file does

    async def is_legacy() -> bool:
        return await edge.side() == "legacy"

    await wait_for(is_legacy, within=1.0)


async def test_sighup_reloads(make_edge) -> None:
    edge = await make_edge(poll=1.0)
    # Same size and mtime tricks aside, SIGHUP must reload at once, without waiting for the poll.
    edge.write(calc_price=calc_price_route(100))
    os.kill(os.getpid(), signal.SIGHUP)

    async def is_new() -> bool:
        return await edge.side() == "new"

    assert await wait_for(is_new, within=0.5) < 0.5


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


async def test_an_admin_token_header_that_is_not_utf8_is_refused_not_a_500(make_edge) -> None:
    edge = await make_edge(poll=1.0, admin_token="s3cret")
    status, _, body = await raw_request(edge.admin, b"POST /_edge/reload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cr\xe9t")
    assert status == 401 and body["msg"] == "admin_token_required"


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
        assert await edge.client.server.app[ROUTING].reload("test") is not None  # explicit reloads race the watcher too
    stop.set()
    await asyncio.gather(*callers)
    assert edge.reloads("error") == 0
    assert edge.reloads("ok") >= 50
    # Old shopping (the echo stand-in) and the new calc_price both answer 200: anything else is a failure.
    assert {s for s, _ in outcomes} == {200}
    assert len(outcomes) > 300
    assert max(d for _, d in outcomes) < 1.0


# --- bad files of every kind (issue 9) -------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_FILES, ids=lambda b: b.name)
async def test_after_every_kind_of_bad_file_a_rollback_to_zero_still_lands(make_edge, bad: BadFile) -> None:
    edge = await make_edge(poll=0.1)
    edge.write(calc_price=calc_price_route(100))

    async def is_new() -> bool:
        return await edge.side() == "new"

    async def is_legacy() -> bool:
        return await edge.side() == "legacy"

    await wait_for(is_new, within=1.0)
    errors = edge.reloads("error")
    with structlog.testing.capture_logs() as logs:
        bad.install(edge.path, edge.legacy_url)

        async def rejected() -> bool:
            return edge.reloads("error") > errors

        await wait_for(rejected, within=2.0)
    assert [e for e in logs if e["event"] == "routing_reload_rejected" and bad.names in e["error"]], logs
    last = (await edge.described())["last_reload"]
    assert last["ok"] is False and bad.names in last["error"], last
    if bad.line is not None:
        assert f"(line {bad.line})" in last["error"]
    assert await edge.side() == "new"  # the last good table is still in force
    # The explicit paths answer a rejection too, never a 500, and leave the watch running.
    resp = await edge.admin.post("/_edge/reload")
    assert resp.status == 422 and bad.names in (await resp.json())["error"]
    before_hup = edge.reloads("error")
    os.kill(os.getpid(), signal.SIGHUP)

    async def hup_rejected() -> bool:
        return edge.reloads("error") > before_hup

    await wait_for(hup_rejected, within=1.0)

    if edge.path.is_dir() and not edge.path.is_symlink():
        remove(edge.path)  # nothing can be renamed over a directory
    edge.write(calc_price=calc_price_route(0))  # the rollback
    assert await wait_for(is_legacy, within=1.0) < 1.0
    assert (await edge.described())["last_reload"]["ok"] is True


LATENCY_BAD_FILES = [b for b in BAD_FILES if b.name in ("alias_bomb", "symlink_to_dev_zero", "deep_nesting", "oversize", "fifo")]


@pytest.mark.parametrize("bad", LATENCY_BAD_FILES, ids=lambda b: b.name)
async def test_requests_keep_their_latency_while_a_bad_file_is_rejected(make_edge, bad: BadFile) -> None:
    edge = await make_edge(poll=0.05)
    stop = asyncio.Event()
    latencies: list[float] = []

    async def caller() -> None:
        while not stop.is_set():
            started = time.monotonic()
            assert await edge.side() == "legacy"
            latencies.append(time.monotonic() - started)

    callers = [asyncio.create_task(caller()) for _ in range(4)]
    await asyncio.sleep(0.2)
    errors = edge.reloads("error")
    bad.install(edge.path, edge.legacy_url)
    started = time.monotonic()
    resp = await edge.admin.post("/_edge/reload")  # the explicit path, racing the watch's own rejection
    assert resp.status == 422
    assert time.monotonic() - started < 1.0

    async def rejected() -> bool:
        return edge.reloads("error") > errors

    await wait_for(rejected, within=2.0)
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*callers)
    assert len(latencies) > 20
    assert max(latencies) < 0.5, sorted(latencies)[-5:]


async def test_the_admin_token_never_reaches_the_routes_page_or_the_log(make_edge) -> None:
    token = "s3cret-admin-token-0123"
    edge = await make_edge(env={"EDGE_ADMIN_TOKEN": token}, admin_token=token)
    errors = edge.reloads("error")
    with structlog.testing.capture_logs() as logs:
        edge.path.write_text(routing_text("${EDGE_ADMIN_TOKEN}"))

        async def rejected() -> bool:
            return edge.reloads("error") > errors

        await wait_for(rejected, within=1.0)
        resp = await edge.admin.post("/_edge/reload", headers={"Authorization": f"Bearer {token}"})
        body = await resp.text()
    assert resp.status == 422 and "${EDGE_ADMIN_TOKEN} cannot be used here" in body and token not in body
    routes = await (await edge.admin.get("/_edge/routes")).text()
    assert "legacy_url (line 2)" in routes and token not in routes
    assert logs and token not in repr(logs)


async def test_a_parse_past_its_budget_is_a_rejection_and_the_next_file_still_lands(make_edge) -> None:
    edge = await make_edge(poll=0.05, routing_parse_budget_seconds=0.05)
    # 18,000 values, under the size and value caps: slower to read than the 50 ms budget all the same.
    filler = "filler:\n" + "".join(f"  - [{', '.join(['1'] * 30)}]\n" for _ in range(600))
    errors = edge.reloads("error")
    edge.path.write_text(routing_text(edge.legacy_url, "100", filler))

    async def rejected() -> bool:
        return edge.reloads("error") > errors

    await wait_for(rejected, within=3.0)
    assert "parsing took longer than 0.05 s" in (await edge.described())["last_reload"]["error"]
    assert await edge.side() == "legacy"
    edge.write(calc_price=calc_price_route(100))

    async def is_new() -> bool:
        return await edge.side() == "new"

    await wait_for(is_new, within=3.0)


# --- half-written files (issue 9) ------------------------------------------------------------------

ALL_ROUTES = Path(__file__).resolve().parents[1] / "fixtures" / "routing-all-legacy.yaml"


async def test_a_half_written_file_never_goes_live(make_edge) -> None:
    edge = await make_edge(poll=0.25)  # the production default
    full = ALL_ROUTES.read_text()
    write_atomic_text(edge.path, full)
    state = edge.client.server.app[ROUTING]

    async def all_in_force() -> bool:
        return len(state.table.routes) == 11

    await wait_for(all_in_force, within=1.0)
    changed = full.replace("    new_percent: 0\n", "    new_percent: 10\n", 1)  # calc_price to 10 %
    assert changed != full
    half = changed[: changed.index("  paypal_pay:")]  # valid YAML: 4 of the 11 routes, no consumers
    seen: list[int] = []
    stop = asyncio.Event()

    async def watch_table() -> None:
        while not stop.is_set():
            seen.append(len(state.table.routes))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_table())
    with edge.path.open("r+") as f:  # a non-atomic writer: truncate, write half, pause, write the rest
        f.truncate(0)
        f.write(half)
        f.flush()
        await asyncio.sleep(0.75)
        f.write(changed[len(half):])
    finished = time.monotonic()

    async def applied() -> bool:
        return state.table.routes["calc_price"].new_percent == 10

    await wait_for(applied, within=1.0)
    assert time.monotonic() - finished < 1.0
    stop.set()
    await watcher
    assert set(seen) == {11}
    assert len(state.table.routes) == 11 and edge.reloads("error") == 0


async def test_a_change_that_removes_routes_waits_until_the_file_has_settled(make_edge) -> None:
    edge = await make_edge(poll=0.05, routing_drop_settle_seconds=0.6)
    edge.write(calc_price=calc_price_route(0), detail=detail_route(0))
    state = edge.client.server.app[ROUTING]

    async def has_detail() -> bool:
        return "detail" in state.table.routes

    await wait_for(has_detail, within=1.0)
    written = time.monotonic()
    edge.write(calc_price=calc_price_route(100))  # detail removed

    async def held() -> bool:
        return ((await edge.described())["pending"] or {}).get("held_because_it_removes") == ["routes.detail"]

    await wait_for(held, within=0.5)
    assert "detail" in state.table.routes

    async def removed() -> bool:
        return "detail" not in state.table.routes

    await wait_for(removed, within=1.5)
    assert time.monotonic() - written >= 0.6
    assert await edge.side() == "new" and edge.reloads("error") == 0


async def test_an_explicit_reload_applies_a_removal_at_once(make_edge) -> None:
    edge = await make_edge(poll=1.0, routing_drop_settle_seconds=30)
    edge.write(calc_price=calc_price_route(0), detail=detail_route(0))
    assert (await (await edge.admin.post("/_edge/reload")).json())["changed"] is True
    edge.write(calc_price=calc_price_route(0))
    resp = await edge.admin.post("/_edge/reload")
    assert resp.status == 200 and (await resp.json())["changed"] is True
    assert set((await edge.described())["routes"]) == {"calc_price"}


async def test_a_percentage_change_is_applied_within_one_second_of_a_stable_write(make_edge) -> None:
    edge = await make_edge(poll=0.25)
    for percent in (100, 0, 100):
        written = time.monotonic()
        edge.write(calc_price=calc_price_route(percent))
        want = "new" if percent else "legacy"

        async def landed() -> bool:
            return await edge.side() == want

        await wait_for(landed, within=1.0)
        assert time.monotonic() - written < 1.0


def write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


async def test_a_configmap_style_symlink_flip_is_followed(make_edge, tmp_path: Path) -> None:
    """Kubernetes mounts routing.yaml as ..data/routing.yaml and flips the ..data link to a new directory."""
    mount = tmp_path / "mount"
    mount.mkdir()

    def version(name: str, percent: int) -> None:
        (mount / name).mkdir()
        write_routing(mount / name / "routing.yaml", routing_doc(edge.legacy_url, calc_price=calc_price_route(percent)))
        link = mount / "..data_tmp"
        link.symlink_to(name)
        link.replace(mount / "..data")  # the atomic flip

    edge = await make_edge(poll=0.25)
    version("..v1", 0)
    remove(edge.path)
    edge.path.symlink_to(mount / "..data" / "routing.yaml")
    assert (await (await edge.admin.post("/_edge/reload")).json())["ok"] is True
    version("..v2", 100)

    async def is_new() -> bool:
        return await edge.side() == "new"

    assert await wait_for(is_new, within=1.0) < 1.0
    assert edge.reloads("error") == 0


async def test_a_split_route_group_is_rejected_and_the_last_good_table_kept(make_edge) -> None:
    edge = await make_edge()
    checkout = {"checkout": {"routes": ["calc_price", "place_order"]}}
    write_routing(edge.path, {**routing_doc(edge.legacy_url, calc_price=calc_price_route(100), place_order=place_order_route(100)), "groups": checkout})

    async def is_new() -> bool:
        return await edge.side() == "new"

    await wait_for(is_new, within=2.0)
    # place_order alone back to 0: callers priced on new would be charged on legacy.
    write_routing(edge.path, {**routing_doc(edge.legacy_url, calc_price=calc_price_route(100), place_order=place_order_route(0)), "groups": checkout})

    async def rejected() -> bool:
        return edge.reloads("error") >= 1

    await wait_for(rejected, within=2.0)
    routes = await edge.described()
    assert "groups.checkout (line" in routes["last_reload"]["error"] and "allow_split" in routes["last_reload"]["error"]
    assert routes["routes"]["place_order"]["new_percent"] == 100.0  # the last good table
    assert routes["groups"] == {"checkout": {"routes": ["calc_price", "place_order"], "allow_split": False}}
    assert Path(routes["routing_file"]).is_absolute() and Path(routes["routing_file"]) == edge.path.resolve()

    write_routing(edge.path, {**routing_doc(edge.legacy_url, calc_price=calc_price_route(100), place_order=place_order_route(0)),
                              "groups": {"checkout": {"routes": ["calc_price", "place_order"], "allow_split": True}}})

    async def split_accepted() -> bool:
        return (await edge.described())["routes"]["place_order"]["new_percent"] == 0.0

    await wait_for(split_accepted, within=2.0)


async def test_the_admin_root_lists_the_admin_endpoints(make_edge) -> None:
    edge = await make_edge(poll=1.0)
    resp = await edge.admin.get("/")
    assert resp.status == 200
    endpoints = (await resp.json())["endpoints"]
    assert {"GET /metrics", "GET /healthz", "GET /readyz", "GET /_edge/routes", "POST /_edge/reload"} <= set(endpoints)
