"""`make demo-traffic`: a steady, realistic mix of shoppers through the edge, paying with both PSPs.

Logged-in users (ids from the demo seed) price their carts with their own address, wallet and
coupons and list their coupons; anonymous visitors price a few SKUs with a public code; some
users check out: add to cart, price, place the order with the total they saw (a fresh
Idempotency-Key per checkout), read the order and list its payment methods. Then, like the app:

- PayPal (--paypal-share of the paid ones): ``paypal_pay`` → the shopper at PayPal (a GET of the
  ``approve_url``, which is how the PSP emulator is told the payer approved) → ``paypal_finished``
  (the capture: paid at once);
- Adyen: ``adyen_pay`` with a test card → Authorised; the emulator's AUTHORISATION and CAPTURE
  webhooks go to the edge's ``/payment_callback/adyen``, the bridge writes them to the outbox, the
  relay publishes them and the consumers apply them (paid); --failed-share pay with a card whose
  holderName is ``REFUSED`` (Adyen's test rule): the order reads payment_failed;
- the app says "I have paid" (paid_from_client) for most of the paid orders, harmless by then;
- every paid order's outbox ``purchased`` is applied by the consumers (fulfilling); the demo only
  watches the order detail, as the app's "waiting for payment" screen does;
- for --refund-share of the fulfilling orders, the back office asks ``POST /refund/refund`` (the
  service token of the stack, ``var/service-token``; half of them the whole order, half a part),
  sending the buyer's ``X-User-Id`` so the refund sticks to the buyer's gray bucket like the rest of
  the checkout; the order reads partially_refunded / refunded once its refund succeeded (PayPal at
  once, Adyen by the REFUND webhook).

So a whole checkout runs on whichever side routing.yaml gives each route and each event. The rest
of the orders stay unpaid until the expiry sweeper cancels them.

Every few seconds one line sums up what happened, per route and per side (new / legacy), and what
the orders did (paid per provider, fulfilling, payment_failed, refunds), so the edge's and the
consumers' metrics and dashboards have something to show. Stops after 15 minutes (--seconds N; 0 runs until Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import aiohttp

from common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
REGION_CURRENCY = {"US": "USD", "DE": "EUR", "GB": "GBP", "JP": "JPY"}
PUBLIC_CODES = ("SAVE15", "WELCOME10", "SUMMER20")
# Adyen's test card; holderName REFUSED is refused by the PSP's (and the emulator's) test rules.
CARD = {"type": "scheme", "number": "4111111111111111", "expiryMonth": "03", "expiryYear": "2030", "cvc": "737",
        "holderName": "Demo Shopper"}
REFUSED_CARD = {**CARD, "holderName": "REFUSED"}
RETURN_URL = "https://shop.example/checkout/return"
# How long the demo waits for an order to read a state (webhook → outbox → broker → consumer, twice for fulfilling).
WAIT_SECONDS = 30.0


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    sides: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    # What happened to the placed orders (placed, paid per provider, fulfilling, refunds…); never reset.
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
        known = [f"{k}:{self.orders[k]}" for k in ORDER_STEPS if self.orders[k]]
        other = [f"{k}:{v}" for k, v in sorted(self.orders.items()) if k not in ORDER_STEPS]
        return " ".join(known + other)

    def edge_answer(self, resp: aiohttp.ClientResponse, started: float) -> None:
        self.statuses[str(resp.status)] += 1
        self.sides[f"{resp.headers.get('X-Edge-Route', '?')}/{resp.headers.get('X-Edge-Backend', '?')}"] += 1
        self.latencies.append(time.monotonic() - started)


# The order of the orders summary: what the checkouts did, then what the orders read (through the
# edge's order detail). Anything else counted (an error answer, a stuck order) follows by name.
ORDER_STEPS = ("placed", "paid_paypal", "paid_adyen", "fulfilling", "payment_failed", "refund_asked",
               "partially_refunded", "refunded", "unpaid")


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


@dataclass(frozen=True)
class Payments:
    """How the placed orders are paid, and who may ask for refunds."""
    paid_share: float
    paypal_share: float  # of the paid ones; the rest pay by card (Adyen)
    failed_share: float
    refund_share: float
    service_token: str | None  # None: no refunds

    def outcome(self, rng: random.Random) -> str:
        roll = rng.random()
        if roll < self.failed_share:
            return "refused"
        if roll < self.failed_share + self.paid_share:
            return "paypal" if rng.random() < self.paypal_share else "adyen"
        return "unpaid"


class Shopper:
    """One user's calls through the edge; every answer is tallied like any other request."""

    def __init__(self, session: aiohttp.ClientSession, base: str, rng: random.Random, user: int, tally: Tally) -> None:
        self.session, self.base, self.rng, self.user, self.tally = session, base, rng, user, tally
        self.headers = {"X-User-Id": str(user), "X-Platform": rng.choice(("ios", "android", "web")),
                        "X-App-Version": "5.10.0"}

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   extra: dict[str, str] | None = None) -> tuple[int | str, dict[str, Any]]:
        """(HTTP status or the client error's name, the envelope or {})."""
        t0 = time.monotonic()
        self.tally.sent += 1
        try:
            async with self.session.request(method, self.base + path, json=body,
                                            headers={**self.headers, **(extra or {})}) as resp:
                data = await resp.json(content_type=None)
                self.tally.edge_answer(resp, t0)
                return resp.status, data if isinstance(data, dict) else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.tally.statuses[exc.__class__.__name__] += 1
            return exc.__class__.__name__, {}

    async def detail(self, order_id: str) -> dict[str, Any] | None:
        """The order as the app reads it (not tallied: the app's polling is not the traffic mix); None when unreadable."""
        try:
            async with self.session.get(f"{self.base}/shopping/orders_v43/{order_id}", headers=self.headers) as resp:
                body = await resp.json(content_type=None)
                return body["data"] if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return None

    async def wait_for(self, order_id: str, wanted: tuple[str, ...], timeout: float = WAIT_SECONDS,
                       refunds_done: bool = False) -> dict[str, Any] | None:
        """Poll the detail until the order reads one of `wanted` (and, with refunds_done, no refund is still open)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = await self.detail(order_id)
            if d is not None and d["status"] in wanted and (
                    not refunds_done or all(r["status"] in ("succeeded", "failed") for r in d["refunds"])):
                return d
            await asyncio.sleep(0.5)
        return None


async def checkout(session: aiohttp.ClientSession, base: str, rng: random.Random, users: int, skus: int, tally: Tally,
                   payments: Payments | None = None) -> None:
    """One user's whole checkout, then paying for it (and a refund) as `payments` says."""
    shopper = Shopper(session, base, rng, rng.randint(1, users), tally)
    currency = rng.choice(("USD", "EUR", "GBP", "JPY"))
    await shopper.call("POST", "/shopping/cart", {"sku_id": rng.randint(1, skus), "qty": rng.randint(1, 2)})
    body = {"address_id": shopper.user, "currency": currency, "use_wallet": rng.random() < 0.3}
    status, priced = await shopper.call("POST", "/shopping/cal_price/v4_4", body)
    if status != 200:
        return
    status, placed = await shopper.call(
        "POST", "/shopping/cart/checkout/entries",
        {**body, "expected_total": priced["data"]["summary"]["total"]},
        # A fresh key per checkout, as the apps make one: from the seeded rng, a second demo run
        # would replay the first run's keys and "place" (and pay again) orders already paid.
        {"Idempotency-Key": f"demo-{uuid.uuid4().hex}"},
    )
    if status != 200:
        return
    order_id, total = placed["data"]["order_id"], placed["data"]["total"]
    tally.orders["placed"] += 1
    await shopper.call("GET", f"/shopping/orders_v43/{order_id}")
    await shopper.call("GET", f"/shopping/orders/{order_id}/pay_cm")
    if payments is not None:
        await pay(shopper, payments, order_id, total)


