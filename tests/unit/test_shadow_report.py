"""shadow/report.py and shadow/page.py: the /_edge/shadow JSON and HTML, escaping, route filter."""

from __future__ import annotations

import json
import re

from shadow.noise import DiffStats
from shadow.page import EXAMPLES_PER_PAGE, render_html
from shadow.report import render_json
from shadow.store import ExampleStore, make_example

EVIL = '<script>alert("x")</script>'


def build() -> tuple[DiffStats, ExampleStore, dict]:
    stats = DiffStats()
    store = ExampleStore()
    for i in range(10):
        stats.record_comparison("calc_price", ["data.summary.total"] if i < 4 else [])
        stats.record_comparison("calc_price", ["data.server_time"])
        stats.record_noise("calc_price", ["data.server_time"])
    stats.record_comparison("coupons", [f"data.{EVIL}"])
    for field in ("data.summary.total", "data.server_time"):
        for i in range(7):
            store.add("calc_price", field, make_example(
                request_id=f"r{i}{EVIL}", request_summary={"path": EVIL}, primary_side="legacy", primary_status=200,
                primary_body=json.dumps({"data": {"total": "96.07", "name": EVIL}}).encode(), shadow_status=200,
                shadow_body=b"not json " + EVIL.encode(), diff={"values_changed": {"root['x']": {"old": EVIL}}}))
    counters = {"calc_price": {"match": 6, "mismatch": 4, "error": 0, "skipped": 0}, "detail": {"skipped": 3}}
    return stats, store, counters


def test_json_report() -> None:
    stats, store, counters = build()
    report = render_json(stats, store, counters, meta={"worker": {"dropped": 0}})
    json.dumps(report)
    assert set(report["routes"]) == {"calc_price", "coupons", "detail"}
    calc = report["routes"]["calc_price"]
    assert calc["requests"] == {"match": 6, "rounding": 0, "mismatch": 4, "error": 0, "skipped": 0, "total": 10}
    assert calc["rates"]["mismatch"] == 0.4
    assert (calc["compared"], calc["noise_samples"]) == (20, 10)
    fields = calc["fields"]
    assert [f["field"] for f in fields] == ["data.server_time", "data.summary.total"]  # by mismatch count
    assert [f["verdict"] for f in fields] == ["noise", "mismatch"]
    assert len(fields[1]["examples"]) == 5 and fields[1]["examples"][0]["request_id"].startswith("r0")
    assert report["routes"]["detail"]["fields"] == []
    assert report["meta"] == {"worker": {"dropped": 0}}
    assert report["store"]["bytes_used"] == store.bytes_used


def test_route_filter() -> None:
    stats, store, counters = build()
    report = render_json(stats, store, counters, route="calc_price")
    assert list(report["routes"]) == ["calc_price"]
    assert render_json(stats, store, counters, route="nope")["routes"] == {}
    full = render_json(stats, store, counters)
    page = render_html(full, route="detail")
    assert "detail" in page and "calc_price" not in page


def test_html_escapes_everything_and_is_self_contained() -> None:
    stats, store, counters = build()
    report = render_json(stats, store, counters, max_examples=10)
    for page in (render_html(report), render_html(report, "calc_price"), render_html(report, "coupons")):
        assert "<script" not in page.lower()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # no external assets
        assert page.startswith("<!doctype html>") and page.endswith("</html>")
    page = render_html(report, "calc_price")
    assert "&lt;script&gt;" in page
    assert ">noise<" in page and "data.summary.total" in page
    assert page.count("<section class=example") == EXAMPLES_PER_PAGE  # 7 stored, the first page's
    assert "&quot;total&quot;: &quot;96.07&quot;" in page  # primary body pretty-printed
    assert "&lt;script&gt;" in render_html(report, "coupons")  # the field name


def test_html_survives_an_empty_or_odd_report() -> None:
    assert "No shadowed routes" in render_html({})
    odd = {"routes": {EVIL: {"requests": {EVIL: 1}, "fields": [{"field": EVIL, "examples": [{"primary": {"body": EVIL}}]}]}}}
    for page in (render_html(odd), render_html(odd, EVIL)):
        assert "<script" not in page.lower()


LONE = "\ud800"
CONTROL = "bell\x07nul\x00esc\x1b"


def hostile_parts() -> tuple[DiffStats, ExampleStore, dict]:
    """A route, field, request and both bodies carrying a lone surrogate, control characters and markup."""
    stats = DiffStats()
    store = ExampleStore()
    field = f"data.{LONE}{CONTROL}</script>"
    stats.record_comparison("calc_price", [field])
    body = json.dumps({"payment_method": LONE, "note": f"</script><b>{CONTROL}</b>"}).encode()
    store.add("calc_price", field, make_example(
        request_id="r1", request_summary={"body": json.dumps({"payment_method": LONE}, ensure_ascii=False)},
        primary_side="legacy", primary_status=200, primary_body=body, shadow_status=200,
        shadow_body=body.replace(b"ud800", b"udfff"), diff={"values_changed": {f"root['{LONE}']": {"old": LONE}}}))
    return stats, store, {"calc_price": {"mismatch": 1}, f"odd{LONE}": {"match": 1}}


def test_html_page_with_a_lone_surrogate_encodes_as_utf8_and_shows_it_escaped() -> None:
    stats, store, counters = hostile_parts()
    page = render_html(render_json(stats, store, counters), route=f"x{LONE}")
    page.encode("utf-8")
    everything = render_html(render_json(stats, store, counters), "calc_price")
    everything.encode("utf-8")
    render_html(render_json(stats, store, counters)).encode("utf-8")
    assert "\\ud800" in everything and "</script>" not in everything and "<b>" not in everything


def test_html_page_shows_control_characters_escaped_not_raw() -> None:
    stats, store, counters = hostile_parts()
    page = render_html(render_json(stats, store, counters), "calc_price")
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", page)
    assert "\\u0007" in page and "\\u0000" in page


def test_html_page_escapes_whatever_report_it_is_handed() -> None:
    odd = {"generated_at": LONE, "rule": {"absolute": CONTROL}, "store": {"dropped": "</script>"},
           "routes": {LONE: {"requests": {LONE: LONE}, "rates": {LONE: LONE}, "fields": [
               {"field": LONE, "verdict": LONE, "examples": [{"request": {LONE: [LONE]}, "diff": {LONE: b"\xff"},
                                                             "primary": {"body": LONE, "side": CONTROL}}]}]}}}
    for page in (render_html(odd, route=None), render_html(odd, route=LONE)):
        page.encode("utf-8")
        assert "</script>" not in page and not re.search(r"[\x00-\x08]", page)


def test_json_report_with_a_lone_surrogate_serialises_strictly() -> None:
    import orjson

    stats, store, counters = hostile_parts()
    report = render_json(stats, store, counters)
    text = json.dumps(report, ensure_ascii=False)
    text.encode("utf-8")
    again = orjson.loads(orjson.dumps(report))
    field = again["routes"]["calc_price"]["fields"][0]
    assert field["field"].startswith("data.\\ud800")
    assert "\\ud800" in field["examples"][0]["primary"]["body"]
    assert "odd\\ud800" in again["routes"]
