"""adyen_pay on the new side, through the edge, against the PSP emulator (SQLite and MariaDB).

What it proves: one /payments call for the order's total in Adyen's minor units with reference =
order id; Authorised → payment authorized (with Adyen's pspReference, so the webhook finds it) and
order authorized; Refused / Error → payment failed, order payment_failed with a `noti`;
RedirectShopper → the action reaches the app, the payment stays created and the order payable; a
payment the webhook's consumer recorded first is the one row of that payment; owner and payable only.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from adapters.adyen import AdyenPayment
from shop import events, payments
from shop.bootstrap import Shop
from shop import schema as t
from shop.db import make_engine
from tests.builders import NOW, shop_at
from tests.support.edge import internal_headers
from tests.support.payments import CARD, REDIRECT_CARD, RETURN_URL, Shopper, pay_edge
from tests.support.psp import Psp

pytest_plugins = ["tests.support.psp_fixtures"]


@pytest.fixture
async def shopper(aiohttp_client, tmp_path: Path, db_url: str, psp: Psp) -> Shopper:
    return Shopper(await pay_edge(aiohttp_client, tmp_path, db_url, psp), db_url)


async def test_an_authorised_card_authorizes_the_payment_and_the_order(shopper: Shopper, psp: Psp) -> None:
    order_id = await shopper.order("AD-1")
    status, body = await shopper.adyen_pay(order_id)
    assert status == 200 and body["code"] == 0, body
    [payment] = await shopper.rows(t.payments, order_id)
    assert body["data"] == {"pay_id": str(payment["id"]), "resultCode": "Authorised", "action": None}
    [(psp_reference, sent)] = (await psp.state())["adyen"]["payments"].items()
    assert sent["merchantReference"] == order_id and sent["amount"] == {"currency": "EUR", "value": 9607}
    assert (payment["provider"], payment["method"], payment["status"], payment["psp_reference"]) == (
        "adyen", "scheme", "authorized", psp_reference)
    assert payment["idempotency_key"].startswith("new-ad-")
    assert await shopper.status(order_id) == "authorized"
    assert await shopper.history(order_id) == [("pending_payment", "authorized")]
    assert await shopper.outbox(order_id) == []  # paid (and purchased) come with the CAPTURE webhook
    [call] = await psp.calls("POST", "/v71/payments")
    assert call["key"] == payment["idempotency_key"]
    # The app can't pay an authorized order a second time.
    status, body = await shopper.adyen_pay(order_id)
    assert (status, body["msg"], body["data"]) == (409, "invalid_state", {"status": "authorized"})


@pytest.mark.parametrize(("holder", "code"), [("REFUSED", "Refused"), ("ERROR", "Error")])
async def test_a_refused_card_fails_the_payment_and_the_order(shopper: Shopper, psp: Psp, holder: str, code: str) -> None:
    order_id = await shopper.order(f"AD-{holder}")
    status, body = await shopper.adyen_pay(order_id, {**CARD, "holderName": holder})
    assert (status, body["data"]["resultCode"], body["data"]["action"]) == (200, code, None), body
    assert await shopper.payments(order_id) == [("adyen", "failed", Decimal("96.07"))]
    assert await shopper.status(order_id) == "payment_failed"
    [noti] = await shopper.rows(t.outbox, order_id)
    assert (noti["topic"], noti["payload"]["template"], noti["payload"]["vars"]["provider"]) == ("noti", "payment_failed", "adyen")
    # payment_failed is payable: the next card is a new attempt with a new key.
    status, body = await shopper.adyen_pay(order_id)
    assert (status, body["data"]["resultCode"]) == (200, "Authorised"), body
    keys = [c["key"] for c in await psp.calls("POST", "/v71/payments")]
    assert len(set(keys)) == 2
    assert [p[1] for p in await shopper.payments(order_id)] == ["failed", "authorized"]
    assert await shopper.history(order_id) == [("pending_payment", "payment_failed"), ("payment_failed", "authorized")]


async def test_redirect_shopper_returns_the_action_and_leaves_the_order_payable(shopper: Shopper, psp: Psp) -> None:
    order_id = await shopper.order("AD-3")
    status, body = await shopper.adyen_pay(order_id, REDIRECT_CARD)
    assert status == 200, body
    data = body["data"]
    assert data["resultCode"] == "RedirectShopper"
    assert data["action"]["type"] == "redirect" and data["action"]["url"].startswith(psp.url + "/checkoutshopper/")
    [payment] = await shopper.rows(t.payments, order_id)
    assert (payment["status"], str(payment["id"])) == ("created", data["pay_id"]) and payment["psp_reference"]
    assert await shopper.status(order_id) == "pending_payment" and await shopper.history(order_id) == []
    # The shopper gives up on 3-D Secure and pays with another card: a new attempt, not a replay.
    status, body = await shopper.adyen_pay(order_id)
    assert (status, body["data"]["resultCode"]) == (200, "Authorised")
    assert [p[1] for p in await shopper.payments(order_id)] == ["created", "authorized"]


async def attempt_answered(shop: Shop, psp: Psp, order_id: str) -> tuple[payments.Attempt, AdyenPayment]:
    """Step 1 and 2 of adyen_pay by hand (the attempt, Adyen's answer), so a test can act before step 3."""
    async with shop.tx("new") as uow:
        attempt = await payments.open_attempt(uow, "adyen", order_id, 1, "scheme")
    result = await psp.adyen().pay(reference=order_id, amount=attempt.amount, currency="EUR", payment_method=CARD,
                                   return_url=RETURN_URL, idempotency_key=attempt.key)
    return attempt, result


async def test_a_payment_the_webhook_recorded_first_stays_one_row(shopper: Shopper, psp: Psp) -> None:
    """The AUTHORISATION webhook's consumer (shop/events.py, which finds no row with the pspReference
    and inserts one) commits before the pay answer is applied: the answer goes to that row, the
    attempt's own row goes, and the order moves once."""
    order_id = await shopper.order("AD-4")
    engine = make_engine(shopper.db_url)
    shop = shop_at(engine, NOW)
    try:
        attempt, result = await attempt_answered(shop, psp, order_id)
        assert result.psp_reference
        webhook = events.PaymentNotified(event_id="adyen-auth-1", order_id=order_id, payment_id=None, provider="adyen",
                                         status="authorized", amount=Decimal("96.07"), currency="EUR",
                                         psp_reference=result.psp_reference, occurred_at=None)
        async with shop.tx("consumer") as uow:
            await events.apply_payment_notified(uow, webhook, "shopping-new:payment_notified")
        async with shop.tx("new") as uow:
            kept = await payments.record_adyen_answer(uow, attempt, result)
    finally:
        await engine.dispose()
    [row] = await shopper.rows(t.payments, order_id)
    assert row["id"] == kept != attempt.pay_id
    assert (row["status"], row["psp_reference"], row["idempotency_key"]) == ("authorized", result.psp_reference, attempt.key)
    assert await shopper.history(order_id) == [("pending_payment", "authorized")]


async def test_another_users_order_is_not_found(shopper: Shopper, psp: Psp) -> None:
    order_id = await shopper.order("AD-6")
    status, body = await shopper.as_user(3).adyen_pay(order_id)
    assert (status, body["msg"]) == (404, "order_not_found")
    assert await shopper.rows(t.payments, order_id) == [] and await psp.calls() == []


@pytest.mark.parametrize("status", ["paid", "cancelled", "payment_confirming"])
async def test_an_order_that_is_not_payable_is_409(shopper: Shopper, psp: Psp, status: str) -> None:
    order_id = await shopper.order(f"AD-S-{status[:6]}", status=status)
    code, body = await shopper.adyen_pay(order_id)
    assert (code, body["msg"], body["data"]) == (409, "invalid_state", {"status": status})
    assert await psp.calls() == []


@pytest.mark.parametrize("body", [
    {"returnUrl": RETURN_URL},
    {"paymentMethod": {"holderName": "no type"}, "returnUrl": RETURN_URL},
    {"paymentMethod": CARD},
    {"paymentMethod": CARD, "returnUrl": RETURN_URL, "browserInfo": "ie6"},
    ["not", "an", "object"],
])
async def test_a_malformed_request_is_400_and_calls_nobody(shopper: Shopper, psp: Psp, body: object) -> None:
    order_id = await shopper.order("AD-7")
    status, answer = await shopper.post(f"/shopping/orders/{order_id}/pay/any/adyen", body)
    assert (status, answer["code"]) == (400, 40001), answer
    assert await shopper.rows(t.payments, order_id) == [] and await psp.calls() == []


@pytest.mark.parametrize(("currency", "total", "minor"), [("JPY", "1040", 1040), ("KWD", "1.234", 1234), ("CLP", "1000", 100000)])
async def test_amounts_go_out_in_adyens_minor_units(shopper: Shopper, psp: Psp, currency: str, total: str, minor: int) -> None:
    order_id = await shopper.order(f"AD-{currency}", currency=currency, total=Decimal(total))
    status, body = await shopper.adyen_pay(order_id)
    assert (status, body["data"]["resultCode"]) == (200, "Authorised"), body
    [sent] = (await psp.state())["adyen"]["payments"].values()
    assert sent["amount"] == {"currency": currency, "value": minor}


async def test_the_direct_paths_serve_internal_callers_only(shopper: Shopper, psp: Psp) -> None:
    order_id = await shopper.order("AD-D")
    body = {"paymentMethod": CARD, "returnUrl": RETURN_URL}
    resp = await shopper.edge.post(f"/order2/adyen/any/{order_id}", json=body, headers={"X-User-Id": "1"})
    assert resp.status == 404 and await psp.calls() == []
    resp = await shopper.edge.post(f"/order2/adyen/any/{order_id}", json=body,
                                   headers=internal_headers(**{"X-User-Id": "1"}))
    answer = await resp.json()
    assert (resp.status, answer["data"]["resultCode"]) == (200, "Authorised"), answer
    resp = await shopper.edge.post(f"/order2/paypal/pay/paypal/{order_id}", headers=internal_headers(**{"X-User-Id": "1"}))
    assert (resp.status, (await resp.json())["data"]) == (409, {"status": "authorized"})


async def test_another_orders_row_with_the_same_psp_reference_is_never_merged_into(shopper: Shopper, psp: Psp) -> None:
    """Two emulators with the same id seed once handed out one pspReference twice: the second order's
    answer must stay on its own row, not take over (and delete) the first order's payment."""
    first, second = await shopper.order("AD-7"), await shopper.order("AD-8")
    status, body = await shopper.adyen_pay(first)
    assert status == 200, body
    [taken] = await shopper.rows(t.payments, first)
    engine = make_engine(shopper.db_url)
    shop = shop_at(engine, NOW)
    try:
        attempt, result = await attempt_answered(shop, psp, second)
        clash = replace(result, psp_reference=taken["psp_reference"])
        async with shop.tx("new") as uow:
            kept = await payments.record_adyen_answer(uow, attempt, clash)
    finally:
        await engine.dispose()
    assert kept == attempt.pay_id
    assert [(p["id"], p["status"]) for p in await shopper.rows(t.payments, first)] == [(taken["id"], "authorized")]
    assert [(p["id"], p["status"]) for p in await shopper.rows(t.payments, second)] == [(attempt.pay_id, "authorized")]
    assert await shopper.status(second) == "authorized"