async def pay(shopper: Shopper, payments: Payments, order_id: str, total: str) -> None:
    tally, rng = shopper.tally, shopper.rng
    how = payments.outcome(rng)
    if how == "unpaid":
        tally.orders["unpaid"] += 1
        return
    await asyncio.sleep(rng.uniform(0.2, 1.0))  # the shopper picks a method
    paid = await (pay_paypal(shopper, order_id) if how == "paypal" else pay_card(shopper, order_id, how == "refused"))
    if not paid:
        return
    if rng.random() < 0.7:
        # The app says it has paid once the PSP's page said so: harmless now, it answers the current status.
        await shopper.call("POST", f"/shopping/orders/{order_id}/paid_from_client", {})
    # `purchased` (the outbox's, from whichever side moved the order to paid) → the consumers → fulfilling.
    if await shopper.wait_for(order_id, ("fulfilling",)) is None:
        tally.orders["stuck_before_fulfilling"] += 1
        return
    tally.orders["fulfilling"] += 1
    if payments.service_token is not None and rng.random() < payments.refund_share:
        await refund(shopper, payments.service_token, order_id, total)


def _failed(shopper: Shopper, route: str, status: int | str, body: dict[str, Any]) -> bool:
    shopper.tally.orders[f"{route}_{status}_{body.get('msg', '')}".rstrip("_")] += 1
    return False


