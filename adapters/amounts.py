"""Money on the wire of each PSP: PayPal's decimal strings, Adyen's minor units. Decimal in, Decimal out.

Each PSP has its own idea of a currency's decimals, and it is theirs, not ISO 4217's nor
``forex_rates.exponent``'s, that decides what goes on the wire:

- ISO 4217 (the base table): 0 decimals for BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND
  VUV XAF XOF XPF, 3 for BHD IQD JOD KWD LYD OMR TND, 4 for CLF UYW, 2 for every other code.
- Adyen (https://docs.adyen.com/development-resources/currency-codes, "Currency codes and minor
  units"): ISO except CLP 2, CVE 0, IDR 0, ISK 2 (the page marks these "differs from standard";
  odoo's payment_adyen/const.py CURRENCY_DECIMALS lists the same four). So CLP 1000 is
  ``{"value": 100000}`` and ISK 1000 is ``{"value": 100000}``, IDR 15000 is ``{"value": 15000}``.
- PayPal (developer.paypal.com "Currency codes"): HUF, JPY and TWD "do not support decimals.
  Decimal amounts cause an error"; otherwise the value string has the ISO decimals ("1.234" for
  a thousandths currency). PayPal does not accept every ISO currency (no KWD, no CLP): that is
  PayPal's answer (CURRENCY_NOT_SUPPORTED) to give, not a formatting question.

An amount that does not fit the PSP's decimals exactly (IDR 15000.50 for Adyen, JPY 1040.5 for
PayPal) is an ``AmountError``, never rounded here: the order's total was already rounded once,
with ROUND_HALF_UP to the order currency, and charging a different figure than the one shown is
a bug to surface, not to hide.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType

# Only the codes whose decimals are not 2.
ISO_DECIMALS: Mapping[str, int] = MappingProxyType({
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
                     "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
})
ADYEN_DECIMALS: Mapping[str, int] = MappingProxyType({**ISO_DECIMALS, "CLP": 2, "CVE": 0, "IDR": 0, "ISK": 2})
PAYPAL_DECIMALS: Mapping[str, int] = MappingProxyType({**ISO_DECIMALS, "HUF": 0, "JPY": 0, "TWD": 0})

_CODE = re.compile(r"[A-Z]{3}")


@lru_cache(maxsize=8)
def quantum(places: int) -> Decimal:
    """The smallest unit with `places` decimals: 2 → 0.01, 0 → 1 (shop.money's, not imported: adapters import common only)."""
    return Decimal(1).scaleb(-places)


class AmountError(ValueError):
    """An amount a PSP cannot carry exactly (or no amount at all): nothing was sent."""


def decimals(table: Mapping[str, int], currency: str) -> int:
    if not isinstance(currency, str) or not _CODE.fullmatch(currency):
        raise AmountError(f"{currency!r} is not an ISO 4217 currency code")
    return table.get(currency, 2)


def _exact(amount: Decimal, places: int, currency: str, psp: str) -> Decimal:
    if not isinstance(amount, Decimal):
        raise AmountError(f"amounts are Decimal, not {type(amount).__name__}")
    if not amount.is_finite() or amount < 0:
        raise AmountError(f"{amount} {currency} is not an amount")
    fitted = amount.quantize(quantum(places))
    if fitted != amount:
        raise AmountError(f"{amount} {currency} has more decimals than {psp} takes ({places})")
    return fitted


def paypal_value(amount: Decimal, currency: str) -> str:
    """PayPal's ``amount.value``: a string with exactly the currency's PayPal decimals."""
    return format(_exact(amount, decimals(PAYPAL_DECIMALS, currency), currency, "PayPal"), "f")


def paypal_amount(value: object, currency: str) -> Decimal:
    """A PayPal ``amount.value`` read back as Decimal."""
    if not isinstance(value, str):
        raise AmountError(f"PayPal amount value {value!r} is not a string")
    try:
        amount = Decimal(value)
    except ArithmeticError:
        raise AmountError(f"PayPal amount value {value!r} is not a number") from None
    return _exact(amount, decimals(PAYPAL_DECIMALS, currency), currency, "PayPal")


def adyen_minor(amount: Decimal, currency: str) -> int:
    """Adyen's ``amount.value``: the amount in minor units by Adyen's decimals for the currency."""
    places = decimals(ADYEN_DECIMALS, currency)
    return int(_exact(amount, places, currency, "Adyen").scaleb(places))


def adyen_amount(value: object, currency: str) -> Decimal:
    """An Adyen ``amount.value`` (minor units) read back as Decimal with the currency's decimals."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AmountError(f"Adyen amount value {value!r} is not a count of minor units")
    places = decimals(ADYEN_DECIMALS, currency)
    return Decimal(value).scaleb(-places).quantize(quantum(places))
