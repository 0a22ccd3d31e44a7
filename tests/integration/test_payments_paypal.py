"""paypal_pay and paypal_finished on the new side, through the edge, against the PSP emulator (SQLite and MariaDB).

What it proves: pay creates one PayPal order for the order's total and one `payments` row with its
key; the payer approves (GET the approve link) and finished captures it: payment captured with the
capture id, order paid through the guarded transitions, outbox `purchased` + `noti` in the same
commit; finished again (or twice at once) is one capture and no further history; PayPal's refusal
makes the order payable again; owner only; payable states only; amounts in PayPal's decimals.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from shop import schema as t
from tests.support.edge import internal_headers
from tests.support.payments import Shopper, pay_edge
from tests.support.psp import Psp

pytest_plugins = ["tests.support.psp_fixtures"]

CAPTURE = "/v2/checkout/orders/*/capture"


@pytest.fixture
async def shopper(aiohttp_client, tmp_path: Path, db_url: str, psp: Psp) -> Shopper:
    return Shopper(await pay_edge(aiohttp_client, tmp_path, db_url, psp), db_url)


async def pay_and_approve(shopper: Shopper, psp: Psp, order_id: str) -> str:
    status, body = await shopper.paypal_pay(order_id)
    assert status == 200, body
    assert await psp.approve(body["data"]["approve_url"]) == 200
    return body["data"]["pay_id"]


async def test_pay_approve_finish_pays_the_order_with_purchased_and_noti(shopper: Shopper, psp: Psp) -> None:
    order_id = await shopper.order("PP-1")
    status, body = await shopper.paypal_pay(order_id)
    assert status == 200 and body["code"] == 0, body
    data = body["data"]
    assert set(data) == {"pay_id", "paypal_order_id", "approve_url"}
    [payment] = await shopper.rows(t.payments, order_id)
    assert str(payment["id"]) == data["pay_id"] and payment["paypal_order_id"] == data["paypal_order_id"]
    assert (payment["provider"], payment["method"], payment["status"], payment["amount"], payment["currency"]) == (
        "paypal", "paypal", "created", Decimal("96.07"), "EUR")
    assert payment["idempotency_key"].startswith("new-pp-")
    created = (await psp.state())["paypal"]["orders"][data["paypal_order_id"]]
    assert created["amount"] == {"currency_code": "EUR", "value": "96.07"} and created["reference_id"] == order_id
    assert await shopper.status(order_id) == "pending_payment"  # pay alone moves nothing

    assert await psp.approve(data["approve_url"]) == 200
    status, body = await shopper.paypal_finished(order_id, data["pay_id"])
    assert (status, body["data"]) == (200, {"order_id": order_id, "status": "paid"}), body
    [payment] = await shopper.rows(t.payments, order_id)
    [capture_id] = (await psp.state())["paypal"]["orders"][data["paypal_order_id"]]["captures"]
    assert (payment["status"], payment["capture_id"], payment["psp_reference"]) == ("captured", capture_id, capture_id)
    assert await shopper.history(order_id) == [("pending_payment", "payment_confirming"), ("payment_confirming", "paid")]
    outbox = await shopper.rows(t.outbox, order_id)
    assert [o["topic"] for o in outbox] == ["purchased", "noti"]
    assert outbox[0]["payload"]["event_id"] == f"purchased:{order_id}" and outbox[0]["payload"]["user_id"] == 1
    assert outbox[1]["payload"]["template"] == "order_paid"
    assert outbox[1]["payload"]["vars"] == {"amount": "96.07", "currency": "EUR", "provider": "paypal"}
    # The detail shows the payment, and nothing of PayPal's ids.
    resp = await shopper.edge.get(f"/order2/detail/{order_id}", headers=internal_headers(**{"X-User-Id": "1"}))
    detail = (await resp.json())["data"]
    assert [{k: v for k, v in p.items() if k != "created_at"} for p in detail["payments"]] == [
        {"provider": "paypal", "method": "paypal", "status": "captured", "amount": "96.07", "currency": "EUR"}]
    assert capture_id not in str(detail) and data["paypal_order_id"] not in str(detail)


async def test_finished_twice_and_twice_at_once_is_one_capture_and_one_paid_transition(shopper: Shopper, psp: Psp) -> None:
    order_id = await shopper.order("PP-2")
    pay_id = await pay_and_approve(shopper, psp, order_id)
    answers = await asyncio.gather(*(shopper.paypal_finished(order_id, pay_id) for _ in range(2)))
    assert [(s, b["data"]) for s, b in answers] == [(200, {"order_id": order_id, "status": "paid"})] * 2, answers
    again = await shopper.paypal_finished(order_id, pay_id)
    assert again == answers[0]
    assert len((await psp.state())["paypal"]["captures"]) == 1
    assert await shopper.history(order_id) == [("pending_payment", "payment_confirming"), ("payment_confirming", "paid")]
    assert [o[0] for o in await shopper.outbox(order_id)] == ["purchased", "noti"]
    assert await shopper.payments(order_id) == [("paypal", "captured", Decimal("96.07"))]


async def test_already_captured_elsewhere_converges_on_the_capture_paypal_has(shopper: Shopper, psp: Psp) -> None:
    """Old shopping (or a lost answer) captured the PayPal order with another request id: 422
    ORDER_ALREADY_CAPTURED, read back, and the capture PayPal reports is recorded."""
    order_id = await shopper.order("PP-3")
    pay_id = await pay_and_approve(shopper, psp, order_id)
    [paypal_order] = (await psp.state())["paypal"]["orders"]
    await psp.paypal().capture_order(paypal_order, request_id="old-shopping-capture")
    status, body = await shopper.paypal_finished(order_id, pay_id)
    assert (status, body["data"]["status"]) == (200, "paid"), body
    [capture_id] = (await psp.state())["paypal"]["captures"]
    [payment] = await shopper.rows(t.payments, order_id)
    assert (payment["status"], payment["capture_id"]) == ("captured", capture_id)
    assert [c["status"] for c in await psp.calls("POST", "/capture")] == [201, 422]


async def test_finished_before_the_payer_approved_leaves_the_order_payable(shopper: Shopper, psp: Psp) -> None:
    order_id = await shopper.order("PP-4")
    _, paid = await shopper.paypal_pay(order_id)
    pay_id = paid["data"]["pay_id"]
    status, body = await shopper.paypal_finished(order_id, pay_id)
    assert (status, body["data"]) == (200, {"order_id": order_id, "status": "payment_failed"}), body
    assert await shopper.payments(order_id) == [("paypal", "created", Decimal("96.07"))]  # still approvable
    assert ("noti", "payment_failed") in await shopper.outbox(order_id)
    # The payer approves after all: the same pay_id now captures.
    assert await psp.approve(paid["data"]["approve_url"]) == 200
    status, body = await shopper.paypal_finished(order_id, pay_id)
    assert (status, body["data"]["status"]) == (200, "paid"), body
    assert await shopper.history(order_id) == [
        ("pending_payment", "payment_confirming"), ("payment_confirming", "payment_failed"),
        ("payment_failed", "payment_confirming"), ("payment_confirming", "paid")]


@pytest.mark.parametrize(("capture_status", "order_status", "payment_status", "again"), [
    ("DECLINED", "payment_failed", "failed", (409, "invalid_state")),   # over: a new pay is a new attempt
    ("PENDING", "payment_confirming", "created", (200, "ok")),          # not money yet: asking again is harmless
])
async def test_a_capture_that_is_not_completed_is_not_paid(shopper: Shopper, psp: Psp, capture_status: str,
                                                            order_status: str, payment_status: str,
                                                            again: tuple[int, str]) -> None:
    order_id = await shopper.order(f"PP-{capture_status}")
    pay_id = await pay_and_approve(shopper, psp, order_id)
    await psp.fault(path=CAPTURE, paypal_capture_status=capture_status, times=1)
    status, body = await shopper.paypal_finished(order_id, pay_id)
    assert (status, body["data"]["status"]) == (200, order_status), body
    [payment] = await shopper.rows(t.payments, order_id)
    assert payment["status"] == payment_status and payment["capture_id"]
    assert "purchased" not in [topic for topic, _ in await shopper.outbox(order_id)]
    status, body = await shopper.paypal_finished(order_id, pay_id)
    assert (status, body["msg"]) == again, body
    assert len((await psp.state())["paypal"]["captures"]) == 1
    assert await shopper.status(order_id) == order_status


async def test_another_users_order_is_not_found_and_anonymous_must_log_in(shopper: Shopper, psp: Psp) -> None:
    order_id = await shopper.order("PP-7")
    pay_id = await pay_and_approve(shopper, psp, order_id)
    stranger = shopper.as_user(2)
    for status, body in (await stranger.paypal_pay(order_id), await stranger.paypal_finished(order_id, pay_id)):
        assert (status, body["code"], body["msg"]) == (404, 40401, "order_not_found"), body
    resp = await shopper.edge.post(f"/shopping/orders/{order_id}/pay/paypal/paypal")
    assert resp.status == 401 and (await resp.json())["msg"] == "login_required"
    assert await shopper.status(order_id) == "pending_payment" and len(await shopper.rows(t.payments, order_id)) == 1
    assert len((await psp.state())["paypal"]["orders"]) == 1


@pytest.mark.parametrize("status", ["paid", "cancelled", "authorized", "payment_confirming", "fulfilling"])
async def test_an_order_that_is_not_payable_is_409_with_its_status(shopper: Shopper, psp: Psp, status: str) -> None:
    order_id = await shopper.order(f"PP-S-{status[:6]}", status=status)
    code, body = await shopper.paypal_pay(order_id)
    assert (code, body["code"], body["msg"], body["data"]["status"]) == (409, 40901, "invalid_state", status), body
    assert await shopper.rows(t.payments, order_id) == [] and await psp.calls() == []


async def test_an_expired_order_is_not_payable(shopper: Shopper, psp: Psp) -> None:
    from datetime import datetime

    order_id = await shopper.order("PP-8", expires_at=datetime(2020, 1, 1))
    code, body = await shopper.paypal_pay(order_id)
    assert (code, body["data"]) == (409, {"status": "pending_payment", "reason": "expired"})


@pytest.mark.parametrize(("currency", "total", "value"), [("JPY", "1040", "1040"), ("KWD", "1.234", "1.234")])
async def test_amounts_go_out_in_paypals_decimals(shopper: Shopper, psp: Psp, currency: str, total: str, value: str) -> None:
    order_id = await shopper.order(f"PP-{currency}", currency=currency, total=Decimal(total))
    pay_id = await pay_and_approve(shopper, psp, order_id)
    [created] = (await psp.state())["paypal"]["orders"].values()
    assert created["amount"] == {"currency_code": currency, "value": value}
    status, body = await shopper.paypal_finished(order_id, pay_id)
    assert (status, body["data"]["status"]) == (200, "paid"), body
    [capture] = (await psp.state())["paypal"]["captures"].values()
    assert capture["amount"] == {"currency_code": currency, "value": value}
    [noti] = [o for o in await shopper.rows(t.outbox, order_id) if o["topic"] == "noti"]
    assert noti["payload"]["vars"]["amount"] == value