async def pay_paypal(shopper: Shopper, order_id: str) -> bool:
    """paypal_pay, the payer approving at PayPal, paypal_finished; True once the order is paid."""
    status, made = await shopper.call("POST", f"/shopping/orders/{order_id}/pay/paypal/paypal")
    if status != 200:
        return _failed(shopper, "paypal_pay", status, made)
    await asyncio.sleep(shopper.rng.uniform(0.2, 1.0))  # the payer at PayPal
    try:
        # The approve link is PayPal's page (the PSP emulator's), not the edge's; it redirects to our return URL.
        async with shopper.session.get(made["data"]["approve_url"], allow_redirects=False) as resp:
            approved = resp.status in (200, 302, 303)
    except (aiohttp.ClientError, TimeoutError):
        approved = False
    if not approved:
        shopper.tally.orders["paypal_not_approved"] += 1
        return False
    status, done = await shopper.call("POST", f"/shopping/orders/{order_id}/paypal_finished/{made['data']['pay_id']}")
    if status != 200 or done["data"]["status"] not in ("paid", "fulfilling"):
        return _failed(shopper, "paypal_finished", status, done)
    shopper.tally.orders["paid_paypal"] += 1
    return True


async def pay_card(shopper: Shopper, order_id: str, refused: bool) -> bool:
    """adyen_pay; Authorised → the CAPTURE webhook makes it paid; a refused card → payment_failed. True once paid."""
    body = {"paymentMethod": REFUSED_CARD if refused else CARD, "returnUrl": RETURN_URL,
            "browserInfo": {"userAgent": "demo-traffic", "acceptHeader": "*/*"}}
    status, answer = await shopper.call("POST", f"/shopping/orders/{order_id}/pay/any/adyen", body)
    if status != 200:
        return _failed(shopper, "adyen_pay", status, answer)
    result = answer["data"]["resultCode"]
    if refused or result != "Authorised":
        if await shopper.wait_for(order_id, ("payment_failed",)) is not None:
            shopper.tally.orders["payment_failed"] += 1
        else:
            shopper.tally.orders[f"adyen_{result}"] += 1
        return False
    if await shopper.wait_for(order_id, ("paid", "fulfilling")) is None:
        shopper.tally.orders["stuck_authorized"] += 1
        return False
    shopper.tally.orders["paid_adyen"] += 1
    return True


def partial_amount(rng: random.Random, total: str) -> str:
    """A part (20–60 %) of `total`, with the total's own decimals (none for JPY), rounded down; at least one unit."""
    places = len(total.partition(".")[2])
    unit = Decimal(1).scaleb(-places)
    part = (Decimal(total) * Decimal(str(round(rng.uniform(0.2, 0.6), 2)))).quantize(unit, rounding=ROUND_DOWN)
    return str(max(part, unit))


