"""adapters/adyen.py against the PSP emulator over real HTTP: one payment, one refund, whatever fails.

What it proves: amounts go out in Adyen's minor units (CLP, ISK, IDR, CVE by Adyen's table, not
ISO's); Authorised / Refused / Error are final and RedirectShopper hands the app its action;
every POST carries an Idempotency-Key that is the same on every attempt, so a payment or refund
that "acts then times out", or meets 5xx, is retried into exactly one payment or refund (and one
set of webhooks); a refund answers ``received`` and its outcome is the webhook; a rejection
(422, 401, 403) is not retried; the API key never reaches a log line, a repr or an exception.
"""

from __future__ import annotations

import logging
import traceback
from decimal import Decimal
from typing import Any

import pytest
import structlog

from adapters.adyen import AdyenClient
from adapters.amounts import AmountError
from adapters.errors import PspAuthRejected, PspRejected, PspUnavailable
from adapters.retry import RetryPolicy
from tests.support.psp import (
    ADYEN_API_KEY,
    FAST,
    MERCHANT,
    Psp,
    WebhookSink,
)

pytest_plugins = ["tests.support.psp_fixtures"]

CARD = {"type": "scheme", "number": "4111111111111111", "expiryMonth": "03", "expiryYear": "2030", "cvc": "737",
        "holderName": "Ada Lovelace"}
RETURN = "https://shop.example/checkout/return"
HANG = RetryPolicy(attempts=3, timeout=2.0, base_delay=0.01, max_delay=0.05)


async def pay(client: AdyenClient, key: str = "pay-1", amount: str = "96.07", currency: str = "EUR",
              method: dict[str, Any] | None = None, reference: str = "O-1"):
    return await client.pay(reference=reference, amount=Decimal(amount), currency=currency,
                            payment_method=method or CARD, return_url=RETURN, idempotency_key=key)


async def test_an_authorised_payment_is_final_and_followed_by_its_webhooks(psp: Psp, webhook_sink: WebhookSink) -> None:
    payment = await pay(psp.adyen())
    assert (payment.result_code, payment.final, payment.authorised, payment.action) == ("Authorised", True, True, None)
    assert payment.psp_reference and payment.amount == Decimal("96.07")
    items = await webhook_sink.wait_for(2)
    assert [(i["eventCode"], i["success"], i["merchantReference"]) for i in items] == [
        ("AUTHORISATION", "true", "O-1"), ("CAPTURE", "true", "O-1")]
    assert items[0]["pspReference"] == payment.psp_reference == items[1]["originalReference"]
    assert (await psp.state())["adyen"]["payments"][payment.psp_reference]["amount"] == {"currency": "EUR", "value": 9607}


@pytest.mark.parametrize(("holder", "code", "reason"), [("REFUSED", "Refused", "Refused"),
                                                        ("ERROR", "Error", "Acquirer Error")])
async def test_refused_and_error_are_final_and_not_authorised(psp: Psp, webhook_sink: WebhookSink, holder: str,
                                                              code: str, reason: str) -> None:
    payment = await pay(psp.adyen(), method={**CARD, "holderName": holder})
    assert (payment.result_code, payment.final, payment.authorised) == (code, True, False)
    assert payment.refusal_reason == reason
    [item] = await webhook_sink.wait_for(1)
    assert (item["eventCode"], item["success"]) == ("AUTHORISATION", "false")


