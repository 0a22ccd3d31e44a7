"""The one retry loop of the PSP clients: bounded attempts, backoff with full jitter, a timeout per attempt.

The idempotency key is chosen by the caller once per logical operation and baked into the
attempt before the loop starts (``retrying`` only ever calls the same ``attempt``), so every
attempt carries the same key and a PSP that acted on an attempt whose answer was lost answers
the next one with that first answer instead of acting twice.

Only ``PspError.retryable`` errors (timeouts, broken connections, 5xx, 429: outcome unknown) are
retried; a rejection ends the loop at once. Delay before attempt n+1 is uniform in
``[0, min(max_delay, base_delay * 2**(n-1))]`` ("full jitter": retries from many callers after
one PSP hiccup spread out instead of arriving together), raised to the PSP's ``Retry-After`` when
it sent one (capped at ``max_delay``). Worst case a call takes ``attempts × timeout`` plus the
delays: 3 × 10 s + ≤ 4 s with the defaults; a route that answers a person passes a tighter policy.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import structlog

from adapters.errors import PspError, PspTimeout

if TYPE_CHECKING:
    from adapters.psp_metrics import PspMetrics
    from common.settings import Settings

log = structlog.get_logger("adapters.psp")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    timeout: float = 10.0  # seconds, each attempt
    base_delay: float = 0.2
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.timeout <= 0 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(f"bad retry policy {self}")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            attempts=settings.psp_max_attempts,
            timeout=settings.psp_timeout_seconds,
            base_delay=settings.psp_backoff_seconds,
            max_delay=settings.psp_backoff_max_seconds,
        )

    def delay(self, failed_attempts: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the `failed_attempts`-th failure (1-based), before the next attempt."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (failed_attempts - 1))
        return ceiling * draw()


async def retrying(
    policy: RetryPolicy,
    attempt: Callable[[], Awaitable[T]],
    *,
    provider: str,
    operation: str,
    key: str | None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    draw: Callable[[], float] = random.random,
    metrics: PspMetrics | None = None,
) -> T:
    """``attempt()`` until it returns, raises a non-retryable error, or ``policy.attempts`` are used up.

    Each attempt runs under ``policy.timeout``; running out is a ``PspTimeout`` (retryable). The
    last error is raised as it is when the attempts are used up. `key` is only logged. `metrics`
    counts each attempt's outcome and duration and each retry.
    """
    for n in range(1, policy.attempts + 1):
        started = time.monotonic()
        try:
            async with asyncio.timeout(policy.timeout):
                answer = await attempt()
        except TimeoutError:
            error: PspError = PspTimeout(provider, operation, detail=f"no answer within {policy.timeout:g}s")
        except PspError as exc:
            error = exc
        else:
            if metrics is not None:
                metrics.attempt(provider, operation, None, time.monotonic() - started)
            return answer
        if metrics is not None:
            metrics.attempt(provider, operation, error, time.monotonic() - started)
        if not error.retryable:
            raise error
        elapsed = round(time.monotonic() - started, 3)
        if n == policy.attempts:
            log.warning("psp_gave_up", provider=provider, operation=operation, attempts=n, idempotency_key=key,
                        error=str(error), elapsed=elapsed)
            raise error
        wait = policy.delay(n, draw)
        if error.retry_after is not None:
            wait = max(wait, min(error.retry_after, policy.max_delay))
        log.info("psp_retry", provider=provider, operation=operation, attempt=n, idempotency_key=key,
                 error=str(error), elapsed=elapsed, delay=round(wait, 3))
        if metrics is not None:
            metrics.retry(provider, operation)
        await sleep(wait)
    raise AssertionError("unreachable: policy.attempts >= 1")
