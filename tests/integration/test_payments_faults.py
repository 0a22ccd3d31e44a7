"""The pay routes when the PSP is slow, down, or acts and never answers (SQLite and MariaDB).

What it proves: a PSP that captured or authorised and whose answer was lost is asked again with the
same key, inside the call or on the app's retry, and replays its first answer: one capture, one
payment, the order paid or authorized once. A PSP that can't be reached is a 502/504 in the legacy
envelope (never a 500) that leaves the attempt open, so the same request later finishes it. Two taps
at once share one attempt. No secret reaches a log line or an answer.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from pathlib import Path

import pytest
import structlog

from shop import schema as t
from tests.support.edge import dead_url
from tests.support.payments import CARD, Shopper, pay_edge
from tests.support.psp import SECRETS, Psp

pytest_plugins = ["tests.support.psp_fixtures"]

CAPTURE = "/v2/checkout/orders/*/capture"
PAYMENTS = "/v71/payments"
# Each PSP attempt may take this long before the route tries again (the box is shared: not less).
ATTEMPT_SECONDS = 2.0


async def approved(shopper: Shopper, psp: Psp, order_id: str) -> str:
    status, body = await shopper.paypal_pay(order_id)
    assert status == 200, body
    assert await psp.approve(body["data"]["approve_url"]) == 200
    return body["data"]["pay_id"]


async def test_a_capture_that_acts_then_times_out_is_retried_into_one_capture(aiohttp_client, tmp_path: Path, db_url: str,
                                                                              psp: Psp) -> None:
    shopper = Shopper(await pay_edge(aiohttp_client, tmp_path, db_url, psp, psp_timeout_seconds=ATTEMPT_SECONDS), db_url)
    order_id = await shopper.order("F-1")
    pay_id = await approved(shopper, psp, order_id)
    await psp.fault(path=CAPTURE, act_then_timeout=True, times=1)
    status, body = await shopper.paypal_finished(order_id, pay_id)
    assert (status, body["data"]["status"]) == (200, "paid"), body
    captures = await psp.calls("POST", "/capture")
    assert [c["replayed"] for c in captures] == [False, True] and len({c["key"] for c in captures}) == 1
    assert len((await psp.state())["paypal"]["captures"]) == 1
    assert await shopper.payments(order_id) == [("paypal", "captured", Decimal("96.07"))]
    assert [o[0] for o in await shopper.outbox(order_id)] == ["purchased", "noti"]


async def test_a_lost_capture_answer_is_a_504_and_the_apps_retry_finishes_it(aiohttp_client, tmp_path: Path, db_url: str,
                                                                             psp: Psp) -> None:
    """One attempt per call (SHOP_PSP_MAX_ATTEMPTS=1): the capture happened, the route could not know,
    the order waits in payment_confirming (no sweeper, no cancel), and the retry converges."""
    edge = await pay_edge(aiohttp_client, tmp_path, db_url, psp, psp_timeout_seconds=ATTEMPT_SECONDS, psp_max_attempts=1)
    shopper = Shopper(edge, db_url)
    order_id = await shopper.order("F-2")
    pay_id = await approved(shopper, psp, order_id)
    await psp.fault(path=CAPTURE, act_then_timeout=True, times=1)
    resp = await edge.post(f"/shopping/orders/{order_id}/paypal_finished/{pay_id}", headers={"X-User-Id": "1"})
    body = await resp.json()
    assert (resp.status, body["code"], body["msg"], body["data"]) == (504, 50401, "upstream_timeout", {"provider": "paypal"})
    assert resp.headers["Retry-After"] == "1"
    assert len((await psp.state())["paypal"]["captures"]) == 1  # PayPal has the money
    assert await shopper.status(order_id) == "payment_confirming"
    assert await shopper.payments(order_id) == [("paypal", "created", Decimal("96.07"))]
    status, body = await shopper.paypal_finished(order_id, pay_id)
    assert (status, body["data"]["status"]) == (200, "paid"), body
    assert len((await psp.state())["paypal"]["captures"]) == 1
    assert [c["replayed"] for c in await psp.calls("POST", "/capture")] == [False, True]
    assert await shopper.history(order_id) == [("pending_payment", "payment_confirming"), ("payment_confirming", "paid")]


async def test_an_authorisation_that_acts_then_times_out_is_one_payment(aiohttp_client, tmp_path: Path, db_url: str,
                                                                        psp: Psp) -> None:
    edge = await pay_edge(aiohttp_client, tmp_path, db_url, psp, psp_timeout_seconds=ATTEMPT_SECONDS, psp_max_attempts=1)
    shopper = Shopper(edge, db_url)
    order_id = await shopper.order("F-3")
    await psp.fault(path=PAYMENTS, act_then_timeout=True, times=1)
    status, body = await shopper.adyen_pay(order_id)
    assert (status, body["msg"]) == (504, "upstream_timeout"), body
    [payment] = await shopper.rows(t.payments, order_id)
    assert (payment["status"], payment["psp_reference"]) == ("created", None)
    assert await shopper.status(order_id) == "pending_payment"
    # The app taps "pay" again (it may send another browserInfo; Adyen answers for the key).
    status, body = await shopper.adyen_pay(order_id)
    assert (status, body["data"]["resultCode"], body["data"]["pay_id"]) == (200, "Authorised", str(payment["id"])), body
    assert len((await psp.state())["adyen"]["payments"]) == 1
    assert [c["replayed"] for c in await psp.calls("POST", PAYMENTS)] == [False, True]
    assert await shopper.payments(order_id) == [("adyen", "authorized", Decimal("96.07"))]
    assert await shopper.status(order_id) == "authorized"


async def test_a_caller_who_stops_waiting_still_gets_the_payment_recorded(aiohttp_client, tmp_path: Path, db_url: str,
                                                                          psp: Psp) -> None:
    """The edge's route timeout (here 0.5 s) answers the app 504 while Adyen is still working (1.5 s):
    the call goes on, and what Adyen did is on the rows when the app asks again."""
    edge = await pay_edge(aiohttp_client, tmp_path, db_url, psp, route_timeout_ms=500)
    shopper = Shopper(edge, db_url)
    order_id = await shopper.order("F-L")
    await psp.fault(path=PAYMENTS, delay_ms=1500, times=1)
    status, body = await shopper.adyen_pay(order_id)
    assert (status, body["msg"], body["data"]) == (504, "upstream_timeout", {"route": "adyen_pay"})
    deadline = asyncio.get_running_loop().time() + 20
    while await shopper.status(order_id) != "authorized":
        assert asyncio.get_running_loop().time() < deadline, await shopper.payments(order_id)
        await asyncio.sleep(0.1)
    [payment] = await shopper.rows(t.payments, order_id)
    assert payment["status"] == "authorized" and payment["psp_reference"]
    status, body = await shopper.adyen_pay(order_id)  # the app's retry: paid for already
    assert (status, body["data"]) == (409, {"status": "authorized"})
    assert len((await psp.state())["adyen"]["payments"]) == 1


@pytest.mark.parametrize("route", ["paypal_pay", "adyen_pay"])
async def test_psp_5xx_is_a_502_envelope_and_a_later_retry_uses_the_same_attempt(aiohttp_client, tmp_path: Path, db_url: str,
                                                                                 psp: Psp, route: str) -> None:
    shopper = Shopper(await pay_edge(aiohttp_client, tmp_path, db_url, psp), db_url)
    order_id = await shopper.order("F-4")
    pay = shopper.paypal_pay if route == "paypal_pay" else shopper.adyen_pay
    path = "/v2/checkout/orders" if route == "paypal_pay" else PAYMENTS
    await psp.fault(path=path, error_status=503, times=2)  # both attempts of the call
    status, body = await pay(order_id)
    provider = "paypal" if route == "paypal_pay" else "adyen"
    assert (status, body["code"], body["msg"], body["data"]["provider"]) == (502, 50201, "psp_error", provider), body
    [before] = await shopper.rows(t.payments, order_id)
    assert before["status"] == "created"
    status, body = await pay(order_id)
    assert status == 200, body
    assert body["data"]["pay_id"] == str(before["id"])
    keys = {c["key"] for c in await psp.calls("POST", path)}
    assert keys == {before["idempotency_key"]}
    assert len(await shopper.rows(t.payments, order_id)) == 1


async def test_a_psp_refusal_is_a_4xx_and_ends_the_attempt(aiohttp_client, tmp_path: Path, db_url: str, psp: Psp) -> None:
    """PayPal's 422 (an order it won't take) and Adyen's (fields it rejects) did nothing: the attempt is
    failed, the answer says whose problem it is, and the next call is a new attempt with a new key."""
    shopper = Shopper(await pay_edge(aiohttp_client, tmp_path, db_url, psp), db_url)
    paypal_order, adyen_order = await shopper.order("F-R1"), await shopper.order("F-R2")
    await psp.fault(path="/v2/checkout/orders", error_status=422, times=1)
    await psp.fault(path=PAYMENTS, error_status=422, times=1)
    status, body = await shopper.paypal_pay(paypal_order)
    assert (status, body["code"], body["msg"], body["data"]["provider"]) == (
        422, 42207, "payment_method_unavailable", "paypal"), body
    status, body = await shopper.adyen_pay(adyen_order)
    assert (status, body["code"], body["data"]["field"]) == (400, 40001, "paymentMethod"), body
    for order_id, pay in ((paypal_order, shopper.paypal_pay), (adyen_order, shopper.adyen_pay)):
        assert [p[1] for p in await shopper.payments(order_id)] == ["failed"]
        assert await shopper.status(order_id) == "pending_payment"
        assert (await pay(order_id))[0] == 200
        assert [p[1] for p in await shopper.payments(order_id)][0] == "failed"
    assert len({c["key"] for c in await psp.calls("POST")} - {None}) == 4


async def test_an_unreachable_psp_is_a_clean_502_and_the_same_request_works_once_it_is_back(
        aiohttp_client, tmp_path: Path, db_url: str, psp: Psp) -> None:
    down = await pay_edge(aiohttp_client, tmp_path, db_url, psp, paypal_base_url=dead_url(), adyen_base_url=dead_url())
    shopper = Shopper(down, db_url)
    order_id = await shopper.order("F-5")
    other = await shopper.order("F-6")
    for status, body in (await shopper.paypal_pay(order_id), await shopper.adyen_pay(other)):
        assert (status, body["code"], body["msg"]) == (502, 50201, "psp_error"), body
        assert set(body["data"]) == {"provider"}
    assert await shopper.status(order_id) == await shopper.status(other) == "pending_payment"
    up = Shopper(await pay_edge(aiohttp_client, tmp_path, db_url, psp, seed=False), db_url)
    status, body = await up.paypal_pay(order_id)
    assert status == 200 and body["data"]["approve_url"], body
    status, body = await up.adyen_pay(other)
    assert (status, body["data"]["resultCode"]) == (200, "Authorised"), body
    assert [p[1] for p in await up.payments(order_id)] == ["created"]
    assert [p[1] for p in await up.payments(other)] == ["authorized"]


async def test_a_capture_with_psp_down_keeps_the_order_and_finishes_later(aiohttp_client, tmp_path: Path, db_url: str,
                                                                          psp: Psp) -> None:
    shopper = Shopper(await pay_edge(aiohttp_client, tmp_path, db_url, psp), db_url)
    order_id = await shopper.order("F-7")
    pay_id = await approved(shopper, psp, order_id)
    await psp.fault(path=CAPTURE, error_status=500, times=2)
    status, body = await shopper.paypal_finished(order_id, pay_id)
    assert (status, body["msg"]) == (502, "psp_error"), body
    assert await shopper.status(order_id) == "payment_confirming"
    status, body = await shopper.paypal_finished(order_id, pay_id)
    assert (status, body["data"]["status"]) == (200, "paid"), body
    assert len((await psp.state())["paypal"]["captures"]) == 1


async def test_two_taps_at_once_are_one_adyen_payment(aiohttp_client, tmp_path: Path, mariadb_url: str, psp: Psp) -> None:
    """MariaDB: the order row is locked while the attempt is chosen, so the second tap reuses the first's
    key (or finds the order authorized); Adyen deduplicates the key. (SQLite has no row locks.)"""
    shopper = Shopper(await pay_edge(aiohttp_client, tmp_path, mariadb_url, psp), mariadb_url)
    await psp.fault(path=PAYMENTS, delay_ms=300)
    for n in range(3):
        order_id = await shopper.order(f"F-T{n}")
        answers = await asyncio.gather(shopper.adyen_pay(order_id), shopper.adyen_pay(order_id))
        ok = [b["data"] for s, b in answers if s == 200]
        assert ok and all(s in (200, 409) for s, _ in answers), answers
        assert len({d["pay_id"] for d in ok}) == 1
        assert len(await shopper.rows(t.payments, order_id)) == 1
    assert len((await psp.state())["adyen"]["payments"]) == 3


async def test_no_secret_reaches_a_log_line_or_an_answer(aiohttp_client, tmp_path: Path, db_url: str, psp: Psp,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    card = {**CARD, "number": "4111112233445566", "holderName": "Card Holder Zyx"}
    good = Shopper(await pay_edge(aiohttp_client, tmp_path, db_url, psp), db_url)
    wrong = Shopper(await pay_edge(aiohttp_client, tmp_path, db_url, psp, seed=False, paypal_secret="wrong-pp-secret-51c0",
                                   adyen_api_key="wrong-adyen-key-77d2"), db_url)
    caplog.clear()  # the seed's statements
    answers = []
    with structlog.testing.capture_logs() as logs:
        order_id = await good.order("F-8")
        pay_id = await approved(good, psp, order_id)
        await psp.fault(path=CAPTURE, error_status=503, times=1)  # a retry is logged
        answers.append(await good.paypal_finished(order_id, pay_id))
        await psp.fault(path=PAYMENTS, error_status=500, times=2)  # so is giving up
        answers.append(await good.adyen_pay(await good.order("F-9"), card))
        answers.append(await good.adyen_pay(await good.order("F-10"), {**card, "holderName": "REFUSED"}))
        answers.append(await wrong.paypal_pay(await good.order("F-11")))
        answers.append(await wrong.adyen_pay(await good.order("F-12"), card))
    assert [s for s, _ in answers] == [200, 502, 200, 502, 502], answers
    events = [e["event"] for e in logs]
    assert {"psp_retry", "psp_gave_up", "paypal_captured", "adyen_pay_failed", "paypal_create_failed"} <= set(events)
    seen = repr(logs) + caplog.text + repr(answers)
    for secret in (*SECRETS, "wrong-pp-secret-51c0", "wrong-adyen-key-77d2", card["number"], card["holderName"],
                   "cvc"):  # no card field's name either: no request body was logged
        assert secret not in seen, (secret, seen[max(0, seen.find(secret) - 300):seen.find(secret) + 100])
