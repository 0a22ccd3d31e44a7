"""The ops-facing monitoring config: Prometheus scrape config, alert rules and their unit tests,
Grafana dashboards and provisioning (the files on their own; tests/e2e/test_monitoring_live.py
holds the consumers' dashboard and alerts against the running process).

Runs the real `promtool` (Debian package `prometheus`; `make test` runs
scripts/ensure-promtool.sh first). Without promtool on PATH these tests FAIL, never skip:
a monitoring config nobody checked is worse than none.

Metric names are a contract (shared spec edge.md, "Metrics" table): dashboards and alerts may
use only those names, so a renamed metric breaks this test instead of silently emptying a
panel or muting an alert. The consumers process also exports metrics the table does not list
(issue 10: `outbox_unpublished` and the relay's counters, the expiry sweeper's; issue 11: the
refund retrier's `refund*`, the PayPal capture reconciler's `paypal_captures_*` and `capture_reconcile*`): the
consumers dashboard and the consumers/outbox/refunds/paypal_captures alerts may use
those too, and the live test checks every name they use against a scrape of the real process.
The edge boards (migration overview, shadow diffs) may also use the edge's additions (EDGE_OWN_METRICS), the
payments board the PSP metrics' contract (PAYMENTS_METRICS), the refund retrier's and the reconciler's
in-doubt gauge. Beyond the names,
every one a dashboard or an alert selects must be registered by the code's metric classes
(test_every_selected_metric_is_registered_by_the_code).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from prometheus_client import CollectorRegistry

from adapters.psp_metrics import PspMetrics
from consumers.capture_reconcile import CaptureReconcileMetrics
from consumers.expiry import ExpiryMetrics
from consumers.metrics import ConsumerMetrics, OutboxAge
from consumers.outbox_relay import RelayMetrics
from consumers.refund_retry import RefundRetryMetrics
from handlers.payment_metrics import PaymentMetrics
from proxy.metrics import EdgeMetrics
from tests.support.monitoring import (
    CONSUMERS_ALERT_GROUPS,
    DASHBOARDS,
    GRAFANA,
    PAYMENTS_METRICS,
    PROMETHEUS,
    alert_rules,
    alert_signal,
    concrete,
    load_dashboard,
    metric_names,
    panel_exprs,
    panels,
    promtool,
    run,
)

# The metric names of the Metrics table in shared spec edge.md ("names are a contract").
# Keep in step with that table, not with the code: the code follows the spec.
CONTRACT_COUNTERS_AND_GAUGES = frozenset({
    "edge_requests_total",
    "edge_upstream_errors_total",
    "edge_route_new_percent",
    "edge_routing_reload_total",
    "edge_shadow_requests_total",
    "edge_shadow_mismatch_fields_total",
    "edge_shadow_noise_fields_total",
    "edge_shadow_inflight",
    "consumer_events_total",
    "consumer_lag",
})
CONTRACT_HISTOGRAMS = frozenset({
    "edge_request_duration_seconds",
    "consumer_processing_seconds",
})
# A histogram is queried through its series; the bare name matches no series in Prometheus.
CONTRACT_METRICS = CONTRACT_COUNTERS_AND_GAUGES | {
    f"{h}{suffix}" for h in CONTRACT_HISTOGRAMS for suffix in ("_bucket", "_count", "_sum")
}

# The shopping-consumers process's own metrics, outside the spec's table (checked live, see above).
CONSUMERS_OWN_PREFIXES = ("outbox_", "expiry_", "refund", "consumer_event_age_seconds", "paypal_captures_",
                          "capture_reconcile")
# The edge's additions to the table (issue 12): the latest reload's result, which the counters can't give;
# 409 price_changed, the shadow calls' duration, requests refused before routing (proxy/metrics.py).
EDGE_OWN_METRICS = (
    "edge_routing_last_reload_ok", "edge_price_changed_total", "edge_shadow_duration_seconds_bucket",
    "edge_bad_requests_total", "edge_body_too_large_total",
)
EXPECTED_ALERTS = frozenset({
    "EdgeHighErrorRate",
    "EdgeNewSideWorseThanLegacy",
    "EdgeUpstreamErrors",
    "EdgeLatencyP99High",
    "EdgeRoutingReloadFailing",
    "ShadowMismatchRateHigh",
    "ShadowSkippedHigh",
    "ConsumerLagHigh",
    "ConsumerDeadLetters",
    "OutboxBacklogGrowing",
    "OutboxUnpublishedOld",
    "OutboxRelayFailing",
    "RefundFailedForGood",
    "RefundsRetryingPiling",
    "PayPalCapturesInDoubt",
})


# ---------------------------------------------------------------------------------- promtool

@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus/prometheus.yml"],
        ["check", "rules", "prometheus/alerts.yml"],
        ["test", "rules", "prometheus/alerts_test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts(args: list[str]) -> None:
    result = run([promtool(), *args])
    assert result.returncode == 0, (
        f"`promtool {' '.join(args)}` exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def test_prometheus_scrapes_edge_and_consumers() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    assert config["global"]["scrape_interval"] == "5s"
    targets = {
        job["job_name"]: (
            job.get("metrics_path", "/metrics"),
            [t for sc in job["static_configs"] for t in sc["targets"]],
        )
        for job in config["scrape_configs"]
    }
    assert targets["edge"] == ("/metrics", ["127.0.0.1:8081"])
    assert targets["consumers"] == ("/metrics", ["127.0.0.1:8082"])


# ---------------------------------------------------------------- PromQL metric-name extraction

@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (route, backend) (rate(edge_requests_total{status_class="5xx", route=~"$route"}[$__rate_interval]))',
         {"edge_requests_total"}),
        ("histogram_quantile(0.99, sum by (route, le) (rate(edge_request_duration_seconds_bucket[5m])))",
         {"edge_request_duration_seconds_bucket"}),
        ('a_total / ignoring(x) group_left(y) b_total > 0.5 and on (route) c{d="e{f}"} offset 10m',
         {"a_total", "b_total", "c"}),
        ("sum(rate(x_total[5m])) by (route) / sum without (kind) (y) unless z > bool 1e3",
         {"x_total", "y", "z"}),
        ("topk(10, sum by (route, field) (rate(edge_shadow_mismatch_fields_total[$__range])))",
         {"edge_shadow_mismatch_fields_total"}),
        ("max_over_time(consumer_lag[10m:1m]) > +Inf or sum(edge_shadow_inflight)",
         {"consumer_lag", "edge_shadow_inflight"}),
    ],
)
def test_metric_name_extraction(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


@pytest.mark.parametrize(
    ("expr", "signal"),
    [
        ("rate(x[5m]) > 0.05", "rate(x[5m]) > bool 0.05"),
        ("a > bool 1", "a > bool 1"),  # already a 0/1 answer
        ("(\n  a / b\n) > 0.02", "(\n  a / b\n) > bool 0.02"),
        ('a{l=">", m=~"<|=="} >= 3', 'a{l=">", m=~"<|=="} >= bool 3'),  # operators in matchers are not cuts
        ("(a > 1 and b > 0) and on (job, instance) c == 1",
         "(a > bool 1 and b > bool 0) and on (job, instance) c == bool 1"),
        ("x > 0 or sum by (t) (y > 0 unless y offset 10m)", "x > bool 0 or sum by (t) (y > 0 unless y offset 10m)"),
        ("a > 1 unless b", "a > bool 1"),  # unless only excludes
        ("a > 2 * (b or 0 * c) / c and a > 0.01", "a > bool 2 * (b or 0 * c) / c and a > bool 0.01"),
        ("a > ignoring (x) group_left (y) b", "a > bool ignoring (x) group_left (y) b"),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m]))) > 0.5",
         "histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m]))) > bool 0.5"),
        ("max(x)", "max(x)"),
    ],
)
def test_alert_signal_strips_the_outermost_comparisons(expr: str, signal: str) -> None:
    assert alert_signal(expr) == signal


def test_every_alert_signal_is_valid_promql_without_a_threshold(tmp_path: Path) -> None:
    """The signals tests/e2e/test_dashboards_live.py asks the real Prometheus for: valid, and never filtering
    on the alert's threshold at the top (a bool comparison, or no comparison at all)."""
    rules = [{"record": f"alert:signal:{i}", "expr": alert_signal(r["expr"]), "labels": {"alert": r["alert"]}}
             for i, r in enumerate(alert_rules())]
    for rule, alert in zip(rules, alert_rules()):
        assert rule["expr"] != alert["expr"].strip(), f"{alert['alert']}: nothing stripped"
        assert "bool" in rule["expr"], alert["alert"]
    path = tmp_path / "alert_signals.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "signals", "rules": rules}]}), encoding="utf-8")
    result = run([promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, f"alert signals rejected:\n{result.stdout}\n{result.stderr}"


def test_contract_check_catches_strangers() -> None:
    exprs = {
        "ok": "sum(rate(consumer_processing_seconds_count[5m])) / sum(edge_route_new_percent)",
        "not in the table": 'up{job="edge"} == 0 or edge_body_too_large_total > 0',
        "bare histogram": "rate(edge_request_duration_seconds[5m])",
        "misspelt": "edge_request_total",
    }
    assert _off_contract(exprs) == {
        "not in the table": {"up", "edge_body_too_large_total"},
        "bare histogram": {"edge_request_duration_seconds"},
        "misspelt": {"edge_request_total"},
    }
    # The consumers' own metrics pass where they are allowed (the consumers board and alerts), only there.
    own = {"relay": "outbox_unpublished and on (instance) outbox_relay_leader == 1 or consumer_lags"}
    assert _off_contract(own) == {"relay": {"outbox_unpublished", "outbox_relay_leader", "consumer_lags"}}
    assert _off_contract(own, CONSUMERS_OWN_PREFIXES) == {"relay": {"consumer_lags"}}


def _off_contract(exprs: dict[str, str], own: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """Per expression, the names neither in the spec's table nor of a prefix in `own`."""
    return {
        where: bad for where, e in exprs.items()
        if (bad := {n for n in metric_names(e) - CONTRACT_METRICS if not (own and n.startswith(own))})
    }


def _own(board_or_group: str) -> tuple[str, ...]:
    """The names (or name prefixes) a board or alert group may use beyond the spec's table."""
    if board_or_group == "consumers" or board_or_group in CONSUMERS_ALERT_GROUPS:
        return CONSUMERS_OWN_PREFIXES
    if board_or_group == "payments":
        return (*PAYMENTS_METRICS, "refund", "paypal_captures_")
    return EDGE_OWN_METRICS  # edge, shadow


# ------------------------------------------------------------------------------------- Grafana

def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def _var_query(var: dict[str, Any]) -> str:
    q = var.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or "")


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name: str) -> None:
    dashboard = load_dashboard(name)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard.get("uid") and dashboard.get("title")
    variables = _variables(dashboard)
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"

    found = panels(dashboard)
    assert found, "no panels"
    ids = [p.get("id") for p in found]
    assert len(set(ids)) == len(ids), f"duplicate panel ids: {ids}"
    for panel in found:
        title = panel.get("title")
        assert title, f"panel without a title: {panel.get('id')}"
        ds = panel.get("datasource")
        assert isinstance(ds, dict) and ds.get("uid"), f"{title}: no datasource"
        assert ds["uid"] == "${DS_PROMETHEUS}", f"{title}: datasource is not the DS_PROMETHEUS variable"
        targets = panel.get("targets") or []
        assert targets, f"{title}: no targets"
        for target in targets:
            assert target.get("expr", "").strip(), f"{title}: target {target.get('refId')} has no expr"
            assert target.get("refId"), f"{title}: target without refId"


def test_dashboard_template_variables() -> None:
    route = _variables(load_dashboard("edge"))["route"]
    assert route["type"] == "query"
    assert re.fullmatch(r"label_values\(\s*edge_requests_total\s*,\s*route\s*\)", _var_query(route))
    shadowed = _variables(load_dashboard("shadow"))["route"]
    assert re.fullmatch(r"label_values\(\s*edge_shadow_requests_total\s*,\s*route\s*\)", _var_query(shadowed))
    topic = _variables(load_dashboard("consumers"))["topic"]
    assert re.fullmatch(r"label_values\(\s*consumer_events_total\s*,\s*topic\s*\)", _var_query(topic))
    # The PSPs are a fixed pair (the payments contract), not read from a metric that may not exist yet.
    provider = _variables(load_dashboard("payments"))["provider"]
    assert provider["type"] == "custom" and provider["query"] == "paypal,adyen" and provider["allValue"] == ".*"
    for name in DASHBOARDS:
        board = load_dashboard(name)
        used = {m for e in panel_exprs(board).values() for m in re.findall(r"\$(\w+)", e)} - {"__rate_interval", "__range"}
        assert used <= set(_variables(board)), f"{name}: panels use undefined variables {used - set(_variables(board))}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_uses_only_contract_metrics(name: str) -> None:
    dashboard = load_dashboard(name)
    exprs = panel_exprs(dashboard)
    assert exprs
    assert _off_contract(exprs, _own(name)) == {}, "metric names not in the spec's Metrics table"
    for var in dashboard["templating"]["list"]:
        if m := re.fullmatch(r"label_values\(\s*([\w:]+)\s*,\s*\w+\s*\)", _var_query(var)):
            assert m.group(1) in CONTRACT_METRICS, f"variable {var['name']}: {m.group(1)}"


def test_dashboards_cover_every_contract_metric() -> None:
    """Every metric of the contract is on a dashboard: edge_* on edge.json or shadow.json, consumer_* on
    consumers.json; and every payments metric on payments.json."""
    used = {
        name: set().union(*map(metric_names, panel_exprs(load_dashboard(name)).values()))
        for name in DASHBOARDS
    }
    for metric in sorted(CONTRACT_COUNTERS_AND_GAUGES | CONTRACT_HISTOGRAMS):
        boards = ("edge", "shadow") if metric.startswith("edge_") else ("consumers",)
        series = {metric} if metric in CONTRACT_COUNTERS_AND_GAUGES else {f"{metric}_bucket"}
        assert any(series & used[b] for b in boards), f"{metric} is on no panel of {boards}"
    assert set(PAYMENTS_METRICS) | {"refunds_in_state", "refunds_retried_total", "refunds_failed_total"} <= used["payments"]
    assert "edge_price_changed_total" in used["edge"]


def _registered() -> set[str]:
    """The series names the code's metric classes register (the edge's and the consumers process's)."""
    registry = CollectorRegistry()
    EdgeMetrics(registry)
    ConsumerMetrics(registry, ("purchased",))
    OutboxAge(registry)
    RelayMetrics(registry)
    ExpiryMetrics(registry)
    RefundRetryMetrics(registry)
    CaptureReconcileMetrics(registry)
    PspMetrics(registry)
    PaymentMetrics(registry)
    # By family, not sample: a labelled metric has no sample before its first child exists.
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def test_every_selected_metric_is_registered_by_the_code() -> None:
    """The table and the prefixes say where a name may be used; this says it exists: every series name a
    dashboard panel or an alert selects is one the code exports (histograms as their _bucket series), so a
    metric renamed in the code breaks here, not in an empty panel."""
    registered = _registered()
    assert "edge_requests_total" in registered and "edge_request_duration_seconds_bucket" in registered
    selected = {f"dashboard {name}: {where}": e for name in DASHBOARDS for where, e in panel_exprs(load_dashboard(name)).items()}
    selected.update({f"alert {r['alert']}": r["expr"] for r in alert_rules()})
    missing = {where: bad for where, e in selected.items() if (bad := metric_names(e) - registered)}
    assert missing == {}, f"selected, but no metric class registers them: {missing}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every panel expression, with Grafana's macros filled in, passes promtool as a recording rule."""
    rules = []
    for name in sorted(DASHBOARDS):
        for where, expr in panel_exprs(load_dashboard(name)).items():
            rules.append({"record": f"dashboard:check:{len(rules)}", "expr": concrete(expr),
                          "labels": {"panel": f"{name}: {where}"}})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    result = run([promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, f"dashboard PromQL rejected:\n{result.stdout}\n{result.stderr}"


def test_grafana_provisioning() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    [prom] = [d for d in ds["datasources"] if d["type"] == "prometheus"]
    assert prom["url"].startswith("http") and prom.get("uid")
    boards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "shopping.yml").read_text(encoding="utf-8"))
    [provider] = boards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    on_disk = {p.name for p in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == {p.name for p in DASHBOARDS.values()}


# -------------------------------------------------------------------------------------- alerts

def test_alerts_use_only_contract_metrics() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert all(metric_names(e) for e in exprs.values()), "an alert selects no metric at all"
    consumers = {r["alert"] for r in alert_rules(CONSUMERS_ALERT_GROUPS)}
    assert consumers == {a for a in EXPECTED_ALERTS if a.startswith(("Consumer", "Outbox", "Refund", "PayPalCaptures"))}
    assert _off_contract({a: e for a, e in exprs.items() if a not in consumers}, EDGE_OWN_METRICS) == {}, \
        "metric names not in the spec's Metrics table"
    assert _off_contract({a: e for a, e in exprs.items() if a in consumers}, CONSUMERS_OWN_PREFIXES) == {}, \
        "metric names neither in the spec's Metrics table nor the consumers process's own"


# What an alert's text must name for on-call to know where to look (default: the route, or the topic).
LABEL_NAMED = {
    "EdgeRoutingReloadFailing": "$labels.instance",
    "OutboxBacklogGrowing": "$labels.instance",
    "OutboxRelayFailing": "$labels.instance",
    "OutboxUnpublishedOld": "$labels.job",  # every process reads the same database: one alert per job
    "RefundFailedForGood": "$labels.job",  # refunds_in_state too
    "RefundsRetryingPiling": "$labels.job",
    "PayPalCapturesInDoubt": "$labels.job",  # the lease holder's count
}


def test_alerts_are_actionable() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
        text = annotations["summary"] + annotations["description"]
        label = LABEL_NAMED.get(name, "$labels.topic" if name.startswith("Consumer") else "$labels.route")
        assert label in text, f"{name}: the annotations do not name {label}"


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    """Read from alerts.yml itself: a new alert without a promtool case fails here, listed or not."""
    doc = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text(encoding="utf-8"))
    assert doc["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    defined = {r["alert"] for r in alert_rules()}
    assert defined >= EXPECTED_ALERTS
    assert firing >= defined, f"no firing case: {sorted(defined - firing)}"
    assert quiet >= defined, f"no quiet case: {sorted(defined - quiet)}"
    assert (firing | quiet) <= defined, f"cases for alerts that do not exist: {sorted((firing | quiet) - defined)}"


def test_consumer_and_outbox_alerts_are_shown_to_clear() -> None:
    """Each consumers/outbox alert has a unit test where it fires and, later in the same series, resolves."""
    doc = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text(encoding="utf-8"))
    cleared: set[str] = set()
    for case in doc["tests"]:
        fired_at: dict[str, float] = {}
        for check in sorted(case.get("alert_rule_test", []), key=lambda c: _minutes(c["eval_time"])):
            name, at = check["alertname"], _minutes(check["eval_time"])
            if check.get("exp_alerts"):
                fired_at.setdefault(name, at)
            elif name in fired_at and at > fired_at[name]:
                cleared.add(name)
    # The reload alert too: it once kept firing 10 minutes after the file was fixed.
    wanted = {r["alert"] for r in alert_rules(CONSUMERS_ALERT_GROUPS)} | {"EdgeRoutingReloadFailing"}
    assert cleared >= wanted, f"no firing-then-clearing case: {sorted(wanted - cleared)}"


def _minutes(duration: str) -> float:
    m = re.fullmatch(r"(\d+)([smh])", duration)
    assert m, f"eval_time {duration!r}: only one unit is used in alerts_test.yml"
    return int(m.group(1)) * {"s": 1 / 60, "m": 1, "h": 60}[m.group(2)]
