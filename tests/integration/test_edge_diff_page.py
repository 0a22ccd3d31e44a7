"""The shadow diff page (GET /_edge/shadow as HTML) on a running edge after real shadowed requests:
the index of routes, a route's fields with their rates since start and over the window, the
examples side by side with the differing paths marked, the field filter, paging under 100 KB,
escaping, and no secrets from the request."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from aiohttp import web

from shadow.page import EXAMPLES_PER_PAGE, PAGE_LIMIT
from tests.support.edge import calc_price_route
from tests.support.html_page import Page
from tests.support.shadow_stack import CALC, PLAIN_BODY, TIE_BODY, Stack

pytest_plugins = ["tests.support.shadow_fixtures"]

SHADOWED = calc_price_route(0, shadow={"percent": 100, "noise_percent": 0})


async def page(stack: Stack, href: str = "?format=html") -> Page:
    """GET a link of the page (they are all ``?…``, relative to /_edge/shadow)."""
    assert href.startswith("?"), href
    resp = await stack.admin.get("/_edge/shadow" + href.split("#")[0])
    body = await resp.read()
    assert resp.status == 200 and resp.content_type == "text/html", body[:500]
    assert len(body) < PAGE_LIMIT, len(body)
    return Page.parse(body.decode("utf-8"))


async def rounding_and_beyond(stack: Stack) -> None:
    """5 cent differences (rounding), 3 equal answers, then 2 answers with a field old shopping adds (beyond)."""
    for _ in range(5):
        assert (await stack.edge.post(CALC, json=TIE_BODY)).status == 200
    for _ in range(3):
        assert (await stack.edge.post(CALC, json=PLAIN_BODY)).status == 200
    await stack.settle()
    await stack.fault(path=CALC, random_field="quote_time")
    for _ in range(2):
        assert (await stack.edge.post(CALC, json=PLAIN_BODY)).status == 200
    await stack.settle()


async def test_index_lists_each_route_with_its_rates_and_a_link_to_its_page(make_stack) -> None:
    stack = await make_stack(SHADOWED)
    await rounding_and_beyond(stack)
    index = await page(stack)
    routes = index.tables["routes"]
    assert routes[0][:6] == ["route", "compared", "beyond rounding", "mismatch rate", "rounding only", "rounding rate"]
    assert routes[1][:6] == ["calc_price", "10", "2", "20.00%", "5", "50.00%"]
    # Only routes with shadow results; the JSON agrees on the counts.
    assert [r[0] for r in routes[1:]] == ["calc_price"]
    data = await (await stack.admin.get("/_edge/shadow")).json()
    assert data["routes"]["calc_price"]["requests"]["mismatch"] == 2
    route_page = await page(stack, index.link("route-link", "calc_price").href)
    assert "Shadow diffs · calc_price" in route_page.text
    assert (await page(stack, route_page.link("index-link").href)).tables["routes"] == routes


async def test_route_page_shows_per_field_rates_since_start_and_over_the_window(make_stack) -> None:
    stack = await make_stack(SHADOWED)
    await rounding_and_beyond(stack)
    p = await page(stack, "?format=html&route=calc_price")
    assert "last 60 s" in p.text  # the JSON's default window
    total = p.field_row("data.summary.total")
    assert (total["rounding"], total["beyond"], total["max |Δ|"]) == ("5", "0", "0.01")
    assert (total["rounding rate"], total["beyond rate"]) == ("50.00%", "0.00%")
    assert (total["window compared"], total["window rounding"], total["window rounding rate"]) == ("10", "5", "50.00%")
    added = p.field_row("data.quote_time")
    assert (added["rounding"], added["beyond"], added["beyond rate"], added["max |Δ|"]) == ("0", "2", "20.00%", "")
    assert added["verdict"] == "mismatch"

    # A window that holds only the latest requests: since start stays, the window moves.
    await asyncio.sleep(1.2)
    resp = await stack.legacy_admin.delete("/_emulator/faults")  # old shopping answers as usual again
    assert resp.status == 200
    assert (await stack.edge.post(CALC, json=TIE_BODY)).status == 200
    await stack.settle()
    p = await page(stack, "?format=html&route=calc_price&window=1")
    assert "last 1 s" in p.text
    total = p.field_row("data.summary.total")
    assert (total["rounding"], total["window compared"], total["window rounding"]) == ("6", "1", "1")
    assert (total["window rounding rate"], total["rounding rate"]) == ("100.00%", "54.55%")
    assert p.field_row("data.quote_time")["window beyond"] == "0"
    # The links keep the window asked for.
    assert "window=1" in p.link("field-link").href


async def test_each_example_lists_its_differing_paths_and_marks_them_in_both_bodies(make_stack) -> None:
    stack = await make_stack(SHADOWED)
    resp = await stack.edge.post(CALC, json=TIE_BODY, headers={
        "X-Request-Id": "req-tie-1", "X-User-Id": "7", "Authorization": "Bearer sekrit-bearer", "Cookie": "session=sekrit-cookie"})
    assert resp.status == 200
    await stack.settle()
    p = await page(stack, "?format=html&route=calc_price")
    [example] = p.sections
    assert "req-tie-1" in example.text and "primary: legacy" in example.text
    rows = {r[0]: r[1:] for r in example.diff_rows[1:]}
    assert example.diff_rows[0] == ["differing path", "legacy", "new", "|Δ|", "size"]
    legacy_total, new_total, delta, size = rows["root['data']['summary']['total']"]
    assert (delta, size) == ("0.01", "rounding")
    assert abs(float(legacy_total) - float(new_total)) == pytest.approx(0.01)
    assert p.side_labels[:2] == ["legacy", "new"]
    # The lines at the differing paths are marked in each body, with that side's value.
    assert any('"total"' in line and legacy_total in line for line in example.marked["legacy"]), example.marked
    assert any('"total"' in line and new_total in line for line in example.marked["new"]), example.marked
    assert len(example.marked["legacy"]) == len(rows)
    # The request as sent, without its secrets.
    assert "POST /shopping/cal_price/v4_4" in example.text and '"sku_id": 9001' in example.text
    assert "x-user-id: 7" in example.text.lower()
    assert "sekrit" not in p.text


async def test_field_filter_shows_only_the_examples_differing_at_that_field(make_stack) -> None:
    stack = await make_stack(SHADOWED)
    await rounding_and_beyond(stack)
    p = await page(stack, "?format=html&route=calc_price")
    assert len(p.sections) == EXAMPLES_PER_PAGE  # 7 distinct examples, 5 on the first page
    assert "examples 1–5 of 7" in p.text
    href = p.link("field-link", "data.quote_time").href
    assert "field=data.quote_time" in href
    only = await page(stack, href)
    assert len(only.sections) == 2 and "examples 1–2 of 2" in only.text
    for example in only.sections:
        paths = [r[0] for r in example.diff_rows[1:]]
        assert "root['data']['quote_time']" in paths
        assert "root['data']['summary']['total']" not in paths
        assert example.marked.get("legacy") and not example.marked.get("new")  # only old shopping has it
    total = await page(stack, p.link("field-link", "data.summary.total").href)
    assert len(total.sections) == EXAMPLES_PER_PAGE and "of 5" in total.text
    assert all("root['data']['summary']['total']" in [r[0] for r in e.diff_rows[1:]] for e in total.sections)


BIG_ITEMS = 120
STORED = 20


async def big_legacy(request: web.Request) -> web.Response:
    """An old shopping answering a large calc_price body (~16 KB), with markup in its strings."""
    await request.read()
    items = [{"sku_id": i, "name": f"<script>alert({i})</script> item {i} " + "x" * 40, "price": f"{i}.99",
              "mall_discount": "0.10"} for i in range(BIG_ITEMS)]
    body = {"code": 0, "msg": "ok", "data": {"currency": "USD", "items": items,
                                                "summary": {"total": "1234.56", "mall_discount": "12.00"}}}
    return web.json_response(body)


async def test_many_large_examples_are_paged_each_page_under_100_kb_and_escaped(make_stack) -> None:
    legacy = web.Application()
    legacy.router.add_route("*", "/{tail:.*}", big_legacy)
    stack = await make_stack(SHADOWED, legacy_app=legacy, shadow_examples_per_field=STORED,
                             shadow_examples_bytes=64 * 1024 * 1024)  # every field keeps its copy of each example
    for i in range(STORED + 5):
        assert (await stack.edge.post(CALC, json=PLAIN_BODY, headers={"X-Request-Id": f"big-{i}"})).status == 200
    await stack.settle(timeout=30)
    report = await (await stack.admin.get("/_edge/shadow", params={"route": "calc_price"})).json()
    stored = max(len(f["examples"]) for f in report["routes"]["calc_price"]["fields"])
    assert stored == 5  # the JSON's few per field; the page pages through all of them
    seen: list[str] = []
    sizes: list[int] = []
    href: str | None = "?format=html&route=calc_price"
    pages = 0
    while href is not None:
        resp = await stack.admin.get("/_edge/shadow" + href.split("#")[0])
        body = await resp.read()
        sizes.append(len(body))
        p = Page.parse(body.decode("utf-8"))
        text = p.text
        assert "<script" not in text and "&lt;script&gt;alert(" in text  # the bodies' markup, escaped
        assert len(p.sections) <= EXAMPLES_PER_PAGE
        seen += [re.search(r"request (big-\d+)", s.text).group(1) for s in p.sections]  # type: ignore[union-attr]
        pages += 1
        assert p.has_link("prev") == (pages > 1)
        href = p.link("next").href if p.has_link("next") else None
        assert pages < 20
    print(f"diff page sizes: {sizes} bytes")
    assert all(size < PAGE_LIMIT for size in sizes), sizes
    assert pages == STORED // EXAMPLES_PER_PAGE and len(seen) == STORED == len(set(seen))
    assert set(seen) <= {f"big-{i}" for i in range(STORED + 5)}
    assert max(sizes) > 10_000  # the examples are on the page, not left out to stay small
    # A page past the last shows the last; a page that is no number is refused.
    last = await page(stack, f"?format=html&route=calc_price&page={pages + 5}")
    assert f"page {pages} of {pages}" in last.text
    assert (await stack.admin.get("/_edge/shadow", params={"format": "html", "route": "calc_price", "page": "x"})).status == 400
    json.dumps(report)


async def test_no_secret_of_a_shadowed_request_reaches_the_page(make_stack) -> None:
    stack = await make_stack(SHADOWED)
    await stack.fault(path=CALC, random_field="quote_time")  # every answer differs: the request is kept as an example
    secret_body = {**PLAIN_BODY, "password": "sekrit-pw", "card": {"number": "4111111111111111"}, "auth_token": "sekrit-tk"}
    resp = await stack.edge.post(CALC + "?access_token=sekrit-q&lang=en", json=secret_body, headers={
        "Authorization": "Bearer sekrit-bearer", "Cookie": "session=sekrit-cookie", "X-Api-Key": "sekrit-key",
        "X-User-Id": "7"})
    assert resp.status == 200
    await stack.settle()
    p = await page(stack, "?format=html&route=calc_price")
    [example] = p.sections
    assert "sekrit" not in p.text and "4111" not in p.text
    assert '"password": "[redacted]"' in example.text and "access_token=[redacted]&lang=en" in example.text
    assert '"region": "US"' in example.text  # the rest of the request is there, pretty-printed
