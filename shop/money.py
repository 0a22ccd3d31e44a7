"""Money: Decimal end to end, ROUND_HALF_UP to the currency exponent, strings in JSON."""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from functools import lru_cache

ZERO = Decimal(0)
CENT = Decimal("0.01")
HUNDRED = Decimal(100)


@lru_cache(maxsize=8)
def quantum(exponent: int) -> Decimal:
    """Smallest unit of a currency: exponent 2 → 0.01, 0 → 1, 3 → 0.001."""
    return Decimal(1).scaleb(-exponent)


def usd(amount: Decimal) -> Decimal:
    """Round a USD working amount to cents, half up."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def usd_floor(amount: Decimal) -> Decimal:
    """Round down to cents: for caps such as "at most 50 %", which half-up could exceed."""
    return amount.quantize(CENT, rounding=ROUND_DOWN)


def in_currency(amount_usd: Decimal, rate: Decimal, exponent: int) -> Decimal:
    return (amount_usd * rate).quantize(quantum(exponent), rounding=ROUND_HALF_UP)


def money_str(amount: Decimal, exponent: int) -> str:
    """JSON form: exactly `exponent` places ("96.07", "1040", "1.234"); never "-0.00"."""
    text = format(amount.quantize(quantum(exponent), rounding=ROUND_HALF_UP), "f")
    return text[1:] if text.startswith("-") and Decimal(text) == 0 else text
