"""Old shopping's fault knobs (/_emulator/*) cannot be reached through the edge's public port.

The edge forwards every unrouted path to old shopping's public port, so the emulator serves its
control API only on a listener of its own, on 127.0.0.1: through the edge, reading, setting and
clearing the knobs are all 404 and change nothing. ``python -m emulators.legacy`` opens both
listeners, the control one on loopback even when the public one listens on every address.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from emulators.legacy import create_admin_app, create_app as create_legacy_app
from proxy.app import create_app
from tests.support.edge import edge_settings, routing_doc, write_routing
from tests.support.legacydb import envelope
from tests.support.listeners import PROC_NET_TCP, listening_addresses
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def through_edge(aiohttp_server: Callable[..., Awaitable[TestServer]], aiohttp_client, tmp_path: Path, sqlite_url: str):
    """(the edge's public port, old shopping's control API) on one emulator."""
    legacy = await aiohttp_server(create_legacy_app(sqlite_url))
    knobs = await aiohttp_client(create_admin_app(legacy.app))
    legacy_url = str(legacy.make_url("")).rstrip("/")
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(legacy_url))
    edge = await aiohttp_client(create_app(edge_settings(routing, legacy_url, db_url=sqlite_url), registry=CollectorRegistry()))
    return edge, knobs


async def rules(knobs: TestClient) -> list[str]:
    return [r["path"] for r in (await (await knobs.get("/_emulator/faults")).json())["faults"]]


async def test_the_knobs_cannot_be_read_set_or_cleared_through_the_edge(through_edge) -> None:
    edge, knobs = through_edge
    assert (await knobs.post("/_emulator/faults", json={"path": "/shopping/orders", "delay_ms": 1})).status == 200

    resp = await edge.post("/_emulator/faults", json={"path": "*", "error_rate": 1.0, "error_status": 503})
    assert resp.headers["X-Edge-Route"] == "passthrough"
    assert await envelope(resp, 404) == {"code": 40400, "msg": "not_found", "data": None}
    for method in ("GET", "DELETE"):
        resp = await edge.request(method, "/_emulator/faults")
        assert await envelope(resp, 404) == {"code": 40400, "msg": "not_found", "data": None}
    assert await envelope(await edge.delete("/_emulator/stats"), 404)
    assert await envelope(await edge.get("/_emulator/health"), 404)

    assert await rules(knobs) == ["/shopping/orders"]
    # Old shopping still answers normally: no rule from the edge's side made it fail.
    assert (await edge.get("/shopping/cart")).status == 401
    stats = await (await knobs.get("/_emulator/stats")).json()
    assert stats["paths"]["/_emulator/faults"] == 3 and stats["paths"]["/shopping/cart"] == 1



def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.skipif(not PROC_NET_TCP.exists(), reason="reads the listening sockets from /proc/net/tcp")
def test_the_emulator_process_serves_its_knobs_on_loopback_only(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.legacy", "--host", "0.0.0.0", "--port", str(port), "--admin-port", str(admin),
         "--db-url", f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}", "--create-schema"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (listening_addresses(admin) and listening_addresses(port)) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        assert listening_addresses(port) == {"0.0.0.0"}
        assert listening_addresses(admin) == {"127.0.0.1"}
        assert get_status(f"http://127.0.0.1:{admin}/_emulator/health") == 200
        assert get_status(f"http://127.0.0.1:{port}/_emulator/health") == 404
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
