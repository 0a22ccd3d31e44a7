"""adapters/amounts.py puts a Decimal on each PSP's wire exactly, by that PSP's decimals, or refuses.

PayPal: a string with PayPal's decimals (none for HUF, JPY, TWD). Adyen: minor units by Adyen's
table, which differs from ISO 4217 for CLP (2), CVE (0), IDR (0) and ISK (2). Nothing is ever
rounded: an amount with more decimals than the PSP takes is an AmountError.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.amounts import (
    ADYEN_DECIMALS,
    ISO_DECIMALS,
    PAYPAL_DECIMALS,
    AmountError,
    adyen_amount,
    adyen_minor,
    paypal_amount,
    paypal_value,
)

D = Decimal


@pytest.mark.parametrize(
    ("amount", "currency", "value"),
    [
        (D("96.07"), "USD", "96.07"),
        (D("96.1"), "EUR", "96.10"),
        (D("1040"), "JPY", "1040"),
        (D("1040.000"), "JPY", "1040"),  # trailing zeros are not decimals
        (D("5000"), "HUF", "5000"),
        (D("300"), "TWD", "300"),
        (D("1.234"), "KWD", "1.234"),
        (D("1000"), "CLP", "1000"),
    ],
)
def test_paypal_values_carry_the_currencys_paypal_decimals(amount: Decimal, currency: str, value: str) -> None:
    assert paypal_value(amount, currency) == value
    assert paypal_amount(value, currency) == amount


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        (D("96.07"), "USD", 9607),
        (D("1040"), "JPY", 1040),
        (D("1.234"), "KWD", 1234),
        (D("1000"), "CLP", 100000),  # Adyen: 2 decimals (ISO: 0)
        (D("1000"), "ISK", 100000),  # Adyen: 2 decimals (ISO: 0)
        (D("15000"), "IDR", 15000),  # Adyen: 0 decimals (ISO: 2)
        (D("250"), "CVE", 250),  # Adyen: 0 decimals (ISO: 2)
        (D("0.01"), "EUR", 1),
    ],
)
def test_adyen_minor_units_follow_adyens_table(amount: Decimal, currency: str, minor: int) -> None:
    assert adyen_minor(amount, currency) == minor
    assert adyen_amount(minor, currency) == amount


def test_the_four_adyen_exceptions_differ_from_iso_and_nothing_else_does() -> None:
    differs = {c for c in set(ISO_DECIMALS) | set(ADYEN_DECIMALS)
               if ADYEN_DECIMALS.get(c, 2) != ISO_DECIMALS.get(c, 2)}
    assert differs == {"CLP", "CVE", "IDR", "ISK"}
    assert {c for c in set(PAYPAL_DECIMALS) | set(ISO_DECIMALS)
            if PAYPAL_DECIMALS.get(c, 2) != ISO_DECIMALS.get(c, 2)} == {"HUF", "TWD"}


@pytest.mark.parametrize(
    ("call", "amount", "currency"),
    [
        (paypal_value, D("1040.5"), "JPY"),
        (paypal_value, D("100.01"), "HUF"),
        (paypal_value, D("9.999"), "USD"),
        (paypal_value, D("1.2345"), "KWD"),
        (adyen_minor, D("15000.50"), "IDR"),
        (adyen_minor, D("1040.5"), "JPY"),
        (adyen_minor, D("1.2345"), "KWD"),
        (adyen_minor, D("0.001"), "EUR"),
    ],
)
def test_an_amount_with_more_decimals_than_the_psp_takes_is_refused_not_rounded(call, amount, currency) -> None:
    with pytest.raises(AmountError, match="more decimals"):
        call(amount, currency)


@pytest.mark.parametrize(
    ("call", "amount", "currency"),
    [
        (paypal_value, 96.07, "USD"),  # a float is never money
        (adyen_minor, 96.07, "USD"),
        (paypal_value, D("-1"), "USD"),
        (adyen_minor, D("NaN"), "USD"),
        (adyen_minor, D("Infinity"), "USD"),
        (paypal_value, D("1"), "usd"),
        (adyen_minor, D("1"), "EURO"),
    ],
)
def test_what_is_not_an_amount_is_refused(call, amount, currency) -> None:
    with pytest.raises(AmountError):
        call(amount, currency)


@pytest.mark.parametrize(("value", "currency"), [(1.5, "EUR"), (True, "EUR"), (-1, "EUR"), ("100", "EUR")])
def test_adyen_values_read_back_are_whole_minor_units(value, currency) -> None:
    with pytest.raises(AmountError):
        adyen_amount(value, currency)


@pytest.mark.parametrize(("value", "currency"), [("1040.5", "JPY"), ("abc", "USD"), (10, "USD")])
def test_paypal_values_read_back_must_fit_paypals_decimals(value, currency) -> None:
    with pytest.raises(AmountError):
        paypal_amount(value, currency)


CURRENCIES = st.sampled_from(["USD", "EUR", "JPY", "KWD", "CLP", "ISK", "IDR", "CVE", "HUF", "TWD", "BHD", "GBP"])


@given(st.integers(min_value=0, max_value=10**12), CURRENCIES)
def test_adyen_round_trips_every_amount_of_its_decimals(minor: int, currency: str) -> None:
    amount = adyen_amount(minor, currency)
    assert adyen_minor(amount, currency) == minor
    assert -amount.as_tuple().exponent == ADYEN_DECIMALS.get(currency, 2)  # type: ignore[operator]


@given(st.integers(min_value=0, max_value=10**12), CURRENCIES)
def test_paypal_round_trips_every_amount_of_its_decimals(units: int, currency: str) -> None:
    places = PAYPAL_DECIMALS.get(currency, 2)
    amount = D(units).scaleb(-places)
    value = paypal_value(amount, currency)
    assert len(value.partition(".")[2]) == places
    assert paypal_amount(value, currency) == amount
