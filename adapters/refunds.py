"""One refund call to whichever PSP took the payment, its outcome as data: ``PspRefunds.refund(...)``.

The refund service (shop/refunds.py) decides what an outcome does to the refund row; this module
only knows the PSPs, so ``refund`` never raises a PSP error. It answers one of:

- ``succeeded``: PayPal answered the refund COMPLETED; the money went back.
- ``submitted``: the PSP took the refund and will say later (Adyen's ``received``, whose outcome is
  the REFUND / REFUND_FAILED webhook; a PayPal refund still PENDING).
- ``unknown``: no answer, a 5xx, a 429, an answer not in the PSP's shape, or our credentials refused
  (an operator fixes those and the refund must still go through). The PSP may have acted: the only
  safe next step is the same request with the same idempotency key, later.
- ``rejected``: the PSP answered and refused (more than is left, capture not refundable, a refund
  PayPal reports FAILED), or an amount the PSP cannot carry was never sent. Repeating cannot help.

``payment_reference`` is the PayPal capture id or the Adyen payment's pspReference; ``reference`` is
ours (the refund's id), sent to Adyen as the refund's merchant reference. The body is built from
the arguments alone, so every attempt under one key sends the same bytes (a PSP refuses a key
reused for another body). Secrets never reach ``detail`` (adapters/http.py keeps them out of errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

import aiohttp
import structlog

from adapters.adyen import AdyenClient
from adapters.amounts import AmountError
from adapters.errors import PspAuthRejected, PspError
from adapters.paypal import PayPalClient
from adapters.psp_metrics import PspMetrics

if TYPE_CHECKING:
    from common.settings import Settings

log = structlog.get_logger("adapters.refunds")

SUCCEEDED, SUBMITTED, UNKNOWN, REJECTED = "succeeded", "submitted", "unknown", "rejected"
# PayPal refund statuses that are final refusals; PENDING is a refund PayPal is still working on.
_PAYPAL_REFUSED = frozenset({"FAILED", "CANCELLED"})


@dataclass(frozen=True, slots=True)
class RefundAnswer:
    outcome: str  # succeeded / submitted / unknown / rejected
    psp_reference: str | None = None  # the PSP's id of the refund, when it gave one
    detail: str | None = None  # why, for the log and a person; no secrets


class PspRefunds:
    def __init__(self, paypal: PayPalClient, adyen: AdyenClient) -> None:
        self._paypal = paypal
        self._adyen = adyen

    def __repr__(self) -> str:
        return f"PspRefunds({self._paypal!r}, {self._adyen!r})"

    async def refund(
        self,
        *,
        provider: str,
        payment_reference: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        reference: str,
    ) -> RefundAnswer:
        try:
            if provider == "paypal":
                done = await self._paypal.refund_capture(payment_reference, amount=amount, currency=currency,
                                                         request_id=idempotency_key)
                if done.succeeded:
                    return RefundAnswer(SUCCEEDED, done.id)
                if done.status in _PAYPAL_REFUSED:
                    return RefundAnswer(REJECTED, done.id, f"paypal refund {done.status}")
                return RefundAnswer(SUBMITTED, done.id, f"paypal refund {done.status}")
            if provider == "adyen":
                received = await self._adyen.refund(payment_reference, amount=amount, currency=currency,
                                                    reference=reference, idempotency_key=idempotency_key)
                return RefundAnswer(SUBMITTED, received.psp_reference)
        except PspAuthRejected as exc:
            log.error("psp_credentials_refused", provider=provider, operation="refund", error=str(exc))
            return RefundAnswer(UNKNOWN, None, str(exc))
        except PspError as exc:
            return RefundAnswer(UNKNOWN if exc.retryable else REJECTED, None, str(exc))
        except (AmountError, ValueError) as exc:  # nothing was sent: an amount or key the PSP cannot take
            return RefundAnswer(REJECTED, None, str(exc)[:200])
        return RefundAnswer(REJECTED, None, f"no refund client for provider {provider!r}")


def psp_session() -> aiohttp.ClientSession:
    # No session-wide timeout: each attempt has its own (adapters/retry.py).
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))


def refund_clients(session: aiohttp.ClientSession, settings: Settings, metrics: PspMetrics | None = None) -> PspRefunds:
    """Refunds on `session` with the background retry policy (SHOP_PSP_*): nobody waits on the line."""
    return PspRefunds(PayPalClient.from_settings(session, settings, metrics=metrics),
                      AdyenClient.from_settings(session, settings, metrics=metrics))
