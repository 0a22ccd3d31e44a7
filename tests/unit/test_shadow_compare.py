"""shadow/compare.py: status, fast path before deepdiff, tolerance, field paths, bounded diff."""

from __future__ import annotations

import copy
import json
import statistics
import time
from typing import Any

import pytest

from shadow.compare import MAX_DIFF_ENTRIES, MAX_VALUE_CHARS, Comparison, compare, deepdiff_calls
from shadow.normalise import CompareRules, normalise


def calc_price(**summary: Any) -> dict[str, Any]:
    """A calc_price answer shaped like legacy-api.md (about 0.9 KB as JSON)."""
    return {"code": 0, "msg": "ok", "data": {
        "currency": "EUR", "region": "DE",
        "items": [{"sku_id": i, "name": "T-shirt", "qty": 2, "unit_price": "18.39", "line_total": "36.78",
                   "mall_discount": "3.68", "coupon_discount": "4.12", "tariff": "3.48"} for i in range(1, 4)],
        "summary": {"subtotal": "114.52", "mall_discount": "3.68", "coupon_discount": "13.80", "shipping_fee": "9.11",
                    "tariff": "8.32", "wallet_deduction": "18.40", "total": "96.07", **summary},
        "coupon": {"user_coupon_id": 12, "code": "SAVE15", "title": "15 off 100", "kind": "amount"},
        "coupon_error": None, "free_shipping_threshold": "184.00", "wallet_balance": "18.40",
        "server_time": "2026-06-01T12:00:00Z"}}


def js(doc: Any, **kw: Any) -> bytes:
    return json.dumps(doc, **kw).encode()


def test_identical_and_reformatted_bodies_are_equal_without_deepdiff() -> None:
    before = deepdiff_calls()
    body = calc_price()
    assert compare(200, js(body), 200, js(body)) == Comparison(equal=True)
    assert compare(200, js(body), 200, js(body, indent=2, sort_keys=True)).equal
    assert deepdiff_calls() == before


def test_numeric_string_equals_number_without_deepdiff() -> None:
    before = deepdiff_calls()
    a = calc_price(total="96.07")
    b = calc_price(total=96.07)
    c = calc_price(total="96.070")
    assert compare(200, js(a), 200, js(b)).equal
    assert compare(200, js(a), 200, js(c)).equal
    assert deepdiff_calls() == before


def test_cent_difference_names_the_field() -> None:
    before = deepdiff_calls()
    result = compare(200, js(calc_price(total="96.07")), 200, js(calc_price(total=96.08)))
    assert not result.equal and result.error is None and result.deepdiff_used
    assert result.fields == ("data.summary.total",)
    assert result.diff == {"values_changed": {"root['data']['summary']['total']": {"old": "96.07", "new": "96.08"}}}
    assert deepdiff_calls() == before + 1
    json.dumps(result.diff)  # JSON-serialisable


def test_tolerance_hides_a_cent_but_not_two() -> None:
    rules = CompareRules(tolerance="0.01")
    assert compare(200, js(calc_price(total="96.07")), 200, js(calc_price(total="96.08")), rules).equal
    assert compare(200, js(calc_price(total="96.08")), 200, js(calc_price(total=96.07)), rules).equal
    result = compare(200, js(calc_price(total="96.07")), 200, js(calc_price(total="96.09")), rules)
    assert result.fields == ("data.summary.total",)


def test_tolerance_is_a_distance_not_rounding() -> None:
    """1.005 vs 1.014 are 0.009 apart: equal with 0.01 although they round differently;
    1.004 vs 1.016 (0.012 apart) are not."""
    rules = CompareRules(tolerance=0.01)
    assert compare(200, b'{"x": 1.005}', 200, b'{"x": 1.014}', rules).equal
    assert not compare(200, b'{"x": 1.004}', 200, b'{"x": 1.016}', rules).equal
    # only numbers at the same place are absorbed; the fast path stays free of deepdiff
    before = deepdiff_calls()
    assert compare(200, js(calc_price(total="96.07", tariff="8.32")), 200,
                   js(calc_price(total="96.06", tariff=8.33)), rules).equal
    assert deepdiff_calls() == before


def test_ignore_path_hides_a_field() -> None:
    a, b = calc_price(), calc_price()
    b["data"]["server_time"] = "2026-06-01T12:00:01Z"
    assert compare(200, js(a), 200, js(b)).fields == ("data.server_time",)
    assert compare(200, js(a), 200, js(b), CompareRules(ignore=("root['data']['server_time']",))).equal


def test_wildcard_ignore_in_lists() -> None:
    a, b = calc_price(), calc_price()
    b["data"]["items"][1]["name"] = "T-Shirt"
    b["data"]["items"][2]["name"] = "Tee"
    assert compare(200, js(a), 200, js(b)).fields == ("data.items[*].name",)
    assert compare(200, js(a), 200, js(b), CompareRules(ignore=("root['data']['items'][*]['name']",))).equal


def test_list_order_matters_unless_unordered() -> None:
    a = calc_price()
    b = copy.deepcopy(a)
    b["data"]["items"].reverse()
    result = compare(200, js(a), 200, js(b))
    assert not result.equal and result.fields == ("data.items[*].sku_id",)
    assert compare(200, js(a), 200, js(b), CompareRules(unordered_lists=True)).equal


