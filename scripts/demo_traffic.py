"""`make demo-traffic`: a steady, realistic mix of shoppers through the edge, and the payment system.

Logged-in users (ids from the demo seed) price their carts with their own address, wallet and
coupons and list their coupons; anonymous visitors price a few SKUs with a public code; some
users check out: add to cart, price, place the order with the total they saw, read the order,
list its payment methods and report payment from the app.

It also plays the payment system, on the Kafka broker of `make run` (SHOP_KAFKA_BOOTSTRAP): for a
share of the placed orders (--paid-share, 80 %) it publishes `payment_notified_cm` (status
captured, the order's total and currency) and, once the order reads paid, `purchased`; for a few
(--failed-share, 5 %) `payment_failed_cm`; the rest stay unpaid until the expiry sweeper cancels
them. Payloads are domain.md's (shop/events.py parses them), key = order id. `purchased` carries
the event id the outbox's own `purchased` has (`purchased:<order id>`): the payment system and
the relay announce the same fact, so whichever comes second is a counted duplicate. So a demo order
goes placed → paid → fulfilling on whichever side routing.yaml `consumers:` gives each event.

Every few seconds one line sums up what happened, per route and per side (new / legacy), and what
the orders did, so the edge's and the consumers' metrics and dashboards have something to show.
Runs until Ctrl-C, or --seconds N.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

from common.settings import Settings

REGION_CURRENCY = {"US": "USD", "DE": "EUR", "GB": "GBP", "JP": "JPY"}
PUBLIC_CODES = ("SAVE15", "WELCOME10", "SUMMER20")


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    sides: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    # What happened to the placed orders (placed, captured, failed, paid, fulfilling, …); never reset.
    orders: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        # In place: running checkouts hold this object and keep counting into the next window.
        self.sent = 0
        self.statuses.clear()
        self.sides.clear()
        self.latencies.clear()

    def line(self, elapsed: float, window: float) -> str:
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] * 1000 if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(self.statuses.items()))
        sides = " ".join(f"{k}:{v}" for k, v in sorted(self.sides.items()))
        line = (
            f"[{elapsed:6.0f}s] {self.sent / window:6.1f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  "
            f"status {statuses}  side {sides}"
        )
        return f"{line}  orders {self.orders_line()}" if self.orders else line

    def orders_line(self) -> str:
        return " ".join(f"{k}:{self.orders[k]}" for k in ORDER_STEPS if self.orders[k])


# The order of the orders summary: what the checkouts did, what the payment system sent, what the
# orders then read (as seen through the edge's order detail).
ORDER_STEPS = ("placed", "captured_sent", "failed_sent", "paid", "purchased_sent", "fulfilling", "payment_failed",
               "stuck", "unpaid")


def shopper_request(rng: random.Random, users: int, skus: int) -> tuple[str, dict[str, Any], dict[str, str]]:
    """One shopper action: (path, JSON body, headers)."""
    if rng.random() < 0.2:
        region = rng.choice(tuple(REGION_CURRENCY))
        items = [{"sku_id": s, "qty": rng.randint(1, 3)} for s in rng.sample(range(1, 21), rng.randint(1, 4))]
        body: dict[str, Any] = {"items": items, "region": region, "currency": REGION_CURRENCY[region],
                                "coupon_code": rng.choice(PUBLIC_CODES)}
        return "/shopping/cal_price/v4_4", body, {"X-Device-Id": f"anon-{rng.randint(1, 5000)}", "X-Platform": "web"}
    user = rng.randint(1, users)
    # Demo users have one address each, with the same id as the user.
    body = {"address_id": user, "use_wallet": rng.random() < 0.5}
    headers = {"X-User-Id": str(user), "X-Platform": rng.choice(("ios", "android", "web")), "X-App-Version": "5.10.0"}
    if rng.random() < 0.3:
        return "/shopping/user_coupons_for_order", body, headers
    body["currency"] = rng.choice(("USD", "EUR", "GBP", "JPY"))
    if rng.random() < 0.3:
        body["items"] = [{"sku_id": s, "qty": rng.randint(1, 3)} for s in rng.sample(range(1, skus + 1), rng.randint(1, 8))]
    return "/shopping/cal_price/v4_4", body, headers


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class PaymentSystem:
    """The PSP side of a checkout: Kafka events keyed by order id, the payloads of domain.md "Kafka events"."""

    def __init__(self, producer: AIOKafkaProducer, topics: dict[str, str], rng: random.Random,
                 paid_share: float, failed_share: float) -> None:
        self.producer = producer
        self.topics = topics
        self.rng = rng
        self.paid_share = paid_share
        self.failed_share = failed_share

    async def _send(self, event_type: str, order_id: str, payload: dict[str, Any]) -> None:
        await self.producer.send_and_wait(self.topics[event_type], key=order_id.encode(),
                                          value=json.dumps(payload).encode())

    def outcome(self) -> str:
        roll = self.rng.random()
        return "failed" if roll < self.failed_share else "captured" if roll < self.failed_share + self.paid_share else "unpaid"

    async def captured(self, order_id: str, total: str, currency: str, provider: str) -> None:
        await self._send("payment_notified", order_id, {
            "event_id": f"demo-pn-{order_id}", "order_id": order_id, "payment_id": None, "provider": provider,
            "status": "captured", "amount": total, "currency": currency, "psp_reference": f"DEMO-{order_id}",
            "occurred_at": _now(),
        })

    async def purchased(self, order_id: str, user_id: int) -> None:
        await self._send("purchased", order_id, {
            "event_id": f"purchased:{order_id}", "order_id": order_id, "user_id": user_id, "occurred_at": _now(),
        })

    async def failed(self, order_id: str, provider: str) -> None:
        await self._send("payment_failed", order_id, {
            "event_id": f"demo-pf-{order_id}", "order_id": order_id, "payment_id": None, "provider": provider,
            "reason": "Refused", "occurred_at": _now(),
        })


async def _order_status(session: aiohttp.ClientSession, base: str, order_id: str, headers: dict[str, str]) -> str | None:
    """The order's status as the app reads it (order detail through the edge); None when unreadable."""
    try:
        async with session.get(f"{base}/shopping/orders_v43/{order_id}", headers=headers) as resp:
            body = await resp.json(content_type=None)
            return body["data"]["status"] if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
        return None


