"""The PromQL behind `edgectl status --prometheus`: windows as PromQL ranges, names the edge exports."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.edgectl import _parser
from proxy.edgectl_prometheus import QUANTILES, Queries, live_rates, parse_duration, promql_duration
from proxy.metrics import EdgeMetrics
from tests.support.monitoring import metric_names


@pytest.mark.parametrize(("seconds", "text"), [(60.0, "60s"), (900.0, "900s"), (1.5, "1500ms"), (0.25, "250ms"), (30.0004, "30s")])
def test_windows_become_promql_ranges(seconds: float, text: str) -> None:
    assert promql_duration(seconds) == text


@pytest.mark.parametrize(("text", "seconds"), [("15s", 15.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0),
                                               ("", None), ("15", None), ("s", None), ("5x", None)])
def test_scrape_intervals_are_read_as_prometheus_writes_them(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def _queries() -> dict[str, str]:
    q = Queries("60s")
    found = {name: getattr(q, name) for name in (
        "requests", "price_changed", "shadow", "new_percent", "requests_total", "upstream_errors_total", "shadow_total", "edge_jobs",
    )}
    found.update({key: q.quantile(value) for key, value in QUANTILES.items()})
    return found


def test_every_series_the_queries_select_is_one_the_edge_exports() -> None:
    registry = CollectorRegistry()
    metrics = EdgeMetrics(registry)
    # One child of each labelled family, so each series name shows up in the exposition.
    metrics.observe("calc_price", "new", "POST", 200, 0.01)
    metrics.price_changed.labels("calc_price", "new").inc()
    metrics.shadow_requests.labels("calc_price", "mismatch").inc()
    metrics.set_percentages([("calc_price", 10.0)])
    exported = {s.name for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
    exported.add("up")  # Prometheus's own series, one per target: when it last scraped it (current())
    selected = {name: metric_names(expr) for name, expr in _queries().items()}
    assert all(selected.values()), selected
    assert {name: names - exported for name, names in selected.items() if names - exported} == {}


def test_window_rates_use_the_asked_window_and_quantiles_group_by_bucket() -> None:
    q = Queries("90s")
    assert q.requests == "sum by (route, backend, status_class) (increase(edge_requests_total[90s]))"
    assert "[90s]" in q.price_changed and "[90s]" in q.shadow
    assert q.quantile(0.99).startswith("histogram_quantile(0.99, sum by (route, backend, le) (")
    assert "[" not in q.new_percent and "[" not in q.requests_total  # instant values, not windows


def test_status_takes_a_prometheus_url() -> None:
    args = _parser().parse_args(["status", "--prometheus", "http://prom:9090", "--window", "2m", "--json"])
    assert (args.prometheus, args.window, args.json) == ("http://prom:9090", 120.0, True)
    assert _parser().parse_args(["status"]).prometheus is None


def test_an_idle_side_reads_as_no_traffic_not_nan() -> None:
    # What Prometheus answers for a route whose series exist but saw nothing in the window: 0 increases, NaN quantiles.
    nan = float("nan")
    live = live_rates(
        60.0, {"calc_price": 10.0},
        requests=[({"route": "calc_price", "backend": "new", "status_class": "2xx"}, 0.0),
                  ({"route": "calc_price", "backend": "legacy", "status_class": "2xx"}, 30.0),
                  ({"route": "calc_price", "backend": "other", "status_class": "2xx"}, 99.0)],
        price_changed=[], shadow=[({"route": "calc_price", "outcome": "error"}, 3.0)],
        quantiles={"p50_seconds": [({"route": "calc_price", "backend": "new"}, nan),
                                   ({"route": "calc_price", "backend": "legacy"}, 0.02)],
                   "p99_seconds": []},
    )
    route = live["routes"]["calc_price"]
    assert route["new"]["p50_seconds"] is None and route["legacy"]["p50_seconds"] == 0.02
    assert route["legacy"]["req_per_s"] == 0.5 and route["observed_new_percent"] == 0.0  # "other" is no side
    assert route["shadow"]["mismatch_rate"] is None  # errors compared nothing
    assert route["verdict"] == "no traffic" and route["set_new_percent"] == 10.0
