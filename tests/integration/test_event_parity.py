"""Old shopping's `/event/*` (the emulator) and the new side's event functions leave the same rows.

Two MariaDB databases start as exact copies: one seeded shop with a handful of orders placed by the
checkout service (the worked example with its coupon and wallet, and demo buyers' carts with their
wallets). The same sequence of events, with the same steps between them (a buyer paying again, a
cancel, refund requests), is applied to one copy by old shopping's emulator (delivered the way the
consumer delivers, consumers/legacy_delivery.py) and to the other by the new side (what the consumer
applies, consumers/events.apply_locally). Afterwards the two databases hold the same orders,
payments, refunds, coupons, wallets and ledger, carts, stock, outbox rows and history transitions
(actor and timestamps apart), and both sides refused the same events.

Also here: when old shopping is in the middle of applying an event, the new side applying the same
event waits for its order row lock and then finds the payment old shopping wrote (one payment, not two).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select, text

from common.settings import DEFAULT_TOPICS
from consumers.events import apply_locally
from consumers.legacy_delivery import LegacyDelivery, LegacyNotYet, legacy_session
from consumers.runner import Event, PoisonMessage
from emulators.legacy import events as legacy_events
from emulators.legacy.app import create_app
from shop import schema as t
from shop.bootstrap import Shop
from shop.checkout import parse_order_request, place_order
from shop.errors import Conflict
from shop.events import EVENT_TYPES, NotYet
from shop.order_views import paid_from_client
from shop.reservations import release_all
from tests.builders import NOW
from tests.support.edge import url_of
from tests.support.event_stream import authorized, captured, failed, inserted_id, private_shop, purchased, refund_done
from tests.support.net import free_port
from tests.support.shopdb import demo_buyers

WORKED = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True, "expected_total": "96.07"}

Apply = Callable[[str, dict[str, Any]], Awaitable[str]]


async def place(shop: Shop, user: int, body: dict[str, Any]) -> str:
    """An order of `user` placed by the checkout service at the total it quotes."""
    req = {**body, "expected_total": body.get("expected_total", "0.00")}
    try:
        return (await place_order(shop, parse_order_request(req, f"parity-{user}", "ios", "5.10.0"), user)).order_id
    except Conflict as exc:  # price_changed: the quote to place it at
        req["expected_total"] = exc.data["summary"]["total"]
    return (await place_order(shop, parse_order_request(req, f"parity-{user}", "ios", "5.10.0"), user)).order_id


async def copy_database(source: Shop, target: Shop) -> None:
    """`target`'s tables become a copy of `source`'s, row for row (two databases of one server)."""
    async with source.db.begin() as conn:
        await conn.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
        for table in t.metadata.sorted_tables:
            into, source_table = f"`{target.db.url.database}`.`{table.name}`", f"`{source.db.url.database}`.`{table.name}`"
            await conn.execute(text(f"DELETE FROM {into}"))
            await conn.execute(text(f"INSERT INTO {into} SELECT * FROM {source_table}"))


class Side:
    """One copy of the shop and the way one side applies an event to it."""

    def __init__(self, shop: Shop, apply: Apply) -> None:
        self.shop, self.apply = shop, apply
        self.answers: list[str] = []

    async def event(self, event_type: str, payload: dict[str, Any]) -> None:
        try:
            await self.apply(event_type, payload)
            self.answers.append("applied")  # processed, duplicate or forwarded: the rows tell which
        except PoisonMessage:
            self.answers.append("refused")
        except (NotYet, LegacyNotYet):
            self.answers.append("not_yet")


def new_side(shop: Shop) -> Apply:
    appliers = {name: apply_locally(shop, et) for name, et in EVENT_TYPES.items()}
    offsets = iter(range(1_000_000))

    async def apply(event_type: str, payload: dict[str, Any]) -> str:
        return await appliers[event_type](Event(DEFAULT_TOPICS[event_type], 0, next(offsets), payload.get("order_id"), payload))

    return apply


def old_side(delivery: LegacyDelivery) -> Apply:
    offsets = iter(range(1_000_000))

    async def apply(event_type: str, payload: dict[str, Any]) -> str:
        return await delivery.deliver(event_type, Event(DEFAULT_TOPICS[event_type], 0, next(offsets), payload.get("order_id"), payload))

    return apply


@pytest.fixture
async def copies() -> AsyncIterator[tuple[Shop, Shop, list[str]]]:
    """(the shop old shopping applies to, the shop the new side applies to, the orders), identical at the start."""
    async with private_shop("parity_new") as new, private_shop("parity_old") as old:
        orders = [await place(new, 1, WORKED)]
        for user in demo_buyers(6):
            orders.append(await place(new, user, {"address_id": user, "currency": "USD", "use_wallet": True}))
        await copy_database(new, old)
        yield old, new, orders


async def order_money(shop: Shop, order_id: str) -> tuple[str, str]:
    o = t.orders.c
    async with shop.db.connect() as conn:
        row = (await conn.execute(select(o.total, o.currency).where(o.id == order_id))).one()
    return str(row.total), row.currency


async def snapshot(shop: Shop, orders: list[str]) -> dict[str, Any]:
    """Everything an event can change, without ids the two sides allocate, timestamps and actors."""
    o, p, r, u, w, lg, c, h, ob, pe, i = (tb.c for tb in (
        t.orders, t.payments, t.refunds, t.user_coupons, t.wallets, t.wallet_ledger, t.cart_items,
        t.order_status_history, t.outbox, t.processed_events, t.order_items))
    async with shop.db.connect() as conn:
        async def rows(stmt: Any) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in await conn.execute(stmt)]

        users = [row[0] for row in await rows(select(o.user_id).where(o.id.in_(orders)))]
        skus = select(i.sku_id).where(i.order_id.in_(orders))
        outbox = [(key, topic, {k: v for k, v in (payload or {}).items() if k != "occurred_at"})
                  for key, topic, payload in await rows(select(ob.key, ob.topic, ob.payload).where(ob.key.in_(orders)).order_by(ob.id))]
        return {
            "orders": await rows(select(o.id, o.status, o.paid_at.is_not(None), o.total, o.currency, o.wallet_deduction)
                                 .where(o.id.in_(orders)).order_by(o.id)),
            "payments": sorted(await rows(select(p.order_id, p.provider, p.status, p.amount, p.currency, p.psp_reference)
                                          .where(p.order_id.in_(orders)))),
            "refunds": await rows(select(r.id, r.order_id, r.status, r.attempts, r.next_attempt_at.is_not(None), r.reason,
                                         r.psp_reference).where(r.order_id.in_(orders)).order_by(r.id)),
            "coupons": await rows(select(u.id, u.status, u.order_id, u.used_at.is_not(None)).where(u.user_id.in_(users)).order_by(u.id)),
            "wallets": await rows(select(w.user_id, w.balance).where(w.user_id.in_(users)).order_by(w.user_id)),
            "ledger": sorted(await rows(select(lg.user_id, lg.order_id, lg.kind, lg.amount).where(lg.order_id.in_(orders)))),
            "carts": await rows(select(c.user_id, c.sku_id, c.qty).where(c.user_id.in_(users)).order_by(c.user_id, c.sku_id)),
            "stock": await rows(select(t.skus.c.id, t.skus.c.stock).where(t.skus.c.id.in_(skus)).order_by(t.skus.c.id)),
            "history": await rows(select(h.order_id, h.from_status, h.to_status, h.reason).where(h.order_id.in_(orders))
                                  .order_by(h.order_id, h.id)),
            "outbox": sorted(outbox, key=lambda row: row[0]),  # per key in id order (a stable sort keeps it)
            "claimed": sorted(e for (e,) in await rows(select(pe.event_id).where(~pe.event_id.like("gu-%")))),
        }


async def new_refund(shop: Shop, order_id: str, amount: str, *, attempts: int, request_id: str) -> int:
    """A refund row as the refund API writes it once the PSP has the request."""
    async with shop.tx("new") as uow:
        payment = (await uow.conn.execute(select(func.min(t.payments.c.id)).where(
            t.payments.c.order_id == order_id, t.payments.c.status == "captured"))).scalar_one()
        inserted = await uow.conn.execute(t.refunds.insert().values(
            order_id=order_id, payment_id=payment, amount=Decimal(amount), currency=(await order_money(shop, order_id))[1],
            status="submitted", attempts=attempts, request_id=request_id, created_at=NOW, updated_at=NOW))
        return inserted_id(inserted)


async def new_payment(shop: Shop, order_id: str) -> int:
    """A payments row as a pay route writes it before the PSP answers."""
    total, currency = await order_money(shop, order_id)
    async with shop.tx("new") as uow:
        inserted = await uow.conn.execute(t.payments.insert().values(
            order_id=order_id, provider="adyen", status="created", amount=Decimal(total), currency=currency,
            created_at=NOW, updated_at=NOW))
        return inserted_id(inserted)


async def cancel(shop: Shop, order_id: str) -> None:
    """The buyer cancels (old shopping's cancel or the expiry: the same rows)."""
    async with shop.tx("new") as uow:
        if (await uow.transition(order_id, "cancel", reason="cancelled")).changed:
            await release_all(uow.conn, order_id, now=uow.now)


async def story(side: Side, orders: list[str]) -> None:
    """The sequence both sides get: events, and between them the same steps a buyer or ops take."""
    shop, ev = side.shop, side.event
    worked, auth, repay, refunds, cancelled, early, spare = orders
    money = {o: await order_money(shop, o) for o in orders}

    def pay(order_id: str, **extra: Any) -> dict[str, Any]:
        total, currency = money[order_id]
        return captured(order_id, total, currency=currency, **extra)

    def auth_of(order_id: str, **extra: Any) -> dict[str, Any]:
        total, currency = money[order_id]
        return authorized(order_id, total, currency=currency, **extra)

    # The worked example: paid, fulfilled (coupon used, wallet settled, cart cleared), the PSP's resend
    # of the capture after that, then a partial refund and the rest.
    await ev("payment_notified", pay(worked))
    await ev("purchased", purchased(worked))
    await ev("payment_notified", pay(worked, event_id=f"pn-resend-{worked}"))
    first = await new_refund(shop, worked, "40.00", attempts=1, request_id=f"rq-{worked}-1")
    await ev("refund_notified", refund_done(worked, first, "40.00", currency="EUR"))
    rest = await new_refund(shop, worked, "56.07", attempts=1, request_id=f"rq-{worked}-2")
    await ev("refund_notified", refund_done(worked, rest, "56.07", currency="EUR"))
    await ev("refund_notified", refund_done(worked, rest, "56.07", currency="EUR"))  # redelivered

    # Authorised, captured, a late authorisation, purchased twice under two ids.
    await ev("payment_notified", auth_of(auth))
    await ev("payment_notified", pay(auth))
    await ev("payment_notified", auth_of(auth, event_id=f"pa-late-{auth}"))
    await ev("purchased", purchased(auth, user_id=None))
    await ev("purchased", purchased(auth, event_id=f"purchased-again-{auth}", user_id=None))

    # A refused card, the buyer pays again (payment_confirming), the failure sent again under a new id
    # must not fail the new attempt; the new attempt is captured; a late failure leaves it paid.
    attempt = await new_payment(shop, repay)
    await ev("payment_failed", failed(repay, attempt))
    async with shop.tx("new") as uow:
        buyer = (await uow.conn.execute(select(t.orders.c.user_id).where(t.orders.c.id == repay))).scalar_one()
        await paid_from_client(uow, repay, buyer)
    await ev("payment_failed", failed(repay, attempt, event_id=f"pf-resend-{repay}"))
    await ev("payment_notified", pay(repay, psp_reference=f"PSP2-{repay}"))
    await ev("payment_failed", failed(repay, None, event_id=f"pf-late-{repay}"))

    # Refunds that fail: retried later, then failed for good after five attempts; a partial one succeeds.
    await ev("payment_notified", pay(refunds))
    total, currency = money[refunds]
    part = str((Decimal(total) / 4).quantize(Decimal("0.01")))
    retried = await new_refund(shop, refunds, part, attempts=2, request_id=f"rq-{refunds}-1")
    await ev("refund_notified", refund_done(refunds, retried, part, "failed", currency=currency, reason="insufficient"))
    last = await new_refund(shop, refunds, part, attempts=5, request_id=f"rq-{refunds}-2")
    await ev("refund_notified", refund_done(refunds, last, part, "failed", currency=currency))
    ok = await new_refund(shop, refunds, part, attempts=1, request_id=f"rq-{refunds}-3")
    await ev("refund_notified", refund_done(refunds, ok, part, currency=currency))

    # Authorised, then cancelled (what it held goes back); the authorisation again is no capture to refuse,
    # a real capture after the cancel is for a person.
    await ev("payment_notified", auth_of(cancelled))
    await cancel(shop, cancelled)
    await ev("payment_notified", auth_of(cancelled, event_id=f"pa-resend-{cancelled}"))
    await ev("payment_notified", pay(cancelled))

    # Out of order and wrong: purchased before its payment, money that is not the total; then right.
    await ev("purchased", purchased(early))
    await ev("payment_notified", pay(early, event_id=f"pn-short-{early}", amount="0.01"))
    await ev("payment_notified", pay(early))
    await ev("purchased", purchased(early))

    # group_update: acknowledged, nothing else.
    await ev("group_update", {"event_id": "gu-parity-1", "order_id": spare, "anything": [1, 2]})


async def test_old_shopping_and_the_new_side_leave_the_same_rows_for_the_same_events(copies: tuple[Shop, Shop, list[str]]) -> None:
    old, new, orders = copies
    assert await snapshot(old, orders) == await snapshot(new, orders)  # identical copies to start from
    legacy = TestServer(create_app(old.db.url.render_as_string(hide_password=False)), port=free_port())
    await legacy.start_server()
    try:
        async with legacy_session(4) as session:
            old_shopping = Side(old, old_side(LegacyDelivery(session, lambda: url_of(legacy), timeout=10)))
            await story(old_shopping, orders)
    finally:
        await legacy.close()
    new_shopping = Side(new, new_side(new))
    await story(new_shopping, orders)

    assert old_shopping.answers == new_shopping.answers
    assert new_shopping.answers.count("refused") == 2 and new_shopping.answers.count("not_yet") == 1
    before, after = await snapshot(old, orders), await snapshot(new, orders)
    for part in before:
        assert before[part] == after[part], part
    # And the story did what it says (so equal is not equal-and-empty).
    statuses = dict((row[0], row[1]) for row in after["orders"])
    assert [statuses[o] for o in orders] == [
        "refunded", "fulfilling", "paid", "partially_refunded", "cancelled", "fulfilling", "pending_payment"]
    moves = {o: [to for order_id, _, to, _ in after["history"] if order_id == o] for o in orders}
    assert moves[orders[2]] == ["pending_payment", "payment_failed", "payment_confirming", "paid"]  # failed once only
    assert moves[orders[4]] == ["pending_payment", "authorized", "cancelled"]
    assert {kind for _, _, kind, _ in after["ledger"]} >= {"settle"}
    assert [status for coupon, status, _, _ in after["coupons"] if coupon == 1] == ["used"]


async def test_the_new_side_waits_for_old_shopping_applying_the_same_event_and_writes_no_second_payment() -> None:
    async with private_shop("parity_lock") as shop:
        order_id = await place(shop, 1, WORKED)
        event = captured(order_id)
        async with shop.db.connect() as conn:  # old shopping, halfway through the same event
            tx = await conn.begin()
            order = await legacy_events.lock_order(conn, order_id)
            assert await legacy_events._claim(conn, "payment_notified_cm", event["event_id"])
            await legacy_events._payment_notified(conn, legacy_events.Body(event), order)
            applying = asyncio.create_task(
                apply_locally(shop, EVENT_TYPES["payment_notified"])(Event("payment_notified_cm", 0, 0, order_id, event)))
            await asyncio.sleep(0.5)
            assert not applying.done()  # waiting for the order row old shopping holds
            await tx.commit()
        assert await asyncio.wait_for(applying, 10) in ("processed", "duplicate")
        p, h = t.payments.c, t.order_status_history.c
        async with shop.db.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(t.payments).where(p.order_id == order_id))).scalar() == 1
            moves = (await conn.execute(select(h.to_status, h.actor).where(h.order_id == order_id).order_by(h.id))).all()
    assert [tuple(m) for m in moves] == [("pending_payment", "new"), ("paid", "legacy")]
