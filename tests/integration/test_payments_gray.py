"""The pay routes and the refund API grayed between old shopping and the new side (issue 11), on MariaDB.

Old shopping (emulators/legacy, its own PSP calls) and the new side (shop/payments.py behind the edge)
write the same rows and call the same PSP emulator. What this proves:

- At 0, 20, 80 and 100 % new, many orders of several users, paid with PayPal (pay, the payer approves,
  finished) and Adyen through the edge, each user on the side its bucket says for every call (sticky
  by X-User-Id), and refunded through the edge: every order ends paid (PayPal) or authorized (Adyen)
  exactly once, with one captured / authorised payment for exactly its total, in our database and in
  the PSP's books; refunds give back exactly what was asked, once.
- A user whose side flips between two calls of one payment, because the percentage moved while a
  second edge process still routes by the old one: old shopping and the new side finishing the same
  PayPal payment at once, or taking the same Adyen tap twice at once, charge once: per order at most
  one captured/authorised payment in the database and at the PSP, the order paid once in its history.

The refund route is dialled only where the new side has a refund handler (NEW_ROUTES); on a branch where
it is still a placeholder it stays at 0 % and old shopping answers every refund.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.amounts import adyen_minor, paypal_value
from common.buckets import bucket_of
from emulators.legacy import create_app as create_legacy_app
from handlers.routes import NEW_ROUTES
from proxy.app import ROUTING, create_app
from shop import schema as t
from tests.support.edge import SERVICE_TOKEN, edge_settings, routing_doc, url_of, write_routing
from tests.support.legacydb import engine_for, private_mariadb
from tests.support.payments import (ADYEN_BODY, PAY_ROUTES, adyen_path, finish_path, legacy_psp, new_order, pay_path,
                                     psp_settings, rows)
from tests.support.psp import Psp

pytest_plugins = ["tests.support.psp_fixtures"]

ClientFactory = Callable[..., Awaitable[TestClient]]
PRIVATE_MARIADB_DATABASE = "test_payments_gray"
REFUND_PATH = "/refund/refund"
REFUND_DIALLED = not NEW_ROUTES["refund"].placeholder
PERCENTS = [0, 20, 80, 100]


def routes(percent: int) -> dict[str, dict[str, Any]]:
    """The three pay routes and refund at `percent` (refund at 0 while the new side has no handler for it)."""
    table = {name: {"match": {"methods": ["POST"], "path": path}, "new_percent": percent, "writes": True,
                    "timeout_ms": 10000} for name, path in PAY_ROUTES.items()}
    table["refund"] = {"match": {"methods": ["POST"], "path": REFUND_PATH},
                       "new_percent": percent if REFUND_DIALLED else 0, "writes": True, "timeout_ms": 10000}
    return table


def side_of(user: int, percent: int, route: str = "paypal_pay") -> str:
    if route == "refund" and not REFUND_DIALLED:
        return "legacy"
    return "new" if bucket_of(str(user)) < percent * 100 else "legacy"


def users_by_band(per_band: int) -> list[int]:
    """Users whose buckets lie below 20 %, between 20 and 80 %, and above 80 %: every share splits them."""
    bands: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for user in range(2, 400):
        b = bucket_of(str(user))
        band = bands[0 if b < 2000 else 2 if b >= 8000 else 1]
        if len(band) < per_band:
            band.append(user)
    return [u for band in bands.values() for u in band]


def between_20_and_80(n: int) -> list[int]:
    return [u for u in range(2, 400) if 2000 <= bucket_of(str(u)) < 8000][:n]


# --- the two sides and the edges in front of them --------------------------------------------------


@dataclass
class Edge:
    """One edge process (in-process app) with its own routing.yaml, as each of several edges has."""

    client: TestClient
    routing: Path
    legacy_url: str

    async def dial(self, percent: int) -> None:
        """Write the file as ops would and wait until this edge has loaded it."""
        write_routing(self.routing, routing_doc(self.legacy_url, **routes(percent)))
        table = self.client.server.app[ROUTING]
        deadline = time.monotonic() + 10
        while table.table.routes["paypal_pay"].new_percent != percent:
            assert time.monotonic() < deadline, "the edge did not load the new routing.yaml"
            await asyncio.sleep(0.02)

    async def post(self, path: str, user: int, body: Any = None, **headers: str) -> tuple[int, dict[str, Any], str]:
        resp = await self.client.post(path, json=body, headers={"X-User-Id": str(user), "X-Platform": "ios", **headers})
        return resp.status, await resp.json(), resp.headers.get("X-Edge-Backend", "")


@pytest.fixture
async def url() -> str:
    return await private_mariadb(PRIVATE_MARIADB_DATABASE)


@pytest.fixture
async def db(url: str) -> AsyncIterator[AsyncEngine]:
    async for engine in engine_for(url):
        yield engine


@pytest.fixture
async def legacy(url: str, psp: Psp, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await aiohttp_server(create_legacy_app(url, psp=legacy_psp(psp), service_token=SERVICE_TOKEN))


@pytest.fixture
def make_edge(aiohttp_client: ClientFactory, tmp_path: Path, url: str, psp: Psp,
              legacy: TestServer) -> Callable[[str, int], Awaitable[Edge]]:
    async def make(name: str, percent: int) -> Edge:
        legacy_url = url_of(legacy)
        (tmp_path / name).mkdir()
        routing = write_routing(tmp_path / name / "routing.yaml", routing_doc(legacy_url, **routes(percent)))
        settings = edge_settings(routing, legacy_url, db_url=url, **psp_settings(psp))
        return Edge(await aiohttp_client(create_app(settings, registry=CollectorRegistry())), routing, legacy_url)

    return make


# --- one shopper's calls --------------------------------------------------------------------------


async def paypal_pay(edge: Edge, psp: Psp, order_id: str, user: int, side: str) -> str:
    """Pay through `edge` on `side`, the payer approves; the pay_id."""
    status, made, served = await edge.post(pay_path(order_id), user)
    assert (status, served) == (200, side), made
    assert await psp.approve(made["data"]["approve_url"]) == 200
    return str(made["data"]["pay_id"])


async def pay_with_paypal(edge: Edge, psp: Psp, order_id: str, user: int, side: str) -> None:
    pay_id = await paypal_pay(edge, psp, order_id, user, side)
    status, done, served = await edge.post(finish_path(order_id, pay_id), user)
    assert (status, served, done["data"]) == (200, side, {"order_id": order_id, "status": "paid"}), done


async def pay_with_adyen(edge: Edge, order_id: str, user: int, side: str) -> None:
    status, paid, served = await edge.post(adyen_path(order_id), user, ADYEN_BODY)
    assert (status, served, paid["data"]["resultCode"]) == (200, side, "Authorised"), paid


async def refund(edge: Edge, order_id: str, user: int, request_id: str, amount: str | None = None) -> tuple[dict, str]:
    body: dict[str, Any] = {"order_id": order_id, "request_id": request_id, "reason": "gray test"}
    if amount is not None:
        body["amount"] = amount
    # The owner's id only picks the side (the sticky key); the refund API itself takes the service token.
    status, answer, served = await edge.post(REFUND_PATH, user, body, Authorization=f"Bearer {SERVICE_TOKEN}")
    assert status == 200, answer
    return answer["data"], served


# --- the books ------------------------------------------------------------------------------------


async def charged_once(db: AsyncEngine, psp: Psp, orders: dict[str, str]) -> None:
    """Each order (id → provider) has one captured (PayPal) / authorised (Adyen) payment for exactly its
    total, in our rows and in the PSP's books, and was paid / authorised once in its history."""
    state = await psp.state()
    paypal_orders = state["paypal"]["orders"]
    captures: Counter[str] = Counter()
    for capture in state["paypal"]["captures"].values():
        if capture["status"] == "COMPLETED":
            captures[paypal_orders[capture["order_id"]]["reference_id"]] += 1
    authorised = Counter(p["merchantReference"] for p in state["adyen"]["payments"].values() if p["status"] == "Authorised")
    for order_id, provider in orders.items():
        (order,) = await rows(db, t.orders, t.orders.c.id == order_id)
        money = [p for p in await rows(db, t.payments, t.payments.c.order_id == order_id)
                 if p.status in ("authorized", "captured")]
        assert len(money) == 1, (order_id, [(p.id, p.status, p.idempotency_key) for p in money])
        assert (money[0].provider, money[0].amount, money[0].currency) == (provider, order.total, order.currency)
        history = Counter(h.to_status for h in await rows(db, t.order_status_history,
                                                          t.order_status_history.c.order_id == order_id))
        if provider == "paypal":
            assert (money[0].status, history["paid"], captures[order_id]) == ("captured", 1, 1), order_id
            (captured,) = [c for c in state["paypal"]["captures"].values()
                           if paypal_orders[c["order_id"]]["reference_id"] == order_id and c["status"] == "COMPLETED"]
            assert captured["amount"] == {"currency_code": order.currency,
                                          "value": paypal_value(order.total, order.currency)}
        else:
            assert (money[0].status, history["authorized"], authorised[order_id]) == ("authorized", 1, 1), order_id
            (held,) = [p for p in state["adyen"]["payments"].values()
                       if p["merchantReference"] == order_id and p["status"] == "Authorised"]
            assert held["amount"] == {"currency": order.currency, "value": adyen_minor(order.total, order.currency)}


