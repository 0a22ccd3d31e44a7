"""What a PSP call can end in, besides an answer, sorted by what the caller may do next.

- ``PspRejected``: the PSP answered and refused (4xx, a business rule such as
  ``ORDER_NOT_APPROVED``). Nothing happened; sending the same request again cannot help.
  ``PspAuthRejected`` is the credentials case (401/403): an operator's problem, not the shopper's.
- ``PspUnavailable`` / ``PspTimeout``: the outcome is unknown. The PSP may have acted (a 5xx after
  the write, an answer lost on the way back: "act then time out" is the normal case), so the only
  safe next step is the same request with the same idempotency key, now or later (the consumers'
  retry loop), or reading the PSP's state (PayPal's ORDER_ALREADY_CAPTURED path, Adyen's webhook).

Messages name the provider, the operation, the HTTP status and the PSP's own error name and debug
id; never a header, a request body (card data) or a credential. ``retryable`` says "outcome
unknown, repeat with the same key", so it is True exactly for the second group.
"""

from __future__ import annotations


class PspError(Exception):
    retryable = False

    def __init__(
        self,
        provider: str,
        operation: str,
        *,
        status: int | None = None,
        code: str | None = None,
        detail: str | None = None,
        debug_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.provider = provider
        self.operation = operation
        self.status = status
        self.code = code
        self.detail = detail
        self.debug_id = debug_id
        self.retry_after = retry_after
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [f"{self.provider} {self.operation}:"]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code:
            parts.append(self.code)
        if self.detail:
            parts.append(f"({self.detail})")
        if self.debug_id:
            parts.append(f"debug_id={self.debug_id}")
        return " ".join(parts)


class PspRejected(PspError):
    """The PSP refused the request; it did not act."""


class PspAuthRejected(PspRejected):
    """401/403: our credentials (or merchant account) are wrong; never retried."""


class PspUnavailable(PspError):
    """Could not connect, the connection broke, or a 5xx/429: the PSP may or may not have acted."""

    retryable = True


class PspTimeout(PspUnavailable):
    """No answer within the per-attempt timeout: the PSP may well have acted."""


class PspProtocolError(PspUnavailable):
    """A 2xx whose body is not what the API documents: treated as an unknown outcome, never as success."""
