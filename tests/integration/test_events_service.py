"""The event service functions on a unit of work, without HTTP or Kafka (SQLite and MariaDB).

Each starts from a real order placed by the checkout service (stock taken, coupon locked, wallet
reserved: the worked example of domain.md) and applies events as the consumer does: one
`Shop.tx("consumer")` per event. What is proven: each effect of domain.md's event table; a
redelivered event id is a duplicate with no second effect; out-of-order and late events move
nothing backwards; money that does not match and captures on cancelled orders are refused whole;
`purchased` before the payment is applied waits; `group_update` changes nothing.

The batch forms (`apply_batch`, one unit of work for many events, what the consumer runs): two
events of one order in one batch apply in turn; a repeated or already applied id is a duplicate;
an event that cannot be applied fails the batch naming its index, with nothing written; purchased
settles every order of the batch; old shopping writing an order during a batch waits for the
batch's row lock and its guarded update then loses, or (it wrote first) the batch sees its write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, update

from shop import schema as t
from shop.bootstrap import Shop, shop_resources
from shop.checkout import parse_order_request, place_order
from shop.events import (
    EVENT_TYPES,
    EventFailed,
    InvalidEvent,
    NotYet,
    Unapplicable,
    apply_group_update,
    apply_payment_failed,
    apply_payment_notified,
    apply_payment_notified_batch,
    apply_purchased,
    apply_purchased_batch,
    apply_refund_notified,
    parse_group_update,
    parse_payment_failed,
    parse_payment_notified,
    parse_purchased,
    parse_refund_notified,
)
from common.settings import Settings
from tests.builders import NOW, insert_order, insert_payment
from tests.support.shopdb import seed_database

CONSUMER = "new:test"
WORKED = {"user_coupon_id": 1, "address_id": 1, "currency": "EUR", "use_wallet": True, "expected_total": "96.07"}


@pytest.fixture
async def shop(db_url: str) -> AsyncIterator[Shop]:
    await seed_database(db_url)
    async with shop_resources(Settings.from_env({}, db_url=db_url), clock=lambda: NOW) as s:
        yield s


async def placed(shop: Shop) -> str:
    req = parse_order_request(WORKED, "events-key", "ios", "5.10.0")
    return (await place_order(shop, req, 1)).order_id


def notified(order_id: str, n: int = 1, **changes: Any) -> dict[str, Any]:
    return {"event_id": f"pn-{n}", "order_id": order_id, "payment_id": "p-1", "provider": "adyen", "status": "captured",
            "amount": "96.07", "currency": "EUR", "psp_reference": "PSP1", "occurred_at": "2026-06-01T12:01:00Z", **changes}


async def one(shop: Shop, stmt: Any) -> Any:
    async with shop.db.connect() as conn:
        return (await conn.execute(stmt)).scalar()


async def history(shop: Shop, order_id: str) -> list[tuple[str | None, str, str]]:
    h = t.order_status_history.c
    async with shop.db.connect() as conn:
        rows = await conn.execute(select(h.from_status, h.to_status, h.actor).where(h.order_id == order_id).order_by(h.id))
        return [tuple(r) for r in rows]


async def outbox_topics(shop: Shop, order_id: str) -> list[str]:
    o = t.outbox.c
    async with shop.db.connect() as conn:
        return list((await conn.execute(select(o.topic).where(o.key == order_id).order_by(o.id))).scalars())


async def apply(shop: Shop, fn: Any, event: Any) -> str:
    async with shop.tx("consumer") as uow:
        return await fn(uow, event, CONSUMER)


async def test_a_captured_payment_pays_the_order_and_queues_purchased_and_noti(shop: Shop) -> None:
    order_id = await placed(shop)
    assert await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id))) == "processed"
    assert await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id)) == "paid"
    assert await one(shop, select(t.orders.c.paid_at).where(t.orders.c.id == order_id)) == NOW
    assert (await history(shop, order_id))[-1] == ("pending_payment", "paid", "consumer")
    p = t.payments.c
    assert await one(shop, select(p.status).where(p.order_id == order_id, p.psp_reference == "PSP1")) == "captured"
    assert await one(shop, select(p.amount).where(p.order_id == order_id)) == Decimal("96.07")
    assert await outbox_topics(shop, order_id) == ["noti", "purchased", "noti"]  # order_placed, then the two of payment


async def test_a_redelivered_event_is_a_duplicate_and_changes_nothing_more(shop: Shop) -> None:
    order_id = await placed(shop)
    event = parse_payment_notified(notified(order_id))
    assert await apply(shop, apply_payment_notified, event) == "processed"
    assert await apply(shop, apply_payment_notified, event) == "duplicate"
    assert len(await history(shop, order_id)) == 2
    assert await one(shop, select(func.count()).select_from(t.payments)) == 1
    assert await outbox_topics(shop, order_id) == ["noti", "purchased", "noti"]


async def test_authorised_then_captured_moves_forward_and_a_late_authorisation_moves_nothing_back(shop: Shop) -> None:
    order_id = await placed(shop)
    await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id, 1, status="authorized")))
    assert await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id)) == "authorized"
    await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id, 2)))
    # A second authorisation event (another id, delivered late) after the capture:
    await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id, 3, status="authorized")))
    assert await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id)) == "paid"
    assert await one(shop, select(t.payments.c.status)) == "captured"
    assert [to for _, to, _ in await history(shop, order_id)] == ["pending_payment", "authorized", "paid"]


@pytest.mark.parametrize("changes", [{"amount": "96.06"}, {"currency": "USD"}, {"amount": "960.70"}])
async def test_money_that_is_not_the_order_total_pays_nothing(shop: Shop, changes: dict[str, str]) -> None:
    order_id = await placed(shop)
    with pytest.raises(Unapplicable) as refused:
        await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id, **changes)))
    assert refused.value.data["reason"] == "amount_mismatch"
    assert await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id)) == "pending_payment"
    assert await one(shop, select(func.count()).select_from(t.payments)) == 0
    assert await one(shop, select(func.count()).select_from(t.processed_events)) == 0  # refused whole: may come again


async def test_a_capture_on_a_cancelled_order_is_refused_for_a_person(shop: Shop) -> None:
    order_id = await placed(shop)
    async with shop.tx("new") as uow:
        await uow.transition(order_id, "cancel")
    with pytest.raises(Unapplicable) as refused:
        await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id)))
    assert refused.value.data["reason"] == "captured_after_cancel"
    assert await one(shop, select(func.count()).select_from(t.payments)) == 0


async def test_a_failed_payment_fails_a_payable_order_and_a_late_one_leaves_a_paid_order_paid(shop: Shop) -> None:
    order_id = await placed(shop)
    failed = {"event_id": "pf-1", "order_id": order_id, "payment_id": None, "provider": "adyen", "reason": "Refused"}
    assert await apply(shop, apply_payment_failed, parse_payment_failed(failed)) == "processed"
    assert await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id)) == "payment_failed"
    assert (await outbox_topics(shop, order_id))[-1] == "noti"
    await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id)))  # a second attempt paid
    late = {**failed, "event_id": "pf-2"}
    assert await apply(shop, apply_payment_failed, parse_payment_failed(late)) == "processed"
    assert await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id)) == "paid"
    assert [to for _, to, _ in await history(shop, order_id)] == ["pending_payment", "payment_failed", "paid"]


async def test_purchased_uses_the_coupon_settles_the_wallet_clears_the_cart_and_fulfils(shop: Shop) -> None:
    order_id = await placed(shop)
    await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id)))
    wallet_before = await one(shop, select(t.wallets.c.balance).where(t.wallets.c.user_id == 1))
    purchased = parse_purchased({"event_id": f"purchased:{order_id}", "order_id": order_id, "user_id": 1})
    assert await apply(shop, apply_purchased, purchased) == "processed"
    assert await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id)) == "fulfilling"
    assert await one(shop, select(t.user_coupons.c.status).where(t.user_coupons.c.id == 1)) == "used"
    lg = t.wallet_ledger.c
    assert await one(shop, select(lg.amount).where(lg.order_id == order_id, lg.kind == "settle")) == Decimal("20.0000")
    assert await one(shop, select(t.wallets.c.balance).where(t.wallets.c.user_id == 1)) == wallet_before
    i, c = t.order_items.c, t.cart_items.c
    ordered = select(i.sku_id).where(i.order_id == order_id).scalar_subquery()
    assert await one(shop, select(func.count()).select_from(t.cart_items).where(c.user_id == 1, c.sku_id.in_(ordered))) == 0
    # The same purchase again under another id (old shopping's copy, say): the order already moved, nothing repeats.
    again = parse_purchased({"event_id": "legacy-purchased-1", "order_id": order_id, "user_id": 1})
    assert await apply(shop, apply_purchased, again) == "processed"
    assert await one(shop, select(func.count()).select_from(t.wallet_ledger).where(lg.order_id == order_id, lg.kind == "settle")) == 1
    assert [to for _, to, _ in await history(shop, order_id)] == ["pending_payment", "paid", "fulfilling"]


async def test_purchased_before_the_payment_is_applied_waits(shop: Shop) -> None:
    order_id = await placed(shop)
    with pytest.raises(NotYet):
        await apply(shop, apply_purchased, parse_purchased({"event_id": "early", "order_id": order_id}))
    assert await one(shop, select(func.count()).select_from(t.processed_events)) == 0  # so a retry can apply it


async def test_group_update_is_acknowledged_and_changes_nothing(shop: Shop) -> None:
    order_id = await placed(shop)
    before = await outbox_topics(shop, order_id), await history(shop, order_id)
    assert await apply(shop, apply_group_update, parse_group_update({"event_id": "g-1", "anything": [1, 2]})) == "processed"
    assert await apply(shop, apply_group_update, parse_group_update({"event_id": "g-1"})) == "duplicate"
    assert (await outbox_topics(shop, order_id), await history(shop, order_id)) == before


@pytest.mark.parametrize("payload, field", [
    ({}, "event_id"),
    ({"event_id": "e", "order_id": "o", "provider": "stripe"}, "provider"),
    ({"event_id": "e", "order_id": "o", "provider": "adyen", "status": "captured", "amount": 96.07, "currency": "EUR",
      "psp_reference": "P"}, "amount"),
    ({"event_id": "e", "order_id": "o", "provider": "adyen", "status": "captured", "amount": "NaN", "currency": "EUR",
      "psp_reference": "P"}, "amount"),
    ({"event_id": "e", "order_id": "o", "provider": "adyen", "status": "refunded", "amount": "1", "currency": "EUR",
      "psp_reference": "P"}, "status"),
    ({"event_id": "\ud800", "order_id": "o"}, "event_id"),
])
def test_a_message_that_is_not_the_events_schema_is_refused_naming_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as refused:
        parse_payment_notified(payload)
    assert refused.value.data["field"] == field


async def _refund(shop: Shop, order_id: str, amount: str, *, attempts: int = 1, request_id: str = "rq-1",
                  psp_reference: str | None = None) -> int:
    """A refund row as the refund API writes it once the PSP has the request (status submitted;
    Adyen's `received` answer carries the refund's pspReference)."""
    async with shop.tx("new") as uow:
        payment_id = (await uow.conn.execute(select(t.payments.c.id).where(t.payments.c.order_id == order_id))).scalar_one()
        inserted = await uow.conn.execute(t.refunds.insert().values(
            order_id=order_id, payment_id=payment_id, amount=Decimal(amount), currency="EUR", status="submitted",
            attempts=attempts, request_id=request_id, psp_reference=psp_reference, created_at=NOW, updated_at=NOW,
        ))
        return int(inserted.inserted_primary_key[0])


def refund_event(order_id: str, refund_id: int, amount: str, status: str = "succeeded", n: int = 1) -> Any:
    return parse_refund_notified({"event_id": f"rn-{n}", "refund_id": str(refund_id), "order_id": order_id, "status": status,
                                  "amount": amount, "currency": "EUR", "psp_reference": f"R{n}", "reason": None})


async def test_refunds_succeeding_move_the_order_to_partially_refunded_then_refunded(shop: Shop) -> None:
    order_id = await placed(shop)
    await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id)))
    first = await _refund(shop, order_id, "40.00")
    assert await apply(shop, apply_refund_notified, refund_event(order_id, first, "40.00")) == "processed"
    assert await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id)) == "partially_refunded"
    assert await apply(shop, apply_refund_notified, refund_event(order_id, first, "40.00")) == "duplicate"
    second = await _refund(shop, order_id, "56.07", request_id="rq-2")
    await apply(shop, apply_refund_notified, refund_event(order_id, second, "56.07", n=2))
    assert await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id)) == "refunded"
    r = t.refunds.c
    assert await one(shop, select(func.count()).select_from(t.refunds).where(r.status == "succeeded")) == 2
    assert [to for _, to, _ in await history(shop, order_id)][-2:] == ["partially_refunded", "refunded"]


async def test_a_failed_refund_is_retried_later_and_after_five_attempts_is_failed_for_a_person(shop: Shop) -> None:
    order_id = await placed(shop)
    await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id)))
    refund = await _refund(shop, order_id, "96.07", attempts=2)
    await apply(shop, apply_refund_notified, refund_event(order_id, refund, "96.07", "failed"))
    r = t.refunds.c
    assert await one(shop, select(r.status).where(r.id == refund)) == "retrying"
    assert await one(shop, select(r.next_attempt_at).where(r.id == refund)) > NOW
    assert await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id)) == "paid"
    last = await _refund(shop, order_id, "96.07", attempts=5, request_id="rq-2")
    await apply(shop, apply_refund_notified, refund_event(order_id, last, "96.07", "failed", n=2))
    assert await one(shop, select(r.status).where(r.id == last)) == "failed"
    assert (await outbox_topics(shop, order_id))[-1] == "noti"


def adyen_refund_event(order_id: str, refund_id: int, amount: str, status: str, event_id: str) -> Any:
    # Adyen's REFUND and a later REFUND_FAILED of one refund carry the same pspReference.
    return parse_refund_notified({"event_id": event_id, "refund_id": str(refund_id), "order_id": order_id, "status": status,
                                  "amount": amount, "currency": "EUR", "psp_reference": "RF-1", "reason": None})


async def test_a_refund_failed_after_it_succeeded_is_reopened_for_another_attempt(shop: Shop) -> None:
    """Adyen sends REFUND (success) and later REFUND_FAILED for one refund when the scheme rejects it:
    the money did not go back, so the refund must not stay succeeded."""
    order_id = await placed(shop)
    await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id)))
    refund = await _refund(shop, order_id, "96.07", psp_reference="RF-1")
    await apply(shop, apply_refund_notified, adyen_refund_event(order_id, refund, "96.07", "succeeded", "REFUND-ok"))
    assert await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id)) == "refunded"
    await apply(shop, apply_refund_notified, adyen_refund_event(order_id, refund, "96.07", "failed", "REFUND_FAILED"))
    r = t.refunds.c
    assert await one(shop, select(r.status).where(r.id == refund)) == "retrying"
    assert await one(shop, select(r.next_attempt_at).where(r.id == refund)) > NOW


async def test_a_refund_success_arriving_after_its_failure_leaves_it_failed(shop: Shop) -> None:
    """Out of order: REFUND_FAILED first, then the REFUND success of the same pspReference. The
    failure is the later truth; the order is not marked refunded."""
    order_id = await placed(shop)
    await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id)))
    refund = await _refund(shop, order_id, "96.07", psp_reference="RF-1")
    await apply(shop, apply_refund_notified, adyen_refund_event(order_id, refund, "96.07", "failed", "REFUND_FAILED"))
    await apply(shop, apply_refund_notified, adyen_refund_event(order_id, refund, "96.07", "succeeded", "REFUND-ok"))
    r = t.refunds.c
    assert await one(shop, select(r.status).where(r.id == refund)) == "retrying"
    assert await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id)) == "paid"


async def test_a_refund_event_that_matches_no_refund_or_not_its_amount_is_refused(shop: Shop) -> None:
    order_id = await placed(shop)
    await apply(shop, apply_payment_notified, parse_payment_notified(notified(order_id)))
    with pytest.raises(Unapplicable):
        await apply(shop, apply_refund_notified, refund_event(order_id, 999, "1.00"))
    refund = await _refund(shop, order_id, "10.00")
    with pytest.raises(Unapplicable):
        await apply(shop, apply_refund_notified, refund_event(order_id, refund, "11.00", n=2))
    assert await one(shop, select(t.refunds.c.status).where(t.refunds.c.id == refund)) == "submitted"


async def test_the_same_event_applied_twice_at_once_has_one_effect(shop: Shop) -> None:
    order_id = await placed(shop)
    event = parse_payment_notified(notified(order_id))
    outcomes = await asyncio.gather(
        apply(shop, apply_payment_notified, event), apply(shop, apply_payment_notified, event), return_exceptions=True,
    )
    # On SQLite the loser may instead find the database locked (a transient error the runner retries).
    assert sorted(o if isinstance(o, str) else "busy" for o in outcomes) in (["duplicate", "processed"], ["busy", "processed"])
    assert [to for _, to, _ in await history(shop, order_id)] == ["pending_payment", "paid"]
    assert await one(shop, select(func.count()).select_from(t.payments)) == 1


# --- batches ---------------------------------------------------------------------------------------


async def apply_batch(shop: Shop, fn: Any, events: list[Any]) -> list[str]:
    async with shop.tx("consumer") as uow:
        return list(await fn(uow, events, CONSUMER))


async def more_orders(shop: Shop, *order_ids: str) -> None:
    """Orders as old shopping writes them (EUR 96.07, pending_payment), beside the placed one."""
    async with shop.db.begin() as conn:
        for order_id in order_ids:
            await insert_order(conn, order_id)


async def status_of(shop: Shop, order_id: str) -> str:
    return await one(shop, select(t.orders.c.status).where(t.orders.c.id == order_id))


async def test_a_batch_applies_two_events_of_one_order_in_turn_as_one_by_one_would(shop: Shop) -> None:
    order_id = await placed(shop)
    await more_orders(shop, "B-2")
    batch = [parse_payment_notified(notified(order_id, 1, status="authorized")),
             parse_payment_notified(notified("B-2", 2, psp_reference="PSP2")),
             parse_payment_notified(notified(order_id, 3)),
             parse_payment_notified(notified(order_id, 4, status="authorized"))]  # a late authorisation, after the capture
    assert await apply_batch(shop, apply_payment_notified_batch, batch) == ["processed"] * 4
    assert [(f, to, a) for f, to, a in await history(shop, order_id)][1:] == [
        ("pending_payment", "authorized", "consumer"), ("authorized", "paid", "consumer")]
    assert [to for _, to, _ in await history(shop, "B-2")] == ["paid"]
    assert await one(shop, select(t.orders.c.paid_at).where(t.orders.c.id == order_id)) == NOW
    p = t.payments.c
    assert await one(shop, select(func.count()).select_from(t.payments).where(p.order_id == order_id)) == 1
    assert await one(shop, select(p.status).where(p.order_id == order_id)) == "captured"
    assert await outbox_topics(shop, order_id) == ["noti", "purchased", "noti"]
    assert await outbox_topics(shop, "B-2") == ["purchased", "noti"]


async def test_a_batch_moves_the_pay_routes_rows_of_several_orders_forward_in_one_statement(shop: Shop) -> None:
    # The usual case in production: the pay route wrote each payment row (authorized, its pspReference), the
    # webhooks' captures arrive together. Several rows moving to one status is an executemany, which an
    # expanding IN cannot take: the batch failed with StatementError and fell back to one by one (found on
    # the demo stack: 66 batches in 75 s).
    await more_orders(shop, "F-1", "F-2", "F-3")
    rows = {}
    async with shop.db.begin() as conn:
        for n, order_id in enumerate(("F-1", "F-2", "F-3"), start=1):
            await conn.execute(update(t.orders).where(t.orders.c.id == order_id).values(status="authorized"))
            rows[order_id] = await insert_payment(conn, order_id, provider="adyen", status="authorized",
                                                  psp_reference=f"PSPF{n}")
    batch = [parse_payment_notified(notified(order_id, 10 + n, payment_id=str(rows[order_id]), psp_reference=f"PSPF{n}"))
             for n, order_id in enumerate(("F-1", "F-2", "F-3"), start=1)]
    assert await apply_batch(shop, apply_payment_notified_batch, batch) == ["processed"] * 3
    p = t.payments.c
    for order_id in ("F-1", "F-2", "F-3"):
        assert await status_of(shop, order_id) == "paid"
        assert await one(shop, select(p.status).where(p.id == rows[order_id])) == "captured"
        assert await one(shop, select(func.count()).select_from(t.payments).where(p.order_id == order_id)) == 1


async def test_a_batch_counts_a_repeated_id_and_an_already_applied_one_as_duplicates(shop: Shop) -> None:
    order_id = await placed(shop)
    await more_orders(shop, "B-2")
    first = parse_payment_notified(notified(order_id, 1))
    assert await apply(shop, apply_payment_notified, first) == "processed"
    second = parse_payment_notified(notified("B-2", 2, psp_reference="PSP2"))
    outcomes = await apply_batch(shop, apply_payment_notified_batch, [first, second, second])
    assert outcomes == ["duplicate", "processed", "duplicate"]
    assert [to for _, to, _ in await history(shop, "B-2")] == ["paid"]
    assert await one(shop, select(func.count()).select_from(t.payments)) == 2
    assert await one(shop, select(func.count()).select_from(t.processed_events)) == 2
    assert await outbox_topics(shop, "B-2") == ["purchased", "noti"]


async def test_an_event_a_batch_cannot_apply_fails_it_by_index_and_nothing_is_written(shop: Shop) -> None:
    order_id = await placed(shop)
    await more_orders(shop, "B-2")
    batch = [parse_payment_notified(notified("B-2", 2, psp_reference="PSP2")),
             parse_payment_notified(notified(order_id, 1, amount="1.00")),
             parse_payment_notified(notified("NO-SUCH-ORDER", 3))]
    with pytest.raises(EventFailed) as failed:
        await apply_batch(shop, apply_payment_notified_batch, batch)
    assert failed.value.index == 1 and isinstance(failed.value.error, Unapplicable)
    assert failed.value.error.data["reason"] == "amount_mismatch"
    assert await status_of(shop, "B-2") == "pending_payment"  # the whole unit rolled back
    assert await one(shop, select(func.count()).select_from(t.processed_events)) == 0
    assert await one(shop, select(func.count()).select_from(t.payments)) == 0
    # What the consumer does next: the events before it again, as a batch, and the rest after it.
    assert await apply_batch(shop, apply_payment_notified_batch, batch[:1]) == ["processed"]
    with pytest.raises(EventFailed) as failed:
        await apply_batch(shop, apply_payment_notified_batch, batch[2:])
    assert failed.value.index == 0 and failed.value.error.data["reason"] == "order_not_found"
    assert await status_of(shop, "B-2") == "paid"


async def test_a_purchased_batch_settles_every_order_and_waits_on_one_not_paid_yet(shop: Shop) -> None:
    order_id = await placed(shop)
    await more_orders(shop, "B-2", "B-3")
    await apply_batch(shop, apply_payment_notified_batch, [parse_payment_notified(notified(order_id, 1)),
                                                           parse_payment_notified(notified("B-2", 2, psp_reference="PSP2"))])
    wallet_before = await one(shop, select(t.wallets.c.balance).where(t.wallets.c.user_id == 1))

    def purchased(oid: str, event_id: str | None = None) -> Any:
        return parse_purchased({"event_id": event_id or f"purchased:{oid}", "order_id": oid, "user_id": 1})

    with pytest.raises(EventFailed) as failed:  # B-3 is not paid: NotYet, retried by the consumer alone
        await apply_batch(shop, apply_purchased_batch, [purchased(order_id), purchased("B-3")])
    assert failed.value.index == 1 and isinstance(failed.value.error, NotYet)
    assert await status_of(shop, order_id) == "paid"
    outcomes = await apply_batch(shop, apply_purchased_batch, [
        purchased(order_id), purchased("B-2"), purchased(order_id), purchased(order_id, "legacy-copy")])
    assert outcomes == ["processed", "processed", "duplicate", "processed"]
    for oid in (order_id, "B-2"):
        assert [to for _, to, _ in await history(shop, oid)][-2:] == ["paid", "fulfilling"]
    assert await one(shop, select(t.user_coupons.c.status).where(t.user_coupons.c.id == 1)) == "used"
    lg = t.wallet_ledger.c
    settles = select(lg.order_id, lg.amount).where(lg.kind == "settle")
    async with shop.db.connect() as conn:
        assert [tuple(r) for r in await conn.execute(settles)] == [(order_id, Decimal("20.0000"))]  # B-2 reserved nothing
    assert await one(shop, select(t.wallets.c.balance).where(t.wallets.c.user_id == 1)) == wallet_before
    i, c = t.order_items.c, t.cart_items.c
    ordered = select(i.sku_id).where(i.order_id == order_id).scalar_subquery()
    assert await one(shop, select(func.count()).select_from(t.cart_items).where(c.user_id == 1, c.sku_id.in_(ordered))) == 0
    assert await one(shop, select(func.count()).select_from(t.cart_items)) > 0, "only the ordered lines go"


async def test_the_rare_event_types_batch_one_by_one_in_one_unit(shop: Shop) -> None:
    order_id = await placed(shop)
    failed = {"event_id": "pf-1", "order_id": order_id, "payment_id": None, "provider": "adyen", "reason": "Refused"}
    batch = [parse_payment_failed(failed), parse_payment_failed(failed)]
    assert await apply_batch(shop, EVENT_TYPES["payment_failed"].apply_batch, batch) == ["processed", "duplicate"]
    assert [to for _, to, _ in await history(shop, order_id)] == ["pending_payment", "payment_failed"]
    groups = [parse_group_update({"event_id": "g-1"}), parse_group_update({"event_id": "g-2"})]
    assert await apply_batch(shop, EVENT_TYPES["group_update"].apply_batch, groups) == ["processed", "processed"]


@pytest.fixture
async def mariadb_shop(mariadb_url: str) -> AsyncIterator[Shop]:
    await seed_database(mariadb_url)
    async with shop_resources(Settings.from_env({}, db_url=mariadb_url), clock=lambda: NOW) as s:
        yield s


async def old_shopping_cancels(shop: Shop, order_id: str) -> int:
    """Old shopping's own guarded write of the same row, on its own connection: the rows it moved."""
    o = t.orders.c
    async with shop.db.begin() as conn:
        result = await conn.execute(update(t.orders).where(o.id == order_id, o.status.in_(("pending_payment", "payment_failed")))
                                    .values(status="cancelled"))
        return result.rowcount


