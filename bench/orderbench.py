#!/usr/bin/env python3
"""Measurement half of `make bench-order` (bench/order.sh starts and stops the servers; this script prepares the
database, drives load and checks what the load left in MariaDB).

Subcommands (state in OUT/results.json, OUT = $BENCH_OUT, default bench/out/order):

  prepare                            after `shopping-db seed --demo`: stock of every active in-stock SKU → 100,000,000,
                                     every non-zero wallet → 1,000,000 USD (so repeated orders never run out and the
                                     quoted total never changes); snapshot stock and balances for `verify`
  workload URL --users N             pick N demo users whose selected cart lines are all active, in-stock SKUs and who
                                     own address id == user id; quote each through the edge's calc_price (use_wallet,
                                     currencies in turn) and write OUT/requests.tsv with that expected_total
  check NAME URL                     place one order per user (200, route place_order, backend new, status
                                     pending_payment, the quoted total) and replay one key (same order back)
  measure NAME URL --pid P [--db-pid P] [--metrics URL] [--label L] [--workers W]
                                     warm-up, max throughput (wrk unpaced), latency at a fixed rate (wrk paced),
                                     CPU per process group; per run: orders written, InnoDB deadlocks, deadlock
                                     lines in the edge's log
  verify                             the shop adds up after all runs: stock taken = items ordered, per SKU; wallet
                                     money reserved = ledger reservations, per user; one history row and one outbox
                                     `noti` per order; no order without items
  report [--results-md FILE]         print the tables and refresh that section of bench/RESULTS.md

wrk, CPU accounting, facts and the report helpers come from bench/pricebench.py (the bench-price harness).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("BENCH_OUT", "bench/out/order")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))

import pricebench as pb  # noqa: E402  (wrk, Cpu, state, facts, report helpers)

OUT = pb.OUT
LUA = HERE / "lua" / "place_order.lua"
ORDER_PATH = "/shopping/cart/checkout/entries"
DB_NAME = os.environ.get("BENCH_DB", "bench_order")

MAX_CONNS = int(os.environ.get("BENCH_MAX_CONNS", "32"))
MAX_SECONDS = int(os.environ.get("BENCH_MAX_SECONDS", "30"))
WARMUP_SECONDS = int(os.environ.get("BENCH_WARMUP_SECONDS", "3"))
RATE = int(os.environ.get("BENCH_RATE", "300"))
PACED_CONNS = int(os.environ.get("BENCH_PACED_CONNS", "64"))
PACED_SECONDS = int(os.environ.get("BENCH_PACED_SECONDS", "60"))
BENCH_STOCK = 100_000_000
BENCH_WALLET = Decimal("1000000")

TARGETS = {"orders_per_s": 300.0, "p99_ms": 150.0}
SECTION = "## place_order through the edge (make bench-order)"
DEADLOCK_LINE = re.compile(r"deadlock|\b1213\b|\b1205\b|lock wait timeout", re.IGNORECASE)

say = pb.say


def db() -> Any:
    import pymysql

    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=DB_NAME, autocommit=True)


def query(sql: str, args: Any = None) -> list[tuple]:
    with db() as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def innodb_deadlocks() -> int:
    return int(query("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")[0][1])


def deadlock_lines(log_dir: Path, name: str) -> list[str]:
    """Lines of the edge's stdout/stderr naming a deadlock or a lock wait timeout (place_order retries log one)."""
    hits = []
    for suffix in ("out", "err"):
        f = log_dir / f"{name}.{suffix}"
        if f.exists():
            with f.open(errors="replace") as fh:
                hits += [ln.rstrip()[:300] for ln in fh if DEADLOCK_LINE.search(ln)]
    return hits


# ---------------------------------------------------------------- prepare / workload / check


