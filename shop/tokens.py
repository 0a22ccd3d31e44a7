"""Bearer tokens: one constant-time check for every secret a caller presents."""

from __future__ import annotations

import hmac


def bearer_matches(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>``; an unset token matches nothing."""
    if not token or not authorization:
        return False
    scheme, _, presented = authorization.partition(" ")
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may hold any byte.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape"),
    )
