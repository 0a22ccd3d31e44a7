"""Old shopping's pay routes and refund API in the emulator, paying through the PSP emulator.

What it proves, for paypal_pay, paypal_finished, adyen_pay and /refund/refund as legacy-api.md shapes
them and the new side behaves: a ``payments`` row per attempt whose key the PSP gets (a retry after an
unanswered call, and a second tap at the same time, reach the PSP as one operation); paid only by a
COMPLETED capture (PayPal, after the order moved to payment_confirming) and authorized / failed by
Adyen's resultCode, every change a guarded one with history actor ``legacy`` and outbox ``purchased`` +
``noti`` once; amounts exact in each PSP's format (JPY, KWD, CLP); owner only, payable states only, not
past expiry. Refunds: the service token, never more than captured − refunded (also when five race), the
same request_id → the same refund, PayPal's synchronous refund, Adyen's ``received`` and the REFUND
webhook naming our refund, a PSP failure left ``retrying`` for the retry loop. The four routes served
through the edge from old shopping, and old shopping and the new side finishing one PayPal payment at
once: one capture (one key), paid once.

Most tests run on a copy of one seeded SQLite file; the races run on MariaDB, in this module's own
database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from emulators.legacy import create_app
from shop import schema as t
from tests.support.edge import start_edge, url_of
from tests.support.legacydb import engine_for, envelope, seeded_template, seeded_url
from tests.support.payments import (ADYEN_BODY, CARD, adyen_path, finish_path, legacy_psp, new_order, order_status,
                                     pay_edge, pay_path, rows)
from tests.support.psp import Psp, WebhookSink

pytest_plugins = ["tests.support.psp_fixtures"]

ClientFactory = Callable[..., Awaitable[TestClient]]
TOKEN = "legacy-refund-token-3b7d"
USER1 = {"X-User-Id": "1"}
INTERNAL = {"Authorization": f"Bearer {TOKEN}"}
PRIVATE_MARIADB_DATABASE = "test_legacy_payments"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seeded_template(tmp_path_factory, "legacy_payments")


@pytest.fixture
async def url(request: pytest.FixtureRequest, template: Path, tmp_path: Path) -> str:
    """SQLite (a copy of the module's template) unless a test asks for ``ON_MARIADB``."""
    return await seeded_url(getattr(request, "param", "sqlite"), template, tmp_path, PRIVATE_MARIADB_DATABASE)


ON_MARIADB = pytest.mark.parametrize("url", ["mariadb"], indirect=True)


@pytest.fixture
async def db(url: str) -> AsyncIterator[AsyncEngine]:
    async for engine in engine_for(url):
        yield engine


@pytest.fixture
async def legacy(url: str, psp: Psp, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(create_app(url, psp=legacy_psp(psp), service_token=TOKEN))


# --- helpers ----------------------------------------------------------------------------------


async def paypal_pay(client: TestClient, order_id: str, **headers: str) -> dict[str, Any]:
    resp = await client.post(pay_path(order_id), headers={**USER1, **headers})
    return (await envelope(resp, 200))["data"]


async def paypal_paid(client: TestClient, psp: Psp, order_id: str) -> str:
    """The order paid with PayPal through old shopping (pay, approve, finish); the pay_id."""
    made = await paypal_pay(client, order_id)
    assert await psp.approve(made["approve_url"]) == 200
    done = await envelope(await client.post(finish_path(order_id, made["pay_id"]), headers=USER1), 200)
    assert done["data"] == {"order_id": order_id, "status": "paid"}
    return str(made["pay_id"])


async def adyen_pay(client: TestClient, order_id: str, body: dict[str, Any] = ADYEN_BODY, status: int = 200,
                    **headers: str) -> dict[str, Any]:
    return await envelope(await client.post(adyen_path(order_id), json=body, headers={**USER1, **headers}), status)


async def adyen_captured(client: TestClient, db: AsyncEngine, order_id: str) -> str:
    """Paid with Adyen through old shopping: adyen_pay, then the CAPTURE as old shopping's event; the pspReference."""
    await adyen_pay(client, order_id)
    (payment,) = await rows(db, t.payments, t.payments.c.order_id == order_id)
    event = {"event_id": f"cap-{order_id}", "order_id": order_id, "provider": "adyen", "status": "captured",
             "amount": "96.07", "currency": "EUR", "psp_reference": payment.psp_reference}
    await envelope(await client.post("/event/payment_notified_cm", json=event), 200)
    assert await order_status(db, order_id) == "paid"
    return str(payment.psp_reference)


async def refund(client: TestClient, order_id: str, request_id: str, amount: str | None = None,
                 status: int = 200, headers: dict[str, str] = INTERNAL) -> dict[str, Any]:
    body: dict[str, Any] = {"order_id": order_id, "request_id": request_id, "reason": "customer asked"}
    if amount is not None:
        body["amount"] = amount
    return await envelope(await client.post("/refund/refund", json=body, headers=headers), status)


def psp_calls(calls: list[dict[str, Any]], suffix: str) -> list[dict[str, Any]]:
    return [c for c in calls if c["method"] == "POST" and c["path"].endswith(suffix)]


# --- PayPal -----------------------------------------------------------------------------------


async def test_paypal_pay_creates_a_paypal_order_for_the_total_and_a_payment_row(
        legacy: TestClient, db: AsyncEngine, psp: Psp) -> None:
    order_id = await new_order(db)
    made = await paypal_pay(legacy, order_id)
    assert set(made) == {"pay_id", "paypal_order_id", "approve_url"} and made["pay_id"].isdigit()
    (payment,) = await rows(db, t.payments, t.payments.c.order_id == order_id)
    assert (payment.id, payment.provider, payment.method, payment.status) == (int(made["pay_id"]), "paypal", "paypal", "created")
    assert (payment.amount, payment.currency, payment.paypal_order_id) == (Decimal("96.07"), "EUR", made["paypal_order_id"])
    assert payment.idempotency_key
    paypal = (await psp.state())["paypal"]["orders"][made["paypal_order_id"]]
    assert paypal["amount"] == {"currency_code": "EUR", "value": "96.07"} and paypal["reference_id"] == order_id
    (create,) = await psp.calls("POST", "/v2/checkout/orders")
    assert create["key"] == payment.idempotency_key and payment.idempotency_key.startswith("legacy-")
    assert await order_status(db, order_id) == "pending_payment"


async def test_a_pay_call_after_an_unanswered_one_sends_the_same_attempt_and_key(
        legacy: TestClient, db: AsyncEngine, psp: Psp) -> None:
    order_id = await new_order(db)
    await psp.fault(path="/v2/checkout/orders", error_status=503, times=2)  # both attempts of the first call
    down = await legacy.post(pay_path(order_id), headers=USER1)
    assert (await envelope(down, 502))["data"] == {"provider": "paypal", "psp_code": "SERVICE_UNAVAILABLE"}
    assert down.headers["Retry-After"] == "1"
    first = await paypal_pay(legacy, order_id)
    creates = await psp.calls("POST", "/v2/checkout/orders")
    assert len(creates) == 3 and len({c["key"] for c in creates}) == 1
    assert len(await rows(db, t.payments, t.payments.c.order_id == order_id)) == 1
    other = await paypal_pay(legacy, order_id)  # the first one was answered: this is a new attempt
    assert other["pay_id"] != first["pay_id"] and len((await psp.state())["paypal"]["orders"]) == 2


async def test_paypal_finished_pays_only_after_approval_and_once(legacy: TestClient, db: AsyncEngine, psp: Psp) -> None:
    order_id = await new_order(db)
    made = await paypal_pay(legacy, order_id)
    early = await envelope(await legacy.post(finish_path(order_id, made["pay_id"]), headers=USER1), 200)
    assert early["data"] == {"order_id": order_id, "status": "payment_failed"}  # not approved: payable again
    assert await psp.approve(made["approve_url"]) == 200
    for _ in range(2):  # the second finish answers the status and captures nothing
        done = await envelope(await legacy.post(finish_path(order_id, made["pay_id"]), headers=USER1), 200)
        assert done["data"] == {"order_id": order_id, "status": "paid"}
    (payment,) = await rows(db, t.payments, t.payments.c.order_id == order_id)
    assert payment.status == "captured" and payment.capture_id and payment.psp_reference == payment.capture_id
    assert len((await psp.state())["paypal"]["captures"]) == 1
    captures = await psp.calls("POST", "/capture")
    assert {c["key"] for c in captures} == {f"{payment.idempotency_key}:capture"}  # the new side's key for this row
    history = await rows(db, t.order_status_history, t.order_status_history.c.order_id == order_id)
    assert [(h.from_status, h.to_status, h.actor) for h in history] == [
        ("pending_payment", "payment_confirming", "legacy"), ("payment_confirming", "payment_failed", "legacy"),
        ("payment_failed", "payment_confirming", "legacy"), ("payment_confirming", "paid", "legacy")]
    box = await rows(db, t.outbox, t.outbox.c.key == order_id)
    assert [(b.topic, b.payload.get("template")) for b in box] == [
        ("noti", "payment_failed"), ("purchased", None), ("noti", "order_paid")]
    assert box[1].payload["event_id"] == f"purchased:{order_id}" and box[1].payload["user_id"] == 1
    (order,) = await rows(db, t.orders, t.orders.c.id == order_id)
    assert order.paid_at is not None


async def test_a_capture_that_acts_then_times_out_is_sent_again_with_its_key_and_pays_once(
        url: str, db: AsyncEngine, psp: Psp, aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_app(url, psp=legacy_psp(psp, timeout_seconds=1.0)))
    order_id = await new_order(db)
    made = await paypal_pay(client, order_id)
    assert await psp.approve(made["approve_url"]) == 200
    await psp.fault(path="/v2/checkout/orders/*/capture", act_then_timeout=True, times=1)
    done = await envelope(await client.post(finish_path(order_id, made["pay_id"]), headers=USER1), 200)
    assert done["data"]["status"] == "paid"
    captures = await psp.calls("POST", "/capture")
    assert len(captures) == 2 and captures[0]["key"] == captures[1]["key"] and captures[1]["replayed"]
    assert len((await psp.state())["paypal"]["captures"]) == 1


async def test_a_declined_capture_fails_the_payment_and_the_order(legacy: TestClient, db: AsyncEngine, psp: Psp) -> None:
    order_id = await new_order(db)
    made = await paypal_pay(legacy, order_id)
    await psp.approve(made["approve_url"])
    await psp.fault(path="/v2/checkout/orders/*/capture", paypal_capture_status="DECLINED", times=1)
    done = await envelope(await legacy.post(finish_path(order_id, made["pay_id"]), headers=USER1), 200)
    assert done["data"]["status"] == "payment_failed"
    (payment,) = await rows(db, t.payments, t.payments.c.order_id == order_id)
    assert payment.status == "failed"
    box = await rows(db, t.outbox, t.outbox.c.key == order_id)
    assert [b.payload.get("template") for b in box] == ["payment_failed"]


@ON_MARIADB
async def test_racing_paypal_finished_capture_once_and_pay_once(legacy: TestClient, db: AsyncEngine, psp: Psp) -> None:
    order_id = await new_order(db)
    made = await paypal_pay(legacy, order_id)
    await psp.approve(made["approve_url"])
    answers = await asyncio.gather(*(legacy.post(finish_path(order_id, made["pay_id"]), headers=USER1)
                                     for _ in range(8)))
    for resp in answers:
        assert (await envelope(resp, 200))["data"]["status"] == "paid"
    assert len((await psp.state())["paypal"]["captures"]) == 1
    history = await rows(db, t.order_status_history, t.order_status_history.c.order_id == order_id)
    assert [h.to_status for h in history] == ["payment_confirming", "paid"]
    box = await rows(db, t.outbox, t.outbox.c.key == order_id)
    assert sorted(b.topic for b in box) == ["noti", "purchased"]


# --- Adyen ------------------------------------------------------------------------------------


async def test_adyen_authorised_authorizes_the_payment_and_the_order(
        legacy: TestClient, db: AsyncEngine, psp: Psp, webhook_sink: WebhookSink) -> None:
    order_id = await new_order(db)
    data = (await adyen_pay(legacy, order_id))["data"]
    assert data == {"pay_id": data["pay_id"], "resultCode": "Authorised", "action": None}
    (payment,) = await rows(db, t.payments, t.payments.c.order_id == order_id)
    assert (str(payment.id), payment.provider, payment.method, payment.status) == (data["pay_id"], "adyen", "scheme", "authorized")
    at_adyen = (await psp.state())["adyen"]["payments"][payment.psp_reference]
    assert at_adyen["merchantReference"] == order_id and at_adyen["amount"] == {"currency": "EUR", "value": 9607}
    (call,) = await psp.calls("POST", "/v71/payments")
    assert call["key"] == payment.idempotency_key and payment.idempotency_key.startswith("legacy-")
    assert await order_status(db, order_id) == "authorized"
    hooks = await webhook_sink.wait_for(2)
    assert [(h["eventCode"], h["merchantReference"]) for h in hooks] == [("AUTHORISATION", order_id), ("CAPTURE", order_id)]


async def test_a_refused_card_fails_the_payment_and_the_order_and_a_new_attempt_may_follow(
        legacy: TestClient, db: AsyncEngine) -> None:
    order_id = await new_order(db)
    refused = {**ADYEN_BODY, "paymentMethod": {**CARD, "holderName": "REFUSED"}}
    assert (await adyen_pay(legacy, order_id, refused))["data"]["resultCode"] == "Refused"
    assert await order_status(db, order_id) == "payment_failed"
    (payment,) = await rows(db, t.payments, t.payments.c.order_id == order_id)
    assert payment.status == "failed" and payment.psp_reference
    assert [b.payload["template"] for b in await rows(db, t.outbox, t.outbox.c.key == order_id)] == ["payment_failed"]
    assert (await adyen_pay(legacy, order_id))["data"]["resultCode"] == "Authorised"
    assert await order_status(db, order_id) == "authorized"


async def test_redirect_shopper_hands_the_action_to_the_app_and_the_order_stays_payable(
        legacy: TestClient, db: AsyncEngine) -> None:
    order_id = await new_order(db)
    redirect = {**ADYEN_BODY, "paymentMethod": {**CARD, "number": "4212345678910006"}}
    data = (await adyen_pay(legacy, order_id, redirect))["data"]
    assert data["resultCode"] == "RedirectShopper" and data["action"]["type"] == "redirect"
    assert "/checkoutshopper/threeDS/redirect?MD=" in data["action"]["url"]
    (payment,) = await rows(db, t.payments, t.payments.c.order_id == order_id)
    assert payment.status == "created" and payment.psp_reference
    assert await order_status(db, order_id) == "pending_payment"


@ON_MARIADB
async def test_a_second_adyen_call_while_the_first_is_unanswered_is_the_same_charge(
        legacy: TestClient, db: AsyncEngine, psp: Psp) -> None:
    order_id = await new_order(db)
    await psp.fault(path="/v71/payments", delay_ms=700)
    first = asyncio.ensure_future(legacy.post(adyen_path(order_id), json=ADYEN_BODY, headers=USER1))
    await asyncio.sleep(0.3)
    second = (await adyen_pay(legacy, order_id))["data"]
    assert (await envelope(await first, 200))["data"] == second and second["resultCode"] == "Authorised"
    assert len((await psp.state())["adyen"]["payments"]) == 1  # one key: Adyen answered the second from the first
    again = await adyen_pay(legacy, order_id, status=409)  # authorized: not payable any more
    assert again["data"] == {"status": "authorized"}


@pytest.mark.parametrize(("currency", "exponent", "total", "paypal", "adyen"), [
    ("JPY", 0, "1040", "1040", 1040),
    ("KWD", 3, "1.234", "1.234", 1234),
    ("CLP", 0, "1000", "1000", 100000),  # Adyen counts CLP in cents, ISO has none
])
async def test_amounts_are_exact_in_each_psps_format(legacy: TestClient, db: AsyncEngine, psp: Psp, currency: str,
                                                      exponent: int, total: str, paypal: str, adyen: int) -> None:
    async with db.begin() as conn:
        if currency == "CLP":
            await conn.execute(insert(t.forex_rates).values(currency="CLP", rate=Decimal("940"), exponent=0))
    paypal_order = await new_order(db, currency=currency, total=total)
    made = await paypal_pay(legacy, paypal_order)
    at_paypal = (await psp.state())["paypal"]["orders"][made["paypal_order_id"]]
    assert at_paypal["amount"] == {"currency_code": currency, "value": paypal}
    adyen_order = await new_order(db, currency=currency, total=total)
    await adyen_pay(legacy, adyen_order)
    (payment,) = await rows(db, t.payments, t.payments.c.order_id == adyen_order)
    assert (await psp.state())["adyen"]["payments"][payment.psp_reference]["amount"] == {"currency": currency, "value": adyen}


async def test_a_total_a_psp_cannot_carry_exactly_is_refused_not_rounded(legacy: TestClient, db: AsyncEngine, psp: Psp) -> None:
    order_id = await new_order(db, currency="EUR", total="96.075")  # four decimals fit the column, not the PSPs
    refused = await envelope(await legacy.post(pay_path(order_id), headers=USER1), 422)
    assert refused["data"] == {"provider": "paypal", "reason": "amount_not_supported"}
    assert (await psp.calls("POST")) == []


@pytest.mark.parametrize("route", ["paypal_pay", "adyen_pay"])
async def test_only_the_owner_pays_and_only_a_payable_order(legacy: TestClient, db: AsyncEngine, psp: Psp,
                                                            route: str) -> None:
    async def call(order_id: str, headers: dict[str, str]) -> Any:
        path = pay_path(order_id) if route == "paypal_pay" else adyen_path(order_id)
        return await legacy.post(path, json=ADYEN_BODY, headers=headers)

    order_id = await new_order(db)
    assert (await envelope(await call(order_id, {}), 401))["msg"] == "login_required"
    assert (await envelope(await call(order_id, {"X-User-Id": "2"}), 404))["msg"] == "order_not_found"
    assert (await envelope(await call("NOPE", USER1), 404))["msg"] == "order_not_found"
    for status in ("payment_confirming", "cancelled", "paid", "authorized", "refunded"):
        other = await new_order(db, status=status)
        refused = await envelope(await call(other, USER1), 409)
        assert refused["msg"] == "invalid_state" and refused["data"] == {"status": status}
    late = await new_order(db)
    async with db.begin() as conn:  # due for the sweeper: paying now would race its cancel
        await conn.execute(update(t.orders).where(t.orders.c.id == late).values(expires_at=t.utcnow() - timedelta(seconds=1)))
    assert (await envelope(await call(late, USER1), 409))["data"] == {"status": "pending_payment", "reason": "expired"}
    assert await psp.calls("POST") == [] and await rows(db, t.payments) == []


async def test_paypal_finished_for_another_orders_payment_is_not_found(legacy: TestClient, db: AsyncEngine) -> None:
    order_id, other = await new_order(db), await new_order(db)
    made = await paypal_pay(legacy, order_id)
    for path in (finish_path(other, made["pay_id"]), finish_path(order_id, "12345678"), finish_path(order_id, "x")):
        assert (await envelope(await legacy.post(path, headers=USER1), 404))["msg"] == "payment_not_found"


async def test_a_psp_that_is_down_is_a_502_and_the_next_call_converges_on_the_same_attempt(
        legacy: TestClient, db: AsyncEngine, psp: Psp) -> None:
    order_id = await new_order(db)
    await psp.fault(path="/v71/payments", error_status=503, times=2)
    failed = await adyen_pay(legacy, order_id, status=502)
    assert failed["data"] == {"provider": "adyen", "psp_code": "000"}
    assert await order_status(db, order_id) == "pending_payment"
    assert (await adyen_pay(legacy, order_id))["data"]["resultCode"] == "Authorised"
    assert len(await rows(db, t.payments, t.payments.c.order_id == order_id)) == 1
    assert len({c["key"] for c in await psp.calls("POST", "/v71/payments")}) == 1
    invalid = {**ADYEN_BODY, "paymentMethod": {"type": "scheme"}}
    await psp.fault(path="/v71/payments", error_status=422, times=1)
    refused = await adyen_pay(legacy, await new_order(db), invalid, status=400)
    assert refused["data"]["field"] == "paymentMethod"


# --- refunds ----------------------------------------------------------------------------------


async def test_refunds_need_the_service_token(legacy: TestClient, url: str, db: AsyncEngine, psp: Psp,
                                              aiohttp_client: ClientFactory) -> None:
    order_id = await new_order(db, status="paid")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = await refund(legacy, order_id, "r-1", status=401, headers=headers)
        assert refused["msg"] == "login_required"
    unset = await aiohttp_client(create_app(url, psp=legacy_psp(psp)))  # no token configured: nobody
    for headers in ({"Authorization": "Bearer "}, INTERNAL):
        await refund(unset, order_id, "r-1", status=401, headers=headers)
    assert await rows(db, t.refunds) == [] and await psp.calls("POST", "/refund") == []


async def test_a_paypal_refund_succeeds_at_once_partly_then_wholly_and_never_beyond(
        legacy: TestClient, db: AsyncEngine, psp: Psp) -> None:
    order_id = await new_order(db)
    await paypal_paid(legacy, psp, order_id)
    part = (await refund(legacy, order_id, "r-part", "40.00"))["data"]
    assert part["status"] == "succeeded" and await order_status(db, order_id) == "partially_refunded"
    rest = (await refund(legacy, order_id, "r-rest"))["data"]  # no amount: all that is left
    assert rest["status"] == "succeeded" and await order_status(db, order_id) == "refunded"
    made = await rows(db, t.refunds, t.refunds.c.order_id == order_id)
    assert [(r.amount, r.status, r.attempts) for r in made] == [(Decimal("40.00"), "succeeded", 1), (Decimal("56.07"), "succeeded", 1)]
    at_paypal = (await psp.state())["paypal"]["refunds"]
    assert sorted(r["amount"]["value"] for r in at_paypal.values()) == ["40.00", "56.07"]
    assert {r["invoice_id"] for r in at_paypal.values()} == {f"refund-{r.id}" for r in made}
    beyond = await refund(legacy, order_id, "r-more", "0.01", status=409)
    assert beyond["data"] == {"status": "refunded"}
    box = await rows(db, t.outbox, t.outbox.c.key == order_id)
    assert [b.payload.get("template") for b in box if b.topic == "noti"] == ["order_paid", "refund_succeeded", "refund_succeeded"]


async def test_the_same_request_id_is_the_same_refund(legacy: TestClient, db: AsyncEngine, psp: Psp) -> None:
    order_id = await new_order(db)
    await paypal_paid(legacy, psp, order_id)
    first = (await refund(legacy, order_id, "r-same", "10.00"))["data"]
    again = (await refund(legacy, order_id, "r-same", "10.00"))["data"]
    assert again == first
    assert len(await psp.calls("POST", "/refund")) == 1 and len(await rows(db, t.refunds)) == 1
    other = await new_order(db, status="paid")
    reused = await refund(legacy, other, "r-same", "10.00", status=409)
    assert reused["msg"] == "request_id_reused"


async def test_more_than_refundable_is_409_and_nothing_is_written(legacy: TestClient, db: AsyncEngine, psp: Psp) -> None:
    order_id = await new_order(db)
    await paypal_paid(legacy, psp, order_id)
    beyond = await refund(legacy, order_id, "r-big", "96.08", status=409)
    assert beyond["data"] == {"status": "paid", "reason": "exceeds_refundable", "refundable": "96.07"}
    unpaid = await new_order(db)
    assert (await refund(legacy, unpaid, "r-unpaid", status=409))["data"] == {"status": "pending_payment"}
    assert (await refund(legacy, "NOPE", "r-none", status=404))["msg"] == "order_not_found"
    assert (await refund(legacy, order_id, "r-bad", "-1", status=400))["data"]["field"] == "amount"
    assert await rows(db, t.refunds) == [] and await psp.calls("POST", "/refund") == []


async def test_an_adyen_refund_is_submitted_and_its_webhook_names_our_refund(
        legacy: TestClient, db: AsyncEngine, psp: Psp, webhook_sink: WebhookSink) -> None:
    order_id = await new_order(db)
    psp_reference = await adyen_captured(legacy, db, order_id)
    done = (await refund(legacy, order_id, "r-adyen", "30.00"))["data"]
    assert done["status"] == "submitted"
    (row,) = await rows(db, t.refunds, t.refunds.c.order_id == order_id)
    assert str(row.id) == done["refund_id"] and row.psp_reference
    (call,) = await psp.calls("POST", "/refunds")
    assert call["path"] == f"/v71/payments/{psp_reference}/refunds" and call["key"] == f"refund-{row.id}"
    hooks = [h for h in await webhook_sink.wait_for(3) if h["eventCode"] == "REFUND"]
    assert [(h["merchantReference"], h["originalReference"], h["pspReference"], h["amount"]) for h in hooks] == [
        (str(row.id), psp_reference, row.psp_reference, {"currency": "EUR", "value": 3000})]
    assert await order_status(db, order_id) == "paid"  # until the webhook's event is applied


async def test_a_psp_failure_leaves_the_refund_retrying_for_the_retry_loop(legacy: TestClient, db: AsyncEngine,
                                                                            psp: Psp) -> None:
    order_id = await new_order(db)
    await paypal_paid(legacy, psp, order_id)
    await psp.fault(path="/v2/payments/captures/*/refund", error_status=503, times=2)
    before = t.utcnow()
    done = (await refund(legacy, order_id, "r-down"))["data"]
    assert done["status"] == "retrying"
    (row,) = await rows(db, t.refunds, t.refunds.c.order_id == order_id)
    assert row.attempts == 1 and row.reason == "customer asked"
    assert before + timedelta(seconds=25) < row.next_attempt_at < before + timedelta(seconds=40)
    calls = await psp.calls("POST", "/refund")
    assert len(calls) == 2 and {c["key"] for c in calls} == {f"refund-{row.id}"}
    assert await order_status(db, order_id) == "paid"


@ON_MARIADB
async def test_racing_refunds_never_give_back_more_than_was_captured(legacy: TestClient, db: AsyncEngine, psp: Psp) -> None:
    order_id = await new_order(db)
    await paypal_paid(legacy, psp, order_id)
    answers = await asyncio.gather(*(legacy.post("/refund/refund", headers=INTERNAL, json={
        "order_id": order_id, "request_id": f"race-{n}", "amount": "50.00"}) for n in range(5)))
    assert sorted(r.status for r in answers) == [200, 409, 409, 409, 409]
    assert len(await psp.calls("POST", "/refund")) == 1
    made = await rows(db, t.refunds, t.refunds.c.order_id == order_id)
    assert [(r.amount, r.status) for r in made] == [(Decimal("50.00"), "succeeded")]


# --- through the edge -------------------------------------------------------------------------


async def test_the_edge_serves_the_four_routes_from_old_shopping(
        legacy: TestClient, db: AsyncEngine, psp: Psp, url: str, aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    routes = {
        "paypal_pay": {"match": {"methods": ["POST"], "path": "/shopping/orders/{order_id}/pay/{ptype}/paypal"},
                       "new_percent": 0, "writes": True},
        "paypal_finished": {"match": {"methods": ["POST"], "path": "/shopping/orders/{order_id}/paypal_finished/{pay_id}"},
                            "new_percent": 0, "writes": True},
        "adyen_pay": {"match": {"methods": ["POST"], "path": "/shopping/orders/{order_id}/pay/any/adyen"},
                      "new_percent": 0, "writes": True},
        "refund": {"match": {"methods": ["POST"], "path": "/refund/refund"}, "new_percent": 0, "writes": True},
    }
    edge, _ = await start_edge(aiohttp_client, tmp_path, url_of(legacy.server), routes, db_url=url)
    order_id, card_order = await new_order(db), await new_order(db)
    started = time.monotonic()
    made = await edge.post(pay_path(order_id), headers=USER1)
    assert (made.headers["X-Edge-Route"], made.headers["X-Edge-Backend"]) == ("paypal_pay", "legacy")
    pay = (await envelope(made, 200))["data"]
    await psp.approve(pay["approve_url"])
    done = await edge.post(finish_path(order_id, pay["pay_id"]), headers=USER1)
    assert done.headers["X-Edge-Route"] == "paypal_finished" and (await envelope(done, 200))["data"]["status"] == "paid"
    card = await edge.post(adyen_path(card_order), json=ADYEN_BODY, headers=USER1)
    assert card.headers["X-Edge-Route"] == "adyen_pay" and (await envelope(card, 200))["data"]["resultCode"] == "Authorised"
    back = await edge.post("/refund/refund", headers=INTERNAL, json={"order_id": order_id, "request_id": "edge-r"})
    assert (back.headers["X-Edge-Route"], back.headers["X-Edge-Backend"]) == ("refund", "legacy")
    assert (await envelope(back, 200))["data"]["status"] == "succeeded"
    assert await order_status(db, order_id) == "refunded" and time.monotonic() - started < 30


# --- both sides on one payment ----------------------------------------------------------------


@ON_MARIADB
@pytest.mark.parametrize("created_by", ["legacy", "new"])
async def test_old_shopping_and_the_new_side_finishing_one_paypal_payment_at_once_capture_it_once(
        legacy: TestClient, db: AsyncEngine, psp: Psp, url: str, aiohttp_client: ClientFactory, tmp_path: Path,
        created_by: str) -> None:
    new = await pay_edge(aiohttp_client, tmp_path, url, psp, seed=False)  # the pay routes at 100 % new
    order_id = await new_order(db)
    made = await paypal_pay(legacy if created_by == "legacy" else new, order_id)
    assert await psp.approve(made["approve_url"]) == 200
    answers = await asyncio.gather(*(side.post(finish_path(order_id, made["pay_id"]), headers=USER1)
                                     for side in (legacy, new, legacy, new, legacy, new)))
    for resp in answers:
        assert (await envelope(resp, 200))["data"] == {"order_id": order_id, "status": "paid"}
    assert len((await psp.state())["paypal"]["captures"]) == 1
    assert len({c["key"] for c in await psp.calls("POST", "/capture")}) == 1  # one key, whichever side sent it
    history = await rows(db, t.order_status_history, t.order_status_history.c.order_id == order_id)
    assert [h.to_status for h in history] == ["payment_confirming", "paid"]
    box = await rows(db, t.outbox, t.outbox.c.key == order_id)
    assert sorted(b.topic for b in box) == ["noti", "purchased"]
    (payment,) = await rows(db, t.payments, t.payments.c.order_id == order_id)
    assert payment.status == "captured"
