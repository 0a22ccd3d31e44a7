"""Every dashboard panel and every alert answers with data on the real stack (`make observe` + demo traffic).

scripts/stack.py --observe runs the real edge, shopping-consumers, broker, PSP and old-shopping emulators and
a real Prometheus (prometheus/prometheus.yml with the stack's ports, alerts.yml loaded). The routing file is
test_demo_traffic's split (every checkout and pay route, and every event type, part on each side), so both
sides pay, refund, shadow and consume. scripts/demo_traffic.py runs through the edge the whole time, with a
few faults injected where a series only exists once something failed:

- old shopping answers 500 to `GET /shopping/cart` (passthrough) for a few requests: legacy 5xx;
- the PSP emulator answers 503 to Adyen's `POST /v71/payments` a number of times: the adyen_pay route's 5xx on
  both sides (EdgeNewSideWorseThanLegacy compares the new side's 5xx share with legacy's), payment errors and
  PSP retries;
- the edge's shadow pool is one call (EDGE_SHADOW_MAX_INFLIGHT=1): some shadows are skipped.
  Mismatches beyond rounding come by themselves: the split serves reads of orders that change under them.

Then, against the real Prometheus, with Grafana's variables filled in as `concrete` does ($route → .*,
$__rate_interval → 1m):
- every panel query of every dashboard, and every template variable's metric, returns a series with a finite
  value;
- every alert's signal (`alert_signal`: the expression with its outermost threshold comparisons made `bool`,
  since an empty alert result only means "not firing") returns a series.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.test_demo_traffic import split_routing
from tests.support.monitoring import (
    DASHBOARDS,
    PAYMENTS_METRICS,
    alert_rules,
    alert_signal,
    concrete,
    load_dashboard,
    metric_names,
    panel_exprs,
)
from tests.support.scrape import Scrape
from tests.support.stack_process import ROOT, Stack, free_offset

# Queries that cannot have data in this test, each with why (none today; a new one must say why here).
NO_DATA_EXPECTED: dict[str, str] = {}
# How long the queries may take to all have data once the traffic runs (a loaded 2-core box is slow).
WITHIN = 120.0


def _http(method: str, url: str, body: Any = None, **params: str) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + (f"?{urllib.parse.urlencode(params)}" if params else ""), data=data, method=method,
                                 headers={"Content-Type": "application/json", "X-User-Id": "7"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _status(url: str) -> int:
    try:
        _http("GET", url)
        return 200
    except urllib.error.HTTPError as exc:
        return exc.code


def _eventually(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(1)
    raise AssertionError(f"{what}: not within {within:.0f} s (last: {last!r})")


@dataclass
class Live:
    stack: Stack
    prometheus: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = _http("GET", f"{self.prometheus}/api/v1/query", query=expr)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def exported(self) -> set[str]:
        """Series names the edge and the consumers export now."""
        return (Scrape.of(f"http://127.0.0.1:{self.stack.port(8081)}/metrics").names
                | Scrape.of(f"http://127.0.0.1:{self.stack.port(8082)}/metrics").names)

    def without_data(self, queries: dict[str, str]) -> dict[str, Any]:
        """The queries that return no series with a finite value now, with what they returned."""
        empty = {}
        for where, expr in queries.items():
            result = self.query(expr)
            if not any(math.isfinite(float(r["value"][1])) for r in result):
                empty[where] = result
        return empty

    def all_have_data(self, queries: dict[str, str], within: float = WITHIN) -> None:
        """Poll until every query has data (the traffic keeps running), then return; else fail naming the empty ones."""
        deadline = time.monotonic() + within
        waiting = dict(queries)
        while True:
            waiting = {w: queries[w] for w in self.without_data(waiting)}
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert waiting == {}, "no data from:\n" + "\n".join(f"- {w}:\n    {q}" for w, q in waiting.items())


def every_query() -> dict[str, str]:
    """Where → PromQL as Prometheus gets it: every panel target and query variable of every dashboard, and
    every alert's signal."""
    queries = {}
    for name in DASHBOARDS:
        board = load_dashboard(name)
        for where, expr in panel_exprs(board).items():
            queries[f"{name} panel {where}"] = concrete(expr, "1m")
        for var in board["templating"]["list"]:
            q = var.get("query")
            text = q.get("query", "") if isinstance(q, dict) else (q or "")
            if var["type"] == "query" and text.startswith("label_values("):
                queries[f"{name} variable {var['name']}"] = text[len("label_values("):].split(",")[0].strip()
    for rule in alert_rules():
        queries[f"alert {rule['alert']} (signal)"] = alert_signal(rule["expr"])
    return queries


