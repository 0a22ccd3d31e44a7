"""shadow/normalise.py: ignore paths, numbers as Decimal, unordered lists."""

from __future__ import annotations

import pickle
from decimal import Decimal

import pytest

from shadow.normalise import CompareRules, is_numeric_string, normalise


def test_numbers_and_numeric_strings_become_decimals() -> None:
    assert normalise("96.07") == normalise(96.07) == normalise("96.070") == Decimal("96.07")
    assert normalise(1040) == normalise("1040") == Decimal(1040)
    assert normalise("-0.5") == Decimal("-0.5")
    assert normalise(True) is True  # bool is not a number here
    assert normalise(None) is None


@pytest.mark.parametrize("s", ["96.07", "1040", "-0.5", "0", "0.50", "-12"])
def test_numeric_strings(s: str) -> None:
    assert is_numeric_string(s)


@pytest.mark.parametrize("s", ["007", "01234", "1e5", "+1", " 1", "1.", ".5", "1,5", "", "abc", "9" * 65])
def test_not_numeric_strings(s: str) -> None:
    # "007" / "01234": zero-padded ids and postal codes stay strings, so "007" vs "7" still differs
    assert not is_numeric_string(s)
    assert normalise(s) == s


def test_non_finite_floats_compare_equal_to_themselves() -> None:
    assert normalise(float("nan")) == normalise(float("nan")) == "NaN"
    assert normalise([float("inf"), float("-inf")]) == ["Infinity", "-Infinity"]


def test_ignore_deepdiff_path() -> None:
    doc = {"data": {"server_time": "2026-06-01T12:00:00Z", "total": "1.00"}}
    rules = CompareRules(ignore=("root['data']['server_time']",))
    assert normalise(doc, rules) == {"data": {"total": Decimal("1.00")}}
    assert doc["data"]["server_time"]  # input untouched


def test_ignore_wildcard_in_lists() -> None:
    doc = {"data": {"items": [{"name": "a", "qty": 1}, {"name": "b", "qty": 2}], "name": "kept"}}
    rules = CompareRules(ignore=("root['data']['items'][*]['name']",))
    assert normalise(doc, rules) == {"data": {"items": [{"qty": 1}, {"qty": 2}], "name": "kept"}}


def test_ignore_one_index_and_field_spelling() -> None:
    doc = {"data": {"items": [{"name": "a"}, {"name": "b"}]}}
    assert normalise(doc, CompareRules(ignore=("root['data']['items'][1]",))) == {"data": {"items": [{"name": "a"}]}}
    assert normalise(doc, CompareRules(ignore=("data.items[*].name",))) == {"data": {"items": [{}, {}]}}


def test_unordered_lists_sort_by_normalised_value() -> None:
    a = {"xs": [{"id": 2, "p": "1.50"}, {"id": 1, "p": 3}]}
    b = {"xs": [{"id": 1, "p": "3.0"}, {"id": 2, "p": 1.5}]}
    assert normalise(a) != normalise(b)  # order significant by default
    rules = CompareRules(unordered_lists=True)
    assert normalise(a, rules) == normalise(b, rules)
    assert normalise([True, 1, None, "1"], rules) == normalise(["1", None, 1, True], rules)


def test_rules_coerce_and_validate() -> None:
    assert CompareRules(tolerance=0.01).tolerance == Decimal("0.01")
    assert CompareRules(tolerance="0.01").tolerance == Decimal("0.01")
    assert CompareRules(ignore=["root['a']"]).ignore == ("root['a']",)
    for bad in ({"tolerance": -1}, {"tolerance": "x"}, {"tolerance": float("nan")}, {"ignore": ("root['a'",)},
                {"ignore": ("root",)}):
        with pytest.raises(ValueError):
            CompareRules(**bad)
    rules = CompareRules.from_config({"percent": 25, "ignore": ["root['data']['server_time']"], "tolerance": "0.01"})
    assert rules == CompareRules(ignore=("root['data']['server_time']",), tolerance=Decimal("0.01"))
    assert pickle.loads(pickle.dumps(rules)) == rules
