"""The one rule for a caller id (the ``X-User-Id`` the API gateway sets after login).

Pure and shared: the edge applies it before routing (sticky bucket, allow/deny lists) and the
new side's handlers apply it again, so both agree on who the caller is and neither can 500 on
the header. Canonical means ASCII digits, no sign, no leading zero, at most 18 digits (fits a
signed 64-bit column): every user has exactly one spelling, so ``012`` can't land in another
gray bucket than ``12``, and ``²`` or ``１`` (which ``str.isdigit`` accepts) are refused.
"""

from __future__ import annotations

import re

CALLER_HEADER = "X-User-Id"
MAX_DIGITS = 18
REASON = f"must be a positive integer: ASCII digits without sign or leading zero, at most {MAX_DIGITS}"

# [0-9], not \d: \d also matches Arabic-Indic, fullwidth and other Unicode digits.
_CANONICAL = re.compile(rf"[1-9][0-9]{{0,{MAX_DIGITS - 1}}}")


class InvalidCallerId(ValueError):
    """The header is present but not a canonical caller id."""


def canonical_caller_id(raw: str | None) -> str | None:
    """The caller id of a header value, or None for anonymous (header absent or empty).

    An empty ``X-User-Id:`` is anonymous, as an absent one: gateways blank the header to log a
    user out of a forwarded request, and there is no other meaning it could have.
    """
    if raw is None or raw == "":
        return None
    if _CANONICAL.fullmatch(raw) is None:
        raise InvalidCallerId(REASON)
    return raw
