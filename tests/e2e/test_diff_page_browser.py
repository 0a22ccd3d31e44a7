"""The shadow diff page in a real browser, as the engineer reviewing a route sees it.

`make run`'s stack (scripts/stack.py, the stock demo data) with calc_price shadowed at 100 %; carts
priced through the edge until old shopping's float rounding shows (it does on a few % of the demo's
carts, a cent apart, and on one cart beyond a cent). Headless Chromium (Debian's, over the DevTools
protocol) opens the admin port's /_edge/shadow as a person would (no ?format=: the browser's Accept
asks for HTML), follows the index's link to calc_price and checks what a person checks: the two
bodies under "legacy" and "new" with the primary marked, the differing paths listed and highlighted
on the first screen, the differing lines highlighted in both bodies with no scroll box around them.
The first screen is saved as var/screenshots/diff-page.png.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from shadow.page import PAGE_LIMIT
from tests.support.browser import HEIGHT, chromium, headless_tab
from tests.support.edge import write_routing
from tests.support.html_page import Page
from tests.support.stack_process import ROOT, Stack, free_offset

SCREENSHOT = ROOT / "var" / "screenshots" / "diff-page.png"
REGIONS = (("US", "USD"), ("DE", "EUR"), ("GB", "GBP"), ("JP", "JPY"))
SKUS = range(1, 40)

# What a person looks at on the route page's first example, read from the rendered page.
FIRST_EXAMPLE = """(() => {
  const ex = document.querySelector('section.example');
  if (!ex) return null;
  const box = e => { const r = e.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, width: r.width, height: r.height}; };
  const mark = ex.querySelector('table.diffs mark.diff');
  const sides = [...ex.querySelectorAll('.side')];
  return {
    h1: document.querySelector('h1').textContent,
    labels: sides.map(s => s.querySelector('.side-label').textContent),
    primary: sides.filter(s => s.querySelector('.primary')).map(s => s.querySelector('.side-label').textContent),
    headers: [...ex.querySelectorAll('table.diffs th')].map(th => th.textContent),
    rows: [...ex.querySelectorAll('table.diffs tr.diff-row')].map(tr => [...tr.cells].map(td => td.textContent)),
    mark: mark && {text: mark.textContent, box: box(mark), background: getComputedStyle(mark).backgroundColor},
    lines: sides.map(s => [...s.querySelectorAll('pre mark.diff')].map(m => ({text: m.textContent, box: box(m)}))),
    scrollBoxes: [...ex.querySelectorAll('pre')].filter(p => p.scrollHeight > p.clientHeight + 1
                  || ['auto', 'scroll'].includes(getComputedStyle(p).overflowY)).length,
    viewport: innerHeight,
  };
})()"""


def post(url: str, body: dict[str, Any]) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "X-User-Id": "7"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def shadowed_routing(path: Path) -> Path:
    doc = yaml.safe_load((ROOT / "routing.yaml").read_text(encoding="utf-8"))
    doc["routes"]["calc_price"]["shadow"]["percent"] = 100
    return write_routing(path, doc)


def report(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin}/_edge/shadow?route=calc_price", timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())["routes"].get("calc_price", {})
        return data


async def test_the_diff_page_in_chromium_shows_legacy_and_new_with_the_differences_on_the_first_screen(tmp_path: Path) -> None:
    chromium()  # fail at once, not after starting the stack, when there is no browser
    stack = Stack(free_offset(), tmp_path / "var", routing=shadowed_routing(tmp_path / "routing.yaml"))
    try:
        stack.start()
        edge, admin = f"http://127.0.0.1:{stack.port(8080)}", f"http://127.0.0.1:{stack.port(8081)}"
        sent = 0
        for region, currency in REGIONS:
            for sku in SKUS:
                assert post(f"{edge}/shopping/cal_price/v4_4",
                            {"items": [{"sku_id": sku, "qty": 1}], "region": region, "currency": currency}) == 200
                sent += 1
        deadline = time.monotonic() + 20
        while (requests := report(admin).get("requests", {})).get("total", 0) < sent:
            assert time.monotonic() < deadline, f"shadow comparisons not done: {requests}"
            time.sleep(0.2)
        assert requests["rounding"] >= 1, f"no rounding difference in the demo's carts: {requests}"

        async with headless_tab(tmp_path / "chromium") as tab:
            await tab.open(f"{admin}/_edge/shadow")
            index = Page.parse(await tab.eval("document.documentElement.outerHTML"))
            assert [r[0] for r in index.tables["routes"][1:]] == ["calc_price"]
            await tab.click("a.route-link")
            assert "route=calc_price" in await tab.eval("location.href")
            seen = await tab.eval(FIRST_EXAMPLE)
            print(f"diff page screenshot: {await tab.screenshot(SCREENSHOT)}")
            dom = Page.parse(await tab.eval("document.documentElement.outerHTML"))

        assert seen is not None, "the route page shows no example"
        assert seen["h1"] == "Shadow diffs · calc_price"
        assert seen["labels"] == ["legacy", "new"] and seen["primary"] == ["legacy"]  # calc_price is at 0 % new
        assert seen["headers"] == ["differing path", "legacy", "new", "|Δ|", "size"]
        # The differing paths, highlighted, on the first screen (no scrolling of the page or inside the example).
        mark = seen["mark"]
        assert mark and mark["text"].startswith("root['data']"), seen
        assert 0 <= mark["box"]["top"] and mark["box"]["bottom"] <= HEIGHT == seen["viewport"], mark
        assert mark["background"] not in ("rgba(0, 0, 0, 0)", "transparent"), mark
        sizes = {row[4] for row in seen["rows"]}
        assert sizes <= {"rounding", "beyond"} and sizes, seen["rows"]
        # Each differing line is highlighted in both bodies, with that side's value, and no pane scrolls.
        legacy_lines, new_lines = ([m["text"] for m in side] for side in seen["lines"])
        assert legacy_lines and new_lines, seen["lines"]
        for path, legacy, new, *_ in seen["rows"]:
            key = path.rsplit("['", 1)[-1].rstrip("']")
            assert any(f'"{key}"' in line and legacy in line for line in legacy_lines), (path, legacy_lines)
            assert any(f'"{key}"' in line and new in line for line in new_lines), (path, new_lines)
        assert seen["scrollBoxes"] == 0
        first_line = min(m["box"]["top"] for side in seen["lines"] for m in side)
        assert first_line >= 0 and max(m["box"]["bottom"] for side in seen["lines"] for m in side[:1]) <= HEIGHT, seen["lines"]
        assert dom.side_labels[:2] == ["legacy", "new"] and dom.sections[0].marked.get("legacy")

        with urllib.request.urlopen(f"{admin}/_edge/shadow?format=html&route=calc_price", timeout=10) as resp:
            size = len(resp.read())
        print(f"diff page size: {size} bytes")
        assert size < PAGE_LIMIT
    finally:
        code = stack.stop()
    assert code == 0, stack.banner + stack.rest
    assert SCREENSHOT.stat().st_size > 10_000  # a rendered page, not a blank one
