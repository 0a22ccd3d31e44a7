"""shadow/page.py on its own: the pretty-printer behind the marked lines, and the page bound
with the worst text a report can hold."""

from __future__ import annotations

import json
import re

from shadow.page import EXAMPLES_PER_PAGE, PAGE_LIMIT, _pretty, render_html
from tests.support.html_page import Page

DOCS = [
    {"code": 0, "data": {"items": [{"a": 1, "b": [1, 2.5, None, True]}, {}], "e": [], "s": "x\"<é>\u2028"}},
    [], {}, "text", 3, None, [[[]], [{}], {"k": {"k": {}}}],
]


def test_pretty_lines_are_json_dumps_indent_2_with_each_value_s_path() -> None:
    for doc in DOCS:
        lines = _pretty(doc)
        assert "\n".join(text for _, text in lines) == json.dumps(doc, indent=2, ensure_ascii=False)
    paths = dict((text.strip().rstrip(","), path) for path, text in _pretty(DOCS[0]))
    assert paths['"a": 1'] == ("data", "items", 0, "a")
    assert paths["2.5"] == ("data", "items", 0, "b", 1)


def hostile_report(n_examples: int) -> dict:
    """Every text at the length its producer allows, made of characters that escape long."""
    quote = '"&<>' * 60
    field = ("é" * 63 + ".") * 4
    diff = {"values_changed": {f"root['{quote[:290]}{i}']": {"legacy": quote[:200], "new": "\u20ac" * 200}
                               for i in range(50)}}
    body = json.dumps({f"{quote[:60]}{i}": quote for i in range(60)}, indent=2)[:16384]
    example = {"request_id": quote, "kind": "shadow", "primary_side": "legacy", "at": quote,
               "request": {"method": "POST", "path": quote, "query": quote * 8, "headers": {"content-type": quote},
                           "body": json.dumps({"q": quote * 8})},
               "primary": {"side": "legacy", "status": 200, "body": body},
               "shadow": {"side": "new", "status": 200, "body": body.replace("&", "+")}, "diff": diff}
    fields = [{"field": f"{field}{i}", "verdict": "mismatch", "mismatches": 9, "sizes": {"rounding": 1, "beyond": 8},
               "max_abs_delta": "9" * 200, "window": {"seconds": 60, "compared": 9},
               "examples": [{**example, "request_id": f"{quote}{i}-{j}"} for j in range(n_examples)] if i < 3 else []}
              for i in range(201)]
    return {"routes": {"calc_price": {"requests": {"mismatch": 9}, "fields": fields}}}


def test_a_page_stays_under_the_limit_whatever_the_report_holds() -> None:
    report = hostile_report(EXAMPLES_PER_PAGE * 2)
    for page in (1, 2, 3, 7):
        text = render_html(report, "calc_price", page=page)
        assert len(text.encode("utf-8")) < PAGE_LIMIT
        assert text.endswith("</body></html>")
    first = render_html(report, "calc_price")
    assert first.count("<section class=example") == EXAMPLES_PER_PAGE  # smaller, not fewer
    assert "<mark class=diff>" in first
    field = report["routes"]["calc_price"]["fields"][1]["field"]
    assert render_html(report, "calc_price", field=field).count("<section class=example") == EXAMPLES_PER_PAGE


def one_example_report(example: dict, field: str = "data.total") -> dict:
    return {"routes": {"r": {"requests": {"mismatch": 1}, "fields": [{"field": field, "examples": [example]}]}}}


def test_new_primary_still_shows_legacy_left_and_badges_new() -> None:
    legacy, new = json.dumps({"data": {"total": "2.67", "currency": "USD"}}), json.dumps({"data": {"total": "2.68", "currency": "USD"}})
    example = {"request_id": "r1", "kind": "shadow", "primary_side": "new",
               "primary": {"side": "new", "status": 200, "body": new}, "shadow": {"side": "legacy", "status": 200, "body": legacy},
               "diff": {"values_changed": {"root['data']['total']": {"new": "2.68", "legacy": "2.67"}},
                        "dictionary_item_added": {"root['data']['extra']": {"legacy": "1"}}}}
    page = Page.parse(render_html(one_example_report(example), "r"))
    [section] = page.sections
    assert page.side_labels == ["legacy", "new"]
    rows = {r[0]: r[1:] for r in section.diff_rows[1:]}
    assert rows["root['data']['total']"] == ["2.67", "2.68", "0.01", "rounding"]
    assert rows["root['data']['extra']"] == ["1", "(absent)", "", "beyond"]
    assert section.marked == {"legacy": ['    "total": "2.67",'], "new": ['    "total": "2.68",']}
    html = render_html(one_example_report(example), "r")
    assert re.search(r'class="side new"><h4><span class=side-label>new</span> <span class=primary>primary', html)


def test_a_jpy_body_sizes_a_yen_as_rounding_and_a_status_difference_as_beyond() -> None:
    body = json.dumps({"data": {"currency": "JPY", "total": 1000}})
    example = {"kind": "shadow", "primary_side": "legacy", "primary": {"side": "legacy", "status": 200, "body": body},
               "shadow": {"side": "new", "status": 200, "body": body},
               "diff": {"values_changed": {"root['data']['total']": {"legacy": "1000", "new": "1001"}}}}
    section = Page.parse(render_html(one_example_report(example), "r")).sections[0]
    assert section.diff_rows[1] == ["root['data']['total']", "1000", "1001", "1", "rounding"]
    status = {**example, "diff": {"status": {"legacy": "200", "new": "404"}}}
    section = Page.parse(render_html(one_example_report(status, "status"), "r")).sections[0]
    assert section.diff_rows[1] == ["status", "200", "404", "", "beyond"]
    assert not section.marked  # nothing in the bodies to mark: their first lines are shown


def test_a_noise_example_shows_both_calls_of_the_same_side() -> None:
    a, b = json.dumps({"t": 1}), json.dumps({"t": 2})
    example = {"kind": "noise", "primary_side": "legacy", "primary": {"side": "legacy", "status": 200, "body": a},
               "shadow": {"side": "legacy", "status": 200, "body": b},
               "diff": {"values_changed": {"root['t']": {"legacy": "1", "legacy_again": "2"}}}}
    page = Page.parse(render_html(one_example_report(example, "t"), "r"))
    assert page.side_labels == ["legacy (1st call)", "legacy (2nd call)"]
    assert page.sections[0].diff_rows[1][:3] == ["root['t']", "1", "2"]
    assert page.sections[0].marked == {"legacy": ['  "t": 1'], "legacy_again": ['  "t": 2']}
