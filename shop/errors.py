"""The few domain errors: each carries the envelope's code, a reason and whether a retry may succeed.

No HTTP here: handlers/errors.py is the one place that turns a code into a status and a body,
and a Kafka consumer reads the same attributes (a retryable failure waits and tries again,
another one is for a person). ``reason`` is the envelope's ``msg`` (shared/spec/legacy-api.md),
by default the code's own (common/envelope.REASONS); ``data`` goes out as the envelope's ``data``.
"""

from __future__ import annotations

from typing import Any

from common import envelope as codes


class ShopError(Exception):
    code: int = codes.BAD_REQUEST
    reason: str = codes.REASONS[codes.BAD_REQUEST]
    # True: nothing was done and the same request or event may be sent again.
    retryable: bool = False

    def __init__(self, reason: str | None = None, data: Any = None) -> None:
        super().__init__(reason or self.reason)
        if reason is not None:
            self.reason = reason
        self.data = data

    @property
    def msg(self) -> str:
        """The envelope's name for the reason."""
        return self.reason

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The HTTP status is handlers/errors.py's, the reason is `reason`: a subclass written the
        # old way (status = 422, msg = "…") would silently answer with its parent's reason.
        stale = {"status", "msg"} & set(vars(cls))
        if stale:
            raise TypeError(f"{cls.__name__} sets {', '.join(sorted(stale))}: set code and reason (shop/errors.py)")
        if "code" in vars(cls) and "reason" not in vars(cls):
            cls.reason = codes.REASONS[cls.code]


class BadRequest(ShopError):
    code = codes.BAD_REQUEST


class LoginRequired(ShopError):
    code = codes.LOGIN_REQUIRED


class Forbidden(ShopError):
    code = codes.FORBIDDEN


class NotFound(ShopError):
    code = codes.NOT_FOUND


class Conflict(ShopError):
    code = codes.CONFLICT


class Unprocessable(ShopError):
    """The request is well-formed but the shop can't do it; the reason picks the code (UNPROCESSABLE_CODES)."""

    code = codes.UNPROCESSABLE

    def __init__(self, reason: str, data: Any = None) -> None:
        super().__init__(reason, data)
        self.code = codes.UNPROCESSABLE_CODES.get(reason, codes.UNPROCESSABLE)


class NotMigrated(ShopError):
    """A migrated route whose new handler is not written yet."""

    code = codes.NOT_MIGRATED


class UpstreamError(ShopError):
    """A service the shop calls (a PSP) failed."""

    code = codes.UPSTREAM_UNAVAILABLE


class UpstreamTimeout(ShopError):
    code = codes.UPSTREAM_TIMEOUT


class Unavailable(ShopError):
    """The database can't be reached or gave up on us (restart, failover, pool exhausted, lock wait):
    nothing was written, and the same request may be sent again (place_order's Idempotency-Key makes
    even a retried checkout whose commit did land answer with that order)."""

    code, retryable = codes.DB_UNAVAILABLE, True
