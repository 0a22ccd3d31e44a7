"""The pay routes' metrics through the edge, against the PSP emulator: what shoppers were answered
(payments_total{provider,result}) and what each PSP attempt came to (psp_requests_total, retries,
durations), including a PSP that fails once (a retry under the same key) and one that stays down."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.support.payments import CARD, Shopper, pay_edge
from tests.support.psp import Psp

pytest_plugins = ["tests.support.psp_fixtures"]

PAYMENTS = "/v71/payments"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def shopper(aiohttp_client, tmp_path: Path, db_url: str, psp: Psp, registry: CollectorRegistry) -> Shopper:
    return Shopper(await pay_edge(aiohttp_client, tmp_path, db_url, psp, registry=registry), db_url)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"no series {name}{labels}"
    return found


def answered(registry: CollectorRegistry, provider: str) -> dict[str, float]:
    results = ("authorised", "captured", "pending", "refused", "error")
    counts = {r: value(registry, "payments_total", provider=provider, result=r) for r in results}
    return {r: n for r, n in counts.items() if n}


def attempts(registry: CollectorRegistry, provider: str, operation: str) -> dict[str, float]:
    outcomes = ("ok", "rejected", "unavailable", "timeout", "network")
    counts = {o: value(registry, "psp_requests_total", provider=provider, operation=operation, outcome=o)
              for o in outcomes}
    return {o: n for o, n in counts.items() if n}


async def test_every_series_is_there_at_zero_before_the_first_payment(shopper: Shopper, registry: CollectorRegistry) -> None:
    await shopper.order("PM-0")  # the edge is up; nothing paid yet
    assert answered(registry, "adyen") == {} and answered(registry, "paypal") == {}
    assert value(registry, "psp_retries_total", provider="paypal", operation="capture") == 0
    assert value(registry, "psp_request_seconds_count", provider="adyen", operation="pay") == 0


async def test_adyen_answers_are_counted_by_result_and_each_attempt_by_outcome(
        shopper: Shopper, psp: Psp, registry: CollectorRegistry) -> None:
    status, _ = await shopper.adyen_pay(await shopper.order("PM-1"))
    assert status == 200
    status, body = await shopper.adyen_pay(await shopper.order("PM-2"), {**CARD, "holderName": "REFUSED"})
    assert (status, body["data"]["resultCode"]) == (200, "Refused")
    assert answered(registry, "adyen") == {"authorised": 1, "refused": 1}
    assert attempts(registry, "adyen", "pay") == {"ok": 2}  # a refused card is an answer, not a failed attempt

    # Down once: the second attempt (same key) pays; one retry, one unavailable attempt, one shopper answer.
    await psp.fault(path=PAYMENTS, error_status=503, times=1)
    status, _ = await shopper.adyen_pay(await shopper.order("PM-3"))
    assert status == 200
    assert value(registry, "psp_retries_total", provider="adyen", operation="pay") == 1
    assert attempts(registry, "adyen", "pay") == {"ok": 3, "unavailable": 1}
    assert answered(registry, "adyen") == {"authorised": 2, "refused": 1}

    # Down for every attempt of the call: a 502 to the shopper, counted as an error.
    await psp.fault(path=PAYMENTS, error_status=503, times=2)
    status, _ = await shopper.adyen_pay(await shopper.order("PM-4"))
    assert status == 502
    assert answered(registry, "adyen") == {"authorised": 2, "refused": 1, "error": 1}
    assert attempts(registry, "adyen", "pay") == {"ok": 3, "unavailable": 3}
    assert value(registry, "psp_request_seconds_count", provider="adyen", operation="pay") == 6
    assert answered(registry, "paypal") == {}


async def test_paypal_pay_is_pending_until_finished_captures_it(shopper: Shopper, psp: Psp, registry: CollectorRegistry) -> None:
    order_id = await shopper.order("PM-5")
    status, body = await shopper.paypal_pay(order_id)
    assert status == 200
    assert answered(registry, "paypal") == {"pending": 1}
    assert await psp.approve(body["data"]["approve_url"]) == 200
    status, done = await shopper.paypal_finished(order_id, body["data"]["pay_id"])
    assert (status, done["data"]["status"]) == (200, "paid")
    assert answered(registry, "paypal") == {"pending": 1, "captured": 1}
    assert attempts(registry, "paypal", "create_order") == {"ok": 1}
    assert attempts(registry, "paypal", "capture") == {"ok": 1}
    # Refused before any PSP call (another user's order): the edge's 404, not a payment answer.
    status, _ = await shopper.as_user(2).paypal_pay(order_id)
    assert status == 404 and answered(registry, "paypal") == {"pending": 1, "captured": 1}
