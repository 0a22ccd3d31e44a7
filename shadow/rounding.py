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

Old shopping rounds in USD cents and then converts (domain.md, Pricing), so in another
currency one expected cent is ``0.01 × rate`` of it, up to two yen at ≈150 JPY/USD: the edge
passes :func:`rounding_units` of the forex table, the larger of the minor unit and one USD cent
converted and rounded up; :func:`unit_for` uses it for the currencies it names.

Sizing is by magnitude only, not by field meaning: in a JPY body an integer quantity that
differs by 1 is also ``rounding``. Both sizes are counted and shown, none is hidden.

Pure: standard library only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal
from typing import Any

__all__ = ["BEYOND", "FALLBACK_UNIT", "ROUNDING", "SIZES", "classify", "find_currency", "minor_unit", "rounding_units",
           "unit_for"]

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


_USD_CENT = Decimal("0.01")


def rounding_units(usd_rates: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """Per currency, the largest difference that is still rounding: one USD cent in that currency
    (``0.01 × rate``, rounded up to the minor unit), at least one minor unit. JPY at 150 → 2."""
    units: dict[str, Decimal] = {}
    for currency, rate in usd_rates.items():
        minor = minor_unit(currency)
        units[currency.upper()] = max(minor, (_USD_CENT * rate).quantize(minor, ROUND_CEILING))
    return units


def unit_for(primary: Any, shadow: Any, units: Mapping[str, Decimal] | None = None) -> Decimal:
    """The rounding unit for a pair of parsed bodies: of the primary's currency, else the
    shadow's (when they disagree, ``currency`` itself differs, beyond rounding); `units`
    (:func:`rounding_units`) where it names the currency, else its minor unit."""
    currency = find_currency(primary) or find_currency(shadow)
    if not currency:
        return FALLBACK_UNIT
    found = units.get(currency) if units else None
    return found if found is not None else minor_unit(currency)


def classify(a: Any, b: Any, unit: Decimal) -> tuple[str, Decimal | None]:
    """``(size, |a - b|)`` of one difference; the delta is None when not both numbers."""
    if type(a) is Decimal and type(b) is Decimal and a.is_finite() and b.is_finite():
        delta = abs(a - b)
        return (ROUNDING if delta <= unit else BEYOND), delta
    return BEYOND, None
