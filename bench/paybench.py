#!/usr/bin/env python3
"""`make bench-pay`: adyen_pay through the edge, the Adyen webhook bridge, and what they leave in MariaDB.

Issue 11's targets: adyen_pay through the edge at 100 % new with the PSP emulator answering in 50 ms
(its latency knob): ≥ 300 payments/s on this machine, p99 ≤ 150 ms; the webhook bridge ≥ 1000 items/s
with HMAC checked; after the run, for every order at most one captured (or authorised) payment and
the money exact.

Everything runs on this machine, started and stopped here (each server in its own session, stopped
on exit, Ctrl-C or failure): the database `bench_pay` on the local MariaDB (recreated, demo seed),
the PSP emulator (`python -m emulators.psp`, webhooks recorded, not sent: the bridge is measured on
its own) and the edge (`shopping-edge`, one process, access log on) on the repo's routing.yaml dialled
by edgectl: the checkout group (the pay routes with it) and the bridge at 100 % new. Old shopping is not started: at 100 % nothing
routed here goes there.

1. **Orders** are inserted directly (pending_payment, owned by demo users 1..200 in turn, totals in
   USD / EUR / GBP / JPY / KWD with each currency's decimals), so the load measures paying only.
   Every request pays a different order, once: a request file per run, one order per line.
2. **adyen_pay** (`POST /shopping/orders/{id}/pay/any/adyen`, a card the emulator authorises), per
   scenario: warm-up, the sustained maximum (wrk unpaced, closed loop) and the latency at a fixed
   rate (wrk paced by bench/lua/paced.lua, open loop). Scenarios: `shared` (nothing pinned: wrk,
   edge, emulator and MariaDB share both CPUs) and `pinned` (the emulator `taskset -c 1`, the edge
   `taskset -c 0`; wrk and MariaDB, a server this bench did not start, are not pinned).
3. **The webhook bridge** (`POST /payment_callback/adyen`): bodies of 1, 10 and 50 items, each item an
   AUTHORISATION or CAPTURE of a payment made in step 2, signed with the HMAC key the edge checks;
   wrk unpaced. Every item's HMAC is verified, then one payments lookup per item and the outbox rows
   in one transaction (no relay runs: the rows stay in the outbox).
4. **Verify**: per order at most one authorised/captured payment (DB and the emulator's books), its
   amount and currency the order's exactly (Decimal; Adyen's minor units), one `authorized` history
   row per authorised order, per-currency sums of payments = sums of their orders' totals; the
   bridge wrote one outbox row per item answered 2xx (+ those wrk cut off in flight).
5. **Report**: the section SECTION of bench/RESULTS.md (replaced up to the next "## " heading), with the machine,
   `uptime` before and after, and the CPU of each process group per run.

Usage: `make bench-pay` (BENCH_ARGS="--scenarios shared --max-seconds 10" for a short run; `--profile`
adds py-spy of the edge under the paced load). wrk, CPU accounting and facts: bench/pricebench.py.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import random
import signal
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from contextlib import closing, suppress
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
os.chdir(ROOT)
os.environ.setdefault("BENCH_OUT", "bench/out/pay")
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))

import pricebench as pb  # noqa: E402  (wrk, Cpu, facts, py-spy summary)
import pymysql  # noqa: E402

from adapters.amounts import adyen_minor  # noqa: E402

OUT = pb.OUT
LUA = HERE / "lua" / "pay.lua"
BIN = Path(sys.executable).parent
eb = pb.eb

# The emulator's credentials are the edge's (both read the same variables); the HMAC key is the bench's own.
HMAC_KEY = "7E1F0C2B9A8D6E5F4A3B2C1D0E9F8A7B6C5D4E3F2A1B0C9D8E7F6A5B4C3D2E1F"
MERCHANT = "BenchMerchantECOM"
CURRENCIES = {"USD": 2, "EUR": 2, "GBP": 2, "JPY": 0, "KWD": 3}
USERS = 200
CARD = {"type": "scheme", "number": "4111111111111111", "expiryMonth": "03", "expiryYear": "2030", "cvc": "737",
        "holderName": "Bench Shopper"}
PAY_BODY = json.dumps({"paymentMethod": CARD, "returnUrl": "https://shop.example/checkout/return",
                       "browserInfo": {"userAgent": "bench", "acceptHeader": "*/*"}}, separators=(",", ":"))
PAY_ROUTES = ("paypal_pay", "paypal_finished", "adyen_pay", "payment_callback")
# `edgectl set` targets that put PAY_ROUTES at 100 % new: the pay routes' group, and the webhook bridge.
DIALS = (("checkout", "100"), ("payment_callback", "100"))
# name → (CPUs of the emulator, CPUs of the edge, edge processes); None: not pinned.
SCENARIOS: dict[str, tuple[str | None, str | None, int]] = {
    "shared": (None, None, 1), "pinned": ("1", "0", 1), "shared-2w": (None, None, 2)}
TAG = {"shared": "s", "pinned": "p", "shared-2w": "w"}  # order id prefixes: PB<tag><run>…
TARGETS = {"payments_per_s": 300.0, "p99_ms": 150.0, "items_per_s": 1000.0}
SECTION = "## Payments: adyen_pay through the edge and the webhook bridge (make bench-pay)"

say = pb.say


def write_pay_routing(path: Path) -> None:
    """The repo's routing.yaml with DIALS applied by edgectl, as ops would dial them: a route group moves
    whole (the checkout group's routes price and charge one caller on one side), which a bench setting
    the pay routes alone broke when groups came (the edge refused the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "routing.yaml", path)
    for target, percent in DIALS:
        done = subprocess.run(
            [str(BIN / "edgectl"), "set", target, percent, "--file", str(path), "--no-reload", "--who", "bench-pay"],
            capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise SystemExit(f"bench: edgectl set {target} {percent} on {path}: {done.stderr.strip()}")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


# ---------------------------------------------------------------- servers


class Servers:
    """The processes this bench started (each in its own session, so the whole tree stops)."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str], pin: str | None = None) -> int:
        if pin is not None:
            argv = ["taskset", "-c", pin, *argv]
        log = (OUT / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs[name] = proc
        return proc.pid

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        for sig, patience in ((signal.SIGTERM, 20.0), (signal.SIGKILL, None)):  # the whole group: gunicorn's workers too
            os.killpg(proc.pid, sig)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=patience)
                return

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None


def wait_http(url: str, servers: Servers, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            if not servers.alive(name):
                raise SystemExit(f"bench: {name} exited during start-up; see {OUT / (name + '.log')}") from None
            time.sleep(0.1)
    raise SystemExit(f"bench: {name} not answering at {url} after {timeout:.0f} s")


def post(url: str, body: str, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str], float]:
    req = urllib.request.Request(url, data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            raw, status, hdrs = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    ms = 1000 * (time.monotonic() - t0)
    try:
        doc: Any = json.loads(raw)
    except ValueError:
        doc = raw.decode(errors="replace")
    return status, doc, hdrs, ms


# ---------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.db_name = args.db
        self.db_url = f"mysql+aiomysql://root@127.0.0.1:3306/{self.db_name}"
        self.servers = Servers()
        self.rng = random.Random(11)
        self.state: dict[str, Any] = {"runs": {}, "scenarios": {}, "hooks": {}, "order": []}
        self.next_order = 0
        self.base = args.port_base
        self.routing = OUT / "routing-pay.yaml"
        self.db_pid = self._mariadb_pid()

    # --- database ---------------------------------------------------------------------------

    def sql(self, statement: str, args: Any = None, *, many: bool = False, database: bool = True) -> list[tuple]:
        """One statement on a connection of its own (`database=False`: none selected, for DROP / CREATE)."""
        where = self.db_name if database else None
        with closing(pymysql.connect(host="127.0.0.1", user="root", database=where, autocommit=True)) as conn:
            with conn.cursor() as cur:
                (cur.executemany if many else cur.execute)(statement, args)
                return list(cur.fetchall())

    @staticmethod
    def _mariadb_pid() -> int | None:
        out = subprocess.run(["pidof", "-s", "mariadbd"], capture_output=True, text=True, check=False).stdout
        return int(out.split()[0]) if out.strip() else None

    def prepare_db(self) -> None:
        if not self.db_name.replace("_", "").isalnum() or self.db_name == "test":
            raise SystemExit(f"bench: --db {self.db_name!r}: a plain database name of the bench's own")
        say(f"recreating database {self.db_name} and seeding the demo data")
        self.sql(f"DROP DATABASE IF EXISTS `{self.db_name}`", database=False)
        self.sql(f"CREATE DATABASE `{self.db_name}` CHARACTER SET utf8mb4", database=False)
        subprocess.run([str(BIN / "shopping-db"), "--db-url", self.db_url, "seed", "--demo"], check=True,
                       stdout=subprocess.DEVNULL)
        have = dict(self.sql("SELECT currency, exponent FROM forex_rates"))
        for cur, places in CURRENCIES.items():
            if have.get(cur) != places:
                raise SystemExit(f"bench: the demo seed's {cur} has exponent {have.get(cur)}, the bench expects {places}")

    def insert_orders(self, tag: str, n: int) -> list[tuple[str, int]]:
        """`n` payable orders (id prefix `tag`) owned by users 1..USERS in turn: [(order id, user id)]."""
        now = datetime.now(UTC).replace(tzinfo=None)
        rows, out = [], []
        currencies = list(CURRENCIES)
        for i in range(n):
            oid = f"PB{tag}{self.next_order + i:08d}"
            user = (self.next_order + i) % USERS + 1
            cur = currencies[i % len(currencies)]
            places = CURRENCIES[cur]
            total = Decimal(self.rng.randint(100, 5_000_000)).scaleb(-places) if places else Decimal(self.rng.randint(100, 90_000))
            rows.append((oid, user, "pending_payment", "US", cur, Decimal("1"), total, total, total,
                         now + timedelta(hours=6), now, now))
            out.append((oid, user))
        self.next_order += n
        for start in range(0, n, 5000):
            self.sql("INSERT INTO orders (id, user_id, status, region, currency, fx_rate, subtotal, total, base_total,"
                     " expires_at, created_at, updated_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                     rows[start:start + 5000], many=True)
        return out

    # --- servers ----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        psp = f"http://127.0.0.1:{self.base + 1}"
        return {**os.environ, "SHOP_DB_URL": self.db_url, "EDGE_LEGACY_URL": f"http://127.0.0.1:{self.base + 9}",
                "PAYPAL_BASE_URL": psp, "ADYEN_BASE_URL": psp, "ADYEN_HMAC_KEY": HMAC_KEY,
                "ADYEN_MERCHANT_ACCOUNT": MERCHANT, "PYTHONDONTWRITEBYTECODE": "1"}

    def write_routing(self) -> None:
        write_pay_routing(self.routing)

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.base}"

    @property
    def psp_admin(self) -> str:
        return f"http://127.0.0.1:{self.base + 2}"

    def start_psp(self, pin: str | None) -> int:
        argv = [sys.executable, "-m", "emulators.psp", "--host", "127.0.0.1", "--port", str(self.base + 1),
                "--admin-port", str(self.base + 2), "--no-webhooks"]
        pid = self.servers.start("psp", argv, self.env(), pin)
        wait_http(self.psp_admin + "/_psp/health", self.servers, "psp")
        # The latency knob: every Adyen /payments answer 50 ms late (added before the emulator acts).
        status, doc, _, _ = post(self.psp_admin + "/_psp/faults",
                                 json.dumps({"path": "/v71/payments", "delay_ms": self.a.latency_ms}))
        if status != 200:
            raise SystemExit(f"bench: the emulator refused the latency knob: {status} {doc}")
        return pid

    def start_edge(self, pin: str | None, workers: int = 1) -> int:
        argv = [str(BIN / "shopping-edge"), "--routing", str(self.routing), "--host", "127.0.0.1",
                "--port", str(self.base), "--admin-port", str(self.base + 3), "--log-level", "info"]
        if workers > 1:
            argv += ["--workers", str(workers)]
        pid = self.servers.start("edge", argv, self.env(), pin)
        wait_http(f"http://127.0.0.1:{self.base + 3}/readyz", self.servers, "edge")
        return pid

    # --- adyen_pay --------------------------------------------------------------------------

    def pay_file(self, name: str, orders: list[tuple[str, int]]) -> Path:
        path = OUT / f"requests-{name}.tsv"
        with path.open("w") as f:
            for oid, user in orders:
                f.write(f"/shopping/orders/{oid}/pay/any/adyen\t{user}\t{PAY_BODY}\n")
        return path

    def check_pay(self) -> dict[str, Any]:
        (oid, user), = self.insert_orders("c", 1)
        status, doc, hdrs, ms = post(self.edge_url + f"/shopping/orders/{oid}/pay/any/adyen", PAY_BODY,
                                     {"X-User-Id": str(user), "X-Platform": "app"})
        route, backend = hdrs.get("X-Edge-Route"), hdrs.get("X-Edge-Backend")
        if status != 200 or route != "adyen_pay" or backend != "new" or doc["data"]["resultCode"] != "Authorised":
            raise SystemExit(f"bench: adyen_pay check: HTTP {status} route={route} backend={backend}: {doc}")
        again = post(self.edge_url + f"/shopping/orders/{oid}/pay/any/adyen", PAY_BODY,
                     {"X-User-Id": str(user), "X-Platform": "app"})
        if again[0] != 409:
            raise SystemExit(f"bench: paying the authorised order again gave {again[0]} {again[1]}, not 409")
        if ms < self.a.latency_ms:
            raise SystemExit(f"bench: adyen_pay took {ms:.1f} ms, less than the emulator's {self.a.latency_ms} ms knob")
        return {"order": oid, "ms": round(ms, 1)}

    def pay_run(self, scenario: str, kind: str, roots: dict[str, int | None], *, conns: int, seconds: int,
                rate: int) -> dict[str, Any]:
        ceiling = rate * 1.25 if rate else min(conns / (self.a.latency_ms / 1000), self.a.max_rate_guess)
        n = int(ceiling * seconds) + conns + 50
        tag = f"{TAG[scenario]}{kind[0]}{kind.rpartition('-')[2] if '-' in kind else ''}x"  # x: no run's prefix of another
        orders = self.insert_orders(tag, n)
        reqs = self.pay_file(f"{scenario}-{kind}", orders)
        say(f"{scenario}/{kind}: {n:,} payable orders; wrk -t1 -c{conns} -d{seconds}s"
            f"{f' paced at {rate}/s' if rate else ' unpaced'}")
        with pb.Cpu(roots) as cw:
            r = pb.wrk(self.edge_url, conns=conns, seconds=seconds, rate=rate, log_name=f"wrk-{scenario}-{kind}",
                       host=pb._host_of(self.edge_url), lua=LUA, env_extra={"BENCH_REQUESTS": str(reqs.resolve())})
        time.sleep(1.5)  # requests wrk cut off may still commit
        r["cpu"] = cw.as_dict()
        r["orders_offered"] = n
        r["ran_out"] = r["requests"] > n
        r["ok"] = r["requests"] - r["non2xx"]
        r["payments_per_s"] = round(r["ok"] / r["duration_s"], 1)
        like = f"PB{tag}%"
        r["authorized_rows"] = int(self.sql(
            "SELECT COUNT(*) FROM payments WHERE order_id LIKE %s AND status = 'authorized'", (like,))[0][0])
        r["orders_authorized"] = int(self.sql(
            "SELECT COUNT(*) FROM orders WHERE id LIKE %s AND status = 'authorized'", (like,))[0][0])
        for group in ("edge", "psp", "mariadb"):
            if r["requests"] and f"{group}_cpu_s" in r["cpu"]:
                r[f"{group}_us_per_payment"] = round(1e6 * r["cpu"][f"{group}_cpu_s"] / r["requests"])
        lat = r["latency_ms"]
        say(f"{scenario}/{kind}: {r['payments_per_s']:.0f} payments/s, p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
            f"non-2xx {r['non2xx']}, socket errors {r['socket_errors']}, authorised {r['authorized_rows']:,}; "
            f"edge {r['cpu'].get('edge_cores')} cores, emulator {r['cpu'].get('psp_cores')}, "
            f"MariaDB {r['cpu'].get('mariadb_cores')}, wrk {r['cpu']['loadgen_cores']}, others {r['cpu']['foreign_cores']}")
        return r

    def profile(self, scenario: str, edge_pid: int) -> None:
        """py-spy of the edge for a while under the paced rate (fresh orders), summarised as bench-price does."""
        seconds = self.a.profile_seconds
        orders = self.insert_orders(f"{TAG[scenario]}z", int(self.a.rate * 1.25 * (seconds + 6)))
        reqs = self.pay_file(f"{scenario}-profile", orders)
        env = {**os.environ, "BENCH_REQUESTS": str(reqs.resolve()), "BENCH_HOST": pb._host_of(self.edge_url),
               "BENCH_RATE": str(self.a.rate), "BENCH_THREADS": "1"}
        gen = subprocess.Popen(["wrk", "-t1", f"-c{self.a.paced_conns}", f"-d{seconds + 4}s", "--timeout", "5s",
                                "-s", str(LUA), self.edge_url], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(2)
            raw = OUT / f"pyspy-{scenario}.txt"
            group = eb.tree(edge_pid)
            rc, log = pb._spy(group[1:] if len(group) > 1 else group, raw, seconds)  # gunicorn: its workers
        finally:
            gen.communicate(timeout=seconds + 60)
        if rc != 0 or not raw.read_text().strip():
            say(f"{scenario}: py-spy failed ({rc}): {log.strip()[-300:]}")
            return
        s = pb.summarise_raw(raw.read_text())
        self.state.setdefault("profiles", {})[scenario] = s
        say(f"{scenario}: py-spy {s['samples']} samples; top own: " + ", ".join(f"{k} {v}%" for k, v in s["own"][:6]))

    def scenario(self, name: str) -> None:
        psp_cpus, edge_cpus, workers = SCENARIOS[name]
        pinned = psp_cpus is not None
        psp_pid = self.start_psp(psp_cpus)
        edge_pid = self.start_edge(edge_cpus, workers)
        roots = {"edge": edge_pid, "psp": psp_pid, "mariadb": self.db_pid}
        check = self.check_pay()
        say(f"{name}: one adyen_pay through the edge: Authorised in {check['ms']} ms, paying it again 409")
        self.pay_run(name, "warmup", roots, conns=self.a.conns, seconds=self.a.warmup_seconds, rate=0)
        runs = {
            "max": self.pay_run(name, "max", roots, conns=self.a.conns, seconds=self.a.max_seconds, rate=0),
            "paced": self.pay_run(name, "paced", roots, conns=self.a.paced_conns, seconds=self.a.paced_seconds,
                                  rate=self.a.rate),
        }
        for rate in self.a.extra_rates:  # below the target rate: the latency when the box is not full
            runs[f"paced-{rate}"] = self.pay_run(name, f"paced-{rate}", roots, conns=self.a.paced_conns,
                                                 seconds=self.a.extra_seconds, rate=rate)
        if self.a.profile:
            self.profile(name, edge_pid)
        psp_books = self.psp_books()
        self.servers.stop("edge")
        self.servers.stop("psp")
        self.state["scenarios"][name] = {"pinned": pinned, "workers": workers, "check": check, "runs": runs,
                                         "psp": psp_books}
        self.state["order"].append(name)

    def psp_books(self) -> dict[str, Any]:
        """The emulator's Adyen payments, per order: how many Authorised and their amounts (for verify)."""
        time.sleep(3)  # requests wrk cut off at the end are still being paid (pay routes run to their end)
        with urllib.request.urlopen(self.psp_admin + "/_psp/state", timeout=60) as r:
            state = json.loads(r.read())
        per: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in state["adyen"]["payments"].values():
            per[p["merchantReference"]].append({"status": p["status"], "amount": p["amount"]})
        return {"orders": per}

    # --- the webhook bridge -----------------------------------------------------------------

    def notification_items(self) -> list[dict[str, Any]]:
        """An AUTHORISATION and a CAPTURE for every payment authorised above, signed as Adyen signs."""
        key = bytes.fromhex(HMAC_KEY)
        rows = self.sql("SELECT order_id, psp_reference, amount, currency FROM payments "
                        "WHERE status = 'authorized' AND psp_reference IS NOT NULL ORDER BY id")
        items = []
        for n, (oid, psp, amount, currency) in enumerate(rows):
            value = adyen_minor(Decimal(amount), currency)
            for event, ref, original in (("AUTHORISATION", psp, None), ("CAPTURE", f"C{n:015d}", psp)):
                item: dict[str, Any] = {
                    "pspReference": ref, "merchantAccountCode": MERCHANT, "merchantReference": oid,
                    "amount": {"currency": currency, "value": value}, "eventCode": event, "success": "true",
                    "eventDate": "2026-12-02T12:00:00+01:00", "paymentMethod": "visa",
                }
                if original is not None:
                    item["originalReference"] = original
                fields = [item.get("pspReference"), item.get("originalReference"), MERCHANT, oid, value, currency,
                          event, "true"]
                text = ":".join("" if f is None else str(f) for f in fields)
                sig = base64.b64encode(hmac.new(key, text.encode(), hashlib.sha256).digest()).decode()
                item["additionalData"] = {"hmacSignature": sig}
                items.append(item)
        return items

    def hook_run(self, items: list[dict[str, Any]], batch: int, roots: dict[str, int | None],
                 workers: int = 1) -> dict[str, Any]:
        path = OUT / f"requests-hook-{batch}.tsv"
        bodies = 0
        with path.open("w") as f:
            for start in range(0, len(items) - batch + 1, batch):
                body = {"live": "false", "notificationItems": [{"NotificationRequestItem": it}
                                                               for it in items[start:start + batch]]}
                f.write(f"/payment_callback/adyen\t-\t{json.dumps(body, separators=(',', ':'))}\n")
                bodies += 1
        outbox0 = int(self.sql("SELECT COUNT(*) FROM outbox")[0][0])
        say(f"bridge, {batch} item(s) per body, {workers} edge worker(s): {bodies:,} signed bodies; "
            f"wrk -t1 -c{self.a.hook_conns} -d{self.a.hook_seconds}s unpaced")
        with pb.Cpu(roots) as cw:
            r = pb.wrk(self.edge_url, conns=self.a.hook_conns, seconds=self.a.hook_seconds, rate=0,
                       log_name=f"wrk-hook-{batch}-{workers}w", host=pb._host_of(self.edge_url), lua=LUA,
                       env_extra={"BENCH_REQUESTS": str(path.resolve())})
        time.sleep(1.5)
        r["cpu"] = cw.as_dict()
        r["batch"], r["workers"], r["bodies_offered"] = batch, workers, bodies
        r["repeated"] = r["requests"] > bodies  # items sent a second time (still authentic: stored again)
        r["ok"] = r["requests"] - r["non2xx"]
        r["items_per_s"] = round(r["ok"] * batch / r["duration_s"], 1)
        r["outbox_rows"] = int(self.sql("SELECT COUNT(*) FROM outbox")[0][0]) - outbox0
        if r["requests"]:
            r["edge_us_per_item"] = round(1e6 * r["cpu"]["edge_cpu_s"] / (r["requests"] * batch))
            if "mariadb_cpu_s" in r["cpu"]:
                r["mariadb_us_per_item"] = round(1e6 * r["cpu"]["mariadb_cpu_s"] / (r["requests"] * batch))
        lat = r["latency_ms"]
        say(f"bridge/{batch}/{workers}w: {r['items_per_s']:,.0f} items/s ({r['ok'] / r['duration_s']:.0f} bodies/s), p50 "
            f"{lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, non-2xx {r['non2xx']}, outbox +{r['outbox_rows']:,}; "
            f"edge {r['cpu'].get('edge_cores')} cores, MariaDB {r['cpu'].get('mariadb_cores')}")
        return r

    def bridge(self) -> None:
        items = self.notification_items()
        if not items:
            raise SystemExit("bench: no authorised payments to make webhooks of")
        self.rng.shuffle(items)  # so a body's items are about different orders, as Adyen's batches are
        for workers in self.a.hook_workers:
            self.bridge_on(items, workers)
        self.state["hook_items_available"] = len(items)

    def bridge_on(self, items: list[dict[str, Any]], workers: int) -> None:
        # One body checked by hand: 200 [accepted] from the new side; a tampered one 401 and nothing stored.
        edge_pid = self.start_edge(None, workers)
        roots = {"edge": edge_pid, "mariadb": self.db_pid}
        one = json.dumps({"live": "false", "notificationItems": [{"NotificationRequestItem": items[0]}]})
        status, doc, hdrs, _ = post(self.edge_url + "/payment_callback/adyen", one)
        if status != 200 or doc != "[accepted]" or hdrs.get("X-Edge-Backend") != "new":
            raise SystemExit(f"bench: the bridge answered {status} {doc!r} via {hdrs.get('X-Edge-Backend')}")
        before = int(self.sql("SELECT COUNT(*) FROM outbox")[0][0])
        bad = json.loads(one)
        bad["notificationItems"][0]["NotificationRequestItem"]["amount"]["value"] += 1
        status, doc, _, _ = post(self.edge_url + "/payment_callback/adyen", json.dumps(bad))
        if status != 401 or int(self.sql("SELECT COUNT(*) FROM outbox")[0][0]) != before:
            raise SystemExit(f"bench: a tampered notification gave {status} {doc} (want 401, nothing stored)")
        for batch in self.a.batches:
            self.state["hooks"][str(batch) if workers == 1 else f"{batch}/{workers}w"] = \
                self.hook_run(items, batch, roots, workers)
        self.servers.stop("edge")

    # --- verify -----------------------------------------------------------------------------

    def verify(self) -> dict[str, Any]:
        problems: list[str] = []
        (multi,) = self.sql("SELECT COUNT(*) FROM (SELECT order_id FROM payments WHERE status IN "
                            "('authorized','captured') GROUP BY order_id HAVING COUNT(*) > 1) x")[0]
        if multi:
            problems.append(f"{multi} orders with more than one authorised/captured payment")
        (wrong,) = self.sql("SELECT COUNT(*) FROM payments p JOIN orders o ON o.id = p.order_id WHERE p.status IN "
                            "('authorized','captured') AND (p.amount <> o.total OR p.currency <> o.currency)")[0]
        if wrong:
            problems.append(f"{wrong} payments whose amount or currency is not their order's")
        pay_sums: Counter[str] = Counter()
        order_sums: Counter[str] = Counter()
        for cur, amount, total in self.sql(
                "SELECT p.currency, p.amount, o.total FROM payments p JOIN orders o ON o.id = p.order_id "
                "WHERE p.status IN ('authorized','captured')"):
            pay_sums[cur] += Decimal(amount)
            order_sums[cur] += Decimal(total)
        if pay_sums != order_sums:
            problems.append(f"sums differ: payments {dict(pay_sums)} vs orders {dict(order_sums)}")
        statuses = dict(self.sql("SELECT status, COUNT(*) FROM orders WHERE id LIKE 'PB%%' GROUP BY status"))
        pay_statuses = dict(self.sql("SELECT status, COUNT(*) FROM payments GROUP BY status"))
        (authorized_history,) = self.sql("SELECT COUNT(*) FROM order_status_history WHERE to_status = 'authorized'")[0]
        (twice,) = self.sql("SELECT COUNT(*) FROM (SELECT order_id FROM order_status_history WHERE "
                            "to_status = 'authorized' GROUP BY order_id HAVING COUNT(*) > 1) x")[0]
        if twice:
            problems.append(f"{twice} orders authorised twice in their history")
        if authorized_history != statuses.get("authorized", 0):
            problems.append(f"{statuses.get('authorized', 0)} authorised orders but {authorized_history} history rows")
        if pay_statuses.get("authorized", 0) != statuses.get("authorized", 0):
            problems.append(f"{pay_statuses.get('authorized', 0)} authorised payments for "
                            f"{statuses.get('authorized', 0)} authorised orders")
        # The emulator's books: each order authorised at most once there too, for its total in minor units.
        totals = {oid: (Decimal(total), cur) for oid, total, cur in
                  self.sql("SELECT id, total, currency FROM orders WHERE id LIKE 'PB%%'")}
        psp_authorised = 0
        for name, sc in self.state["scenarios"].items():
            for oid, pays in sc.pop("psp")["orders"].items():
                ok = [p for p in pays if p["status"] == "Authorised"]
                psp_authorised += len(ok)
                if len(ok) > 1:
                    problems.append(f"{name}: order {oid} authorised {len(ok)} times at the PSP")
                total, cur = totals[oid]
                for p in ok:
                    if p["amount"] != {"currency": cur, "value": adyen_minor(total, cur)}:
                        problems.append(f"{name}: order {oid}: the PSP holds {p['amount']} for {total} {cur}")
        if psp_authorised != pay_statuses.get("authorized", 0):
            problems.append(f"the PSP authorised {psp_authorised} payments, the DB holds "
                            f"{pay_statuses.get('authorized', 0)} authorised")
        (outbox,) = self.sql("SELECT COUNT(*) FROM outbox WHERE topic LIKE 'payment_notified%%'")[0]
        hooks_ok = sum(h["ok"] * h["batch"] for h in self.state["hooks"].values())
        cut = sum(self.a.hook_conns * h["batch"] for h in self.state["hooks"].values())
        by_hand = len(self.a.hook_workers)  # one body checked by hand per edge the bridge ran on
        if self.state["hooks"] and not hooks_ok + by_hand <= outbox <= hooks_ok + by_hand + cut:
            problems.append(f"{hooks_ok:,} items answered [accepted] but {outbox:,} payment_notified outbox rows")
        v = {"orders": statuses, "payments": pay_statuses, "authorized_history": authorized_history,
             "psp_authorised": psp_authorised, "sums": {k: str(v) for k, v in sorted(pay_sums.items())},
             "outbox_payment_notified": outbox, "hook_items_accepted": hooks_ok, "problems": problems}
        self.state["verify"] = v
        for p in problems[:20]:
            say("verify: " + p)
        say(f"verify: {'ok' if not problems else f'{len(problems)} problems'}: {statuses}, payments {pay_statuses}")
        return v


# ---------------------------------------------------------------- report


def _lat(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    return f"{lat['p50']:.1f} / {lat['p99']:.1f} / {lat['p999']:.1f}"


def _cores(c: dict[str, Any], group: str) -> str:
    v = c.get(f"{group}_cores")
    return "—" if v is None else f"{v:.2f}"


def report(state: dict[str, Any], path: Path) -> str:
    f = state["facts"]
    label = {"shared": "shared (nothing pinned)", "pinned": "pinned (emulator core 1, edge core 0)",
             "shared-2w": "shared, edge with 2 workers"}
    rows = ["| scenario | run | payments/s | p50 / p99 / p99.9 ms | non-2xx | edge cores (µs/payment) "
            "| emulator cores | MariaDB cores (µs/payment) | wrk | other load | box busy |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    verdicts = ["| target | wanted | measured | verdict |", "|---|---:|---:|---|"]
    for name in state["order"]:
        sc = state["scenarios"][name]
        for kind, r in sc["runs"].items():
            c = r["cpu"]
            run = (f"max (wrk -c{r['conns']}, {r['seconds']} s)" if kind == "max"
                   else f"paced {r['offered_rate']}/s (wrk -c{r['conns']}, {r['seconds']} s)")
            rows.append(f"| {label.get(name, name)} | {run} | {r['payments_per_s']:,.0f} | {_lat(r)} "
                        f"| {r['non2xx']}{' (ran out)' if r['ran_out'] else ''} "
                        f"| {_cores(c, 'edge')} ({r.get('edge_us_per_payment', '—')}) | {_cores(c, 'psp')} "
                        f"| {_cores(c, 'mariadb')} ({r.get('mariadb_us_per_payment', '—')}) | {c['loadgen_cores']:.2f} "
                        f"| {pb._other(c)} | {c['machine_busy_pct']:.0f} % |")
        w, p = sc["runs"]["max"], sc["runs"]["paced"]
        verdicts.append(f"| {label.get(name, name)}: sustained payments/s | ≥ 300, 0 non-2xx "
                        f"| {w['payments_per_s']:,.0f}/s, {w['non2xx']} non-2xx "
                        f"| {pb._verdict(w['payments_per_s'], TARGETS['payments_per_s'], True, '/s', 0)}"
                        f"{'' if w['non2xx'] == 0 else ' — **non-2xx answers**'}{pb._noise_note(w['cpu'])} |")
        short = p["payments_per_s"] < 0.97 * p["offered_rate"]
        verdicts.append(f"| {label.get(name, name)}: p99 at {p['offered_rate']}/s | ≤ 150 ms "
                        f"| {p['latency_ms']['p99']:.1f} ms at {p['payments_per_s']:,.0f}/s "
                        f"| {pb._verdict(p['latency_ms']['p99'], TARGETS['p99_ms'], False, ' ms', 1)}"
                        f"{' — **rate not reached**' if short else ''}"
                        f"{'' if p['non2xx'] == 0 else ' — **non-2xx answers**'}{pb._noise_note(p['cpu'])} |")
    hooks = ["| items per body | edge workers | items/s | bodies/s | p50 / p99 / p99.9 ms | non-2xx "
             "| edge cores (µs/item) | MariaDB cores (µs/item) | outbox rows written | other load |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in state["hooks"].values():
        c = r["cpu"]
        batch, workers = r["batch"], r.get("workers", 1)
        hooks.append(f"| {batch} | {workers} | {r['items_per_s']:,.0f} | {r['ok'] / r['duration_s']:,.0f} | {_lat(r)} | {r['non2xx']} "
                     f"| {_cores(c, 'edge')} ({r.get('edge_us_per_item', '—')}) "
                     f"| {_cores(c, 'mariadb')} ({r.get('mariadb_us_per_item', '—')}) | {r['outbox_rows']:,} "
                     f"| {pb._other(c)} |")
        verdicts.append(f"| bridge, {batch} item(s) per body, {workers} edge worker{'s' if workers > 1 else ''}: "
                        f"items/s, HMAC checked | ≥ 1000 "
                        f"| {r['items_per_s']:,.0f} items/s, {r['non2xx']} non-2xx "
                        f"| {pb._verdict(r['items_per_s'], TARGETS['items_per_s'], True, ' items/s', 0)}"
                        f"{pb._noise_note(c)} |")
    v = state.get("verify", {})
    verdicts.append(f"| every order: at most one authorised/captured payment, money exact | none otherwise "
                    f"| orders {v.get('orders')}, payments {v.get('payments')}, emulator Authorised "
                    f"{v.get('psp_authorised')}, sums {v.get('sums')} "
                    f"| {'**met**' if not v.get('problems') else '**missed**: ' + '; '.join(v['problems'][:3])} |")
    prof = []
    for name, s in state.get("profiles", {}).items():
        prof.append(f"- py-spy of the edge, {label.get(name, name)}, paced: {s['samples']:,} samples. Own: "
                    + "; ".join(f"`{k}` {v} %" for k, v in s["own"][:8]) + ".")
        prof.append("  Inclusive, our code: " + "; ".join(f"`{k}` {v} %" for k, v in s["inclusive_ours"][:10]) + ".")
        prof.append("  Inclusive, libraries: " + "; ".join(f"`{k}` {v} %" for k, v in s["inclusive_libs"][:8]) + ".")
    a = state["args"]
    lines = [
        SECTION,
        "",
        f"Last run: **{f['date']}** on this machine: {f['nproc']} CPUs ({f['cpu_model']}), {f['mem']} RAM, kernel "
        f"{f['kernel']}. Code: commit {f['commit']}. Database: MariaDB {f.get('mariadb')} on 127.0.0.1:3306 (the box's "
        f"shared server). Tools: {f.get('tools')}.",
        "",
        f"- `uptime` before: `{state['uptime_before']}`",
        f"- `uptime` after: `{state['uptime_after']}`",
        "",
        "### Set-up",
        "",
        f"- **Orders**: inserted directly into `{a['db']}` (demo seed first) as `pending_payment`, owned by demo users "
        f"1..{USERS} in turn, totals in USD/EUR/GBP/JPY/KWD with each currency's decimals; a fresh set per run, each "
        "order paid by one request (bench/lua/pay.lua takes the lines of a request file in order).",
        f"- **PSP emulator**: `python -m emulators.psp --no-webhooks` (webhooks signed and recorded, not sent), latency "
        f"knob `POST /_psp/faults {{\"path\": \"/v71/payments\", \"delay_ms\": {a['latency_ms']}}}`: every Adyen "
        "/payments answer waits that long before the emulator acts.",
        "- **edge**: `shopping-edge` (one process, uvloop, access log on; `--workers 2` in shared-2w) on "
        "the repo's routing.yaml dialled with `edgectl set checkout 100` (its group: the pay routes with the rest of checkout) and `edgectl set payment_callback 100`; "
        "PSP clients on the emulator (the person-waiting retry policy). No old shopping, no consumers, no relay.",
        "- **adyen_pay**: `POST /shopping/orders/{id}/pay/any/adyen` with a card the emulator authorises, headers "
        "`X-User-Id` (the owner) and `X-Platform: app`. Per request: the attempt's payments row under the order's row "
        "lock (one transaction), the Adyen call with its idempotency key, the answer applied with guarded updates "
        "(payment authorized, order authorized, history; a second transaction). Before the load one order is paid by "
        "hand (200 Authorised, no faster than the knob) and paid again (409).",
        f"- **Load**: warm-up `wrk -t1 -c{a['conns']} -d{a['warmup_seconds']}s`, sustained maximum `wrk -t1 -c{a['conns']} "
        f"-d{a['max_seconds']}s` (unpaced, closed loop), latency at {a['rate']}/s `wrk -t1 -c{a['paced_conns']} "
        f"-d{a['paced_seconds']}s` paced by bench/lua/paced.lua (open loop), then (diagnostic) paced at "
        f"{' and '.join(f'{r}/s' for r in a.get('extra_rates', []))} for {a.get('extra_seconds')} s each: the latency "
        "below the target rate. Latency is wrk's histogram.",
        "- **Scenarios**: `shared`: nothing pinned, wrk, edge, emulator and MariaDB share both CPUs under the scheduler; "
        "`pinned`: the emulator under `taskset -c 1`, the edge under `taskset -c 0` (wrk and MariaDB, which this bench "
        "did not start, not pinned, so they run on either core); `shared-2w`: as shared, the edge with `--workers 2`.",
        f"- **Webhook bridge**: `POST /payment_callback/adyen`, bodies of {', '.join(map(str, a['batches']))} items, each "
        "item an AUTHORISATION (the payment's pspReference) or CAPTURE (originalReference = it) of a payment authorised "
        "above, in random order, HMAC-signed with the edge's key; `wrk -t1 "
        f"-c{a['hook_conns']} -d{a['hook_seconds']}s` unpaced, against an edge of "
        f"{' and then '.join(str(w) for w in a.get('hook_workers', [1]))} worker process(es) (nothing pinned). A tampered item (amount + 1) is checked first: 401, "
        "nothing stored. Per body: every item's HMAC, then one payments lookup per item and its outbox row, one "
        "transaction; the rows stay in the outbox (no relay).",
        "- **CPU** per process group from /proc during each run / wall time; \"other load\" = the rest of the box "
        "(other sessions' work on this shared machine).",
        "",
        "### Results",
        "",
        *rows,
        "",
        *hooks,
        "",
        *verdicts,
        "",
        *prof,
    ]
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    block = "\n".join(lines) + "\n"
    path.write_text(pb._replace_section(old, SECTION, block), encoding="utf-8")  # up to the next "## " heading
    return block


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default=os.environ.get("BENCH_DB", "bench_pay"))
    p.add_argument("--port-base", type=int, default=int(os.environ.get("BENCH_PORT_BASE", "29330")))
    p.add_argument("--scenarios", default="shared,pinned,shared-2w", help=f"of {', '.join(SCENARIOS)}")
    p.add_argument("--latency-ms", type=int, default=50)
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--paced-conns", type=int, default=64)
    p.add_argument("--rate", type=int, default=300)
    p.add_argument("--warmup-seconds", type=int, default=3)
    p.add_argument("--max-seconds", type=int, default=20)
    p.add_argument("--paced-seconds", type=int, default=30)
    p.add_argument("--extra-rates", default="150,225", help="paced runs below the target rate (diagnostic)")
    p.add_argument("--extra-seconds", type=int, default=20)
    p.add_argument("--max-rate-guess", type=float, default=900.0,
                   help="orders inserted for an unpaced run: this rate × its seconds (more is wasted, fewer runs out)")
    p.add_argument("--batches", default="1,10,50")
    p.add_argument("--hook-workers", default="1,2", help="edge processes the bridge runs are made with, in turn")
    p.add_argument("--hook-conns", type=int, default=16)
    p.add_argument("--hook-seconds", type=int, default=15)
    p.add_argument("--profile", action="store_true", help="py-spy the edge under the paced rate in every scenario")
    p.add_argument("--profile-seconds", type=int, default=15)
    p.add_argument("--results-md", type=Path, default=ROOT / "bench" / "RESULTS.md")
    p.add_argument("--report-only", action="store_true", help="rewrite the section from bench/out/pay/results.json")
    p.add_argument("--write-routing", type=Path, metavar="FILE", help="only write the bench's routing.yaml to FILE")
    a = p.parse_args()
    if a.write_routing:
        write_pay_routing(a.write_routing)
        return
    if a.report_only:
        print(report(json.loads((OUT / "results.json").read_text()), a.results_md))
        return
    a.batches = [int(b) for b in a.batches.split(",") if b]
    a.hook_workers = [int(w) for w in a.hook_workers.split(",") if w]
    a.extra_rates = [int(r) for r in a.extra_rates.split(",") if r]
    OUT.mkdir(parents=True, exist_ok=True)
    for stale in OUT.glob("*.log"):
        stale.unlink()
    bench = Bench(a)
    bench.state["uptime_before"] = uptime()
    say(f"uptime before: {bench.state['uptime_before']}")
    pb.cmd_facts(a)  # into bench/out/pay/results.json; read back below
    bench.state["facts"] = pb.load()["facts"]
    bench.state["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    try:
        bench.prepare_db()
        bench.write_routing()
        for name in a.scenarios.split(","):
            bench.scenario(name)
        if a.batches:
            bench.bridge()
    finally:
        bench.servers.stop_all()
    bench.verify()
    bench.state["uptime_after"] = uptime()
    say(f"uptime after: {bench.state['uptime_after']}")
    (OUT / "results.json").write_text(json.dumps(bench.state, indent=2, default=str))
    print(report(bench.state, a.results_md))
    say(f"figures in {a.results_md}; raw in {OUT}/")
    if bench.state["verify"]["problems"]:
        raise SystemExit("bench: the payments do not add up (see verify above)")


if __name__ == "__main__":
    main()