def _payments(expr: str) -> bool:
    return bool(metric_names(expr) & set(PAYMENTS_METRICS))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("dashboards-live")
    stack = Stack(free_offset((9090,)), tmp / "var", routing=split_routing(tmp / "routing.yaml"), extra=("--observe",))
    with pytest.MonkeyPatch.context() as env:
        # A shadow pool of one call: with the demo's concurrency some shadows find it full (outcome skipped).
        env.setenv("EDGE_SHADOW_MAX_INFLIGHT", "1")
        stack.start()
    live = Live(stack, f"http://127.0.0.1:{stack.port(9090)}")
    demo: subprocess.Popen[bytes] | None = None
    demo_log = tmp / "demo.log"
    try:
        _eventually(lambda: {t["labels"]["job"]: t["health"] for t in _http("GET", f"{live.prometheus}/api/v1/targets")
                             ["data"]["activeTargets"]} == {"edge": "up", "consumers": "up"}, 60, "both jobs scraped")
        legacy_faults = f"http://127.0.0.1:{stack.port(8099)}/_emulator/faults"
        psp_faults = f"http://127.0.0.1:{stack.port(8100)}/_psp/faults"
        _http("POST", legacy_faults, {"path": "/shopping/cart", "error_rate": 1.0, "error_status": 500})
        # Each adyen_pay makes up to two attempts (handlers/context.py person_waiting): ~15 pay calls answer 5xx,
        # on both sides (the split gives adyen_pay half to each).
        _http("POST", psp_faults, {"path": "/v71/payments", "error_status": 503, "times": 30})
        with demo_log.open("wb") as out:
            demo = subprocess.Popen(
                [sys.executable, str(ROOT / "scripts" / "demo_traffic.py"), "--edge", f"http://127.0.0.1:{stack.port(8080)}",
                 "--service-token-file", str(stack.var / "service-token"), "--seconds", "600", "--rate", "15",
                 "--checkout-share", "0.4", "--interval", "10", "--failed-share", "0.1", "--refund-share", "0.4"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        # Old shopping's 500s for a few passthrough requests, then it is well again.
        statuses = [_status(f"http://127.0.0.1:{stack.port(8080)}/shopping/cart") for _ in range(10)]
        assert all(s >= 500 for s in statuses), statuses
        _http("DELETE", legacy_faults)
        yield live
    finally:
        if demo is not None:
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(timeout=30)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
        code = stack.stop()
        assert code == 0, stack.banner + stack.rest
        if os.environ.get("DASHBOARDS_LIVE_KEEP"):
            print(demo_log.read_text(errors="replace")[-3000:])


def test_every_panel_variable_and_alert_signal_returns_data(live: Live) -> None:
    queries = every_query()
    assert set(NO_DATA_EXPECTED) <= set(queries), "NO_DATA_EXPECTED names a query that no longer exists"
    assert len([w for w in queries if w.startswith("alert ")]) == len(alert_rules())
    assert all(any(w.startswith(f"{name} panel ") for w in queries) for name in DASHBOARDS)
    checked = {w: q for w, q in queries.items() if w not in NO_DATA_EXPECTED and not _payments(q)}
    live.all_have_data(checked)
    # Every rule evaluates cleanly on this data (a signal with data but a rule erroring would still be blind).
    groups = _http("GET", f"{live.prometheus}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # The faults made what they were meant to: legacy and new 5xx, skipped shadows, comparisons beyond rounding.
    assert live.query('sum(edge_requests_total{route="passthrough", backend="legacy", status_class="5xx"}) >= 10')
    assert live.query('sum(edge_requests_total{route="adyen_pay", backend="new", status_class="5xx"}) > 0')
    assert live.query('sum(edge_shadow_requests_total{outcome="skipped"}) > 0')
    assert live.query('sum(edge_shadow_requests_total{outcome="mismatch"}) > 0')


def test_the_payments_board_returns_data(live: Live) -> None:
    queries = {w: q for w, q in every_query().items() if _payments(q)}
    assert len(queries) >= 6 and all(w.startswith("payments panel ") for w in queries), sorted(queries)
    # Wait for the new side to have paid with both PSPs (and the 503s to be behind us): from then on, an edge
    # with the PSP clients' metrics exports every one of them.
    edge = f"http://127.0.0.1:{live.stack.port(8081)}/metrics"
    _eventually(lambda: all(Scrape.of(edge).total("edge_requests_total", route=r, backend="new") > 0
                            for r in ("adyen_pay", "paypal_finished")), WITHIN, "the new side paid with both PSPs")
    exported = live.exported() & set(PAYMENTS_METRICS)
    assert exported == set(PAYMENTS_METRICS), f"exported: {sorted(exported)}"
    live.all_have_data(queries)
    # The PSP emulator's 503s were counted as what they are: unavailable attempts, retried, answered as errors.
    assert live.query('sum(psp_requests_total{provider="adyen", operation="pay", outcome="unavailable"}) > 0')
    assert live.query('sum(psp_retries_total{provider="adyen", operation="pay"}) > 0')
    assert live.query('sum(payments_total{provider="adyen", result="error"}) > 0')
