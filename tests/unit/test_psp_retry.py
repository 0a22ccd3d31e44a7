"""adapters/retry.py: bounded attempts, full-jitter exponential backoff, a timeout per attempt, rejections not retried.

The waits are recorded instead of slept, so the schedule itself is what is asserted.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from adapters.errors import PspRejected, PspTimeout, PspUnavailable
from adapters.psp_metrics import PspMetrics
from adapters.retry import RetryPolicy, retrying
from common.settings import Settings, SettingsError

POLICY = RetryPolicy(attempts=4, timeout=0.2, base_delay=0.1, max_delay=0.25)


class Script:
    """An attempt that fails with the given errors, in order, then answers "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.waits: list[float] = []

    async def attempt(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def unavailable(retry_after: float | None = None) -> PspUnavailable:
    return PspUnavailable("adyen", "pay", status=503, retry_after=retry_after)


async def test_retryable_failures_are_retried_with_growing_capped_jittered_waits() -> None:
    script = Script(unavailable(), unavailable(), unavailable())
    answer = await retrying(POLICY, script.attempt, provider="adyen", operation="pay", key="k", sleep=script.sleep,
                            draw=lambda: 1.0)
    assert (answer, script.calls) == ("ok", 4)
    assert script.waits == pytest.approx([0.1, 0.2, 0.25])  # base · 2^(n-1), capped at max_delay


async def test_jitter_spreads_each_wait_between_zero_and_its_ceiling() -> None:
    for draw in (0.0, 0.5, 0.999):
        script = Script(unavailable(), unavailable())
        await retrying(POLICY, script.attempt, provider="adyen", operation="pay", key="k", sleep=script.sleep,
                       draw=lambda: draw)
        assert script.waits == pytest.approx([0.1 * draw, 0.2 * draw])


async def test_the_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    last = unavailable()
    script = Script(unavailable(), unavailable(), unavailable(), last, unavailable())
    with pytest.raises(PspUnavailable) as err:
        await retrying(POLICY, script.attempt, provider="adyen", operation="pay", key="k", sleep=script.sleep)
    assert err.value is last and script.calls == 4 and len(script.waits) == 3


async def test_a_rejection_is_raised_at_once() -> None:
    script = Script(PspRejected("paypal", "capture", status=422, code="ORDER_NOT_APPROVED"))
    with pytest.raises(PspRejected):
        await retrying(POLICY, script.attempt, provider="paypal", operation="capture", key="k", sleep=script.sleep)
    assert script.calls == 1 and script.waits == []


async def test_an_attempt_past_its_timeout_is_a_retryable_timeout() -> None:
    calls = 0

    async def slow_then_fast() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        return "ok"

    async def no_wait(seconds: float) -> None:
        return None

    assert await retrying(POLICY, slow_then_fast, provider="paypal", operation="capture", key="k",
                          sleep=no_wait) == "ok"
    assert calls == 2
    one = RetryPolicy(attempts=1, timeout=0.05)
    with pytest.raises(PspTimeout) as err:
        await retrying(one, lambda: asyncio.sleep(5), provider="paypal", operation="capture", key="k")
    assert err.value.retryable and "0.05s" in str(err.value)


async def test_retry_after_raises_the_wait_but_never_past_the_cap() -> None:
    script = Script(unavailable(retry_after=0.2), unavailable(retry_after=30.0))
    await retrying(POLICY, script.attempt, provider="adyen", operation="pay", key="k", sleep=script.sleep,
                   draw=lambda: 0.0)
    assert script.waits == pytest.approx([0.2, 0.25])


def test_the_policy_comes_from_the_psp_settings_and_bad_values_stop_the_process() -> None:
    settings = Settings.from_env({"SHOP_PSP_TIMEOUT_SECONDS": "2.5", "SHOP_PSP_MAX_ATTEMPTS": "5",
                                  "SHOP_PSP_BACKOFF_SECONDS": "0.5", "SHOP_PSP_BACKOFF_MAX_SECONDS": "4"})
    assert RetryPolicy.from_settings(settings) == RetryPolicy(attempts=5, timeout=2.5, base_delay=0.5, max_delay=4.0)
    assert RetryPolicy.from_settings(Settings.from_env({})) == RetryPolicy(attempts=3, timeout=10.0, base_delay=0.2,
                                                                           max_delay=2.0)
    with pytest.raises(SettingsError, match="SHOP_PSP_MAX_ATTEMPTS"):
        Settings.from_env({"SHOP_PSP_MAX_ATTEMPTS": "0"})
    secrets = Settings.from_env({"PAYPAL_SECRET": "pp-s3cret-1", "ADYEN_API_KEY": "ak-s3cret-2",
                                 "ADYEN_HMAC_KEY": "ab" * 32})
    assert "s3cret" not in repr(secrets) and "ab" * 32 not in repr(secrets)


async def test_metrics_count_each_attempt_by_outcome_and_each_retry() -> None:
    registry = CollectorRegistry()
    metrics = PspMetrics(registry)

    async def hangs() -> str:
        await asyncio.sleep(10)
        return "late"

    script = Script(PspUnavailable("adyen", "pay", detail="ClientConnectorError"), unavailable())
    assert await retrying(POLICY, script.attempt, provider="adyen", operation="pay", key="k", sleep=script.sleep,
                          metrics=metrics) == "ok"
    with pytest.raises(PspRejected):
        await retrying(POLICY, Script(PspRejected("adyen", "pay", status=422)).attempt, provider="adyen",
                       operation="pay", key="k2", sleep=script.sleep, metrics=metrics)
    with pytest.raises(PspTimeout):
        await retrying(RetryPolicy(attempts=1, timeout=0.01), hangs, provider="adyen", operation="pay", key="k3",
                       metrics=metrics)

    def count(outcome: str) -> float | None:
        return registry.get_sample_value("psp_requests_total", {"provider": "adyen", "operation": "pay", "outcome": outcome})

    assert {o: count(o) for o in ("ok", "rejected", "unavailable", "timeout", "network")} == {
        "ok": 1, "rejected": 1, "unavailable": 1, "timeout": 1, "network": 1}
    assert registry.get_sample_value("psp_retries_total", {"provider": "adyen", "operation": "pay"}) == 2
    assert registry.get_sample_value("psp_request_seconds_count", {"provider": "adyen", "operation": "pay"}) == 5
