"""`make run` + `make demo-traffic`: demo orders go placed → paid → fulfilling on both sides.

The stack runs with the repo's routing.yaml except `consumers:`, which gives half the orders'
payment events to the new consumer and half to old shopping (sticky by order id), so one run
shows both: the new side applies its share (history actor `consumer`), the consumer delivers the
rest to old shopping's `/event/*` (actor `legacy`). The demo plays the payment system on the
stack's broker; the database, not the demo's own summary, says what happened.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

from tests.support.scrape import Scrape
from tests.support.stack_process import ROOT, Stack, free_offset

SPLIT = """consumers:
  payment_notified: {new_percent: 50}
  payment_failed: {new_percent: 50}
  purchased: {new_percent: 50}
  refund_notified: legacy
  group_update: new
"""


def split_routing(path: Path) -> Path:
    stock = (ROOT / "routing.yaml").read_text(encoding="utf-8")
    head, sep, _ = stock.partition("\nconsumers:\n")
    assert sep, "the repo's routing.yaml has no consumers: section"
    path.write_text(head + "\n" + SPLIT, encoding="utf-8")
    return path


def rows(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


def demo(stack: Stack, seconds: int) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo_traffic.py"), "--edge", f"http://127.0.0.1:{stack.port(8080)}",
         "--kafka", f"127.0.0.1:{stack.port(9092)}", "--seconds", str(seconds), "--rate", "15", "--checkout-share", "0.4",
         "--interval", "5", "--failed-share", "0.1"],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no Kafka broker" not in out.stdout, out.stdout
    return out


def placed_by(run: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"^orders: placed:(\d+)", run.stdout, re.M)
    assert found, run.stdout
    return int(found.group(1))


def test_demo_orders_reach_fulfilling_on_both_sides(tmp_path: Path) -> None:
    stack = Stack(free_offset(), tmp_path / "var", routing=split_routing(tmp_path / "routing.yaml"))
    db = tmp_path / "var" / "shop.db"
    try:
        stack.start()
        started = time.time()
        first = demo(stack, 20)
        # Run again with the same --seed, as an operator does: the same traffic mix, but new orders
        # (a replayed Idempotency-Key would "place" the first run's orders again and pay them twice).
        again = demo(stack, 6)
        scrape = Scrape.of(f"http://127.0.0.1:{stack.port(8082)}/metrics")
    finally:
        code = stack.stop()
    assert code == 0, stack.banner + stack.rest
    report = first.stdout + "\n" + again.stdout + "\n" + stack.logs()

    # The demo's orders (the seed's own are older): placed by the checkout, as the app would.
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started - 5))
    demo_orders = f"SELECT id FROM orders WHERE created_at >= '{since}'"
    placed = rows(db, f"SELECT COUNT(*) FROM ({demo_orders})")[0][0]
    assert placed >= 20, report
    assert placed == placed_by(first) + placed_by(again), report
    # Every order the payment system captured went paid → fulfilling; none is left paid (purchased lost).
    paid = dict(rows(db, f"SELECT order_id, COUNT(*) FROM order_status_history WHERE to_status = 'paid'"
                         f" AND order_id IN ({demo_orders}) GROUP BY order_id"))
    fulfilling = dict(rows(db, f"SELECT order_id, actor FROM order_status_history WHERE to_status = 'fulfilling'"
                               f" AND order_id IN ({demo_orders})"))
    assert len(paid) >= 10, report
    assert set(paid.values()) == {1}, "an order was moved to paid twice"
    assert set(fulfilling) == set(paid), report
    statuses = dict(rows(db, f"SELECT status, COUNT(*) FROM orders WHERE id IN ({demo_orders}) GROUP BY status"))
    assert statuses.get("fulfilling") == len(paid) and "paid" not in statuses, statuses
    # Both sides applied their share: the new consumer (actor consumer) and old shopping (actor legacy).
    assert set(fulfilling.values()) == {"consumer", "legacy"}, fulfilling
    # A few payments failed, on whichever side owned them.
    assert statuses.get("payment_failed", 0) >= 1, statuses

    # The consumers' metrics tell the same story, and nothing was dead-lettered.
    assert scrape.total("consumer_events_total", topic="payment_notified_cm", outcome="processed") >= 1
    assert scrape.total("consumer_events_total", topic="payment_notified_cm", outcome="forwarded_legacy") >= 1
    assert scrape.total("consumer_events_total", outcome="dead_lettered") == 0, report
    assert scrape.total("outbox_published_total") >= placed  # order_placed noti at least
    assert "fulfilling:" in first.stdout, first.stdout