# --- every gray share ------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", PERCENTS)
async def test_paying_and_refunding_at_every_gray_share(make_edge: Callable[[str, int], Awaitable[Edge]],
                                                        db: AsyncEngine, psp: Psp, percent: int) -> None:
    edge = await make_edge("edge", percent)
    users = users_by_band(2)
    currencies = ["EUR", "USD", "JPY", "GBP"]
    plan: dict[int, tuple[str, str, str]] = {}
    for n, user in enumerate(users):
        currency = currencies[n % len(currencies)]
        total = "9607" if currency == "JPY" else "96.07"
        plan[user] = (await new_order(db, user_id=user, currency=currency, total=total),
                      await new_order(db, user_id=user, currency=currency, total=total),
                      await new_order(db, user_id=user, currency=currency, total=total))

    async def shop(user: int) -> None:
        first, second, card = plan[user]
        side = side_of(user, percent)
        await pay_with_paypal(edge, psp, first, user, side)
        await pay_with_adyen(edge, card, user, side)
        await pay_with_paypal(edge, psp, second, user, side)

    await asyncio.gather(*(shop(user) for user in users))  # the users at once
    orders = {oid: provider for ids in plan.values() for oid, provider in zip(ids, ("paypal", "paypal", "adyen"))}
    await charged_once(db, psp, orders)
    assert {side_of(u, percent) for u in users} == (
        {"legacy"} if percent == 0 else {"new"} if percent == 100 else {"new", "legacy"})

    async def give_back(user: int) -> None:
        first, second, _ = plan[user]
        side = side_of(user, percent, "refund")
        part = "10" if (await rows(db, t.orders, t.orders.c.id == first))[0].currency == "JPY" else "10.00"
        answers = await asyncio.gather(refund(edge, first, user, f"part-{first}", part),
                                       refund(edge, first, user, f"part-{first}", part))  # the same request twice
        assert [served for _, served in answers] == [side, side]
        # One refund: the copy is answered with it (still pending while the first copy waits for PayPal).
        assert answers[0][0]["refund_id"] == answers[1][0]["refund_id"], answers
        statuses = {a["status"] for a, _ in answers}
        assert statuses <= {"succeeded", "pending"} and "succeeded" in statuses, answers
        done, served = await refund(edge, second, user, f"all-{second}")
        assert (done["status"], served) == ("succeeded", side), done

    await asyncio.gather(*(give_back(user) for user in users))
    refunds = (await psp.state())["paypal"]["refunds"]
    assert len(refunds) == 2 * len(users)  # one PSP refund per refund asked for, whichever side, copies included
    asked = Decimal(0)
    for first, second, _ in plan.values():
        (part,) = await rows(db, t.refunds, t.refunds.c.order_id == first)
        (order,) = await rows(db, t.orders, t.orders.c.id == first)
        assert (part.status, part.amount, order.status) == ("succeeded", Decimal("10"), "partially_refunded")
        (whole,) = await rows(db, t.refunds, t.refunds.c.order_id == second)
        (order,) = await rows(db, t.orders, t.orders.c.id == second)
        assert (whole.status, whole.amount, order.status) == ("succeeded", order.total, "refunded")
        asked += part.amount + whole.amount
    assert sum(Decimal(r["amount"]["value"]) for r in refunds.values()) == asked  # PayPal gave back exactly that


