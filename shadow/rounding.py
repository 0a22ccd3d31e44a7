"""How big a numeric difference is: within rounding of the body's currency, or beyond.

Old shopping computes money with binary floats and ``round()``, the new side with Decimal
ROUND_HALF_UP (domain.md, Money): a difference of one minor unit of the currency (a cent,
a yen, a fils) is expected and must stay visible, but must not read like a wrong answer.
So every numeric difference is sized:

* ``rounding`` — ``|a - b| <= minor unit`` of the currency (inclusive);
* ``beyond``   — anything larger, and every non-numeric difference (strings, types,
  items added or removed, status codes).

The currency of a body is the value of its first ``currency`` key (breadth first, so
``data.currency`` wins over ``data.items[*].currency``) that is a three-letter code; the
minor unit is ``10 ** -exponent`` with the ISO 4217 exponent (JPY 0 → 1, USD 2 → 0.01,
KWD 3 → 0.001; a code not in :data:`EXPONENTS` is taken as 2, the ISO default). With no
currency in either body the unit is :data:`FALLBACK_UNIT` (0.01, see docs/decisions.md).

Sizing is by magnitude only, not by field meaning: in a JPY body an integer quantity that
differs by 1 is also ``rounding``. Both sizes are counted and shown, none is hidden.

Pure: standard library only.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal
from typing import Any

__all__ = ["BEYOND", "FALLBACK_UNIT", "ROUNDING", "SIZES", "classify", "find_currency", "minor_unit", "unit_for"]

ROUNDING = "rounding"
BEYOND = "beyond"
SIZES = (ROUNDING, BEYOND)

#: ISO 4217 currencies whose exponent is not 2 (everything else: 2).
EXPONENTS: dict[str, int] = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
                     "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    "CLF": 4, "UYW": 4,
}
FALLBACK_UNIT = Decimal("0.01")
_MAX_NODES = 2000  # a currency sits near the top; never walk a whole large body for it


def minor_unit(currency: str) -> Decimal:
    """``"JPY"`` → ``1``, ``"USD"`` → ``0.01``, ``"KWD"`` → ``0.001``."""
    return Decimal(1).scaleb(-EXPONENTS.get(currency.upper(), 2))


def _is_code(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 3 and value.isascii() and value.isalpha()


def find_currency(doc: Any) -> str | None:
    """The first three-letter ``currency`` value, breadth first, upper-cased; None if none."""
    queue: deque[Any] = deque([doc])
    seen = 0
    while queue and seen < _MAX_NODES:
        node = queue.popleft()
        seen += 1
        if isinstance(node, dict):
            value = node.get("currency")
            if _is_code(value):
                return str(value).upper()
            queue.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            queue.extend(v for v in node if isinstance(v, (dict, list)))
    return None


def unit_for(primary: Any, shadow: Any) -> Decimal:
    """The minor unit for a pair of parsed bodies: the primary's currency, else the
    shadow's (when they disagree, ``currency`` itself differs, beyond rounding)."""
    currency = find_currency(primary) or find_currency(shadow)
    return minor_unit(currency) if currency else FALLBACK_UNIT


def classify(a: Any, b: Any, unit: Decimal) -> tuple[str, Decimal | None]:
    """``(size, |a - b|)`` of one difference; the delta is None when not both numbers."""
    if type(a) is Decimal and type(b) is Decimal and a.is_finite() and b.is_finite():
        delta = abs(a - b)
        return (ROUNDING if delta <= unit else BEYOND), delta
    return BEYOND, None
