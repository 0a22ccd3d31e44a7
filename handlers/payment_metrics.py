"""What the pay routes answered shoppers, per PSP: `payments_total{provider,result}`.

The PSP clients count their own attempts (adapters/psp_metrics.py); this counts the answer the
shopper got, which is what "success by PSP" means to ops: one pay or finish call, one sample.
Refusals before any PSP call (not the owner, an order not payable) are the edge's 4xx, not here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from shop import order_states as st

# authorised: Adyen said Authorised; captured: PayPal's capture completed (the order is paid);
# pending: the shopper or the PSP still has a step to take (PayPal order created and waiting for
# approval, a capture or an Adyen result still pending); refused: the PSP declined the payment;
# error: the PSP failed, timed out or refused our request (502/504 to the shopper).
RESULTS = ("authorised", "captured", "pending", "refused", "error")
PROVIDERS = ("paypal", "adyen")
# Adyen resultCodes that end the payment unpaid (the rest — Pending, Received, RedirectShopper… — wait for more).
_ADYEN_REFUSED = frozenset({"Refused", "Cancelled", "Error"})


def adyen_result(result_code: str) -> str:
    if result_code == "Authorised":
        return "authorised"
    return "refused" if result_code in _ADYEN_REFUSED else "pending"


# A finish answered for an order already past its payment (a second finish call) is still "captured".
_CAPTURED = frozenset({st.PAID, st.FULFILLING, st.SHIPPED, st.COMPLETED, st.PARTIALLY_REFUNDED, st.REFUNDED})


def paypal_finished_result(order_status: str) -> str:
    if order_status == st.PAYMENT_FAILED:
        return "refused"
    return "captured" if order_status in _CAPTURED else "pending"


class PaymentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.payments = Counter(
            "payments_total", "Answers of the pay routes to shoppers, by PSP and result",
            ["provider", "result"], registry=registry,
        )
        for provider in PROVIDERS:
            for result in RESULTS:
                self.payments.labels(provider, result)

    def answered(self, provider: str, result: str) -> None:
        self.payments.labels(provider, result).inc()
