"""The PSP clients' Prometheus metrics: every attempt's outcome and duration, every retry.

Recorded by the one retry loop (adapters/retry.py), so one attempt is one sample whatever it did
inside (PayPal's token fetch and its one retry on a 401 belong to the attempt they served). Label
values are bounded: providers and operations are the clients' own constants, outcomes the five
below. Every known series is created at zero up front, so a dashboard's "retries" or "timeouts"
reads 0, not "no data", until the first one happens.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from adapters.errors import PspError, PspRejected, PspTimeout

# What one attempt came to: an answer the client took, a refusal (4xx: the PSP did nothing), a PSP
# that was busy or failing (5xx, 429…), no answer in time, or no connection at all.
OUTCOMES = ("ok", "rejected", "unavailable", "timeout", "network")
OPERATIONS = {
    "paypal": ("create_order", "capture", "get_order", "refund"),
    "adyen": ("pay", "refund"),
}
# A PSP answers in tens of milliseconds to seconds; attempts are cut at the retry policy's timeout (≤ 10 s).
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def outcome_of(error: PspError | None) -> str:
    if error is None:
        return "ok"
    if isinstance(error, PspTimeout):
        return "timeout"
    if isinstance(error, PspRejected):
        return "rejected"
    return "unavailable" if error.status is not None else "network"


class PspMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "psp_requests_total", "Attempts of calls to a PSP, by what each came to",
            ["provider", "operation", "outcome"], registry=registry,
        )
        self.seconds = Histogram(
            "psp_request_seconds", "Duration of one attempt of a call to a PSP",
            ["provider", "operation"], buckets=_BUCKETS, registry=registry,
        )
        self.retries = Counter(
            "psp_retries_total", "Attempts of PSP calls made again (same idempotency key) after an unknown outcome",
            ["provider", "operation"], registry=registry,
        )
        for provider, operations in OPERATIONS.items():
            for operation in operations:
                self.retries.labels(provider, operation)
                self.seconds.labels(provider, operation)
                for outcome in OUTCOMES:
                    self.requests.labels(provider, operation, outcome)

    def attempt(self, provider: str, operation: str, error: PspError | None, seconds: float) -> None:
        self.requests.labels(provider, operation, outcome_of(error)).inc()
        self.seconds.labels(provider, operation).observe(seconds)

    def retry(self, provider: str, operation: str) -> None:
        self.retries.labels(provider, operation).inc()
