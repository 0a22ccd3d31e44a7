"""`make observe`: the stack plus a real Prometheus scraping the edge and the consumers, alert rules loaded.

Also the edge dashboard against that real scrape: with traffic that has no 5xx, no skipped shadow call
and (maybe) no noise, the 5xx share, skipped share and noise panels answer 0, not "no data".
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.local_broker import port_open
from tests.support.monitoring import alert_rules, concrete, load_dashboard, panel_exprs
from tests.support.stack_process import Stack, free_offset

PRICE_BODY = {"items": [{"sku_id": 1, "qty": 2}, {"sku_id": 3, "qty": 1}], "region": "DE", "currency": "EUR"}


def _get(url: str, **params: str) -> Any:
    with urllib.request.urlopen(url + (f"?{urllib.parse.urlencode(params)}" if params else ""), timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def _call(url: str, body: dict[str, Any] | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"X-User-Id": "7", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def _eventually(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"{what}: not within {within:.0f} s (last: {last!r})")


def test_observe_runs_prometheus_on_the_stack_with_the_alert_rules(tmp_path: Path) -> None:
    stack = Stack(free_offset((9090,)), tmp_path, extra=("--observe",))
    prom = f"http://127.0.0.1:{9090 + stack.offset}"
    try:
        stack.start()
        assert any("Prometheus" in line and str(9090 + stack.offset) in line for line in stack.output), stack.banner
        edge = f"http://127.0.0.1:{8080 + stack.offset}"

        def traffic() -> None:
            """Requests between scrapes, so rates over the last minute have something to divide."""
            for _ in range(5):
                assert _call(f"{edge}/shopping/cart") == 200
                assert _call(f"{edge}/shopping/cal_price/v4_4", PRICE_BODY) == 200

        def targets_up() -> dict[str, str]:
            active = _get(f"{prom}/api/v1/targets")["activeTargets"]
            found = {t["labels"]["job"]: t["health"] for t in active}
            return found if found == {"edge": "up", "consumers": "up"} else {}

        targets = _eventually(targets_up, 60, "both jobs scraped")
        assert targets == {"edge": "up", "consumers": "up"}
        loaded = {r["name"] for g in _get(f"{prom}/api/v1/rules")["groups"] for r in g["rules"]}
        assert loaded == {r["alert"] for r in alert_rules()}

        def query(expr: str) -> list[dict[str, Any]]:
            traffic()
            result: list[dict[str, Any]] = _get(f"{prom}/api/v1/query", query=concrete(expr, "1m"))["result"]
            return result

        # The reload alert's gauge is there and says the file in force was accepted; nothing fires on it.
        assert _eventually(lambda: query("edge_routing_last_reload_ok"), 30, "reload gauge")[0]["value"][1] == "1"

        exprs = {**panel_exprs(load_dashboard("edge")), **panel_exprs(load_dashboard("shadow"))}
        five_xx = next(e for k, e in exprs.items() if k.startswith("5xx share"))
        skipped = next(e for k, e in exprs.items() if k.startswith("Shadow mismatch") and "skipped" in e)
        noise = next(e for k, e in exprs.items() if k.startswith("Shadow noise"))
        # No request above failed: the passthrough route's 5xx share is an honest 0, not "no data".
        def values(expr: str, route: str) -> dict[str, float]:
            found = {r["metric"]["route"]: float(r["value"][1]) for r in query(expr)}
            return found if found.get(route) == found.get(route) and route in found else {}  # NaN: no rate yet

        shares = _eventually(lambda: values(five_xx, "passthrough"), 60, "5xx share")
        assert shares.get("passthrough") == 0.0, shares
        # calc_price is shadowed (routing.yaml) and the pool was never full: 0 skipped, a series all the same.
        skips = _eventually(lambda: values(skipped, "calc_price"), 60, "skipped share")
        assert skips.get("calc_price") == 0.0, skips
        # Noise fields: the fields found, or "(none)" at 0 per shadowed route; never an empty table.
        assert _eventually(lambda: query(noise), 40, "noise fields")
        firing = [a for a in _get(f"{prom}/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == "EdgeRoutingReloadFailing"]
        assert firing == []
    finally:
        code = stack.stop()
    assert code == 0, stack.banner + stack.rest
    assert not port_open(9090 + stack.offset), "Prometheus still listens"
    assert (tmp_path / "prometheus" / "data").is_dir()