async def test_old_shopping_writing_an_order_a_batch_holds_waits_and_its_guarded_write_then_loses(mariadb_shop: Shop) -> None:
    shop = mariadb_shop
    order_id = await placed(shop)
    async with shop.tx("consumer") as uow:
        assert await apply_payment_notified_batch(uow, [parse_payment_notified(notified(order_id))], CONSUMER) == ["processed"]
        cancel = asyncio.create_task(old_shopping_cancels(shop, order_id))
        await asyncio.sleep(0.5)
        assert not cancel.done(), "old shopping's UPDATE must wait for the batch's row lock"
    assert await asyncio.wait_for(cancel, 30) == 0  # its guard sees paid: nothing moves
    assert await status_of(shop, order_id) == "paid"
    assert [to for _, to, _ in await history(shop, order_id)] == ["pending_payment", "paid"]


async def test_a_batch_reading_an_order_old_shopping_is_writing_waits_and_judges_its_write(mariadb_shop: Shop) -> None:
    shop = mariadb_shop
    order_id = await placed(shop)
    await more_orders(shop, "B-2")
    batch = [parse_payment_notified(notified("B-2", 2, psp_reference="PSP2")), parse_payment_notified(notified(order_id))]
    o = t.orders.c
    async with shop.db.begin() as old:  # old shopping's cancel, not yet committed
        await old.execute(update(t.orders).where(o.id == order_id, o.status == "pending_payment").values(status="cancelled"))
        applying = asyncio.create_task(apply_batch(shop, apply_payment_notified_batch, batch))
        await asyncio.sleep(0.5)
        assert not applying.done(), "the batch's FOR UPDATE read must wait for old shopping's commit"
    with pytest.raises(EventFailed) as failed:
        await asyncio.wait_for(applying, 30)
    assert failed.value.index == 1 and failed.value.error.data["reason"] == "captured_after_cancel"
    assert await one(shop, select(func.count()).select_from(t.payments)) == 0
    assert await status_of(shop, "B-2") == "pending_payment"