async def test_redirect_shopper_hands_the_action_to_the_app_and_the_issuer_page_authorises(
        psp: Psp, webhook_sink: WebhookSink) -> None:
    payment = await pay(psp.adyen(), method={**CARD, "number": "4212345678910006"})
    assert (payment.result_code, payment.final, payment.needs_action) == ("RedirectShopper", False, True)
    assert payment.action is not None and payment.action["type"] == "redirect" and payment.action["method"] == "GET"
    assert (await psp.webhooks())["emitted"] == 0  # nothing is decided until the shopper is back
    async with psp.session.get(payment.action["url"], allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"].startswith(RETURN + "?redirectResult=")
    [auth, _capture] = await webhook_sink.wait_for(2)
    assert (auth["eventCode"], auth["success"], auth["pspReference"]) == ("AUTHORISATION", "true", payment.psp_reference)


async def test_encrypted_test_card_numbers_trigger_the_same_behaviour(psp: Psp) -> None:
    method = {"type": "scheme", "encryptedCardNumber": "test_4212345678910006", "holderName": "x"}
    assert (await pay(psp.adyen(), method=method)).result_code == "RedirectShopper"


@pytest.mark.parametrize(("amount", "currency", "minor"),
                         [("1040", "JPY", 1040), ("1.234", "KWD", 1234), ("1000", "CLP", 100000),
                          ("1000", "ISK", 100000), ("15000", "IDR", 15000), ("250", "CVE", 250)])
async def test_amounts_reach_adyen_in_its_minor_units(psp: Psp, amount: str, currency: str, minor: int) -> None:
    payment = await pay(psp.adyen(), amount=amount, currency=currency, key=f"pay-{currency}")
    assert payment.amount == Decimal(amount)
    assert (await psp.state())["adyen"]["payments"][payment.psp_reference]["amount"] == {"currency": currency,
                                                                                         "value": minor}


async def test_an_amount_adyen_cannot_carry_is_refused_before_any_call(psp: Psp) -> None:
    with pytest.raises(AmountError):
        await pay(psp.adyen(), amount="15000.50", currency="IDR")
    assert await psp.calls() == []


async def test_the_same_key_gets_the_first_payment_back_and_no_second_webhook(psp: Psp, webhook_sink: WebhookSink) -> None:
    client = psp.adyen()
    first, again = await pay(client), await pay(client)
    assert again == first
    assert [c["replayed"] for c in await psp.calls("POST", "/v71/payments")] == [False, True]
    assert len((await psp.state())["adyen"]["payments"]) == 1
    await webhook_sink.wait_for(2)
    assert (await psp.webhooks())["emitted"] == 2  # AUTHORISATION and CAPTURE, once


async def test_a_payment_that_acts_then_times_out_is_retried_into_one_payment(psp: Psp) -> None:
    await psp.fault(path="/v71/payments", act_then_timeout=True, times=1)
    payment = await pay(psp.adyen(retry=HANG))
    assert payment.authorised
    calls = await psp.calls("POST", "/v71/payments")
    assert [(c["key"], c["fault"], c["replayed"]) for c in calls] == [
        ("pay-1", "act_then_timeout", False), ("pay-1", None, True)]
    assert list((await psp.state())["adyen"]["payments"]) == [payment.psp_reference]


async def test_5xx_twice_then_ok_is_one_payment_with_one_key(psp: Psp) -> None:
    await psp.fault(path="/v71/payments", error_status=500, times=2)
    payment = await pay(psp.adyen())
    assert payment.authorised
    assert [(c["status"], c["key"]) for c in await psp.calls("POST", "/v71/payments")] == [
        (500, "pay-1"), (500, "pay-1"), (200, "pay-1")]
    assert len((await psp.state())["adyen"]["payments"]) == 1


async def test_a_refund_is_received_and_its_outcome_is_the_webhook(psp: Psp, webhook_sink: WebhookSink) -> None:
    client = psp.adyen()
    payment = await pay(client)
    assert payment.psp_reference
    refund = await client.refund(payment.psp_reference, amount=Decimal("10.00"), currency="EUR", reference="R-1",
                                 idempotency_key="refund-1")
    assert (refund.status, refund.payment_psp_reference, refund.amount) == ("received", payment.psp_reference,
                                                                           Decimal("10.00"))
    items = await webhook_sink.wait_for(3)
    assert (items[2]["eventCode"], items[2]["success"], items[2]["pspReference"], items[2]["originalReference"],
            items[2]["amount"]) == ("REFUND", "true", refund.psp_reference, payment.psp_reference,
                                    {"currency": "EUR", "value": 1000})


async def test_a_refund_that_acts_then_times_out_is_retried_into_one_refund(psp: Psp, webhook_sink: WebhookSink) -> None:
    client = psp.adyen(retry=HANG)
    payment = await pay(client)
    assert payment.psp_reference
    await psp.fault(path="/v71/payments/*/refunds", act_then_timeout=True, times=1)
    refund = await client.refund(payment.psp_reference, amount=Decimal("96.07"), currency="EUR", reference="R-1",
                                 idempotency_key="refund-1")
    assert list((await psp.state())["adyen"]["refunds"]) == [refund.psp_reference]
    await webhook_sink.wait_for(3)
    assert [i["eventCode"] for i in webhook_sink.items()].count("REFUND") == 1


async def test_5xx_on_a_refund_then_ok_is_one_refund(psp: Psp) -> None:
    client = psp.adyen()
    payment = await pay(client)
    assert payment.psp_reference
    await psp.fault(path="/v71/payments/*/refunds", error_status=503, times=2)
    await client.refund(payment.psp_reference, amount=Decimal("1.00"), currency="EUR", reference="R-1",
                        idempotency_key="refund-1")
    assert [c["status"] for c in await psp.calls("POST", "/refunds")] == [503, 503, 201]
    assert len((await psp.state())["adyen"]["refunds"]) == 1


async def test_when_the_attempts_run_out_the_outcome_is_unknown(psp: Psp) -> None:
    await psp.fault(path="/v71/payments", error_status=502, times=3)
    with pytest.raises(PspUnavailable) as err:
        await pay(psp.adyen())
    assert err.value.retryable and err.value.status == 502
    assert (await pay(psp.adyen())).authorised  # the same key, later: one payment
    assert len((await psp.state())["adyen"]["payments"]) == 1


async def test_a_validation_error_is_rejected_at_once(psp: Psp) -> None:
    with pytest.raises(PspRejected) as err:
        await psp.adyen().refund("NO-SUCH-PSP-REF", amount=Decimal("1.00"), currency="EUR", reference="R-1",
                                 idempotency_key="refund-1")
    assert (err.value.status, err.value.code, err.value.retryable) == (422, "167", False)
    assert len(await psp.calls("POST", "/refunds")) == 1


async def test_a_wrong_api_key_or_merchant_account_is_an_auth_rejection_that_names_no_key(psp: Psp) -> None:
    wrong = AdyenClient(psp.session, base_url=psp.url, api_key="AQE-wrong-key-5d1f", merchant_account=MERCHANT,
                        retry=FAST)
    with pytest.raises(PspAuthRejected) as err:
        await pay(wrong)
    assert err.value.status == 401
    other = AdyenClient(psp.session, base_url=psp.url, api_key=ADYEN_API_KEY, merchant_account="Other", retry=FAST)
    with pytest.raises(PspAuthRejected) as err403:
        await pay(other)
    assert (err403.value.status, err403.value.code) == (403, "901")
    assert len(await psp.calls("POST", "/v71/payments")) == 2  # neither retried
    text = "".join(traceback.format_exception(err.value)) + repr(err.value) + repr(wrong) + repr(other)
    assert "AQE-wrong-key-5d1f" not in text and ADYEN_API_KEY not in text


async def test_an_idempotency_key_adyen_would_not_take_is_refused_before_any_call(psp: Psp) -> None:
    with pytest.raises(ValueError):
        await pay(psp.adyen(), key="k" * 65)
    assert await psp.calls() == []


async def test_no_secret_or_card_data_reaches_a_log_line_or_an_exception(psp: Psp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = psp.adyen()
    errors: list[BaseException] = []
    with structlog.testing.capture_logs() as logs:
        await psp.fault(path="/v71/payments", error_status=503, times=2)
        await pay(client)
        await psp.fault(path="/v71/payments", error_status=500, times=3)
        try:
            await pay(client, key="pay-2")
        except PspUnavailable as exc:
            errors.append(exc)
        try:
            await client.refund("NOPE", amount=Decimal("1.00"), currency="EUR", reference="R", idempotency_key="r")
        except PspRejected as exc:
            errors.append(exc)
    assert [e["event"] for e in logs].count("psp_retry") == 4 and any(e["event"] == "psp_gave_up" for e in logs)
    seen = repr(logs) + caplog.text + repr(client) + "".join(
        "".join(traceback.format_exception(e)) + repr(e) for e in errors)
    for secret in (ADYEN_API_KEY, CARD["number"], CARD["cvc"] + '"'):
        assert secret not in seen, secret
