"""`make bench-events`: payment_notified_cm through one `shopping-consumers` process on MariaDB.

Issue 10's targets: ≥ 2000 payment_notified_cm events applied per second from a 100,000-event
backlog; p99 produce → DB commit ≤ 100 ms at a steady 500 events/s; afterwards every order's
history holds exactly one transition per event and processed_events one row per event id. Also
measured: the backlog with 10 % duplicates, and with one SIGKILL of the consumer mid-run.

Everything runs on this machine: the bundled Tansu broker (memory storage), MariaDB (database
`bench_events`, recreated), one consumers process (the real console script). Orders are bulk
inserted as pending_payment (USD 10.00, no items); each captured payment makes the consumer
write the payment row, move the order to paid, history, and two outbox rows (`purchased`,
`noti`), which the relay publishes and the same process consumes again (`purchased` →
fulfilling). So "events applied per second" counts payment_notified_cm while the purchased
events and the relay run beside it, as in production.

Each backlog run has two phases: "payments" ends when the last payment_notified_cm is applied
(the target's figure), "pipeline" when every order is also `fulfilling` and the outbox is empty
(the relay and the purchased events caught up). Consumer CPU is the process's utime + stime
from /proc, per 1000 payment events: the figure least disturbed by other load on a shared box.

Latency (steady run): from just before the producer's send to the moment the paid history row is
visible to another connection, i.e. committed. A poller reads new history rows every few
milliseconds, so the figure is an upper bound of produce → commit by at most one poll.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from common import local_broker
from common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUT = ROOT / "bench" / "out" / "events"
TOPICS = ("payment_notified_cm", "payment_failed_cm", "purchased", "refund_notified", "group_update")
CONSUMER = "shopping-new:payment_notified"
PROBE = "broker_probe"  # the broker-alone run's topic: nothing of ours reads it
MARK_BEGIN = "<!-- bench-events:begin -->"
MARK_END = "<!-- bench-events:end -->"


def say(*parts: object) -> None:
    print("bench-events:", *parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def mariadb_pid() -> int | None:
    out = subprocess.run(["pidof", "-s", "mariadbd"], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.stdout.strip() else None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.db_name = args.db
        self.db_url = f"mysql+aiomysql://root@127.0.0.1:3306/{self.db_name}"
        self.broker_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.broker_port}"
        self.broker: subprocess.Popen[bytes] | None = None
        self.broker_used = False  # anything produced since the broker started
        self.consumer: subprocess.Popen[bytes] | None = None
        self.admin_port = 0
        self.group = f"bench-{int(time.time())}"
        self.results: dict[str, Any] = {}
        self.next_order = 0

    # --- infrastructure ---------------------------------------------------------------------

    def sql(self, statement: str, args: Any = None, *, many: bool = False, database: bool = True) -> list[tuple[Any, ...]]:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                               database=self.db_name if database else None, autocommit=True)
        try:
            with conn.cursor() as cur:
                if many:
                    cur.executemany(statement, args)
                else:
                    cur.execute(statement, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def prepare_db(self) -> None:
        say(f"recreating database {self.db_name} and seeding the demo data")
        self.sql(f"DROP DATABASE IF EXISTS `{self.db_name}`", database=False)
        self.sql(f"CREATE DATABASE `{self.db_name}` CHARACTER SET utf8mb4", database=False)
        subprocess.run([str(BIN / "shopping-db"), "--db-url", self.db_url, "seed", "--demo"], check=True,
                       stdout=subprocess.DEVNULL)

    def insert_orders(self, n: int) -> list[str]:
        ids = [f"BENCH{self.next_order + i:09d}" for i in range(n)]
        self.next_order += n
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = [
            (oid, (i % 200) + 1, "pending_payment", "US", "USD", Decimal("1"), Decimal("10.00"), Decimal("10.00"),
             Decimal("10.00"), now + timedelta(hours=2), now, now)
            for i, oid in enumerate(ids)
        ]
        for start in range(0, n, 5000):
            self.sql(
                "INSERT INTO orders (id, user_id, status, region, currency, fx_rate, subtotal, total, base_total,"
                " expires_at, created_at, updated_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                rows[start:start + 5000], many=True,
            )
        return ids

    def start_broker(self) -> None:
        log = OUT / "broker.log"
        log.unlink(missing_ok=True)
        try:
            self.broker = local_broker.start_broker(self.broker_port, log)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None

    async def create_topics(self) -> None:
        await local_broker.create_topics(self.bootstrap, {t: self.args.partitions for t in (*TOPICS, "noti", PROBE)})

    async def fresh_broker(self) -> None:
        """A new, empty broker and topics. Tansu's memory storage lists every stored batch of a partition on
        each fetch that has data to return (bench/RESULTS.md), so a paced run after the backlogs would
        measure their hundreds of thousands of leftover batches, not the consumer."""
        if not self.broker_used:
            return
        if self.broker is not None and self.broker.poll() is None:
            self.broker.terminate()
            self.broker.wait(timeout=10)
        self.broker_used = False
        self.start_broker()
        await self.create_topics()

    def _wait_port(self, port: int, name: str) -> None:
        try:
            local_broker.wait_for_port(None, port, name, timeout=20)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None

    def start_consumer(self, log_name: str) -> None:
        admin_port = self.admin_port = free_port()
        env = {
            **os.environ, "SHOP_DB_URL": self.db_url, "SHOP_KAFKA_BOOTSTRAP": self.bootstrap,
            "SHOP_KAFKA_IDEMPOTENCE": "false", "SHOP_CONSUMER_GROUP": self.group,
            "SHOP_CONSUMER_ADMIN_PORT": str(admin_port), "SHOP_CONSUMER_SESSION_TIMEOUT_MS": "2000",
            "SHOP_EXPIRY_SWEEP_SECONDS": "0",
            # Every event type owned by the new consumer (the repo's routing.yaml gives them to old shopping).
            "EDGE_ROUTING_FILE": str(ROOT / "tests" / "fixtures" / "routing-events-new.yaml"),
        }
        argv = [str(BIN / "shopping-consumers"), "--log-level", "warning"]
        self.consumer = subprocess.Popen(
            argv, env={**env, **dict(kv.split("=", 1) for kv in self.args.consumer_env)},
            stdout=(OUT / f"{log_name}.log").open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self._wait_port(admin_port, "shopping-consumers")
        if self.args.profile:  # py-spy attached (not the parent): the CPU figures stay the consumer's own
            subprocess.Popen(
                [str(BIN / "py-spy"), "record", "--format", "raw", "-r", "100", "--nonblocking",
                 "-d", str(self.args.profile_seconds), "-p", str(self.consumer.pid), "-o", str(OUT / f"{log_name}.stacks")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            )

    def stop_consumer(self, sig: int = signal.SIGTERM) -> None:
        if self.consumer is not None and self.consumer.poll() is None:
            self.consumer.send_signal(sig)
            try:
                self.consumer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.consumer.kill()
                self.consumer.wait()
        self.consumer = None

    def shutdown(self) -> None:
        self.stop_consumer()
        if self.broker is not None and self.broker.poll() is None:
            self.broker.terminate()
            self.broker.wait(timeout=10)

    # --- workload ---------------------------------------------------------------------------

    @staticmethod
    def event(order_id: str, event_id: str) -> dict[str, Any]:
        return {"event_id": event_id, "order_id": order_id, "payment_id": None, "provider": "adyen",
                "status": "captured", "amount": "10.00", "currency": "USD", "psp_reference": f"PSP-{order_id}",
                "occurred_at": datetime.now(UTC).replace(tzinfo=None).isoformat() + "Z"}

    async def produce(self, orders: list[str], *, duplicate_share: float = 0.0, rate: float | None = None,
                      produced: dict[str, float] | None = None, topic: str = "payment_notified_cm") -> int:
        """Send one captured payment per order (and a second copy for `duplicate_share` of them).

        Paced runs record each event's send time (time.time()) in `produced`, for the latency.
        """
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        self.broker_used = True
        sent = 0
        try:
            started = time.monotonic()
            pending = []
            every = int(1 / duplicate_share) if duplicate_share else 0
            for i, order_id in enumerate(orders):
                if rate is not None:
                    due = started + i / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                copies = 2 if every and i % every == 0 else 1
                for _ in range(copies):
                    value = json.dumps(self.event(order_id, f"pn-{order_id}")).encode()
                    if produced is not None:
                        produced.setdefault(order_id, time.time())
                    pending.append(await producer.send(topic, key=order_id.encode(), value=value))
                    sent += 1
                if len(pending) >= 2000:
                    await asyncio.gather(*pending)
                    pending = []
                elif rate is not None and len(pending) >= 50:  # paced: never wait for acks, drop the done ones
                    pending = [f for f in pending if not f.done()]
            await asyncio.gather(*pending)
        finally:
            await producer.stop()
        return sent

    def applied(self, orders: list[str]) -> int:
        first, last = orders[0], orders[-1]
        return int(self.sql(
            "SELECT COUNT(*) FROM order_status_history WHERE to_status='paid' AND order_id BETWEEN %s AND %s",
            (first, last))[0][0])

    def settled(self, orders: list[str]) -> bool:
        """Every order fulfilling (its purchased event applied) and nothing left in the outbox."""
        left = self.sql("SELECT COUNT(*) FROM orders WHERE status <> 'fulfilling' AND id BETWEEN %s AND %s",
                        (orders[0], orders[-1]))[0][0]
        return left == 0 and self.sql("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")[0][0] == 0

    def wait_settled(self, orders: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.settled(orders):
                return True
            time.sleep(0.2)
        return False

    def wait_applied(self, orders: list[str], timeout: float, *, kill_at: int | None = None) -> bool:
        deadline = time.monotonic() + timeout
        killed = False
        while time.monotonic() < deadline:
            done = self.applied(orders)
            if kill_at is not None and not killed and done >= kill_at:
                say(f"SIGKILL to the consumer at {done} applied")
                self.stop_consumer(signal.SIGKILL)
                self.results["kill_at"] = done
                killed = True
                self.start_consumer("consumer-after-kill")
            if done >= len(orders):
                return True
            time.sleep(0.2)
        return False

    def window(self, orders: list[str]) -> tuple[datetime, datetime]:
        row = self.sql(
            "SELECT MIN(created_at), MAX(created_at) FROM order_status_history"
            " WHERE to_status='paid' AND order_id BETWEEN %s AND %s", (orders[0], orders[-1]))[0]
        return row[0], row[1]

    def verify(self, orders: list[str]) -> dict[str, Any]:
        lo, hi = orders[0], orders[-1]
        bad_paid = self.sql(
            "SELECT COUNT(*) FROM (SELECT order_id FROM order_status_history WHERE to_status='paid'"
            " AND order_id BETWEEN %s AND %s GROUP BY order_id HAVING COUNT(*) <> 1) x", (lo, hi))[0][0]
        paid = self.sql("SELECT COUNT(DISTINCT order_id) FROM order_status_history WHERE to_status='paid'"
                        " AND order_id BETWEEN %s AND %s", (lo, hi))[0][0]
        payments = self.sql("SELECT COUNT(*), COUNT(DISTINCT order_id) FROM payments WHERE order_id BETWEEN %s AND %s",
                            (lo, hi))[0]
        processed = self.sql("SELECT COUNT(*) FROM processed_events WHERE consumer=%s AND event_id BETWEEN %s AND %s",
                             (CONSUMER, f"pn-{lo}", f"pn-{hi}"))[0][0]
        # The whole history of each order: exactly pending_payment → paid → fulfilling, one row per event.
        history_not_exact = self.sql(
            "SELECT COUNT(*) FROM (SELECT order_id, GROUP_CONCAT(to_status ORDER BY id) AS path FROM order_status_history"
            " WHERE order_id BETWEEN %s AND %s GROUP BY order_id) x WHERE path <> 'paid,fulfilling'", (lo, hi))[0][0]
        purchased = self.sql("SELECT COUNT(*) FROM processed_events WHERE consumer='shopping-new:purchased'"
                             " AND event_id BETWEEN %s AND %s", (f"purchased:{lo}", f"purchased:{hi}"))[0][0]
        return {"orders": len(orders), "paid_once": int(paid) - int(bad_paid), "paid_not_once": int(bad_paid),
                "payments": int(payments[0]), "orders_with_payment": int(payments[1]), "processed_rows": int(processed),
                "history_not_exact": int(history_not_exact), "purchased_processed_rows": int(purchased)}

    # --- runs -------------------------------------------------------------------------------

    def cpu_mark(self) -> tuple[float, float, float]:
        db = mariadb_pid()
        return (time.monotonic(), cpu_seconds(self.consumer.pid) if self.consumer else 0.0, cpu_seconds(db) if db else 0.0)

    async def backlog(self, name: str, n: int, *, duplicates: float = 0.0, kill: bool = False) -> None:
        orders = self.insert_orders(n)
        say(f"{name}: producing {n} payment_notified_cm events (duplicates {duplicates:.0%}) before the consumer starts")
        sent = await self.produce(orders, duplicate_share=duplicates)
        load_before = load_average()
        self.start_consumer(f"consumer-{name}")
        mark = self.cpu_mark()
        ok = self.wait_applied(orders, self.args.timeout, kill_at=n // 2 if kill else None)
        paid = self.cpu_mark()
        load_paid = load_average()
        settled = self.wait_settled(orders, self.args.timeout) if ok else False
        end = self.cpu_mark()
        counted = {"payment_notified_cm": self.outcomes("payment_notified_cm"), "purchased": self.outcomes("purchased")}
        first, last = self.window(orders)
        self.stop_consumer()
        seconds = (last - first).total_seconds() if ok else float("nan")
        verify = self.verify(orders)
        per_k = 1000 / n
        # After a SIGKILL the marks span two processes: CPU figures are left out rather than half-counted.
        self.results[name] = {
            "events": sent, "orders": n, "complete": ok, "settled": settled, "seconds": round(seconds, 2),
            "events_per_s": round(n / seconds) if ok and seconds > 0 else None,
            "pipeline_s": round(end[0] - mark[0], 1) if settled else None,
            "consumer_cpu_s_per_1000_payments": None if kill else round((paid[1] - mark[1]) * per_k, 3),
            "consumer_cpu_s_per_1000_pipeline": None if kill else round((end[1] - mark[1]) * per_k, 3),
            "mariadb_cpu_s_per_1000_pipeline": round((end[2] - mark[2]) * per_k, 3),
            "load_before": load_before, "load_at_paid": load_paid, "load_after": load_average(),
            "outcomes": counted, "verify": verify,
        }
        say(name, self.results[name])

    def scrape(self) -> str:
        import urllib.request

        try:
            return str(urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5).read().decode())
        except OSError:
            return ""

    def outcomes(self, topic: str) -> dict[str, int]:
        """The running consumer's consumer_events_total for `topic`, the outcomes that happened."""
        out = {}
        for line in self.scrape().splitlines():
            if line.startswith("consumer_events_total{") and f'topic="{topic}"' in line:
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                if (value := int(float(line.rsplit(" ", 1)[1]))) > 0:
                    out[outcome] = value
        return out

    def histogram(self, name: str, topic: str, *matchers: str) -> tuple[float | None, float | None]:
        """(mean ms, the bucket bound under which 99 % fall) of the running consumer's histogram `name` for
        `topic` (and the label `matchers`, e.g. 'stage="fetched"')."""
        text = self.scrape()
        if not text:
            return None, None
        buckets: list[tuple[float, float]] = []
        total = count = 0.0
        wanted = (f'topic="{topic}"', *matchers)
        for line in text.splitlines():
            if not line.startswith(name) or not all(m in line for m in wanted):
                continue
            series, value = line.rsplit(" ", 1)
            if series.startswith(f"{name}_bucket"):
                le = series.split('le="', 1)[1].split('"', 1)[0]
                buckets.append((float("inf") if le == "+Inf" else float(le), float(value)))
            elif series.startswith(f"{name}_sum"):
                total = float(value)
            elif series.startswith(f"{name}_count"):
                count = float(value)
        if not count:
            return None, None
        p99 = next((le for le, n in sorted(buckets) if n >= 0.99 * count), float("inf"))
        return round(total / count * 1000, 1), round(p99 * 1000, 1)

    async def steady(self, rate: float, seconds: float) -> None:
        n = int(rate * seconds)
        orders = self.insert_orders(n)
        self.start_consumer("consumer-steady")
        time.sleep(3)  # joined and assigned before the clock starts
        say(f"steady: {n} events at {rate:.0f}/s")
        produced: dict[str, float] = {}
        poller = CommitPoller(self, orders)
        poller.start()
        load_before = load_average()
        mark = self.cpu_mark()
        await self.produce(orders, rate=rate, produced=produced)
        sent_in = time.monotonic() - mark[0]
        ok = self.wait_applied(orders, self.args.timeout)
        end = self.cpu_mark()
        poller.stop()
        self.wait_settled(orders, 60)
        in_tx = self.histogram("consumer_processing_seconds", "payment_notified_cm")
        fetched = self.histogram("consumer_event_age_seconds", "payment_notified_cm", 'stage="fetched"')
        applied = self.histogram("consumer_event_age_seconds", "payment_notified_cm", 'stage="applied"')
        self.stop_consumer()
        samples = [(produced[o], (poller.seen[o] - produced[o]) * 1000) for o in orders if o in poller.seen and o in produced]
        self.results["steady"] = {
            "rate": rate, "achieved_rate": round(n / sent_in), "events": n, "complete": ok, **latencies(samples),
            "poll_ms": poller.period * 1000,
            # The consumer's own consumer_processing_seconds: batch start → commit, per event.
            "in_consumer_mean_ms": in_tx[0], "in_consumer_p99_le_ms": in_tx[1],
            # consumer_event_age_seconds: Kafka timestamp → fetched by the consumer (producer, broker) and → applied.
            "age_fetched_mean_ms": fetched[0], "age_fetched_p99_le_ms": fetched[1],
            "age_applied_mean_ms": applied[0], "age_applied_p99_le_ms": applied[1],
            "consumer_cpu_share": round((end[1] - mark[1]) / (end[0] - mark[0]), 2),
            "load_before": load_before, "load_after": load_average(),
            "verify": self.verify(orders),
        }
        say("steady", self.results["steady"])

    async def broker_alone(self, rate: float, seconds: float) -> None:
        """The control for the steady run: the same producer, rate, partitions and fetch wait, read by a plain
        aiokafka consumer that does nothing with the events. Its latency (producer timestamp → handed to
        the reader) is the broker's and the clients' share of the steady run's, and how it grows over a
        run is Tansu's, since nothing else is there to grow."""
        n = int(rate * seconds)
        orders = [f"probe-{i:08d}" for i in range(n)]
        reader = AIOKafkaConsumer(PROBE, bootstrap_servers=self.bootstrap, group_id=f"probe-{os.getpid()}",
                                  auto_offset_reset="latest", enable_auto_commit=False,
                                  fetch_max_wait_ms=Settings().consumer_fetch_wait_ms)  # the consumers' default
        await reader.start()
        samples: list[tuple[float, float]] = []

        async def read() -> None:
            while len(samples) < n:
                batches = await reader.getmany(timeout_ms=200)
                now = time.time()
                samples.extend((r.timestamp / 1000, now * 1000 - r.timestamp) for recs in batches.values() for r in recs)

        try:
            await asyncio.sleep(3)  # assigned, at the end of the (empty) partitions
            say(f"broker alone: {n} events at {rate:.0f}/s to {PROBE}, read by a plain consumer")
            load_before = load_average()
            reading = asyncio.create_task(read())
            await self.produce(orders, rate=rate, topic=PROBE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reading, 60)
            reading.cancel()
        finally:
            await reader.stop()
        self.results["broker"] = {
            "rate": rate, "events": n, **latencies(samples),
            "load_before": load_before, "load_after": load_average(),
        }
        say("broker alone", self.results["broker"])


