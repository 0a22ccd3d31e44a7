"""`shopping-edge --workers 2`: gunicorn workers, one admin port, /metrics adding up every worker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.edge import calc_price_route, routing_doc, write_routing
from tests.support.upstream import CALLS, create_echo_app

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests_total(metrics_text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "edge_requests"
        for s in family.samples
        if s.name == "edge_requests_total"
    )


async def test_two_workers_share_the_port_and_metrics_add_up(aiohttp_server, tmp_path: Path) -> None:
    upstream = await aiohttp_server(create_echo_app())
    legacy = str(upstream.make_url("")).rstrip("/")
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(legacy, calc_price=calc_price_route(0)))
    port, admin = free_port(), free_port()
    env = {**os.environ, "EDGE_LEGACY_URL": legacy, "SHOP_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}"}
    proc = subprocess.Popen(
        [str(BIN / "shopping-edge"), "--routing", str(routing), "--host", "127.0.0.1", "--port", str(port),
         "--admin-port", str(admin), "--workers", "2", "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(150):
                try:
                    async with session.get(f"http://127.0.0.1:{admin}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            pids = set()
            # Fresh connections spread over both workers (the kernel balances accept()).
            for i in range(200):
                async with aiohttp.ClientSession() as one:
                    async with one.get(f"http://127.0.0.1:{port}/shopping/cart?i={i}") as resp:
                        assert resp.status == 200
                async with aiohttp.ClientSession() as one:
                    async with one.get(f"http://127.0.0.1:{admin}/healthz") as resp:
                        pids.add((await resp.json())["pid"])
            assert len(upstream.app[CALLS]) == 200
            assert len(pids) == 2, pids  # two worker processes answer
            for _ in range(5):  # any worker's /metrics counts every worker's requests
                async with aiohttp.ClientSession() as one:
                    async with one.get(f"http://127.0.0.1:{admin}/metrics") as resp:
                        assert requests_total(await resp.text()) == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
