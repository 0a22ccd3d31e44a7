"""The refund API (legacy-api.md refund) through the edge at 100 % new, on SQLite and MariaDB, against the real
PSP emulator.

Proves: a full refund and partial ones move the order to partially_refunded then refunded, the money
going back at the PSP exactly once each, with a `refund_succeeded` noti; asking for more than is left
(captured − succeeded − open refunds) is 409 and writes nothing, not even a PSP call; the same request id
is the same refund, sent twice or five times at once (one row, one refund at the PSP), and a request id
reused for another amount is 409; without the service token (absent, wrong, none configured) the answer
is 401 (the /order2 path 404) and nothing is written; bad input is a 400 naming the field; an Adyen refund
is `submitted`, and the refund_notified its webhook becomes completes it; a PSP error on the request path
leaves it `retrying` for the retrier; old shopping moving the order meanwhile does not break the guarded
updates.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import insert, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema as t
from tests.support.edge import SERVICE_TOKEN
from tests.support.psp import Psp, WebhookSink
from tests.support.refunds import (
    PAYPAL_REFUNDS,
    history,
    notis,
    order_status,
    paid_order,
    post_refund,
    refund_edge,
    refunds_of,
    written,
)

pytest_plugins = ["tests.support.psp_fixtures"]

ORDER = "R-1"


@pytest.fixture
async def edge(aiohttp_client: Any, tmp_path: Path, db_url: str, fresh_engine: AsyncEngine, psp: Psp) -> TestClient:
    return await refund_edge(aiohttp_client, tmp_path, db_url, psp)


def ok(refund_id: Any, status: str) -> tuple[int, dict[str, Any]]:
    return 200, {"code": 0, "msg": "ok", "data": {"refund_id": str(refund_id), "status": status}}


async def test_a_full_refund_gives_the_whole_capture_back_once_and_refunds_the_order(
    edge: TestClient, fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    status, body = await post_refund(edge, {"order_id": ORDER, "reason": "customer asked", "request_id": "rq-1"})
    [refund] = await refunds_of(fresh_engine, ORDER)
    assert (status, body) == ok(refund["id"], "succeeded")
    assert (refund["amount"], refund["currency"], refund["status"], refund["attempts"]) == (Decimal("96.07"), "EUR", "succeeded", 1)
    assert refund["reason"] == "customer asked" and refund["psp_reference"]
    assert await order_status(fresh_engine, ORDER) == "refunded"
    assert (await history(fresh_engine, ORDER))[-1] == ("paid", "refunded", "new")
    assert await notis(fresh_engine, ORDER) == ["refund_succeeded"]
    paypal = (await psp.state())["paypal"]
    assert [r["amount"] for r in paypal["refunds"].values()] == [{"currency_code": "EUR", "value": "96.07"}]
    assert list(paypal["refunds"]) == [refund["psp_reference"]]
    assert [c["key"] for c in await psp.calls("POST", "/refund")] == [f"refund-{refund['id']}"]


async def test_partial_refunds_make_the_order_partially_refunded_then_refunded_and_no_cent_more(
    edge: TestClient, fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    await paid_order(fresh_engine, psp, ORDER, status="fulfilling")
    first = await post_refund(edge, {"order_id": ORDER, "amount": "30.00", "reason": "one item", "request_id": "rq-1"})
    assert first[1]["data"]["status"] == "succeeded"
    assert await order_status(fresh_engine, ORDER) == "partially_refunded"
    # Everything left, asked for by amount omitted: 66.07.
    second = await post_refund(edge, {"order_id": ORDER, "reason": "the rest", "request_id": "rq-2"})
    assert second[1]["data"]["status"] == "succeeded"
    assert [(r["amount"], r["status"]) for r in await refunds_of(fresh_engine, ORDER)] == [
        (Decimal("30.00"), "succeeded"), (Decimal("66.07"), "succeeded")]
    assert [(f, to) for f, to, _ in await history(fresh_engine, ORDER)] == [
        ("fulfilling", "partially_refunded"), ("partially_refunded", "refunded")]
    assert await notis(fresh_engine, ORDER) == ["refund_succeeded", "refund_succeeded"]
    paypal = (await psp.state())["paypal"]
    assert sorted(r["amount"]["value"] for r in paypal["refunds"].values()) == ["30.00", "66.07"]
    assert [c["status"] for c in paypal["captures"].values()] == ["REFUNDED"]

    before = await written(fresh_engine, psp)
    assert await post_refund(edge, {"order_id": ORDER, "amount": "0.01", "request_id": "rq-3"}) == (409, {
        "code": 40901, "msg": "invalid_state", "data": {"status": "refunded"}})
    assert await written(fresh_engine, psp) == before


async def test_more_than_is_refundable_is_409_and_writes_nothing_not_even_a_psp_call(
    edge: TestClient, fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    assert (await post_refund(edge, {"order_id": ORDER, "amount": "90.00", "request_id": "rq-1"}))[0] == 200
    before = await written(fresh_engine, psp)
    assert await post_refund(edge, {"order_id": ORDER, "amount": "6.08", "request_id": "rq-2"}) == (409, {
        "code": 40901, "msg": "refund_exceeds_refundable",
        "data": {"refundable": "6.07", "currency": "EUR", "requested": "6.08"}})
    assert await written(fresh_engine, psp) == before
    # An open refund holds its amount too: one that is retrying leaves only what it does not hold.
    async with fresh_engine.begin() as conn:
        await conn.execute(update(t.refunds).where(t.refunds.c.request_id == "rq-1").values(
            status="retrying", amount=Decimal("96.07")))
    assert (await post_refund(edge, {"order_id": ORDER, "amount": "0.01", "request_id": "rq-3"}))[1]["data"] == {
        "refundable": "0.00", "currency": "EUR", "requested": "0.01"}


async def test_the_same_request_id_is_the_same_refund_and_reused_for_another_amount_is_409(
    edge: TestClient, fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    body = {"order_id": ORDER, "amount": "10.00", "reason": "late", "request_id": "rq-1"}
    first = await post_refund(edge, body)
    after = await written(fresh_engine, psp)
    assert await post_refund(edge, body) == first
    assert await post_refund(edge, body, path="/order2/refund") == first  # the new-side path, same handler
    assert await post_refund(edge, {**body, "amount": None}) == first  # amount omitted: whatever the first was
    assert await written(fresh_engine, psp) == after
    status, reused = await post_refund(edge, {**body, "amount": "11.00"})
    assert (status, reused["msg"]) == (409, "request_id_reused")
    assert await written(fresh_engine, psp) == after
    assert len((await psp.state())["paypal"]["refunds"]) == 1


async def test_five_copies_of_one_request_at_once_are_one_refund_and_one_psp_refund(
    edge: TestClient, fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    await psp.fault(path=PAYPAL_REFUNDS, delay_ms=200)  # the first one is at the PSP while the others arrive
    body = {"order_id": ORDER, "amount": "20.00", "request_id": "rq-same"}
    answers = await asyncio.gather(*(post_refund(edge, body) for _ in range(5)))
    [refund] = await refunds_of(fresh_engine, ORDER)
    assert {status for status, _ in answers} == {200}
    assert {a["data"]["refund_id"] for _, a in answers} == {str(refund["id"])}
    # The copies that came while the first was at the PSP see it pending; a retry later sees the end.
    assert {a["data"]["status"] for _, a in answers} <= {"pending", "succeeded"}
    assert (await post_refund(edge, body)) == ok(refund["id"], "succeeded")
    assert len((await psp.state())["paypal"]["refunds"]) == 1
    assert len(await psp.calls("POST", "/refund")) == 1
    assert await order_status(fresh_engine, ORDER) == "partially_refunded"


async def test_concurrent_refunds_of_one_order_never_promise_more_than_was_captured(
    edge: TestClient, fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    await psp.fault(path=PAYPAL_REFUNDS, delay_ms=100)
    answers = await asyncio.gather(*(
        post_refund(edge, {"order_id": ORDER, "amount": "40.00", "request_id": f"rq-{n}"}) for n in range(4)))
    assert sorted(status for status, _ in answers) == [200, 200, 409, 409]
    refunds = await refunds_of(fresh_engine, ORDER)
    assert [(r["amount"], r["status"]) for r in refunds] == [(Decimal("40.00"), "succeeded")] * 2
    assert len((await psp.state())["paypal"]["refunds"]) == 2


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {SERVICE_TOKEN}"},
                                     {"Authorization": f"Bearer {SERVICE_TOKEN}x"}], ids=["none", "wrong", "basic", "longer"])
async def test_without_the_service_token_nothing_is_refunded(
    edge: TestClient, fresh_engine: AsyncEngine, psp: Psp, headers: dict[str, str],
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    before = await written(fresh_engine, psp)
    body = {"order_id": ORDER, "request_id": "rq-1"}
    resp = await edge.post("/refund/refund", json=body, headers=headers)
    assert (resp.status, (await resp.json())["code"], resp.headers["WWW-Authenticate"]) == (401, 40101, "Bearer")
    assert (await post_refund(edge, body, headers, path="/order2/refund"))[0] == 404
    assert await written(fresh_engine, psp) == before


async def test_an_edge_without_a_service_token_refuses_every_refund(
    aiohttp_client: Any, tmp_path: Path, db_url: str, fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    closed = await refund_edge(aiohttp_client, tmp_path, db_url, psp, service_token=None)
    await paid_order(fresh_engine, psp, ORDER)
    before = await written(fresh_engine, psp)
    for auth in ("Bearer ", "Bearer", f"Bearer {SERVICE_TOKEN}", "Bearer None"):
        assert (await post_refund(closed, {"order_id": ORDER, "request_id": "rq-1"}, {"Authorization": auth}))[0] == 401
    assert await written(fresh_engine, psp) == before


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"),
    ({"request_id": "rq-1"}, "order_id"),
    ({"order_id": ORDER}, "request_id"),
    ({"order_id": ORDER, "request_id": "é-1"}, "request_id"),
    ({"order_id": ORDER, "request_id": "x" * 65}, "request_id"),
    ({"order_id": ORDER, "request_id": "rq-1", "amount": 10.5}, "amount"),
    ({"order_id": ORDER, "request_id": "rq-1", "amount": "-1.00"}, "amount"),
    ({"order_id": ORDER, "request_id": "rq-1", "amount": "0"}, "amount"),
    ({"order_id": ORDER, "request_id": "rq-1", "amount": "NaN"}, "amount"),
    ({"order_id": ORDER, "request_id": "rq-1", "amount": "ten"}, "amount"),
    ({"order_id": ORDER, "request_id": "rq-1", "amount": "1.001"}, "amount"),  # EUR has 2 decimals
    ({"order_id": ORDER, "request_id": "rq-1", "reason": 7}, "reason"),
])
async def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(
    edge: TestClient, fresh_engine: AsyncEngine, psp: Psp, body: Any, field: str,
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    before = await written(fresh_engine, psp)
    status, answer = await post_refund(edge, body)
    assert (status, answer["code"], answer["data"]["field"]) == (400, 40001, field)
    assert await written(fresh_engine, psp) == before


async def test_an_unknown_order_is_404_and_an_unpaid_one_409(edge: TestClient, fresh_engine: AsyncEngine, psp: Psp) -> None:
    from tests.builders import insert_order

    async with fresh_engine.begin() as conn:
        await insert_order(conn, "R-unpaid", status="pending_payment")
    before = await written(fresh_engine, psp)
    assert (await post_refund(edge, {"order_id": "R-none", "request_id": "rq-1"}))[1]["msg"] == "order_not_found"
    assert await post_refund(edge, {"order_id": "R-unpaid", "request_id": "rq-2"}) == (409, {
        "code": 40901, "msg": "invalid_state", "data": {"status": "pending_payment"}})
    assert await written(fresh_engine, psp) == before


async def test_a_jpy_refund_goes_to_paypal_without_decimals(edge: TestClient, fresh_engine: AsyncEngine, psp: Psp) -> None:
    async with fresh_engine.begin() as conn:
        await conn.execute(insert(t.forex_rates).values(currency="JPY", rate=Decimal("150"), exponent=0))
    await paid_order(fresh_engine, psp, ORDER, amount=Decimal("1040"), currency="JPY")
    assert (await post_refund(edge, {"order_id": ORDER, "amount": "40.5", "request_id": "rq-0"}))[1]["data"]["field"] == "amount"
    assert (await post_refund(edge, {"order_id": ORDER, "amount": "40", "request_id": "rq-1"}))[1]["data"]["status"] == "succeeded"
    status, over = await post_refund(edge, {"order_id": ORDER, "amount": "1001", "request_id": "rq-2"})
    assert (status, over["data"]["refundable"]) == (409, "1000")
    assert [r["amount"] for r in (await psp.state())["paypal"]["refunds"].values()] == [{"currency_code": "JPY", "value": "40"}]


async def test_an_adyen_refund_is_submitted_and_its_webhooks_refund_notified_completes_it(
    edge: TestClient, fresh_engine: AsyncEngine, psp: Psp, webhook_sink: WebhookSink,
) -> None:
    await paid_order(fresh_engine, psp, ORDER, provider="adyen")
    status, body = await post_refund(edge, {"order_id": ORDER, "amount": "16.07", "request_id": "rq-1"})
    [refund] = await refunds_of(fresh_engine, ORDER)
    assert (status, body) == ok(refund["id"], "submitted")
    assert refund["psp_reference"] and refund["next_attempt_at"] is None
    assert await order_status(fresh_engine, ORDER) == "paid"  # nothing moves before the outcome
    [item] = [i for i in await webhook_sink.wait_for(3) if i["eventCode"] == "REFUND"]
    assert (item["pspReference"], item["merchantReference"], item["success"]) == (
        refund["psp_reference"], f"refund-{refund['id']}", "true")
    assert item["amount"] == {"currency": "EUR", "value": 1607}
    # What the webhook bridge makes of it (issue 11 item 4), delivered by HTTP to the new side's applier.
    event = {"event_id": f"adyen:REFUND:{item['pspReference']}", "refund_id": str(refund["id"]), "order_id": ORDER,
             "status": "succeeded", "amount": "16.07", "currency": "EUR", "psp_reference": item["pspReference"]}
    resp = await edge.post("/event/refund_notified", json=event, headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
    assert resp.status == 200, await resp.text()
    assert [r["status"] for r in await refunds_of(fresh_engine, ORDER)] == ["succeeded"]
    assert await order_status(fresh_engine, ORDER) == "partially_refunded"
    assert await notis(fresh_engine, ORDER) == ["refund_succeeded"]
    assert [c["key"] for c in await psp.calls("POST", "/refunds")] == [f"refund-{refund['id']}"]


async def test_a_psp_that_keeps_failing_during_the_request_leaves_the_refund_retrying(
    edge: TestClient, fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    await psp.fault(path=PAYPAL_REFUNDS, error_status=503, times=3)  # every attempt of this call
    status, body = await post_refund(edge, {"order_id": ORDER, "request_id": "rq-1"})
    [refund] = await refunds_of(fresh_engine, ORDER)
    assert (status, body) == ok(refund["id"], "retrying")
    assert (refund["attempts"], refund["next_attempt_at"] - refund["updated_at"]) == (1, timedelta(seconds=30))
    assert await order_status(fresh_engine, ORDER) == "paid"
    assert (await psp.state())["paypal"]["refunds"] == {}
    assert [c["key"] for c in await psp.calls("POST", "/refund")] == [f"refund-{refund['id']}"] * 3


async def test_old_shopping_moving_the_order_meanwhile_does_not_break_the_guarded_updates(
    edge: TestClient, fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    await psp.fault(path=PAYPAL_REFUNDS, delay_ms=300)

    async def old_shopping_ships() -> None:
        # While the refund is at the PSP, old shopping's purchased consumer moves the order on (its own guarded write).
        await asyncio.sleep(0.1)
        o = t.orders.c
        async with fresh_engine.begin() as conn:
            moved = await conn.execute(update(t.orders).where(o.id == ORDER, o.status == "paid").values(status="fulfilling"))
            assert moved.rowcount == 1
            await conn.execute(insert(t.order_status_history).values(
                order_id=ORDER, from_status="paid", to_status="fulfilling", reason="purchased", actor="legacy",
                created_at=t.utcnow()))

    answer, _ = await asyncio.gather(post_refund(edge, {"order_id": ORDER, "amount": "6.07", "request_id": "rq-1"}),
                                     old_shopping_ships())
    assert answer[1]["data"]["status"] == "succeeded"
    assert await history(fresh_engine, ORDER) == [("paid", "fulfilling", "legacy"), ("fulfilling", "partially_refunded", "new")]


async def test_a_refund_waits_for_old_shoppings_lock_on_the_order_and_then_goes_through(
    edge: TestClient, fresh_engine: AsyncEngine, psp: Psp,
) -> None:
    await paid_order(fresh_engine, psp, ORDER)
    async with fresh_engine.connect() as conn:
        trans = await conn.begin()
        # Old shopping holds the order row (or, on SQLite, the write lock) in a transaction of its own.
        await conn.execute(text("UPDATE orders SET updated_at = updated_at WHERE id = :id"), {"id": ORDER})
        request = asyncio.create_task(post_refund(edge, {"order_id": ORDER, "amount": "1.00", "request_id": "rq-1"}))
        await asyncio.sleep(0.5)
        assert not request.done()
        await trans.commit()
    assert (await request)[1]["data"]["status"] == "succeeded"
    assert await order_status(fresh_engine, ORDER) == "partially_refunded"
