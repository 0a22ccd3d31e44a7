"""`make run` + `make demo-traffic`: whole checkouts, paid with PayPal and Adyen, refunded, on both sides.

The stack runs with the repo's routing.yaml but split: checkout, detail, the three pay routes and
refund each at a share of the callers (sticky by user, different shares so a user may pay on one
side and finish or be refunded on the other), and every payment event type half to the new consumer,
half to old shopping (sticky by order id). The demo pays through the edge and the PSP emulator (Adyen's
webhooks come back through the edge's bridge); the database, not the demo's own summary, says what
happened.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.support.edge import write_routing
from tests.support.scrape import Scrape
from tests.support.stack_process import ROOT, Stack, free_offset

# Route → new_percent. paypal_finished and refund below paypal_pay / place_order: users in between
# create the PayPal order on the new side and capture it on old shopping's, or are refunded there.
SPLIT_ROUTES = {"calc_price": 50, "place_order": 50, "detail": 50, "payment_methods": 50, "paid_from_client": 50,
                "paypal_pay": 50, "paypal_finished": 30, "adyen_pay": 50, "refund": 40}
SPLIT_EVENTS: dict[str, Any] = {"payment_notified": {"new_percent": 50}, "payment_failed": {"new_percent": 50},
                                "purchased": {"new_percent": 50}, "refund_notified": {"new_percent": 50},
                                "group_update": "new"}


def split_routing(path: Path) -> Path:
    doc = yaml.safe_load((ROOT / "routing.yaml").read_text(encoding="utf-8"))
    doc["groups"]["checkout"]["allow_split"] = True  # this test splits the checkout routes on purpose
    for name, percent in SPLIT_ROUTES.items():
        doc["routes"][name]["new_percent"] = percent
    doc["consumers"] = SPLIT_EVENTS
    return write_routing(path, doc)


def rows(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


def demo(stack: Stack, seconds: int) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo_traffic.py"), "--edge", f"http://127.0.0.1:{stack.port(8080)}",
         "--service-token-file", str(stack.var / "service-token"), "--seconds", str(seconds), "--rate", "15",
         "--checkout-share", "0.4", "--interval", "5", "--failed-share", "0.1", "--refund-share", "0.4"],
        capture_output=True, text=True, timeout=150,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no service token" not in out.stdout, out.stdout
    return out


def tallied(run: subprocess.CompletedProcess[str]) -> dict[str, int]:
    found = re.search(r"^orders: (.*)$", run.stdout, re.M)
    assert found, run.stdout
    return {k: int(v) for k, v in (part.rsplit(":", 1) for part in found.group(1).split())}


def detail(url: str, user: int, token: str | None = None) -> dict[str, Any]:
    headers = {"X-User-Id": str(user), **({"Authorization": f"Bearer {token}"} if token else {})}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, headers=headers), timeout=10) as resp:
        data: dict[str, Any] = orjson.loads(resp.read())["data"]
    data.pop("server_time")
    return data


def test_demo_checkouts_pay_with_both_psps_and_refund_on_both_sides(tmp_path: Path) -> None:
    stack = Stack(free_offset(), tmp_path / "var", routing=split_routing(tmp_path / "routing.yaml"))
    db = tmp_path / "var" / "shop.db"
    try:
        stack.start()
        started = time.time()
        first = demo(stack, 20)
        # Run again with the same --seed, as an operator does: the same traffic mix, but new orders
        # (a replayed Idempotency-Key would "place" the first run's orders again and pay them twice).
        again = demo(stack, 5)
        scrape = Scrape.of(f"http://127.0.0.1:{stack.port(8082)}/metrics")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started - 5))
        demo_orders = f"SELECT id FROM orders WHERE created_at >= '{since}'"
        # Both sides' detail of every paid demo order, read while the stack is up: old shopping directly,
        # the new side by its /order2 path (the service token).
        token = (stack.var / "service-token").read_text().strip()
        views = {
            order_id: (detail(f"http://127.0.0.1:{stack.port(8090)}/shopping/orders_v43/{order_id}", user),
                       detail(f"http://127.0.0.1:{stack.port(8080)}/order2/detail/{order_id}", user, token))
            for order_id, user in rows(db, f"SELECT id, user_id FROM orders WHERE id IN ({demo_orders})"
                                           " AND paid_at IS NOT NULL")
        }
    finally:
        code = stack.stop()
    assert code == 0, stack.banner + stack.rest
    report = first.stdout + "\n" + again.stdout + "\n" + stack.logs()
    tally, tally_again = tallied(first), tallied(again)

    placed = rows(db, f"SELECT COUNT(*) FROM ({demo_orders})")[0][0]
    assert placed >= 20, report
    assert placed == tally["placed"] + tally_again["placed"], report
    statuses = dict(rows(db, f"SELECT status, COUNT(*) FROM orders WHERE id IN ({demo_orders}) GROUP BY status"))
    # Paid by both PSPs, through both sides' pay routes.
    captured = rows(db, f"SELECT order_id, provider, COUNT(*) FROM payments WHERE status = 'captured'"
                        f" AND order_id IN ({demo_orders}) GROUP BY order_id, provider")
    providers = {provider for _, provider, _ in captured}
    assert providers == {"paypal", "adyen"}, (captured, report)
    # Every paid order has exactly one captured payment: no double capture, whoever finished or was called twice.
    paid = {order_id for (order_id,) in rows(db, f"SELECT id FROM orders WHERE paid_at IS NOT NULL AND id IN ({demo_orders})")}
    assert len(paid) >= 10, report
    assert sorted(order_id for order_id, _, _ in captured) == sorted(paid), (captured, paid)
    assert {n for _, _, n in captured} == {1}, captured
    # Each transition once per order, and every paid order went on to fulfilling (purchased applied).
    history = rows(db, f"SELECT order_id, to_status, COUNT(*), MIN(actor) FROM order_status_history"
                       f" WHERE order_id IN ({demo_orders}) GROUP BY order_id, to_status")
    assert {n for _, _, n, _ in history} == {1}, [h for h in history if h[2] > 1]
    fulfilled = {order_id for order_id, to, _, _ in history if to == "fulfilling"}
    assert fulfilled == paid, report
    assert "paid" not in statuses and statuses.get("payment_failed", 0) >= 1, statuses
    # Refunds: partial and whole, every one succeeded, on orders that read so.
    refunds = rows(db, f"SELECT r.order_id, r.status, r.amount, o.total, o.status FROM refunds r JOIN orders o"
                       f" ON o.id = r.order_id WHERE r.order_id IN ({demo_orders})")
    assert {status for _, status, _, _, _ in refunds} == {"succeeded"}, refunds
    assert {order for _, _, _, _, order in refunds} == {"refunded", "partially_refunded"}, refunds
    for order_id, _, amount, total, order_status in refunds:
        assert (amount == total) == (order_status == "refunded"), (order_id, amount, total, order_status)
    # Both sides moved orders: paying (routes: new / legacy) and applying events (consumer / legacy).
    actors = {(to, actor) for _, to, _, actor in history}
    assert {actor for to, actor in actors if to == "fulfilling"} == {"consumer", "legacy"}, actors
    assert {"new", "legacy"} <= {actor for to, actor in actors if to in ("paid", "authorized")}, actors
    # Refunds: old shopping's (its route, PayPal's at once, or its share of refund_notified) and the new consumer's.
    assert {actor for to, actor in actors if to in ("refunded", "partially_refunded")} >= {"legacy", "consumer"}, actors
    sides = {side for line in first.stdout.splitlines() for side in re.findall(r"(?:paypal_pay|adyen_pay|refund)/(\w+)", line)}
    assert sides == {"new", "legacy"}, first.stdout

    # Both sides' detail show the same payments and refunds.
    assert views and all(old == new for old, new in views.values()), [v for v in views.values() if v[0] != v[1]][:1]
    shown = {(p["provider"], p["status"]) for old, _ in views.values() for p in old["payments"]}
    assert {("paypal", "captured"), ("adyen", "captured")} <= shown, shown
    assert any(r["status"] == "succeeded" for old, _ in views.values() for r in old["refunds"])

    # The demo's own tally says the same, and nothing was dead-lettered.
    assert tally["paid_paypal"] >= 1 and tally["paid_adyen"] >= 1 and tally["payment_failed"] >= 1, tally
    assert tally.get("refunded", 0) + tally.get("partially_refunded", 0) >= 1, tally
    assert scrape.total("consumer_events_total", topic="payment_notified_cm", outcome="processed") >= 1
    assert scrape.total("consumer_events_total", topic="payment_notified_cm", outcome="forwarded_legacy") >= 1
    assert scrape.total("consumer_events_total", outcome="dead_lettered") == 0, report
    assert scrape.total("outbox_published_total") >= placed  # order_placed noti at least
