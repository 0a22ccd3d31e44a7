"""Sizing shadow differences: within one minor unit of the body's currency, or beyond."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from shadow.compare import compare
from shadow.rounding import FALLBACK_UNIT, classify, find_currency, minor_unit, rounding_units, unit_for
from shadow.sizes import SizeStats


@pytest.mark.parametrize(("currency", "unit"), [("JPY", "1"), ("USD", "0.01"), ("eur", "0.01"), ("KWD", "0.001"),
                                                ("XYZ", "0.01")])
def test_minor_unit_of_a_currency(currency: str, unit: str) -> None:
    assert minor_unit(currency) == Decimal(unit)


def test_currency_is_found_breadth_first_and_must_be_a_code() -> None:
    body = {"code": 0, "data": {"items": [{"currency": "USD"}], "currency": "JPY"}}
    assert find_currency(body) == "JPY"
    assert find_currency({"data": {"currency": "yen!", "items": [{"currency": "kwd"}]}}) == "KWD"
    assert find_currency({"data": [1, "x", None]}) is None
    assert unit_for({"x": 1}, {"data": {"currency": "JPY"}}) == Decimal(1)  # shadow's when primary has none
    assert unit_for({}, {}) == FALLBACK_UNIT


def test_classify_is_inclusive_and_only_numbers_can_be_rounding() -> None:
    cent = Decimal("0.01")
    assert classify(Decimal("96.07"), Decimal("96.08"), cent) == ("rounding", Decimal("0.01"))
    assert classify(Decimal("96.07"), Decimal("96.09"), cent) == ("beyond", Decimal("0.02"))
    assert classify("96.07", Decimal("96.07"), cent) == ("beyond", None)
    assert classify(None, Decimal(1), cent) == ("beyond", None)


def body(currency: str | None, **data: object) -> bytes:
    doc: dict[str, object] = dict(data)
    if currency:
        doc["currency"] = currency
    return json.dumps({"code": 0, "data": doc}).encode()


@pytest.mark.parametrize(("currency", "a", "b", "size"), [
    ("JPY", "2079", "2078", "rounding"), ("JPY", "2079", "2077", "beyond"),
    ("USD", "96.07", "96.08", "rounding"), ("USD", "96.07", "96.09", "beyond"),
    ("KWD", "1.234", "1.235", "rounding"), ("KWD", "1.234", "1.244", "beyond"),
    (None, "96.07", "96.08", "rounding"), (None, "7", "8", "beyond"),
])
def test_compare_sizes_a_money_difference_by_the_currency(currency: str | None, a: str, b: str, size: str) -> None:
    result = compare(200, body(currency, total=a), 200, body(currency, total=b))
    assert result.fields == ("data.total",)
    assert result.sizes == {"data.total": size}
    assert result.max_deltas == {"data.total": abs(Decimal(a) - Decimal(b))}
    assert result.beyond() == (size == "beyond")


def test_a_field_is_beyond_if_any_of_its_differences_is_and_keeps_the_largest_delta() -> None:
    a = json.dumps({"currency": "USD", "items": [{"p": "1.00"}, {"p": "2.00"}, {"p": "3.00"}], "name": "a"}).encode()
    b = json.dumps({"currency": "USD", "items": [{"p": "1.01"}, {"p": "2.50"}, {"p": "3.00"}], "name": "b"}).encode()
    result = compare(200, a, 200, b)
    assert result.sizes == {"items[*].p": "beyond", "name": "beyond"}
    assert result.max_deltas == {"items[*].p": Decimal("0.50")}


def test_status_and_non_json_differences_are_beyond() -> None:
    assert compare(200, b"{}", 500, b"{}").sizes == {"status": "beyond"}
    assert compare(200, b"<p>", 200, b"<q>").sizes == {"body": "beyond"}
    assert compare(200, body("USD", total="1.00"), 200, body("USD", total="1.00")).beyond() is False


def test_size_stats_count_since_start_and_over_a_window() -> None:
    now = [1000.0]
    stats = SizeStats(clock=lambda: now[0])
    stats.record("r", {"t": "rounding"}, {"t": Decimal("0.01")})
    stats.record("r", {"t": "beyond"}, {"t": Decimal("3")})
    now[0] += 120
    stats.record("r", {"t": "rounding"}, {"t": Decimal("0.01")})
    stats.record("r", {})
    assert stats.compared("r") == 4
    assert stats.counts("r", "t") == {"rounding": 2, "beyond": 1}
    assert stats.max_abs_delta("r", "t") == Decimal("3")
    assert stats.window("r", 60) == (2, {"t": {"rounding": 1, "beyond": 0}})
    assert stats.window("r", 600) == (4, {"t": {"rounding": 2, "beyond": 1}})


def test_the_shadow_minor_units_are_the_iso_table_the_psp_amounts_use() -> None:
    # shadow/ imports nothing of ours (architecture.md), so it keeps its own copy of ISO 4217's exponents:
    # this keeps the copy from drifting from adapters/amounts.py's.
    from adapters.amounts import ISO_DECIMALS
    from shadow.rounding import EXPONENTS

    assert EXPONENTS == dict(ISO_DECIMALS)


def test_rounding_units_are_one_usd_cent_in_each_currency_at_least_its_minor_unit() -> None:
    units = rounding_units({"JPY": Decimal("151.2"), "EUR": Decimal("0.92"), "KWD": Decimal("0.3075"),
                            "USD": Decimal("1"), "GBP": Decimal("0.79")})
    # 1.512 yen rounds up to 2; 0.0092 EUR to the cent; 0.003075 KWD up to 0.004.
    assert units == {"JPY": Decimal(2), "EUR": Decimal("0.01"), "KWD": Decimal("0.004"), "USD": Decimal("0.01"),
                     "GBP": Decimal("0.01")}
    jpy = {"data": {"currency": "JPY"}}
    assert unit_for(jpy, jpy, units) == Decimal(2)
    assert unit_for(jpy, jpy) == Decimal(1)  # no table: the minor unit, as before
    assert unit_for({"currency": "CHF"}, {}, units) == Decimal("0.01")  # not in the table: its minor unit
    assert classify(Decimal("2079"), Decimal("2077"), unit_for(jpy, jpy, units)) == ("rounding", Decimal(2))
    assert classify(Decimal("2079"), Decimal("2076"), unit_for(jpy, jpy, units)) == ("beyond", Decimal(3))


def test_compare_sizes_by_the_units_it_is_given() -> None:
    a = json.dumps({"data": {"currency": "JPY", "total": "2079"}}).encode()
    b = json.dumps({"data": {"currency": "JPY", "total": "2077"}}).encode()
    assert compare(200, a, 200, b).sizes == {"data.total": "beyond"}
    given = compare(200, a, 200, b, units={"JPY": Decimal(2)})
    assert given.sizes == {"data.total": "rounding"} and given.unit == Decimal(2)