def latencies(samples: list[tuple[float, float]], window: float = 10.0) -> dict[str, Any]:
    """(when, latency ms) samples as the paced runs report them: how many, p50, p99 and max, and the p99 of
    each `window` seconds from the first (how the latency moves over a run)."""
    if not samples:
        return {"measured": 0, "p50_ms": None, "p99_ms": None, "max_ms": None, "p99_ms_by_10s": []}
    lat = sorted(latency for _, latency in samples)
    start = min(when for when, _ in samples)
    windows: dict[int, list[float]] = {}
    for when, latency in samples:
        windows.setdefault(int((when - start) // window), []).append(latency)
    return {
        "measured": len(lat), "p50_ms": round(lat[len(lat) // 2], 1), "p99_ms": round(lat[int(len(lat) * 0.99)], 1),
        "max_ms": round(lat[-1], 1),
        "p99_ms_by_10s": [round(sorted(v)[int(len(v) * 0.99)], 1) for _, v in sorted(windows.items())],
    }


class CommitPoller(threading.Thread):
    """Notes when each order's paid history row becomes visible to another connection (= committed).

    Row ids are taken at INSERT and committed in another order by concurrent transactions, so an id
    below the highest one seen may still come: such holes are asked for again until they show up
    (or, a rolled-back insert's id, for 10 s).
    """

    def __init__(self, bench: Bench, orders: list[str], period: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.bench, self.lo, self.hi, self.period = bench, orders[0], orders[-1], period
        self.seen: dict[str, float] = {}
        self._stop_flag = threading.Event()

    def run(self) -> None:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=self.bench.db_name,
                               autocommit=True)
        holes: dict[int, float] = {}
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT COALESCE(MAX(id), 0) FROM order_status_history")
                last = int(cur.fetchone()[0])
                while not self._stop_flag.is_set():
                    query = "SELECT id, order_id, to_status FROM order_status_history WHERE id > %s"
                    args: list[Any] = [last]
                    if holes:
                        query += f" OR id IN ({','.join(['%s'] * len(holes))})"
                        args.extend(holes)
                    cur.execute(query, args)
                    now = time.time()
                    top = last
                    got = set()
                    for row_id, order_id, to_status in cur.fetchall():
                        got.add(row_id)
                        holes.pop(row_id, None)
                        top = max(top, row_id)
                        if to_status == "paid" and self.lo <= order_id <= self.hi:
                            self.seen.setdefault(order_id, now)
                    for missing in range(last + 1, top):
                        if missing not in got:
                            holes[missing] = now
                    last = top
                    for row_id in [h for h, since in holes.items() if now - since > 10]:
                        del holes[row_id]
                    time.sleep(self.period)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(10)


def facts() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    commit = f"{commit}* (uncommitted changes)" if commit and dirty else commit
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit or "?"}


def report(results: dict[str, Any], facts_: dict[str, str], path: Path, argv: list[str]) -> None:
    def exact(v: dict[str, Any]) -> str:
        ok = (v["paid_not_once"] == 0 and v["paid_once"] == v["orders"] and v["processed_rows"] == v["orders"]
              and v["payments"] == v["orders"] and v["history_not_exact"] == 0 and v["purchased_processed_rows"] == v["orders"])
        return "yes" if ok else f"**no** ({v})"

    def row(name: str, label: str) -> str:
        r = results.get(name)
        if not r:
            return f"| {label} | — | — | — | — | — | — | — | — |"

        def num(value: Any) -> str:
            return "—" if value is None else f"{value:,}" if isinstance(value, int) else f"{value}"

        return (f"| {label} | {r['events']:,} | **{num(r['events_per_s'])}** | {num(r['consumer_cpu_s_per_1000_payments'])} | "
                f"{num(r['pipeline_s'])} | {num(r['consumer_cpu_s_per_1000_pipeline'])} | {num(r['mariadb_cpu_s_per_1000_pipeline'])} | "
                f"{r['load_before']} → {r['load_after']} | {exact(r['verify'])} |")

    steady = results.get("steady") or {}
    broker = results.get("broker") or {}
    lines = [
        MARK_BEGIN,
        "## Events through shopping-consumers (make bench-events)",
        "",
        f"Machine: {facts_['cpu']}, {facts_['cores']} cores, Python {facts_['python']}; run {facts_['when']}, "
        f"commit {facts_['commit']}, `{' '.join(argv) or 'bench/eventbench.py'}`. "
        "Broker: the bundled Tansu (memory storage) on the same box; MariaDB on the same box; one consumers process.",
        "",
        "| run | events produced | payment_notified_cm applied/s | consumer CPU s / 1000 (payments) | pipeline s (all fulfilling, outbox empty) "
        "| consumer CPU s / 1000 (pipeline) | MariaDB CPU s / 1000 (pipeline) | load avg before → after | exact |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
        row("backlog", "backlog"),
        row("duplicates", "backlog, 10 % duplicates"),
        row("kill", f"backlog, SIGKILL at {results.get('kill_at', '?')} applied, restarted"),
        "",
        *[f"- {label}: the consumer counted {results[name]['outcomes']}." for name, label in (
            ("backlog", "backlog"), ("duplicates", "10 % duplicates"), ("kill", "after the SIGKILL (the restarted process)"))
          if results.get(name, {}).get("outcomes")],
        "",
        f"Steady {steady.get('rate', '?')} events/s (achieved {steady.get('achieved_rate', '?')}/s), "
        f"{steady.get('events', '?')} events: produce → committed (visible to "
        f"another connection, polled every {steady.get('poll_ms', '?')} ms) p50 {steady.get('p50_ms', '?')} ms, "
        f"p99 **{steady.get('p99_ms', '?')} ms**, max {steady.get('max_ms', '?')} ms over {steady.get('measured', '?')} events "
        f"(target p99 ≤ 100 ms); inside the consumer (batch start → commit) mean {steady.get('in_consumer_mean_ms', '?')} ms, "
        f"p99 ≤ {steady.get('in_consumer_p99_le_ms', '?')} ms; consumer busy {steady.get('consumer_cpu_share', '?')} of a core; load "
        f"{steady.get('load_before', '?')} → {steady.get('load_after', '?')}; exact: "
        f"{exact(steady['verify']) if steady.get('verify') else '?'}.",
        "",
        f"Where the steady run's time goes (consumer_event_age_seconds of payment_notified_cm, mean / p99 bucket): "
        f"Kafka timestamp → fetched by the consumer {steady.get('age_fetched_mean_ms', '?')} / ≤ {steady.get('age_fetched_p99_le_ms', '?')} ms, "
        f"→ applied {steady.get('age_applied_mean_ms', '?')} / ≤ {steady.get('age_applied_p99_le_ms', '?')} ms. "
        f"p99 produce → committed per 10 s of the run: {', '.join(str(v) for v in steady.get('p99_ms_by_10s', [])) or '?'} ms.",
        "",
        (f"Control, the broker alone (same producer, rate, {results.get('partitions', '?')} partitions and fetch wait; a plain "
         f"consumer that does nothing, topic `{PROBE}`, on a fresh broker): {broker.get('events', '?')} events, producer "
         f"timestamp → handed to the reader p50 {broker.get('p50_ms', '?')} ms, p99 {broker.get('p99_ms', '?')} ms, max "
         f"{broker.get('max_ms', '?')} ms; p99 per 10 s: {', '.join(str(v) for v in broker.get('p99_ms_by_10s', [])) or '?'} ms; "
         f"load {broker.get('load_before', '?')} → {broker.get('load_after', '?')}.") if broker else "Control (the broker alone): not run.",
        "",
        "Targets: ≥ 2000 payment_notified_cm applied/s from a 100,000-event backlog; p99 ≤ 100 ms at 500/s. "
        "Each applied payment also makes a `purchased` event (relayed from the outbox and consumed by the same "
        "process) and a `noti`: the payments rate is with that work running beside it; \"pipeline\" is until it is done too. "
        "\"exact\": every order's history is exactly pending_payment → paid → fulfilling (one row per event), one payment "
        "row, one processed_events row per payment_notified and per purchased event id. CPU per 1000 is per 1000 orders "
        "(payment_notified events without the duplicates); the SIGKILL run spans two processes, so no CPU figure.",
        MARK_END,
    ]
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = "\n".join(lines) + "\n"
    if MARK_BEGIN in text:
        before, rest = text.split(MARK_BEGIN, 1)
        after = rest.split(MARK_END, 1)[1].lstrip("\n")
        text = before + block + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=100_000, help="backlog size")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--db", default="bench_events")
    parser.add_argument("--profile", action="store_true", help="attach py-spy to each consumer (needs py-spy installed)")
    parser.add_argument("--profile-seconds", type=int, default=20)
    parser.add_argument("--consumer-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra setting for the consumers process (SHOP_CONSUMER_BATCH_MAX=1, say)")
    parser.add_argument("--only", choices=("backlog", "duplicates", "kill", "steady", "broker", "all"), default="all")
    parser.add_argument("--results-md", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    bench.results["partitions"] = args.partitions
    runs = ("backlog", "duplicates", "kill", "broker", "steady") if args.only == "all" else (args.only,)
    try:
        bench.prepare_db()
        bench.start_broker()
        await bench.create_topics()
        if "backlog" in runs:
            await bench.backlog("backlog", args.orders)
        if "duplicates" in runs:
            await bench.backlog("duplicates", max(1000, args.orders // 5), duplicates=0.1)
        if "kill" in runs:
            await bench.backlog("kill", max(1000, args.orders // 5), kill=True)
        if "broker" in runs:
            await bench.fresh_broker()
            await bench.broker_alone(args.rate, args.steady_seconds)
        if "steady" in runs:
            await bench.fresh_broker()
            await bench.steady(args.rate, args.steady_seconds)
    finally:
        bench.shutdown()
    (OUT / "results.json").write_text(json.dumps(bench.results, indent=2, default=str))
    report(bench.results, facts(), args.results_md, sys.argv[1:])
    say(f"figures in {args.results_md}; raw in {OUT}/")


if __name__ == "__main__":
    asyncio.run(main())