async def _wait_status(session: aiohttp.ClientSession, base: str, order_id: str, headers: dict[str, str],
                       wanted: tuple[str, ...], timeout: float) -> str | None:
    """Poll the order like the app's "waiting for payment" screen does, until it reads one of `wanted`."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = await _order_status(session, base, order_id, headers)
        if status in wanted:
            return status
        await asyncio.sleep(0.5)
    return status


async def pay(session: aiohttp.ClientSession, base: str, payments: PaymentSystem, order_id: str, total: str,
              currency: str, user: int, headers: dict[str, str], tally: Tally) -> None:
    """What the payment system does for one placed order, and what the order then reads."""
    outcome = payments.outcome()
    if outcome == "unpaid":
        tally.orders["unpaid"] += 1
        return
    provider = payments.rng.choice(("adyen", "paypal"))
    await asyncio.sleep(payments.rng.uniform(0.2, 1.5))  # the shopper at the PSP
    try:
        if outcome == "failed":
            await payments.failed(order_id, provider)
            tally.orders["failed_sent"] += 1
            if await _wait_status(session, base, order_id, headers, ("payment_failed",), 20) == "payment_failed":
                tally.orders["payment_failed"] += 1
            return
        await payments.captured(order_id, total, currency, provider)
        tally.orders["captured_sent"] += 1
        # `purchased` once the capture is applied: before, it would only wait in the consumer's retries.
        if await _wait_status(session, base, order_id, headers, ("paid", "fulfilling"), 20) is None:
            tally.orders["stuck"] += 1
            return
        tally.orders["paid"] += 1
        await payments.purchased(order_id, user)
        tally.orders["purchased_sent"] += 1
        if await _wait_status(session, base, order_id, headers, ("fulfilling",), 20) == "fulfilling":
            tally.orders["fulfilling"] += 1
        else:
            tally.orders["stuck"] += 1
    except Exception as exc:  # the broker is away: this order stays unpaid, the shoppers go on
        tally.orders[f"kafka_{exc.__class__.__name__}"] += 1


async def checkout(session: aiohttp.ClientSession, base: str, rng: random.Random, users: int, skus: int, tally: Tally,
                   payments: PaymentSystem | None = None) -> None:
    """One user's whole checkout; each step's answer is tallied like any other request."""
    user = rng.randint(1, users)
    headers = {"X-User-Id": str(user), "X-Platform": rng.choice(("ios", "android", "web")), "X-App-Version": "5.10.0"}
    currency = rng.choice(("USD", "EUR", "GBP", "JPY"))

    async def call(method: str, path: str, body: dict[str, Any] | None = None, extra: dict[str, str] | None = None) -> dict[str, Any] | None:
        t0 = time.monotonic()
        try:
            async with session.request(method, base + path, json=body, headers={**headers, **(extra or {})}) as resp:
                data = await resp.json(content_type=None)
                tally.statuses[str(resp.status)] += 1
                tally.sides[f"{resp.headers.get('X-Edge-Route', '?')}/{resp.headers.get('X-Edge-Backend', '?')}"] += 1
                tally.latencies.append(time.monotonic() - t0)
                return data if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            tally.statuses[exc.__class__.__name__] += 1
            return None
        finally:
            tally.sent += 1

    await call("POST", "/shopping/cart", {"sku_id": rng.randint(1, skus), "qty": rng.randint(1, 2)})
    body = {"address_id": user, "currency": currency, "use_wallet": rng.random() < 0.3}
    priced = await call("POST", "/shopping/cal_price/v4_4", body)
    if priced is None:
        return
    placed = await call(
        "POST", "/shopping/cart/checkout/entries",
        {**body, "expected_total": priced["data"]["summary"]["total"]},
        # A fresh key per checkout, as the apps make one: from the seeded rng, a second demo run
        # would replay the first run's keys and "place" (and pay again) orders already paid.
        {"Idempotency-Key": f"demo-{uuid.uuid4().hex}"},
    )
    if placed is None:
        return
    order_id = placed["data"]["order_id"]
    tally.orders["placed"] += 1
    await call("GET", f"/shopping/orders_v43/{order_id}")
    await call("GET", f"/shopping/orders/{order_id}/pay_cm")
    if rng.random() < 0.7:
        await call("POST", f"/shopping/orders/{order_id}/paid_from_client", {})
    if payments is not None:
        await pay(session, base, payments, order_id, placed["data"]["total"], placed["data"]["currency"], user, headers, tally)


@dataclass(frozen=True)
class Options:
    base: str
    rate: float
    users: int
    skus: int
    interval: float
    duration: float | None
    seed: int
    checkout_share: float
    kafka: str | None  # None: no payment system
    topics: dict[str, str]  # event type → topic (SHOP_TOPIC_<NAME>, as the consumers read them)
    paid_share: float
    failed_share: float


@contextlib.asynccontextmanager
async def payment_system(opts: Options, rng: random.Random) -> AsyncIterator[PaymentSystem | None]:
    """The payment system's producer, or None (shoppers only) when there is no broker to talk to."""
    if opts.kafka is None:
        yield None
        return
    producer = AIOKafkaProducer(bootstrap_servers=opts.kafka, acks="all", request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(producer.start(), 15)
    except Exception as exc:
        print(f"no Kafka broker at {opts.kafka} ({exc.__class__.__name__}): shoppers only, no payments", flush=True)
        with contextlib.suppress(Exception):
            await producer.stop()
        yield None
        return
    try:
        yield PaymentSystem(producer, opts.topics, random.Random(rng.random()), opts.paid_share, opts.failed_share)
    finally:
        await producer.stop()


async def run(opts: Options) -> int:
    base, rate = opts.base, opts.rate
    rng = random.Random(opts.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tally = Tally()
    total = Counter[str]()
    started = last = time.monotonic()
    inflight: set[asyncio.Task[None]] = set()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
            payment_system(opts, rng) as payments:

        async def one(path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
            tally.sent += 1
            t0 = time.monotonic()
            try:
                async with session.post(base + path, json=body, headers=headers) as resp:
                    await resp.read()
                    tally.statuses[str(resp.status)] += 1
                    tally.sides[f"{resp.headers.get('X-Edge-Route', '?')}/{resp.headers.get('X-Edge-Backend', '?')}"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.statuses[exc.__class__.__name__] += 1
            tally.latencies.append(time.monotonic() - t0)

        next_at = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if opts.duration is not None and now - started >= opts.duration:
                break
            if now >= next_at:
                if rng.random() < opts.checkout_share:
                    task = asyncio.create_task(checkout(session, base, rng, opts.users, opts.skus, tally, payments))
                else:
                    task = asyncio.create_task(one(*shopper_request(rng, opts.users, opts.skus)))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                next_at += 1.0 / rate
            if now - last >= opts.interval:
                print(tally.line(now - started, now - last), flush=True)
                total.update(tally.statuses)
                tally.reset()
                last = now
            await asyncio.sleep(max(0.0, min(next_at - time.monotonic(), 0.05)))
        if inflight:
            # At the end of --seconds, the orders in payment get to finish (each waits ≤ 20 s per step);
            # after Ctrl-C, only briefly.
            _, late = await asyncio.wait(inflight, timeout=5 if stop.is_set() else 70)
            for task in late:
                task.cancel()
    total.update(tally.statuses)
    print(f"done: {sum(total.values())} requests, statuses {dict(total)}", flush=True)
    if tally.orders:
        print(f"orders: {tally.orders_line()}", flush=True)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description="Drive a realistic shopper mix through the edge, and play the payment system.")
    p.add_argument("--edge", default="http://127.0.0.1:8080")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second")
    p.add_argument("--users", type=int, default=300, help="logged-in users 1..N (demo seed has 1000)")
    p.add_argument("--skus", type=int, default=200)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between summary lines")
    p.add_argument("--seconds", "--duration", dest="seconds", type=float, default=None,
                   help="stop after N seconds, once the orders in payment are done (default: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--checkout-share", type=float, default=0.1, help="share of the actions that are a whole checkout")
    p.add_argument("--kafka", default=None, help="the broker the payment system publishes to (default $SHOP_KAFKA_BOOTSTRAP"
                   " or 127.0.0.1:9092)")
    p.add_argument("--no-payments", action="store_true", help="shoppers only: publish no payment events")
    p.add_argument("--paid-share", type=float, default=0.8, help="share of placed orders captured, then purchased")
    p.add_argument("--failed-share", type=float, default=0.05, help="share of placed orders whose payment fails")
    a = p.parse_args()
    shares = (a.checkout_share, a.paid_share, a.failed_share)
    if not all(0 <= x <= 1 for x in shares) or a.paid_share + a.failed_share > 1:
        p.error("shares are between 0 and 1, and --paid-share + --failed-share at most 1")
    settings = Settings.from_env()
    kafka = None if a.no_payments else (a.kafka or settings.kafka_bootstrap)
    opts = Options(a.edge.rstrip("/"), a.rate, a.users, a.skus, a.interval, a.seconds, a.seed, a.checkout_share,
                   kafka, dict(settings.consumer_topics), a.paid_share, a.failed_share)
    raise SystemExit(asyncio.run(run(opts)))


if __name__ == "__main__":
    main()
