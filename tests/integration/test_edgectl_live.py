"""edgectl against a real edge process: `set` reaches the table in force, `status` shows it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.net import free_port

# A frozen copy of routing.yaml with every route on old shopping: the live file changes with each gray step.
REPO_ROUTING = Path(__file__).resolve().parents[1] / "fixtures" / "routing-all-legacy.yaml"
BIN = Path(sys.executable).parent  # the venv's console scripts sit beside its python
TOKEN = "edgectl-live-test-token"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))



def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _NO_PROXY.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass(frozen=True)
class Edge:
    routing: Path
    port: int
    admin: str
    env: dict[str, str]


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    routing = tmp_path / "routing.yaml"
    shutil.copyfile(REPO_ROUTING, routing)
    port, admin_port = free_port(), free_port()
    # Nothing listens on the legacy port: requests forwarded there fail fast with 502, which is fine here.
    env = {**os.environ, "EDGE_LEGACY_URL": f"http://127.0.0.1:{free_port()}", "EDGE_ADMIN_TOKEN": TOKEN,
           # Its own database, not the default var/shop.db of the checkout (which `make run` would then find empty).
           "SHOP_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}",
           # Rate snapshots every 0.2 s, so a test can use windows of a second.
           "EDGE_RATES_INTERVAL_SECONDS": "0.2"}
    env.pop("EDGE_ROUTING_FILE", None)
    log = (tmp_path / "edge.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "shopping-edge"), "--routing", str(routing), "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin_port), "--no-access-log"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the edge exited with {proc.returncode}: {(tmp_path / 'edge.log').read_text()}")
            try:
                if _get(f"{admin}/healthz", timeout=0.5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the edge did not answer /healthz within 10 s: {(tmp_path / 'edge.log').read_text()}")
            time.sleep(0.05)
        yield Edge(routing, port, admin, env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _edgectl(edge: Edge, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgectl"), *args], env=edge.env, capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL
    )


def test_set_reaches_the_running_edge_and_status_shows_it(edge: Edge) -> None:
    done = _edgectl(edge, "set", "calc_price", "25", "--file", str(edge.routing), "--admin", edge.admin)
    assert done.returncode == 0, done.stderr
    assert "calc_price: 0 → 25" in done.stdout
    assert "edge reloaded" in done.stdout, done.stderr  # the token was accepted and the hash is ours

    status, body = _get(f"{edge.admin}/_edge/routes")
    assert status == 200
    described = json.loads(body)
    assert described["routes"]["calc_price"]["new_percent"] == 25.0
    assert described["last_reload"]["ok"] is True

    _get(f"http://127.0.0.1:{edge.port}/not/a/route")  # one passthrough request for the metrics (502: no legacy)
    shown = _edgectl(edge, "status", "--admin", edge.admin)
    assert shown.returncode == 0, shown.stderr
    assert described["hash"] in shown.stdout
    row = next(line.split() for line in shown.stdout.splitlines() if line.startswith("calc_price "))
    assert row[:2] == ["calc_price", "25"]
    passthrough = next(line.split() for line in shown.stdout.splitlines() if line.startswith("passthrough "))
    assert passthrough[4] == "1"  # requests to legacy


def _post(url: str, body: bytes = b"{}") -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with _NO_PROXY.open(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _status_json(edge: Edge, window: str) -> dict:
    shown = _edgectl(edge, "status", "--admin", edge.admin, "--json", "--window", window)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def test_status_rates_fall_to_zero_after_a_rollback_while_totals_stay(edge: Edge) -> None:
    done = _edgectl(edge, "set", "calc_price", "100", "--file", str(edge.routing), "--admin", edge.admin)
    assert done.returncode == 0 and "edge reloaded" in done.stdout, done.stderr
    url = f"http://127.0.0.1:{edge.port}/shopping/cal_price/v4_4"
    for _ in range(10):
        _post(url)
    live = _status_json(edge, "30s")["live"]["routes"]["calc_price"]
    assert live["new"]["requests"] == 10 and live["legacy"]["requests"] == 0
    assert live["new"]["req_per_s"] > 0
    assert (live["set_new_percent"], live["observed_new_percent"]) == (100.0, 100.0)
    assert live["verdict"] in ("ok", "worse than legacy")

    done = _edgectl(edge, "rollback", "calc_price", "--file", str(edge.routing), "--admin", edge.admin)
    assert done.returncode == 0 and "edge reloaded" in done.stdout, done.stderr
    # The new side's requests now lie outside a 6 s window; the legacy ones below stay inside it for both
    # edgectl calls (each one a new Python process: on a loaded box ~1–2 s to start, so not a 1 s window).
    time.sleep(6.5)
    for _ in range(8):
        assert _post(url) == 502  # old shopping (nothing listens there) is the one called
    report = _status_json(edge, "6")
    live = report["live"]["routes"]["calc_price"]
    assert live["new"]["requests"] == 0 and live["new"]["req_per_s"] == 0
    assert live["legacy"]["requests"] == 8 and live["legacy"]["5xx_rate"] == 1.0
    assert (live["set_new_percent"], live["observed_new_percent"]) == (0.0, 0.0)
    assert live["verdict"] == "no traffic"
    assert 5.5 <= report["live"]["window_seconds"] <= 6.6
    assert report["since_start"]["calc_price"]["requests"] == {"new": 10, "legacy": 8}  # totals keep the history

    shown = _edgectl(edge, "status", "--admin", edge.admin, "--window", "6s")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("live, last"))
    legacy_row = next(line.split() for line in lines[start:] if line.startswith("calc_price "))
    assert legacy_row[1] == "legacy" and float(legacy_row[2]) > 0
    new_row = lines[lines.index(next(line for line in lines[start:] if line.startswith("calc_price "))) + 1].split()
    assert new_row[:2] == ["new", "0.00"]
    assert new_row[-2:] == ["no", "traffic"]
    assert "  payment_notified  legacy" in lines  # the owners from routing.yaml consumers:


def test_status_window_is_checked(edge: Edge) -> None:
    shown = _edgectl(edge, "status", "--admin", edge.admin, "--window", "soon")
    assert shown.returncode == 2 and "window" in shown.stderr
    status, body = _get(f"{edge.admin}/_edge/rates?window=0")
    assert status == 400
