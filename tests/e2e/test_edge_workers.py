"""`shopping-edge --workers 2`: gunicorn workers, one admin port, /metrics adding up every worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.edge import calc_price_route, routing_doc, write_routing
from tests.support.upstream import CALLS, create_echo_app
from tests.support.net import free_port

BIN = Path(sys.executable).parent



def children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


ESTABLISHED, LISTEN = "01", "0A"


def sockets_per_pid(pids: list[int], port: int, state: str) -> dict[int, int]:
    """Server-side sockets on `port` in `state` held by each pid (from /proc/net/tcp and the fd tables)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == state:
            inodes.add(f[9])
    counts = {}
    for pid in pids:
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts[pid] = held
    return counts


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
                        text = await resp.text()
                        assert requests_total(text) == 200
            # One value for the edge, not one per worker (livemin: any worker on a rejected file shows 0).
            assert [line for line in text.splitlines() if line.startswith("edge_routing_last_reload_ok")] == \
                ["edge_routing_last_reload_ok 1.0"]

            # 32 keep-alive connections (a load balancer's pool) are spread over both workers, not left to
            # whichever worker woke first: each worker listens with its own SO_REUSEPORT socket.
            held = []
            for _ in range(32):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /shopping/cart HTTP/1.1\r\nHost: edge\r\n\r\n")
                assert (await reader.readline()).startswith(b"HTTP/1.1 200")
                held.append(writer)
            workers = children(proc.pid)
            # One listening socket per worker, none in the master: the kernel, not wake-up luck, picks the worker.
            assert sockets_per_pid([proc.pid, *workers], port, LISTEN) == {proc.pid: 0, **{w: 1 for w in workers}}
            per_worker = sockets_per_pid(workers, port, ESTABLISHED)
            for writer in held:
                writer.close()
            assert sum(per_worker.values()) == 32 and len(per_worker) == 2, per_worker
            # Binomial(32, 1/2): below 6 on either side has odds of about 1 in 8,000.
            assert min(per_worker.values()) >= 6, per_worker

            # A worker that goes away (SIGTERM here; a crash or a recycle alike) is replaced, and the edge and its
            # metrics carry on: the exiting worker must not tear down what the master set up for all of them.
            os.kill(workers[0], signal.SIGTERM)
            for _ in range(100):
                now = children(proc.pid)
                if len(now) == 2 and workers[0] not in now:
                    break
                await asyncio.sleep(0.1)
            assert proc.poll() is None and len(now) == 2 and workers[0] not in now, now
            for i in range(10):
                async with aiohttp.ClientSession() as one:
                    async with one.get(f"http://127.0.0.1:{port}/shopping/cart?after={i}") as resp:
                        assert resp.status == 200
            async with aiohttp.ClientSession() as one:
                async with one.get(f"http://127.0.0.1:{admin}/metrics") as resp:
                    assert requests_total(await resp.text()) == 200 + 32 + 10
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