def test_differing_status() -> None:
    result = compare(200, js(calc_price()), 500, b'{"code": 50000, "msg": "internal_error"}')
    assert result.fields == ("status",)
    assert result.diff == {"status": {"old": "200", "new": "500"}}
    assert compare(404, b"x", 404, b"x").equal


def test_non_json_bodies() -> None:
    assert compare(200, b"<html>ok</html>", 200, b"<html>ok</html>").equal
    assert compare(204, b"", 204, b"").equal
    result = compare(200, b"<html>ok</html>", 200, b"<html>OK</html>")
    assert result.fields == ("body",) and result.diff["body"]["old"] == "<html>ok</html>"
    result = compare(200, js({"a": 1}), 200, b"\xff\xfe not json")
    assert result.fields == ("body",) and result.diff["body"]["new_json"] is False
    assert compare(200, b"", 200, b"{}").fields == ("body",)


def test_added_removed_and_type_changes() -> None:
    a = {"data": {"x": "1.00", "gone": 1, "items": [1, 2]}}
    b = {"data": {"x": None, "new": 1, "items": [1, 2, 3]}}
    result = compare(200, js(a), 200, js(b))
    assert result.fields == ("data.gone", "data.items[*]", "data.new", "data.x")
    assert set(result.diff) == {"type_changes", "dictionary_item_added", "dictionary_item_removed",
                                "iterable_item_added"}
    assert result.diff["type_changes"]["root['data']['x']"] == {
        "old": "1.00", "new": "null", "old_type": "Decimal", "new_type": "NoneType"}


def test_diff_summary_is_bounded() -> None:
    a = {"data": {f"k{i}": "x" * 1000 for i in range(500)}}
    b = {"data": {f"k{i}": "y" * 1000 for i in range(500)}}
    result = compare(200, js(a), 200, js(b))
    assert len(result.fields) == 500
    entries = [v for k, section in result.diff.items() if k != "omitted" for v in section.values()]
    assert len(entries) == MAX_DIFF_ENTRIES and result.diff["omitted"] == 450
    assert all(len(v) <= MAX_VALUE_CHARS for e in entries for v in e.values())
    assert len(json.dumps(result.diff)) < 30_000


def test_random_keys_give_one_field_per_key_not_the_whole_object() -> None:
    """threshold_to_diff_deeper=0: deepdiff must not collapse a mostly-different object into one change."""
    a = {"data": {"a1": 1, "b": 2}}
    b = {"data": {"c3": 1, "b": 2}}
    assert compare(200, js(a), 200, js(b)).fields == ("data.a1", "data.c3")


def test_large_bodies_are_not_deepdiffed() -> None:
    a = {"data": ["x" * 100] * 100}
    b = {"data": ["x" * 100] * 99 + ["y"]}
    before = deepdiff_calls()
    result = compare(200, js(a), 200, js(b), max_diff_bytes=1000)
    assert result.fields == ("$",) and "skipped" in result.diff
    assert deepdiff_calls() == before


def test_failures_become_errors_not_exceptions() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    result = compare(200, deep, 200, deep[:-1] + b"1]")
    assert not result.equal and result.fields == () and "nested too deeply" in (result.error or "")


def test_whole_body_type_change_is_dollar() -> None:
    assert compare(200, b"{}", 200, b"[]").fields == ("$",)


def test_deepdiff_cost_on_a_calc_price_body() -> None:
    """Measured on this machine (2026, CPython 3.11, deepdiff 9.1): ~0.9 KB calc_price body,
    one changed amount: deepdiff alone ~2.7 ms, a whole unequal compare ~3.7 ms; the fast path
    (equal, reformatted bodies: parse + normalise + ==) ~0.2 ms. Printed with ``pytest -s``."""
    from deepdiff import DeepDiff

    a, b = calc_price(), calc_price(total="96.08")
    na, nb = normalise(a), normalise(b)
    body_a, body_b, body_a2 = js(a), js(b), js(a, indent=1)

    def per_call(fn: Any, n: int = 50) -> float:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            runs.append((time.perf_counter() - start) / n)
        return statistics.median(runs)

    dd = per_call(lambda: DeepDiff(na, nb, view="tree", threshold_to_diff_deeper=0))
    slow = per_call(lambda: compare(200, body_a, 200, body_b))
    fast = per_call(lambda: compare(200, body_a, 200, body_a2))
    print(f"\n{len(body_a)} B body: deepdiff {dd * 1e3:.2f} ms, unequal compare {slow * 1e3:.2f} ms, "
          f"fast path {fast * 1e3:.3f} ms")
    assert fast < slow  # the point of the fast path


@pytest.mark.parametrize("kind", ["values", "list"])
def test_equal_after_normalisation_never_reaches_deepdiff(kind: str) -> None:
    before = deepdiff_calls()
    if kind == "values":
        a, b = {"p": ["1.50", 2, "x"]}, {"p": [1.5, "2.00", "x"]}
    else:
        a, b = {"p": [1, 2]}, {"p": [2, 1]}
    rules = CompareRules(unordered_lists=kind == "list")
    assert compare(200, js(a), 200, js(b), rules).equal
    assert deepdiff_calls() == before
