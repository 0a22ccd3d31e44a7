"""Every line a real process writes, stdout and stderr together, is one JSON object (common/logs.py).

aiokafka, aiohttp and asyncio log through stdlib `logging`: when the broker goes away under a
running shopping-consumers, aiokafka's connection errors (some with a traceback) come out as JSON
lines with the traceback in a field, never as plain text or a multi-line traceback. The same holds
for shopping-edge serving garbage requests and an old shopping that is down.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker, running_broker
from tests.support.edge import dead_url, routing_doc, write_routing
from tests.support.net import free_port

BIN = Path(sys.executable).parent


def non_json_lines(text: str) -> list[str]:
    bad = []
    for line in text.splitlines():
        try:
            if not isinstance(json.loads(line), dict):
                bad.append(line)
        except ValueError:
            bad.append(line)
    return bad


def wait_http(url: str, *, want: int = 200, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == want:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code == want:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer {want} in {timeout} s"
        time.sleep(0.1)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from running_broker(tmp_path)


def test_a_consumers_process_whose_broker_goes_away_logs_only_json_lines(broker: Broker, tmp_path: Path, sqlite_url: str) -> None:
    admin = free_port()
    env = {**os.environ, "SHOP_DB_URL": sqlite_url, "SHOP_KAFKA_BOOTSTRAP": broker.bootstrap,
           "SHOP_KAFKA_IDEMPOTENCE": "false", "SHOP_CONSUMER_ADMIN_PORT": str(admin),
           "SHOP_CONSUMER_SESSION_TIMEOUT_MS": "2000", "SHOP_EXPIRY_SWEEP_SECONDS": "0.5"}
    subprocess.run([str(BIN / "shopping-db"), "--db-url", sqlite_url, "create"], check=True, capture_output=True)
    log = tmp_path / "consumers.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "shopping-consumers")], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{admin}/readyz")
        broker.stop()
        time.sleep(6)  # aiokafka notices, retries, logs its connection errors
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert non_json_lines(text) == []
    events = [json.loads(line) for line in text.splitlines()]
    # The libraries' own records are among them, as JSON: not just our structlog events.
    assert any(e.get("logger", "").startswith("aiokafka") for e in events), text[-3000:]
    assert events[-1]["event"] == "consumers_stopped"


def test_an_edge_serving_garbage_and_a_dead_old_shopping_logs_only_json_lines(tmp_path: Path, sqlite_url: str) -> None:
    port, admin = free_port(), free_port()
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(dead_url()))
    env = {**os.environ, "SHOP_DB_URL": sqlite_url, "EDGE_LEGACY_URL": dead_url()}
    log = tmp_path / "edge.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "shopping-edge"), "--routing", str(routing), "--host", "127.0.0.1", "--port", str(port),
             "--admin-port", str(admin)], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{admin}/healthz")
        for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                        b"GET /\x00 HTTP/1.1\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(garbage)
                s.recv(4096)
        try:  # old shopping is down: a 502, logged by the edge
            urllib.request.urlopen(f"http://127.0.0.1:{port}/shopping/cart", timeout=10)
        except urllib.error.HTTPError as exc:
            assert exc.code == 502
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert non_json_lines(text) == []
    assert text.strip(), "the edge logged nothing at all"
