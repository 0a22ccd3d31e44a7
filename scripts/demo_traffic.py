"""`make demo-traffic`: a steady, realistic mix of shoppers through the edge until Ctrl-C.

Logged-in users (ids from the demo seed) price their carts with their own address, wallet and
coupons and list their coupons; anonymous visitors price a few SKUs with a public code; some
users check out: add to cart, price, place the order with the total they saw, read the order,
list its payment methods and report payment from the app. Every
few seconds one line sums up what happened, per route and per side (new / legacy), so the
edge's metrics and shadow pages have something to show.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

REGION_CURRENCY = {"US": "USD", "DE": "EUR", "GB": "GBP", "JP": "JPY"}
PUBLIC_CODES = ("SAVE15", "WELCOME10", "SUMMER20")


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    sides: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

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
        return (
            f"[{elapsed:6.0f}s] {self.sent / window:6.1f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  "
            f"status {statuses}  side {sides}"
        )


def shopper_request(rng: random.Random, users: int, skus: int) -> tuple[str, dict[str, Any], dict[str, str]]:
    """One shopper action: (path, JSON body, headers)."""
    if rng.random() < 0.2:
        region = rng.choice(tuple(REGION_CURRENCY))
        items = [{"sku_id": s, "qty": rng.randint(1, 3)} for s in rng.sample(range(1, 21), rng.randint(1, 4))]
        body = {"items": items, "region": region, "currency": REGION_CURRENCY[region], "coupon_code": rng.choice(PUBLIC_CODES)}
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


async def checkout(session: aiohttp.ClientSession, base: str, rng: random.Random, users: int, skus: int, tally: Tally) -> None:
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
        {"Idempotency-Key": f"demo-{rng.getrandbits(64):016x}"},
    )
    if placed is None:
        return
    order_id = placed["data"]["order_id"]
    await call("GET", f"/shopping/orders_v43/{order_id}")
    await call("GET", f"/shopping/orders/{order_id}/pay_cm")
    if rng.random() < 0.7:
        await call("POST", f"/shopping/orders/{order_id}/paid_from_client", {})


async def run(base: str, rate: float, users: int, skus: int, interval: float, duration: float | None, seed: int) -> int:
    rng = random.Random(seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tally = Tally()
    total = Counter[str]()
    started = last = time.monotonic()
    inflight: set[asyncio.Task[None]] = set()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

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
            if duration is not None and now - started >= duration:
                break
            if now >= next_at:
                if rng.random() < 0.1:
                    task = asyncio.create_task(checkout(session, base, rng, users, skus, tally))
                else:
                    task = asyncio.create_task(one(*shopper_request(rng, users, skus)))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                next_at += 1.0 / rate
            if now - last >= interval:
                print(tally.line(now - started, now - last), flush=True)
                total.update(tally.statuses)
                tally.reset()
                last = now
            await asyncio.sleep(max(0.0, min(next_at - time.monotonic(), 0.05)))
        if inflight:
            await asyncio.wait(inflight, timeout=10)
    total.update(tally.statuses)
    print(f"done: {sum(total.values())} requests, statuses {dict(total)}", flush=True)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description="Drive a realistic shopper mix through the edge.")
    p.add_argument("--edge", default="http://127.0.0.1:8080")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second")
    p.add_argument("--users", type=int, default=300, help="logged-in users 1..N (demo seed has 1000)")
    p.add_argument("--skus", type=int, default=200)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between summary lines")
    p.add_argument("--duration", type=float, default=None, help="stop after N seconds (default: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    raise SystemExit(asyncio.run(run(a.edge.rstrip("/"), a.rate, a.users, a.skus, a.interval, a.duration, a.seed)))


if __name__ == "__main__":
    main()