async def refund(shopper: Shopper, token: str, order_id: str, total: str) -> None:
    """The back office gives the whole order back, or a part; the order reads refunded / partially_refunded."""
    whole = shopper.rng.random() < 0.5
    body: dict[str, Any] = {"order_id": order_id, "request_id": f"demo-{uuid.uuid4().hex}",
                            "reason": "demo: the customer asked"}
    if not whole:
        body["amount"] = partial_amount(shopper.rng, total)
    shopper.tally.orders["refund_asked"] += 1
    status, answer = await shopper.call("POST", "/refund/refund", body, {"Authorization": f"Bearer {token}"})
    if status != 200:
        _failed(shopper, "refund", status, answer)
        return
    wanted = "refunded" if whole else "partially_refunded"
    d = await shopper.wait_for(order_id, (wanted,), refunds_done=True)
    if d is not None and all(r["status"] == "succeeded" for r in d["refunds"]):
        shopper.tally.orders[wanted] += 1
    else:
        shopper.tally.orders[f"refund_{answer['data']['status']}_not_done"] += 1


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
    payments: Payments | None  # None: shoppers only


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
    if opts.payments is not None and opts.payments.service_token is None:
        print("no service token (SHOP_SERVICE_TOKEN or --service-token-file): no refunds", flush=True)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:

        async def one(path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
            tally.sent += 1
            t0 = time.monotonic()
            try:
                async with session.post(base + path, json=body, headers=headers) as resp:
                    await resp.read()
                    tally.edge_answer(resp, t0)
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.statuses[exc.__class__.__name__] += 1

        next_at = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if opts.duration is not None and now - started >= opts.duration:
                break
            if now >= next_at:
                if rng.random() < opts.checkout_share:
                    task = asyncio.create_task(checkout(session, base, random.Random(rng.random()), opts.users, opts.skus,
                                                        tally, opts.payments))
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
            # At the end of --seconds, the orders in payment get to finish (each waits ≤ 30 s per step);
            # after Ctrl-C, only briefly.
            _, late = await asyncio.wait(inflight, timeout=5 if stop.is_set() else 90)
            for task in late:
                task.cancel()
    total.update(tally.statuses)
    print(f"done: {sum(total.values())} requests, statuses {dict(total)}", flush=True)
    if tally.orders:
        print(f"orders: {tally.orders_line()}", flush=True)
    return 0


def read_token(settings: Settings, path: Path) -> str | None:
    """SHOP_SERVICE_TOKEN, else the one `make run` wrote for this stack; None when neither is there."""
    if settings.service_token:
        return settings.service_token
    try:
        return path.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


# Left running in a forgotten terminal, the demo filled var/log at ~1.5 MB a minute: it stops by itself.
DEFAULT_SECONDS = 15 * 60


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Drive a realistic shopper mix through the edge, paying with PayPal and Adyen.")
    p.add_argument("--edge", default="http://127.0.0.1:8080")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second")
    p.add_argument("--users", type=int, default=300, help="logged-in users 1..N (demo seed has 1000)")
    p.add_argument("--skus", type=int, default=200)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between summary lines")
    p.add_argument("--seconds", "--duration", dest="seconds", type=float, default=DEFAULT_SECONDS,
                   help="stop after N seconds, once the orders in payment are done (default 900 = 15 min; 0: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--checkout-share", type=float, default=0.1, help="share of the actions that are a whole checkout")
    p.add_argument("--no-payments", action="store_true", help="shoppers only: place orders, pay none")
    p.add_argument("--paid-share", type=float, default=0.8, help="share of placed orders paid (PayPal or a card)")
    p.add_argument("--paypal-share", type=float, default=0.5, help="share of the paid orders paid with PayPal")
    p.add_argument("--failed-share", type=float, default=0.05, help="share of placed orders paid with a refused card")
    p.add_argument("--refund-share", type=float, default=0.2, help="share of the fulfilling orders refunded (half whole, half a part)")
    p.add_argument("--service-token-file", type=Path, default=ROOT / "var" / "service-token",
                   help="the refund API's token when SHOP_SERVICE_TOKEN is not set (make run writes it there)")
    return p


def main() -> None:
    p = build_parser()
    a = p.parse_args()
    shares = (a.checkout_share, a.paid_share, a.failed_share, a.paypal_share, a.refund_share)
    if not all(0 <= x <= 1 for x in shares) or a.paid_share + a.failed_share > 1:
        p.error("shares are between 0 and 1, and --paid-share + --failed-share at most 1")
    payments = None if a.no_payments else Payments(
        a.paid_share, a.paypal_share, a.failed_share, a.refund_share, read_token(Settings.from_env(), a.service_token_file))
    opts = Options(a.edge.rstrip("/"), a.rate, a.users, a.skus, a.interval, a.seconds or None, a.seed, a.checkout_share, payments)
    raise SystemExit(asyncio.run(run(opts)))


if __name__ == "__main__":
    main()
