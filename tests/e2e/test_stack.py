"""`make run`'s stack as real processes: curl through the edge reaches old shopping; the broker has
the event topics with several partitions; shopping-consumers answers on its admin port with its
partitions assigned; Ctrl-C stops all, the consumers leaving their group before the broker goes.

Everything listens on 127.0.0.1 (the edge too, unless `--host` says otherwise), and old shopping's
fault knobs are on their own loopback port, not reachable through the edge.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from common.local_broker import port_open
from common.settings import DEFAULT_TOPICS
from tests.support.listeners import listening_addresses
from tests.support.scrape import Scrape
from tests.support.stack_process import PORTS, Stack, free_offset

ROOT = Path(__file__).resolve().parents[2]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, dict(resp.headers), json.loads(resp.read())


def status_of(method: str, url: str) -> int:
    req = urllib.request.Request(url, method=method, data=b'{"path": "*", "error_rate": 1.0}' if method == "POST" else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def partitions(bootstrap: str) -> dict[str, int]:
    """Topic → number of partitions, from the broker's metadata."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await reader.start()
    try:
        return {topic: len(reader.partitions_for_topic(topic) or ()) for topic in await reader.topics()}
    finally:
        await reader.stop()


async def test_stack_serves_through_the_edge_runs_the_consumers_and_stops_cleanly(tmp_path: Path) -> None:
    stack = Stack(free_offset(), tmp_path)
    offset = stack.offset
    try:
        stack.start()
        output = stack.output
        status, headers, body = get(f"http://127.0.0.1:{8080 + offset}/shopping/cart", {"X-User-Id": "1"})
        assert status == 200 and headers["X-Edge-Route"] == "passthrough"
        assert [i["sku_id"] for i in body["data"]["items"]] == [1, 2, 3]  # the worked example's cart
        _, _, routes = get(f"http://127.0.0.1:{8081 + offset}/_edge/routes")
        assert "calc_price" in routes["routes"]

        # The broker: the five input topics and noti with several partitions, a DLQ per input topic.
        found = await partitions(f"127.0.0.1:{9092 + offset}")
        assert {found.get(t) for t in (*DEFAULT_TOPICS.values(), "noti")} == {4}, found
        assert {found.get(f"{t}.dlq") for t in DEFAULT_TOPICS.values()} == {1}, found

        # shopping-consumers: alive, joined the group (readyz = partitions assigned, DB reachable), metrics.
        consumers = f"http://127.0.0.1:{8082 + offset}"
        status, _, health = get(f"{consumers}/healthz")
        assert status == 200 and health["ok"] is True
        status, _, ready = get(f"{consumers}/readyz")
        assert status == 200 and ready == {"ready": True, "problems": []}
        scrape = Scrape.of(f"{consumers}/metrics")
        assert scrape.total("consumer_events_total") == 0  # the children exist, nothing consumed yet
        # The relay holds its lease at once; the expiry sweeper's first sweep is one period after the start.
        assert {"consumer_events_total", "outbox_unpublished", "expiry_sweeper_leader"} <= scrape.names
        assert scrape.total("outbox_relay_leader") == 1
        # The banner says who applies each event type (the repo's routing.yaml: old shopping, all of them).
        assert any("payment_notified: legacy" in line for line in output), stack.banner

        # A demo stack is for this machine: every listener, the edge's public port included, is on loopback.
        for port in PORTS:
            assert listening_addresses(port + offset) == {"127.0.0.1"}, port
        assert any("only from this machine" in line for line in output), stack.banner
        # Old shopping's knobs answer on their own port, and the edge's public port does not reach them.
        edge = f"http://127.0.0.1:{8080 + offset}"
        assert [status_of(m, edge + "/_emulator/faults") for m in ("GET", "POST", "DELETE")] == [404, 404, 404]
        _, _, faults = get(f"http://127.0.0.1:{8099 + offset}/_emulator/faults")
        assert faults == {"faults": []}

        # The PSP emulator: up, its knobs on their own loopback port only, and it takes the credentials
        # the stack's settings give every PSP client (the defaults: nobody set PAYPAL_*).
        psp = f"http://127.0.0.1:{8091 + offset}"
        assert get(f"http://127.0.0.1:{8100 + offset}/_psp/health")[2] == {"ok": True}
        assert status_of("GET", psp + "/_psp/faults") == 404
        token = urllib.request.Request(psp + "/v1/oauth2/token", data=b"grant_type=client_credentials", headers={
            "Authorization": "Basic " + base64.b64encode(b"emulator:emulator").decode(),
            "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(token, timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read())["token_type"] == "Bearer"
        assert any("PSP emulator" in line and str(8091 + offset) in line for line in output), stack.banner
    finally:
        code = stack.stop()
    assert code == 0, stack.banner + stack.rest
    assert stack.rest.rstrip().endswith("stopped."), stack.rest  # nothing had to be killed
    for port in PORTS:
        assert not port_open(port + offset), f"something still listens on {port + offset}"
    # The consumers stopped on their own terms (offsets committed, group left) while the broker was up.
    log = stack.log("consumers")
    assert "consumers_stopped" in log and "Traceback" not in log and "shutdown_step_failed" not in log, log[-3000:]


def test_an_empty_database_file_is_seeded_not_trusted(tmp_path: Path) -> None:
    """`make run` seeds var/shop.db when it lacks the demo data, not only when the file is missing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stack", ROOT / "scripts" / "stack.py")
    assert spec and spec.loader
    stack = importlib.util.module_from_spec(spec)
    sys.modules["stack"] = stack  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(stack)
    finally:
        del sys.modules["stack"]
    db = tmp_path / "shop.db"
    url = f"sqlite+aiosqlite:///{db}"
    shopping_db = Path(sys.executable).parent / "shopping-db"
    assert not stack.has_demo_data(db)  # no file
    subprocess.run([str(shopping_db), "--db-url", url, "create"], check=True, capture_output=True)
    assert not stack.has_demo_data(db)  # tables, no rows: what an edge started on the default URL leaves
    subprocess.run([str(shopping_db), "--db-url", url, "seed", "--demo"], check=True, capture_output=True)
    assert stack.has_demo_data(db)
