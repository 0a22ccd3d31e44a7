"""`make run`'s stack as real processes: curl through the edge reaches old shopping; Ctrl-C stops all.

Everything listens on 127.0.0.1 (the edge too, unless `--host` says otherwise), and old shopping's
fault knobs are on their own loopback port, not reachable through the edge.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.listeners import listening_addresses

ROOT = Path(__file__).resolve().parents[2]
# Below the ephemeral port range (32768+), so no client socket can be holding one of them.
OFFSET = 21000  # edge 29080, admin 29081, legacy 29090, its knobs 29099, broker 30092
PORTS = (8080, 8081, 8090, 8099, 9092)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


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


def test_stack_serves_through_the_edge_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "stack.py"), "--port-offset", str(OFFSET), "--var", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("ready:"):
                break
        assert any(l.startswith("ready:") for l in output), "".join(output)

        status, headers, body = get(f"http://127.0.0.1:{8080 + OFFSET}/shopping/cart", {"X-User-Id": "1"})
        assert status == 200 and headers["X-Edge-Route"] == "passthrough"
        assert [i["sku_id"] for i in body["data"]["items"]] == [1, 2, 3]  # the worked example's cart
        _, _, routes = get(f"http://127.0.0.1:{8081 + OFFSET}/_edge/routes")
        assert "calc_price" in routes["routes"]
        assert port_open(9092 + OFFSET)
        # A demo stack is for this machine: every listener, the edge's public port included, is on loopback.
        for port in PORTS:
            assert listening_addresses(port + OFFSET) == {"127.0.0.1"}, port
        assert any("only from this machine" in line for line in output), "".join(output)
        # Old shopping's knobs answer on their own port, and the edge's public port does not reach them.
        edge = f"http://127.0.0.1:{8080 + OFFSET}"
        assert [status_of(m, edge + "/_emulator/faults") for m in ("GET", "POST", "DELETE")] == [404, 404, 404]
        _, _, faults = get(f"http://127.0.0.1:{8099 + OFFSET}/_emulator/faults")
        assert faults == {"faults": []}
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(output) + rest
    assert "stopped." in rest
    for port in PORTS:
        assert not port_open(port + OFFSET), f"something still listens on {port + OFFSET}"


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
