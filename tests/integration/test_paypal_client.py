"""adapters/paypal.py against the PSP emulator over real HTTP: one capture, one refund, whatever fails.

What it proves: the OAuth2 token is fetched once and reused until shortly before it expires (and
replaced once when PayPal stops taking it); every POST carries a PayPal-Request-Id that is the
same on every attempt, so a capture or refund that "acts then times out", or meets 5xx, is
retried into exactly one capture or refund; ORDER_ALREADY_CAPTURED is read back as the capture
it is; paid is the capture's COMPLETED, never the order's status; a rejection is not retried;
no secret reaches a log line, a repr or an exception.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import traceback
from decimal import Decimal

import pytest
import structlog

from adapters.amounts import AmountError
from adapters.errors import PspAuthRejected, PspRejected, PspUnavailable
from adapters.paypal import PayPalClient
from adapters.retry import RetryPolicy
from tests.support.psp import FAST, PAYPAL_CLIENT_ID, PAYPAL_SECRET, Psp

pytest_plugins = ["tests.support.psp_fixtures"]

CAPTURE = "/v2/checkout/orders/*/capture"
REFUND = "/v2/payments/captures/*/refund"
# Attempts long enough for a loaded box, short enough that a hung answer costs a test ~2 s.
HANG = RetryPolicy(attempts=3, timeout=2.0, base_delay=0.01, max_delay=0.05)


async def approved_order(psp: Psp, client: PayPalClient, *, amount: str = "96.07", currency: str = "USD",
                         key: str = "create-1") -> str:
    order = await client.create_order(reference="O-1", amount=Decimal(amount), currency=currency, request_id=key)
    assert order.status == "CREATED" and order.approve_url
    assert await psp.approve(order.approve_url) == 200
    return order.id


async def test_create_approve_capture_and_refund_a_jpy_order(psp: Psp) -> None:
    client = psp.paypal()
    order_id = await approved_order(psp, client, amount="1040", currency="JPY")
    result = await client.capture_order(order_id, request_id="capture-1")
    assert result.paid and not result.already_captured
    assert result.order.status == "COMPLETED"
    assert result.capture is not None
    assert (result.capture.status, result.capture.amount, result.capture.currency) == ("COMPLETED", Decimal("1040"), "JPY")

    part = await client.refund_capture(result.capture.id, amount=Decimal("40"), currency="JPY", request_id="refund-1")
    rest = await client.refund_capture(result.capture.id, amount=None, currency="JPY", request_id="refund-2")
    assert (part.succeeded, part.amount) == (True, Decimal("40"))
    assert (rest.succeeded, rest.amount) == (True, Decimal("1000"))
    with pytest.raises(PspRejected) as err:
        await client.refund_capture(result.capture.id, amount=Decimal("1"), currency="JPY", request_id="refund-3")
    assert err.value.code == "CAPTURE_FULLY_REFUNDED" and not err.value.retryable

    state = (await psp.state())["paypal"]
    assert state["orders"][order_id]["amount"] == {"currency_code": "JPY", "value": "1040"}
    assert state["captures"][result.capture.id]["status"] == "REFUNDED"


@pytest.mark.parametrize(("amount", "currency", "value"),
                         [("1040", "JPY", "1040"), ("1.234", "KWD", "1.234"), ("1000", "CLP", "1000"),
                          ("96.10", "EUR", "96.10"), ("5000", "HUF", "5000")])
async def test_amounts_reach_paypal_as_strings_with_its_decimals(psp: Psp, amount: str, currency: str,
                                                                 value: str) -> None:
    order = await psp.paypal().create_order(reference="O-1", amount=Decimal(amount), currency=currency,
                                            request_id=f"create-{currency}")
    assert (await psp.state())["paypal"]["orders"][order.id]["amount"] == {"currency_code": currency, "value": value}


async def test_an_amount_paypal_cannot_carry_is_refused_before_any_call(psp: Psp) -> None:
    with pytest.raises(AmountError):
        await psp.paypal().create_order(reference="O-1", amount=Decimal("1040.5"), currency="JPY", request_id="c")
    assert await psp.calls() == []


async def test_the_token_is_fetched_once_and_reused_until_shortly_before_it_expires(psp: Psp) -> None:
    now = [1000.0]
    client = psp.paypal(clock=lambda: now[0])
    await asyncio.gather(*(client.create_order(reference=f"O-{n}", amount=Decimal("1.00"), currency="USD",
                                               request_id=f"create-{n}") for n in range(10)))
    assert len(await psp.calls("POST", "/v1/oauth2/token")) == 1  # ten callers, one token call

    now[0] += 32_400 - 61  # the emulator's expires_in is PayPal's 9 h; the margin is 60 s
    await client.get_order((await client.create_order(reference="O", amount=Decimal("1.00"), currency="USD",
                                                      request_id="create-a")).id)
    assert len(await psp.calls("POST", "/v1/oauth2/token")) == 1
    now[0] += 2  # within a minute of expiry: fetched again before PayPal would refuse it
    await client.create_order(reference="O", amount=Decimal("1.00"), currency="USD", request_id="create-b")
    assert len(await psp.calls("POST", "/v1/oauth2/token")) == 2


async def test_a_token_paypal_no_longer_takes_is_replaced_once_and_the_call_goes_through(make_psp) -> None:
    psp = await make_psp(paypal_token_ttl=1)
    client = psp.paypal(clock=lambda: 0.0)  # the client's clock stands still: it thinks its token is fresh
    await client.create_order(reference="O", amount=Decimal("1.00"), currency="USD", request_id="create-a")
    await asyncio.sleep(1.2)
    order = await client.create_order(reference="O", amount=Decimal("2.00"), currency="USD", request_id="create-b")
    assert order.status == "CREATED"
    creates = await psp.calls("POST", "/v2/checkout/orders")
    assert [c["status"] for c in creates] == [201, 401, 201]
    assert len(await psp.calls("POST", "/v1/oauth2/token")) == 2


async def test_the_same_request_id_gets_the_first_order_back(psp: Psp) -> None:
    client = psp.paypal()
    first = await client.create_order(reference="O-1", amount=Decimal("9.99"), currency="USD", request_id="create-1")
    again = await client.create_order(reference="O-1", amount=Decimal("9.99"), currency="USD", request_id="create-1")
    assert again.id == first.id
    assert [(c["status"], c["replayed"]) for c in await psp.calls("POST", "/v2/checkout/orders")] == [
        (201, False), (200, True)]
    assert len((await psp.state())["paypal"]["orders"]) == 1


async def test_a_request_id_reused_for_another_request_is_refused_not_answered_with_the_first(psp: Psp) -> None:
    client = psp.paypal()
    await client.create_order(reference="O-1", amount=Decimal("9.99"), currency="USD", request_id="create-1")
    with pytest.raises(PspRejected) as err:
        await client.create_order(reference="O-2", amount=Decimal("5.00"), currency="USD", request_id="create-1")
    assert err.value.code == "IDEMPOTENCY_KEY_REUSED"


async def test_a_capture_that_acts_then_times_out_is_retried_into_one_capture(psp: Psp) -> None:
    client = psp.paypal(retry=HANG)
    order_id = await approved_order(psp, client)
    await psp.fault(path=CAPTURE, act_then_timeout=True, times=1)
    result = await client.capture_order(order_id, request_id="capture-1")
    assert result.paid and result.capture is not None

    captures = await psp.calls("POST", "/capture")
    assert [c["key"] for c in captures] == ["capture-1", "capture-1"]
    assert [c["fault"] for c in captures] == ["act_then_timeout", None]
    assert captures[1]["replayed"] is True
    state = (await psp.state())["paypal"]
    assert state["orders"][order_id]["captures"] == [result.capture.id]
    assert list(state["captures"]) == [result.capture.id]


async def test_5xx_twice_then_ok_is_one_capture_with_one_key(psp: Psp) -> None:
    client = psp.paypal()
    order_id = await approved_order(psp, client)
    await psp.fault(path=CAPTURE, error_status=503, times=2)
    result = await client.capture_order(order_id, request_id="capture-1")
    assert result.paid
    captures = await psp.calls("POST", "/capture")
    assert [(c["status"], c["key"]) for c in captures] == [(503, "capture-1"), (503, "capture-1"), (201, "capture-1")]
    assert len((await psp.state())["paypal"]["captures"]) == 1


async def test_when_the_attempts_run_out_the_outcome_is_unknown_and_the_same_key_finishes_it_later(psp: Psp) -> None:
    client = psp.paypal()
    order_id = await approved_order(psp, client)
    await psp.fault(path=CAPTURE, error_status=500, times=3)
    with pytest.raises(PspUnavailable) as err:
        await client.capture_order(order_id, request_id="capture-1")
    assert err.value.retryable and err.value.status == 500
    later = await client.capture_order(order_id, request_id="capture-1")  # the consumers' retry, same key
    assert later.paid and len((await psp.state())["paypal"]["captures"]) == 1


async def test_order_already_captured_is_read_back_as_the_capture_it_is(psp: Psp) -> None:
    client = psp.paypal()
    order_id = await approved_order(psp, client)
    first = await client.capture_order(order_id, request_id="capture-old-shopping")
    second = await client.capture_order(order_id, request_id="capture-new-side")
    assert second.already_captured and second.paid
    assert second.capture == first.capture
    assert [c["method"] for c in await psp.calls(path_suffix=order_id)] == ["GET"]  # the re-read
    assert len((await psp.state())["paypal"]["captures"]) == 1


async def test_paid_is_the_captures_status_not_the_orders(psp: Psp) -> None:
    client = psp.paypal()
    order_id = await approved_order(psp, client)
    await psp.fault(path=CAPTURE, paypal_capture_status="PENDING", times=1)
    result = await client.capture_order(order_id, request_id="capture-1")
    assert result.order.status == "COMPLETED"
    assert result.capture is not None and result.capture.status == "PENDING"
    assert not result.paid


async def test_capturing_an_unapproved_order_is_rejected_at_once_and_the_same_key_works_after_approval(psp: Psp) -> None:
    client = psp.paypal()
    order = await client.create_order(reference="O-1", amount=Decimal("9.99"), currency="USD", request_id="create-1")
    with pytest.raises(PspRejected) as err:
        await client.capture_order(order.id, request_id="capture-1")
    assert err.value.code == "ORDER_NOT_APPROVED" and err.value.status == 422
    assert len(await psp.calls("POST", "/capture")) == 1  # a rejection is not retried
    assert order.approve_url and await psp.approve(order.approve_url) == 200
    assert (await client.capture_order(order.id, request_id="capture-1")).paid


async def test_a_refund_that_acts_then_times_out_is_retried_into_one_refund(psp: Psp) -> None:
    client = psp.paypal(retry=HANG)
    order_id = await approved_order(psp, client)
    capture = (await client.capture_order(order_id, request_id="capture-1")).capture
    assert capture is not None
    await psp.fault(path=REFUND, act_then_timeout=True, times=1)
    refund = await client.refund_capture(capture.id, amount=Decimal("10.00"), currency="USD", request_id="refund-1")
    assert refund.succeeded and refund.amount == Decimal("10.00")
    refunds = await psp.calls("POST", "/refund")
    assert [(c["key"], c["replayed"]) for c in refunds] == [("refund-1", False), ("refund-1", True)]
    state = (await psp.state())["paypal"]
    assert list(state["refunds"]) == [refund.id]
    assert state["captures"][capture.id]["status"] == "PARTIALLY_REFUNDED"


async def test_a_refund_above_what_is_left_is_rejected(psp: Psp) -> None:
    client = psp.paypal()
    capture = (await client.capture_order(await approved_order(psp, client), request_id="capture-1")).capture
    assert capture is not None
    with pytest.raises(PspRejected) as err:
        await client.refund_capture(capture.id, amount=Decimal("96.08"), currency="USD", request_id="refund-1")
    assert err.value.code == "REFUND_AMOUNT_EXCEEDED"


async def test_a_request_id_paypal_would_not_take_is_refused_before_any_call(psp: Psp) -> None:
    with pytest.raises(ValueError):
        await psp.paypal().create_order(reference="O", amount=Decimal("1.00"), currency="USD", request_id="x" * 109)
    assert await psp.calls() == []


async def test_wrong_credentials_are_rejected_once_and_named_without_the_secret(psp: Psp) -> None:
    client = PayPalClient(psp.session, base_url=psp.url, client_id=PAYPAL_CLIENT_ID, secret="wrong-secret-93b1",
                          retry=FAST)
    with pytest.raises(PspAuthRejected) as err:
        await client.create_order(reference="O", amount=Decimal("1.00"), currency="USD", request_id="c")
    assert err.value.code == "invalid_client" and err.value.status == 401
    assert len(await psp.calls("POST", "/v1/oauth2/token")) == 1
    text = "".join(traceback.format_exception(err.value)) + repr(err.value)
    assert "wrong-secret-93b1" not in text and "Basic" not in text


async def test_no_secret_reaches_a_log_line_a_repr_or_an_exception(psp: Psp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = psp.paypal()
    errors: list[BaseException] = []
    with structlog.testing.capture_logs() as logs:
        order_id = await approved_order(psp, client)
        await psp.fault(path=CAPTURE, error_status=503, times=2)  # retries are logged
        capture = (await client.capture_order(order_id, request_id="capture-1")).capture
        assert capture is not None
        await psp.fault(path=REFUND, error_status=500, times=3)  # so is giving up
        try:
            await client.refund_capture(capture.id, amount=Decimal("1.00"), currency="USD", request_id="refund-1")
        except PspUnavailable as exc:
            errors.append(exc)
        try:
            await client.capture_order("NO-SUCH-ORDER", request_id="capture-2")
        except PspRejected as exc:
            errors.append(exc)
    assert [e["event"] for e in logs].count("psp_retry") == 4 and any(e["event"] == "psp_gave_up" for e in logs)
    assert len(errors) == 2
    seen = repr(logs) + caplog.text + repr(client) + "".join(
        "".join(traceback.format_exception(e)) + repr(e) for e in errors)
    basic = base64.b64encode(f"{PAYPAL_CLIENT_ID}:{PAYPAL_SECRET}".encode()).decode()
    for secret in (PAYPAL_SECRET, basic, "A21AA", "Bearer"):  # A21AA: how every PayPal access token starts
        assert secret not in seen, secret
