"""`edgectl status --prometheus` on `make observe`: the same routes, shares and rates as the edge's admin API.

The stack runs with a copy of routing.yaml and a real Prometheus scraping the edge every 5 s
(prometheus/prometheus.yml). The checkout group is dialled to 50 % with edgectl, callers with many
user ids price carts and read the cart for longer than the window, then both sources are asked for
the last 30 s (six of Prometheus's scrapes) while the traffic goes on: Prometheus extrapolates its increase() to the window's
edges and the edge's ring answers up to one snapshot more, so rates agree within a tolerance.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.net import free_port
from tests.support.stack_process import ROOT, Stack, free_offset

EDGECTL = Path(sys.executable).parent / "edgectl"  # the venv's console script
PRICE_BODY = {"items": [{"sku_id": 1, "qty": 2}, {"sku_id": 3, "qty": 1}], "region": "DE", "currency": "EUR"}
WINDOW = 30  # six scrapes: enough for rate(), and half the test's time of a minute's window
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _call(url: str, user: int, body: dict[str, Any] | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"X-User-Id": str(user), "Content-Type": "application/json"})
    try:
        with _NO_PROXY.open(req, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _edgectl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGECTL), *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _status(*args: str) -> dict[str, Any]:
    shown = _edgectl("status", "--json", "--window", str(WINDOW), *args)
    assert shown.returncode == 0, shown.stderr
    found: dict[str, Any] = json.loads(shown.stdout)
    return found


def _close(a: float, b: float, relative: float, absolute: float) -> bool:
    return abs(a - b) <= max(absolute, relative * max(abs(a), abs(b)))


def test_prometheus_and_admin_sources_agree(tmp_path: Path) -> None:
    routing = tmp_path / "routing.yaml"
    shutil.copyfile(ROOT / "routing.yaml", routing)
    stack = Stack(free_offset((9090,)), tmp_path / "var", routing=routing, extra=("--observe",))
    prom = f"http://127.0.0.1:{stack.port(9090)}"
    admin = f"http://127.0.0.1:{stack.port(8081)}"
    edge = f"http://127.0.0.1:{stack.port(8080)}"
    stop = threading.Event()
    try:
        stack.start()
        dialled = _edgectl("set", "checkout", "50", "--file", str(routing), "--admin", admin)
        assert dialled.returncode == 0 and "edge reloaded" in dialled.stdout, dialled.stdout + dialled.stderr

        def traffic() -> None:
            user = 0
            while not stop.is_set():
                user += 1  # a new caller each time: half of them land on the new side
                _call(f"{edge}/shopping/cal_price/v4_4", user, PRICE_BODY)
                _call(f"{edge}/shopping/cart", user)
                stop.wait(0.2)

        feeder = threading.Thread(target=traffic, name="traffic", daemon=True)
        feeder.start()
        started = time.monotonic()
        # More than a window of traffic, so neither source sees the series being born inside it.
        time.sleep(WINDOW + 15)

        deadline = time.monotonic() + 90
        while True:
            via_prometheus = _status("--prometheus", prom)
            via_admin = _status("--admin", admin)
            price = via_prometheus["live"]["routes"].get("calc_price", {})
            if price.get("new", {}).get("req_per_s", 0) > 0 and price.get("legacy", {}).get("req_per_s", 0) > 0:
                break
            assert time.monotonic() < deadline, f"no calc_price traffic in Prometheus after {time.monotonic() - started:.0f} s"
            time.sleep(2)
        stop.set()
        feeder.join(timeout=15)

        p_routes, a_routes = via_prometheus["live"]["routes"], via_admin["live"]["routes"]
        assert set(p_routes) == set(a_routes), (sorted(p_routes), sorted(a_routes))
        assert {n: r["set_new_percent"] for n, r in p_routes.items()} == {n: r["set_new_percent"] for n, r in a_routes.items()}
        assert p_routes["calc_price"]["set_new_percent"] == 50.0  # the edgectl set above, read from edge_route_new_percent
        for name in ("calc_price", "passthrough"):
            p, a = p_routes[name], a_routes[name]
            for side in ("legacy", "new"):
                assert _close(p[side]["req_per_s"], a[side]["req_per_s"], 0.25, 0.2), (name, side, p[side], a[side])
                assert set(p[side]) == set(a[side])
            assert p["verdict"] in ("ok", "worse than legacy", "no traffic") and "verdict" in a
        shares = (p_routes["calc_price"]["observed_new_percent"], a_routes["calc_price"]["observed_new_percent"])
        assert shares[0] is not None and shares[1] is not None and abs(shares[0] - shares[1]) <= 10, shares
        assert 20 <= shares[1] <= 80, shares  # 50 % of many callers
        assert p_routes["passthrough"]["new"]["req_per_s"] == 0.0 and p_routes["passthrough"]["verdict"] == "no traffic"
        idle = [n for n, r in a_routes.items() if r["verdict"] == "no traffic" and r["legacy"]["req_per_s"] == 0]
        assert idle and all(p_routes[n]["verdict"] == "no traffic" for n in idle)
        assert via_prometheus["source"] == f"prometheus {prom}" and via_admin["source"] == "admin"

        table = _edgectl("status", "--prometheus", prom, "--window", f"{WINDOW}s")
        assert table.returncode == 0, table.stderr
        print(table.stdout)  # the sample in the report: pytest -s shows it
        assert any(line.startswith("calc_price") and "50/" in line for line in table.stdout.splitlines()), table.stdout
    finally:
        stop.set()
        code = stack.stop()
    assert code == 0, stack.banner + stack.rest

    gone = _edgectl("status", "--prometheus", prom)  # the stack and its Prometheus are stopped now
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1 and "unreachable" in gone.stderr, gone.stderr
    nothing = _edgectl("status", "--prometheus", f"http://127.0.0.1:{free_port()}", "--json")
    assert nothing.returncode == 1 and nothing.stdout == "" and "Traceback" not in nothing.stderr, nothing.stderr