def cmd_prepare(a: argparse.Namespace) -> None:
    with db() as conn, conn.cursor() as cur:
        cur.execute("UPDATE skus SET stock = %s WHERE active AND stock > 0", (BENCH_STOCK,))
        skus = cur.rowcount
        cur.execute("UPDATE wallets SET balance = %s WHERE balance > 0", (BENCH_WALLET,))
        wallets = cur.rowcount
        cur.execute("SELECT id, stock FROM skus")
        stock = {str(k): int(v) for k, v in cur.fetchall()}
        cur.execute("SELECT user_id, balance FROM wallets")
        balances = {str(k): str(v) for k, v in cur.fetchall()}
        cur.execute("SELECT COUNT(*) FROM orders")
        (orders,) = cur.fetchone()
    if orders:
        raise SystemExit(f"bench: {DB_NAME} already holds {orders} orders; the seed should have emptied it")
    state = pb.load()
    state["snapshot"] = {"stock": stock, "balance": balances}
    state["prepared"] = {"skus_restocked": skus, "wallets_topped_up": wallets}
    pb.save(state)
    say(f"prepared {DB_NAME}: {skus} SKUs at stock {BENCH_STOCK:,}, {wallets} wallets at {BENCH_WALLET:,} USD")


def _post(url: str, user: str, body: str, **headers: str) -> tuple[int, Any, Any]:
    req = urllib.request.Request(url, data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-User-Id": user, **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), exc.headers


def hot_file() -> Path:
    return OUT / "requests-hot.tsv"


def requests_of(a: argparse.Namespace) -> Path:
    return hot_file() if getattr(a, "hot", False) else pb.requests_file()


def cmd_workload(a: argparse.Namespace) -> None:
    from shop.seed import demo_rows

    rows = demo_rows()
    ok_sku = {s["id"] for s in rows["skus"] if s["active"] and s["stock"] > 0}
    lines: dict[int, list[int]] = defaultdict(list)
    for c in rows["cart_items"]:
        if c["selected"]:
            lines[c["user_id"]].append(c["sku_id"])
    owner = {ad["id"]: ad["user_id"] for ad in rows["addresses"]}
    users = [u for u in sorted(lines) if all(s in ok_sku for s in lines[u]) and owner.get(u) == u][: a.users]
    if len(users) < a.users:
        raise SystemExit(f"bench: only {len(users)} demo users have a selected cart of active, in-stock SKUs")
    blacklist = query("SELECT kind, value FROM address_blacklist")
    out: list[str] = []
    for k, u in enumerate(users):
        body = {"address_id": u, "currency": pb.CURRENCIES[k % len(pb.CURRENCIES)], "use_wallet": True}
        status, doc, headers = _post(a.url.rstrip("/") + pb.CALC_PATH, str(u), json.dumps(body))
        if status != 200 or headers.get("X-Edge-Backend") != "new":
            raise SystemExit(f"bench: calc_price for user {u}: HTTP {status} via {headers.get('X-Edge-Backend')}: {doc}")
        body["expected_total"] = doc["data"]["summary"]["total"]
        out.append(f"{u}\t{json.dumps(body, separators=(',', ':'))}")
    OUT.mkdir(parents=True, exist_ok=True)
    pb.requests_file().write_text("\n".join(out) + "\n")
    hot: list[str] = []
    if a.hot_sku:
        # Flash sale: every order also buys one unit of the same SKU, so every checkout queues on that row.
        cart = defaultdict(list)
        for c in rows["cart_items"]:
            if c["selected"]:
                cart[c["user_id"]].append({"sku_id": c["sku_id"], "qty": c["qty"]})
        for k, u in enumerate(users):
            items = [*(x for x in cart[u] if x["sku_id"] != a.hot_sku), {"sku_id": a.hot_sku, "qty": 1}]
            body = {"items": items, "address_id": u, "currency": pb.CURRENCIES[k % len(pb.CURRENCIES)], "use_wallet": True}
            status, doc, headers = _post(a.url.rstrip("/") + pb.CALC_PATH, str(u), json.dumps(body))
            if status != 200:
                raise SystemExit(f"bench: calc_price (hot SKU) for user {u}: HTTP {status}: {doc}")
            body["expected_total"] = doc["data"]["summary"]["total"]
            hot.append(f"{u}\t{json.dumps(body, separators=(',', ':'))}")
        hot_file().write_text("\n".join(hot) + "\n")
    sizes = [len(lines[u]) for u in users]
    wallet_users = sum(1 for u in users if Decimal(pb.load().get("snapshot", {}).get("balance", {}).get(str(u), "0")) > 0)
    state = pb.load()
    state["workload"] = {
        "users": users, "n": len(users), "lines_min": min(sizes), "lines_max": max(sizes),
        "lines_mean": round(statistics.mean(sizes), 2), "lines_hist": dict(sorted(Counter(sizes).items())),
        "wallet_users": wallet_users, "distinct_skus": len({s for u in users for s in lines[u]}),
        "blacklist_entries": len(blacklist),
        "max_users_per_sku": max(Counter(s for u in users for s in lines[u]).values()),
        "hot_sku": a.hot_sku or None,
    }
    pb.save(state)
    say(f"workload: {len(users)} users, {min(sizes)}-{max(sizes)} lines (mean {statistics.mean(sizes):.1f}), "
        f"{wallet_users} pay partly from the wallet → {pb.requests_file()}")


def cmd_check(a: argparse.Namespace) -> None:
    reqs = [ln.split("\t", 1) for ln in requests_of(a).read_text().splitlines()]
    first: tuple[str, str, str] | None = None
    blocked: list[str] = []
    for user, body in reqs:
        key = f"check-{a.name}{'-hot' if a.hot else ''}-{user}"
        status, doc, headers = _post(a.url.rstrip("/") + ORDER_PATH, user, body, **{"Idempotency-Key": key, "X-Platform": "app"})
        route, backend = headers.get("X-Edge-Route"), headers.get("X-Edge-Backend")
        data = (doc or {}).get("data") or {}
        if status == 422 and (doc or {}).get("msg") == "address_blocked":
            blocked.append(user)  # the demo blacklist catches this address: a refusal, not a load request
            continue
        want = json.loads(body)["expected_total"]
        if status != 200 or route != "place_order" or backend != "new" or data.get("status") != "pending_payment" \
                or data.get("total") != want:
            raise SystemExit(f"bench: {a.name}: user {user}: HTTP {status} route={route} backend={backend}: {doc} "
                             f"(want 200 place_order/new pending_payment total {want})")
        first = first or (user, body, data["order_id"])
    assert first is not None
    if blocked:
        keep = [f"{u}\t{b}" for u, b in reqs if u not in blocked]
        requests_of(a).write_text("\n".join(keep) + "\n")
        state = pb.load()
        wl = state["workload"]
        if not a.hot:
            wl["users"] = [u for u in wl["users"] if str(u) not in blocked]
            wl["n"], wl["address_blocked"] = len(wl["users"]), [int(u) for u in blocked]
        pb.save(state)
        say(f"{a.name}: {len(blocked)} users' addresses are on the demo blacklist (422 address_blocked); "
            f"dropped from the load: {', '.join(blocked)}")
    user, body, order_id = first
    status, doc, _ = _post(a.url.rstrip("/") + ORDER_PATH, user, body,
                           **{"Idempotency-Key": f"check-{a.name}{'-hot' if a.hot else ''}-{user}"})
    if status != 200 or doc["data"]["order_id"] != order_id:
        raise SystemExit(f"bench: {a.name}: replaying user {user}'s key gave {status} {doc}, not order {order_id}")
    say(f"{a.name} ok: {len(reqs)} orders placed through the edge (new side), one key replayed → the same order")


# ---------------------------------------------------------------- measure


def _orders_of_run(run: str) -> int:
    return int(query("SELECT COUNT(*) FROM orders WHERE idempotency_key LIKE %s", (run + "-%",))[0][0])


def cmd_measure(a: argparse.Namespace) -> None:
    state = pb.load()
    host = pb._host_of(a.url)
    roots = {"target": a.pid, "mariadb": a.db_pid}
    log_dir = Path(os.environ.get("BENCH_OUT", str(OUT)))

    def one(kind: str, conns: int, seconds: int, rate: int, log: bool = True) -> dict:
        run = f"b{secrets.token_hex(3)}{kind[0]}"
        dl0, lines0 = innodb_deadlocks(), len(deadlock_lines(log_dir, a.log or a.name))
        m0 = pb.http_text(a.metrics) if a.metrics else ""
        with pb.Cpu(roots) as cw:
            split: list[str | None] = []
            timer = threading.Timer(min(3.0, seconds / 2), lambda: split.append(pb.conn_split(a.pid, pb._port_of(a.url))))
            timer.start()
            r = pb.wrk(a.url, conns=conns, seconds=seconds, rate=rate, log_name=f"wrk-{kind}-{a.name}" if log else None,
                       host=host, lua=LUA, env_extra={"BENCH_RUN": run, "BENCH_REQUESTS": str(requests_of(a).resolve())})
            timer.cancel()
        r["conn_split"] = split[0] if split else None
        time.sleep(1)  # requests wrk cut off at the end may still commit
        r["cpu"] = cw.as_dict()
        r["run"] = run
        r["orders"] = _orders_of_run(run)
        r["ok"] = r["requests"] - r["non2xx"]
        r["orders_per_s"] = round(r["ok"] / r["duration_s"], 1)
        r["innodb_deadlocks"] = innodb_deadlocks() - dl0
        new_lines = deadlock_lines(log_dir, a.log or a.name)[lines0:]
        r["deadlock_log_lines"] = len(new_lines)
        r["deadlock_examples"] = new_lines[:3]
        if a.metrics:
            r["backends"] = pb._delta(pb.backends(m0, "place_order"), pb.backends(pb.http_text(a.metrics), "place_order"))
        if r["requests"]:
            r["target_us_per_order"] = round(1e6 * r["cpu"]["target_cpu_s"] / r["requests"], 1)
            if "mariadb_cpu_s" in r["cpu"]:
                r["mariadb_us_per_order"] = round(1e6 * r["cpu"]["mariadb_cpu_s"] / r["requests"], 1)
        return r

    say(f"{a.name}: warm-up {WARMUP_SECONDS}s (wrk -c{MAX_CONNS})")
    one("warmup", MAX_CONNS, WARMUP_SECONDS, 0, log=False)
    say(f"{a.name}: max throughput, wrk -t1 -c{MAX_CONNS} -d{MAX_SECONDS}s")
    w = one("max", MAX_CONNS, MAX_SECONDS, 0)
    say(f"{a.name}: {w['orders_per_s']:.0f} orders/s, p99 {w['latency_ms']['p99']:.1f} ms, non-2xx {w['non2xx']}, "
        f"{w['orders']:,} orders written for {w['ok']:,} 2xx, deadlocks {w['innodb_deadlocks']} (log {w['deadlock_log_lines']}), "
        f"edge {w['cpu']['target_cores']} cores, MariaDB {w['cpu'].get('mariadb_cores')} cores, others {w['cpu']['foreign_cores']}")
    time.sleep(1)
    say(f"{a.name}: latency at {RATE} orders/s, wrk -t1 -c{PACED_CONNS} -d{PACED_SECONDS}s paced by delay()")
    p = one("paced", PACED_CONNS, PACED_SECONDS, RATE)
    lat = p["latency_ms"]
    say(f"{a.name}: {p['orders_per_s']:.0f} orders/s achieved, p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
        f"p99.9 {lat['p999']:.1f} ms, non-2xx {p['non2xx']}, deadlocks {p['innodb_deadlocks']} (log {p['deadlock_log_lines']})")
    state["targets"][a.name] = {"label": a.label or a.name, "workers": a.workers, "pids": pb.eb.tree(a.pid), "hot": a.hot,
                                "max": w, "paced": p, "rss_after": pb.rss_kb(a.pid)}
    if a.name not in state["order"]:
        state["order"].append(a.name)
    pb.save(state)


# ---------------------------------------------------------------- verify


def cmd_verify(a: argparse.Namespace) -> None:
    """Checks that hold whatever happened to the orders since `prepare`: a cancelled or expired order has
    given its stock and wallet money back (the edge's expiry sweeper cancels orders 30 minutes old, so a
    database left from an earlier run has some), every other order still holds them."""
    state = pb.load()
    snap = state["snapshot"]
    problems: list[str] = []
    stock_now = {str(k): int(v) for k, v in query("SELECT id, stock FROM skus")}
    held = {str(k): int(v) for k, v in query(
        "SELECT i.sku_id, SUM(i.qty) FROM order_items i JOIN orders o ON o.id = i.order_id "
        "WHERE o.status <> 'cancelled' GROUP BY i.sku_id")}
    for sku, before in snap["stock"].items():
        taken = before - stock_now[sku]
        if taken != held.get(sku, 0):
            problems.append(f"SKU {sku}: stock went down by {taken}, live orders hold {held.get(sku, 0)}")
    bal_now = {str(k): Decimal(v) for k, v in query("SELECT user_id, balance FROM wallets")}
    reserved = {str(k): Decimal(v) for k, v in query(
        "SELECT user_id, SUM(CASE kind WHEN 'reserve' THEN amount WHEN 'release' THEN -amount ELSE 0 END) "
        "FROM wallet_ledger GROUP BY user_id")}
    for user, before in snap["balance"].items():
        spent = Decimal(before) - bal_now[user]
        if spent != reserved.get(user, Decimal(0)):
            problems.append(f"wallet {user}: balance went down by {spent}, ledger holds {reserved.get(user, 0)}")
    statuses = dict(query("SELECT status, COUNT(*) FROM orders GROUP BY status"))
    orders, cancelled = sum(statuses.values()), statuses.get("cancelled", 0)
    (history,) = query("SELECT COUNT(*) FROM order_status_history")[0]
    (outbox,) = query("SELECT COUNT(*) FROM outbox WHERE topic = 'noti'")[0]
    (bare,) = query("SELECT COUNT(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = o.id)")[0]
    (dupes,) = query("SELECT COUNT(*) FROM (SELECT user_id, idempotency_key FROM orders GROUP BY 1, 2 HAVING COUNT(*) > 1) d")[0]
    unexpected = {k: v for k, v in statuses.items() if k not in ("pending_payment", "cancelled")}
    if history != orders + cancelled:  # placed, and cancelled once
        problems.append(f"{orders} orders ({cancelled} cancelled) but {history} history rows")
    if outbox < orders:
        problems.append(f"{orders} orders but only {outbox} outbox noti rows")
    if bare:
        problems.append(f"{bare} orders without items")
    if unexpected:
        problems.append(f"orders in states nothing here moves them to: {unexpected}")
    if dupes:
        problems.append(f"{dupes} (user, Idempotency-Key) pairs with more than one order")
    items = sum(held.values())
    state["verify"] = {"orders": orders, "cancelled": cancelled, "items_qty": items,
                       "wallet_reservations": sum(1 for v in reserved.values() if v),
                       "reserved_usd": str(sum(reserved.values(), Decimal(0))), "problems": problems}
    pb.save(state)
    if problems:
        for p in problems[:20]:
            say("verify: " + p)
        raise SystemExit(f"bench: the shop does not add up after the runs ({len(problems)} problems)")
    say(f"verify ok: {orders:,} orders ({cancelled:,} cancelled, their holds given back), {items:,} items held "
        f"from stock exactly, wallet reservations {state['verify']['reserved_usd']} USD match the ledger, "
        f"one history row per order and per cancellation, an outbox row per order")


# ---------------------------------------------------------------- report


def report(state: dict) -> tuple[str, str, list[str]]:
    t = state["targets"]
    rows = ["| edge | max orders/s (wrk -c32) | p99 ms (max run) | edge CPU (µs/order) | MariaDB CPU (µs/order) "
            f"| p50 / p99 / p99.9 ms @ {RATE}/s | achieved | orders written / 2xx | non-2xx | InnoDB deadlocks "
            "| deadlock lines in edge log | other load (max / paced) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    verdicts = ["| target | wanted | measured | verdict |", "|---|---:|---:|---|"]
    notes = []
    for name in state["order"]:
        r = t[name]
        w, p = r["max"], r["paced"]
        lat = p["latency_ms"]
        rows.append(
            f"| {r['label']} | {w['orders_per_s']:,.0f} | {w['latency_ms']['p99']:.1f} "
            f"| {w['cpu']['target_cores']:.2f} cores ({pb._f(w.get('target_us_per_order'), 0)}) "
            f"| {w['cpu'].get('mariadb_cores', 0):.2f} cores ({pb._f(w.get('mariadb_us_per_order'), 0)}) "
            f"| {lat['p50']:.1f} / {lat['p99']:.1f} / {lat['p999']:.1f} | {p['orders_per_s']:,.0f}/s "
            f"| {w['orders'] + p['orders']:,} / {w['ok'] + p['ok']:,} | {w['non2xx'] + p['non2xx']} "
            f"| {w['innodb_deadlocks'] + p['innodb_deadlocks']} | {w['deadlock_log_lines'] + p['deadlock_log_lines']} "
            f"| {pb._other(w['cpu'])} / {pb._other(p['cpu'])} |")
        tag = "(diagnostic, no target) " if r.get("hot") else ""
        verdicts.append(f"| {tag}{r['label']}: sustained orders/s ({MAX_SECONDS} s unpaced) | {'—' if tag else '≥ 300, 0 non-2xx'} "
                        f"| {w['orders_per_s']:,.0f} orders/s, {w['non2xx']} non-2xx "
                        f"| {'for reading only' if tag else pb._verdict(w['orders_per_s'], TARGETS['orders_per_s'], True, ' orders/s', 0)}"
                        f"{'' if w['non2xx'] == 0 else ' — **non-2xx answers**'}{pb._noise_note(w['cpu'])} |")
        short = p["orders_per_s"] < 0.97 * RATE
        verdicts.append(f"| {tag}{r['label']}: p99 at {RATE} orders/s ({PACED_SECONDS} s) | {'—' if tag else '≤ 150 ms'} "
                        f"| {lat['p99']:.1f} ms at {p['orders_per_s']:,.0f}/s "
                        f"| {'for reading only' if tag else pb._verdict(lat['p99'], TARGETS['p99_ms'], False, ' ms', 1)}"
                        f"{' — **rate not reached**' if short else ''}"
                        f"{'' if p['non2xx'] == 0 else ' — **non-2xx answers**'}{pb._noise_note(p['cpu'])} |")
        dl = w["innodb_deadlocks"] + p["innodb_deadlocks"]
        dll = w["deadlock_log_lines"] + p["deadlock_log_lines"]
        verdicts.append(f"| {r['label']}: deadlocks | none in the log | InnoDB `Innodb_deadlocks` +{dl}, {dll} log lines "
                        f"| {'**met**' if dl == 0 and dll == 0 else '**missed**'}"
                        f"{'' if not dll else ' (e.g. ' + '; '.join(f'`{x[:120]}`' for x in (w['deadlock_examples'] + p['deadlock_examples'])[:2]) + ')'} |")
        c = w["cpu"]
        notes.append(f"- {r['label']} at max: edge {c['target_cores']:.2f} cores, MariaDB {c.get('mariadb_cores', 0):.2f}, "
                     f"wrk {c['loadgen_cores']:.2f}, others {c['foreign_cores']:.2f}; box {c['machine_busy_pct']:.0f} % busy. "
                     f"Client connections per worker: {w.get('conn_split') or '—'}. Edge counters (place_order, max run): "
                     f"{w.get('backends')}. VmRSS {sum(r['rss_after']['per_pid_kb'].values()) / 1024:.1f} MB after the runs.")
    v = state.get("verify")
    if v:
        verdicts.append(f"| the shop adds up after all runs | stock, wallet, history, outbox exact "
                        f"| {v['orders']:,} orders, {v['items_qty']:,} items, {v['reserved_usd']} USD reserved "
                        f"| {'**met**' if not v['problems'] else '**missed**: ' + '; '.join(v['problems'][:3])} |")
    return "\n".join(rows), "\n".join(verdicts), notes


def cmd_report(a: argparse.Namespace) -> None:
    state = pb.load()
    f = state.get("facts", {})
    md = Path(a.results_md)
    old = md.read_text() if md.exists() else "# Benchmark results\n"
    table, verdicts, notes = report(state)
    t = state["targets"]
    wl = state.get("workload", {})
    key = f"| {f.get('date')} | {f.get('commit')} |"

    def cell(name: str) -> str:
        r = t.get(name)
        if not r:
            return "— | —"
        return (f"{r['max']['orders_per_s']:,.0f} | {r['paced']['latency_ms']['p99']:.1f} ({r['paced']['orders_per_s']:,.0f}/s), "
                f"deadlocks {r['max']['innodb_deadlocks'] + r['paced']['innodb_deadlocks']}")

    hist = pb._history(
        old, "<!-- bench-order:history:begin -->", "<!-- bench-order:history:end -->",
        ["| date | commit | 1w max orders/s | 1w p99 ms @300/s (rate), deadlocks | 2w max orders/s | 2w p99 ms @300/s (rate), deadlocks |",
         "|---|---|---:|---|---:|---|"],
        f"{key} {cell('edge-1w')} | {cell('edge-2w')} |", key)
    hist_l = [hist[0], *hist[1:]]
    section = f"""{SECTION}

{pb._facts_block(f, 'bench/out/order/')}

### Set-up

- **Database**: `{DB_NAME}` on that server, re-seeded with the demo data at the start of every run, then every active
  in-stock SKU's stock set to {BENCH_STOCK:,} and every non-zero wallet to {BENCH_WALLET:,} USD
  ({state.get('prepared', {}).get('skus_restocked')} SKUs, {state.get('prepared', {}).get('wallets_topped_up')} wallets):
  orders never run out, and the quoted total never changes as the wallet pays its capped 50 %.
- **edge**: `SHOP_DB_URL=mysql+aiomysql://root@127.0.0.1:3306/{DB_NAME} shopping-edge --routing bench/routing-order.yaml`
  (production routes; calc_price and place_order at `new_percent: 100`, no shadow), one process, then `--workers 2`
  (gunicorn + uvloop workers); access log on; write pool 16 connections per process (READ COMMITTED), read pool on the
  autocommit engine. No old-shopping process: nothing routed here goes there.
- **Requests**: `POST /shopping/cart/checkout/entries` (legacy path of place_order), body
  `{{"address_id": <user id>, "currency": <USD/EUR/GBP/JPY in turn>, "use_wallet": true, "expected_total": <quoted>}}`,
  headers `X-User-Id`, `X-Platform: app` and a fresh `Idempotency-Key` per request, so every request places a new order:
  re-price, address and blacklist check ({wl.get('blacklist_entries')} entries), guarded stock decrement per SKU in
  ascending order, wallet reservation ({wl.get('wallet_users')} of the {wl.get('n')} users pay partly from the wallet),
  order + items + history + outbox `noti`, one transaction. {wl.get('n')} demo users, each with their own selected cart
  of {wl.get('lines_min')}–{wl.get('lines_max')} lines (mean {wl.get('lines_mean')}) over {wl.get('distinct_skus')} SKUs
  (a SKU is in at most {wl.get('max_users_per_sku')} users' carts), cycled in turn by `bench/lua/place_order.lua`. Each user's
  `expected_total` is quoted once through the edge's calc_price; before the load each user places one order and one key is
  replayed (`check`: 200, place_order on the new side, the quoted total; the same order back).
- **Load**: warm-up `wrk -t1 -c{MAX_CONNS} -d{WARMUP_SECONDS}s`, **sustained maximum** `wrk -t1 -c{MAX_CONNS} -d{MAX_SECONDS}s` (unpaced,
  closed loop), **latency at {RATE} orders/s**: `wrk -t1 -c{PACED_CONNS} -d{PACED_SECONDS}s` paced by the script's `delay()` (one
  schedule of send slots, open loop, as in bench-price). Latency is wrk's histogram.
- **Checks per run**: orders written (counted in MariaDB by the run's key prefix) against 2xx answers; MariaDB's
  `Innodb_deadlocks` before and after; lines in the edge's stdout/stderr naming a deadlock or lock wait timeout (the
  place_order retry logs `place_order_deadlock_retry`). After all runs, `verify`: for every SKU the stock taken equals
  the quantities the live (not cancelled) orders hold, for every wallet the money gone equals the ledger's
  reservations less its releases, one history row per order and per cancellation, an outbox `noti` per order, no
  order without items, no key with two orders.
- **Flash sale** (diagnostic, on the last edge only; `BENCH_HOT_SKU`, default SKU {wl.get('hot_sku')}): the same users and
  runs, but each body lists its cart lines explicitly (`items`) plus one unit of SKU {wl.get('hot_sku')}, quoted through
  calc_price the same way. Every checkout then takes that one stock row's lock first (lowest id) and holds it to its
  commit: the case that would deadlock with an unordered lock order, and the one that serialises.
- **Orders written vs 2xx**: wrk stops with up to its connection count of requests in flight; the edge finishes and
  commits those, but wrk never counts their answers. So "written" exceeds "2xx" by at most the connection count;
  fewer orders than 2xx would be a lost order.
- **CPU** as in bench-price (per process group from /proc; "other load" = the rest of the box, "steal" the hypervisor's share).

### Results

{table}

{verdicts}

{chr(10).join(notes)}

### Run history

One line per run of `make bench-order`.

{chr(10).join(hist_l)}
"""
    new = pb._replace_section(old, SECTION, section)
    print(section)
    md.write_text(new)
    say(f"wrote {md}")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    w = sub.add_parser("workload")
    w.add_argument("url")
    w.add_argument("--users", type=int, default=200)
    w.add_argument("--hot-sku", type=int, default=0, help="also write requests-hot.tsv: every order adds this SKU")
    c = sub.add_parser("check")
    c.add_argument("name")
    c.add_argument("url")
    c.add_argument("--hot", action="store_true", help="use requests-hot.tsv")
    m = sub.add_parser("measure")
    m.add_argument("name")
    m.add_argument("url")
    m.add_argument("--pid", type=int, required=True)
    m.add_argument("--db-pid", type=int)
    m.add_argument("--metrics")
    m.add_argument("--label")
    m.add_argument("--workers", type=int, default=1)
    m.add_argument("--hot", action="store_true", help="use requests-hot.tsv")
    m.add_argument("--log", help="the edge's log name in OUT (default: NAME)")
    sub.add_parser("verify")
    sub.add_parser("facts")
    r = sub.add_parser("report")
    r.add_argument("--results-md", default=str(ROOT / "bench" / "RESULTS.md"))
    a = p.parse_args()
    {"prepare": cmd_prepare, "workload": cmd_workload, "check": cmd_check, "measure": cmd_measure,
     "verify": cmd_verify, "facts": pb.cmd_facts, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