# --- a user whose side flips in the middle of a payment -------------------------------------------


@pytest.mark.parametrize("direction", ["forward", "rollback"])
async def test_a_user_whose_side_flips_mid_payment_is_charged_once(make_edge: Callable[[str, int], Awaitable[Edge]],
                                                                   db: AsyncEngine, psp: Psp, direction: str) -> None:
    """Two edge processes: one has loaded the new percentage, the other not yet. Users between 20 and 80 %
    start paying on one side; the percentage moves (20 → 80, or back as a rollback) on the first edge
    only, and the app's next calls reach both edges at once (a retry, a double tap)."""
    before, after = (20, 80) if direction == "forward" else (80, 20)
    moved, stale = await make_edge("moved", before), await make_edge("stale", before)
    users = between_20_and_80(4)
    old_side, new_side = side_of(users[0], before), side_of(users[0], after)
    assert old_side != new_side and all(side_of(u, before) == old_side for u in users)
    pending: dict[int, tuple[str, str]] = {}
    for user in users:
        order_id = await new_order(db, user_id=user)
        pending[user] = (order_id, await paypal_pay(moved, psp, order_id, user, old_side))
    cards = {user: await new_order(db, user_id=user) for user in users}

    await moved.dial(after)

    async def finish_on_both(user: int) -> None:
        order_id, pay_id = pending[user]
        answers = await asyncio.gather(*(edge.post(finish_path(order_id, pay_id), user)
                                         for edge in (moved, stale, moved, stale)))
        assert [served for _, _, served in answers] == [new_side, old_side, new_side, old_side]
        for status, done, _ in answers:
            assert (status, done["data"]) == (200, {"order_id": order_id, "status": "paid"}), answers

    async def tap_twice(user: int, first: Edge, second: Edge) -> list[tuple[int, dict[str, Any], str]]:
        """The same card tapped twice: the second tap 250 ms after the first, while Adyen is still at it."""
        async def later() -> tuple[int, dict[str, Any], str]:
            await asyncio.sleep(0.25)
            return await second.post(adyen_path(cards[user]), user, ADYEN_BODY)

        return list(await asyncio.gather(first.post(adyen_path(cards[user]), user, ADYEN_BODY), later()))

    await asyncio.gather(*(finish_on_both(user) for user in users))
    # Adyen answering in 1 s (a slow 3-D Secure-free card payment): the second tap arrives while the first is
    # being charged. Half the users tap the moved edge first, half the stale one, so each side meets the
    # other's charge under way.
    await psp.fault(path="/v71/payments", delay_ms=1000)
    orderings = [(moved, stale) if n % 2 else (stale, moved) for n in range(len(users))]
    taps = await asyncio.gather(*(tap_twice(user, *edges) for user, edges in zip(users, orderings)))
    refused_by = set()
    for user, answers in zip(users, taps):
        outcomes = sorted((status, body["data"].get("resultCode") if status == 200 else body["msg"], served)
                          for status, body, served in answers)
        # One tap is the charge; the other is told a payment of the order is under way (or, had it come
        # later, that the order is authorized already). Never a second charge (charged_once below).
        assert [o[:2] for o in outcomes][0] == (200, "Authorised"), answers
        assert outcomes[1][:2] in ((409, "payment_in_progress"), (409, "invalid_state")), answers
        assert {o[2] for o in outcomes} == {"new", "legacy"}
        refused_by |= {served for status, body, served in answers if status == 409 and body["msg"] == "payment_in_progress"}
    assert refused_by == {"new", "legacy"}  # both sides' own check was put to the test
    orders = {order_id: "paypal" for order_id, _ in pending.values()} | {oid: "adyen" for oid in cards.values()}
    await charged_once(db, psp, orders)
    for user in users:  # each finish reached PayPal with the same key, whichever side sent it
        order_id, _ = pending[user]
        (payment,) = await rows(db, t.payments, t.payments.c.order_id == order_id)
        keys = {c["key"] for c in await psp.calls("POST", "/capture") if c["path"].startswith("/v2/checkout/orders/")
                and c["path"].split("/")[4] == payment.paypal_order_id}
        assert keys == {f"{payment.idempotency_key}:capture"}

    if REFUND_DIALLED:  # the same refund asked on both sides at once is one refund
        user = users[0]
        order_id, _ = pending[user]
        body = {"order_id": order_id, "request_id": f"flip-{order_id}", "reason": "gray test"}
        answers = await asyncio.gather(*(edge.post(REFUND_PATH, user, body, Authorization=f"Bearer {SERVICE_TOKEN}")
                                         for edge in (moved, stale)))
        assert [served for _, _, served in answers] == [side_of(user, after, "refund"), side_of(user, before, "refund")]
        assert len({answer["data"]["refund_id"] for status, answer, _ in answers if status == 200}) == 1, answers
        assert len(await rows(db, t.refunds, t.refunds.c.order_id == order_id)) == 1
