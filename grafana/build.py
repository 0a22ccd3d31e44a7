"""The Grafana dashboards of the shopping edge, as code: `make dashboards` writes grafana/dashboards/*.json.

Built with grafana-foundation-sdk (the `test` extra of pyproject.toml). The JSON files are committed, because
Grafana's file provisioning (grafana/provisioning/dashboards/shopping.yml) reads JSON, and they are generated
output: edit this file and run `make dashboards`, never the JSON (tests/integration/test_dashboards_build.py
fails when the committed JSON is not what this file produces).

    python grafana/build.py              # write grafana/dashboards/*.json
    python grafana/build.py --out DIR    # write them somewhere else (the drift test does)
    python grafana/build.py --check      # exit 1, with a diff, when the committed files are stale

Four dashboards, linked to each other (tag `shopping`):
- edge.json, "Shopping edge: migration overview" (uid shopping-edge, as before): per route the set and the
  observed new share, traffic, 4xx/5xx share and latency by side, upstream errors, 409 price_changed, the
  shadow mismatch, rounding and skipped shares, routing reloads;
- shadow.json, "Shopping edge: shadow diffs": which fields differ (beyond rounding, by rounding only, noise),
  the shadow calls' latency, pool use and skips; links to the edge admin's diff page `/_edge/shadow`;
- consumers.json, "Shopping consumers: Kafka events": events by outcome, dead letters, deliveries to old
  shopping, lag, processing time, the outbox relay, the expiry sweeper and the refund retrier;
- payments.json, "Shopping payments: PSPs": payments answered to shoppers by PSP and result, PSP calls by
  outcome, their p99 latency and retries, refunds by status.

Query conventions (ops read these, and tests/e2e/test_dashboards_live.py runs every one on a real Prometheus):
`$__rate_interval` for rates; `by` only over bounded labels (route, backend, topic, provider, operation, …);
where a series only exists once something went wrong (a 5xx, a price_changed, a retry), the query adds
`or 0 * <the traffic it is a share of>`, so a quiet route reads 0 and "no data" means no traffic at all.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DS = dm.DataSourceRef(type_val="prometheus", uid="${DS_PROMETHEUS}")
TAGS = ["shopping"]
# The edge's admin listener (docs/spec/edge.md "Admin port", make run's default); a text box on the shadow
# board, so an edge elsewhere (another host, a --port-offset stack) is one edit away.
EDGE_ADMIN = "http://127.0.0.1:8081"


# ----------------------------------------------------------------------------------------- PromQL

def rate(selector: str, window: str = "$__rate_interval") -> str:
    return f"rate({selector}[{window}])"


def total(by: str, inner: str) -> str:
    return f"sum by ({by}) ({inner})"


def zero_if_none(found: str, traffic: str) -> str:
    """`found`, or 0 for every series of `traffic` that `found` lacks: counters whose child only exists once
    the thing happened (a 5xx, a price_changed) read 0 on a route that had traffic, not "no data"."""
    return f"(\n  {found}\nor\n  0 * {traffic}\n)"


def share(part: str, whole: str) -> str:
    """`part / whole` where `part` may have no series yet: 0, not "no data", where `whole` has traffic."""
    return f"{zero_if_none(part, whole)}\n/\n{whole}"


def p(quantile: float, by: str, bucket_selector: str) -> str:
    return f"histogram_quantile({quantile}, sum by ({by}, le) ({rate(bucket_selector)}))"


# ----------------------------------------------------------------------------------------- panels

class Board:
    """One dashboard being built: panels get ids in order and flow left to right, 24 columns a line."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.ids = 0
        self.builder = (
            db.Dashboard(title).uid(uid).description(description).tags(TAGS).editable()
            .tooltip(dm.DashboardCursorSync.CROSSHAIR).refresh("10s").time("now-1h", "now").timezone("")
            .with_variable(db.DatasourceVariable("DS_PROMETHEUS").label("Data source").type("prometheus"))
            .link(db.DashboardLink("Shopping dashboards").type(dm.DashboardLinkType.DASHBOARDS).tags(TAGS)
                  .as_dropdown(True).include_vars(False).keep_time(True))
        )

    def next_id(self) -> int:
        self.ids += 1
        return self.ids

    def variable(self, var: Any) -> Board:
        self.builder.with_variable(var)
        return self

    def row(self, title: str) -> Board:
        self.builder.with_row(db.Row(title).id(self.next_id()))
        return self

    def add(self, panel: Any) -> Board:
        self.builder.with_panel(panel.id(self.next_id()))
        return self

    def build(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(json.dumps(self.builder.build(), cls=JSONEncoder))
        return doc


def query_variable(name: str, label: str, metric: str, labelname: str) -> db.QueryVariable:
    text = f"label_values({metric}, {labelname})"
    return (
        db.QueryVariable(name).label(label).datasource(DS)
        .query({"query": text, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1})
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True).include_all(True).all_value(".*")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def target(expr: str, legend: str, ref: str) -> prom.Dataquery:
    return prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref).editor_mode(prom.prometheus.QueryEditorMode.CODE).range()


def graph(title: str, description: str, unit: str, queries: list[tuple[str, str]], *,
          w: int = 12, h: int = 8, min_val: float | None = 0) -> timeseries.Panel:
    """A time series panel; `queries` are (PromQL, legend) pairs, refIds A, B, … in order."""
    panel = (
        timeseries.Panel().title(title).description(description).datasource(DS).unit(unit).span(w).height(h)
        .line_width(1).fill_opacity(10).show_points(cm.VisibilityMode.NEVER)
        .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE).placement(cm.LegendPlacement.RIGHT)
                .show_legend(True).calcs(["lastNotNull", "max"]))
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )
    if min_val is not None:
        panel.min(min_val)
    for i, (expr, legend) in enumerate(queries):
        panel.with_target(target(expr, legend, chr(ord("A") + i)))
    return panel


def top_table(title: str, description: str, unit: str, expr: str, value: str, *,
              links: tuple[db.DashboardLink, ...] = (), w: int = 12, h: int = 8) -> table.Panel:
    """A table of one instant query (one row per series), biggest first; `value` names the value column."""
    panel = (
        table.Panel().title(title).description(description).datasource(DS).unit(unit).span(w).height(h)
        .with_target(target(expr, "", "A").instant().format(prom.prometheus.PromQueryFormat.TABLE))
        .show_header(True).sort_by([cb.TableSortByFieldState().display_name(value).desc(True)])
        .with_transformation(dm.DataTransformerConfig(
            id_val="organize", options={"excludeByName": {"Time": True}, "renameByName": {"Value": value}},
        ))
    )
    if links:
        panel.data_links(list(links))
    return panel


# --------------------------------------------------------------------------------- edge: migration

def route_sel(*matchers: str) -> str:
    return "{" + ", ".join(['route=~"$route"', *matchers]) + "}"


def requests(*matchers: str, by: str = "route, backend") -> str:
    return f"sum by ({by}) ({rate('edge_requests_total' + route_sel(*matchers))})"


def shadow_requests(*matchers: str, window: str = "$__rate_interval") -> str:
    return f"sum by (route) ({rate('edge_shadow_requests_total' + route_sel(*matchers), window)})"


COMPARED = 'outcome=~"match|rounding|mismatch"'


def migration() -> dict[str, Any]:
    b = Board(
        "shopping-edge", "Shopping edge: migration overview",
        "Strangler-fig edge in front of old shopping, per route: the new share set in routing.yaml against the "
        "share the new side really served, traffic, errors and latency by side (new | legacy), 409 price_changed, "
        "the shadow comparison's rates and routing reloads. Details of the shadow diffs: dashboard "
        "\"Shopping edge: shadow diffs\". Metric names: docs/spec/edge.md. Alerts: prometheus/alerts.yml. "
        "Generated by grafana/build.py (make dashboards): do not edit the JSON.",
    )
    b.variable(query_variable("route", "Route", "edge_requests_total", "route"))

    b.row("Gray release: set against observed")
    b.add(graph(
        "New side share per route: set (new_percent) and observed",
        "set: new_percent in the routing table in force (edge_route_new_percent; a rollback shows as a drop to 0). "
        "observed: the share of the route's responses the new side served. Users are bucketed by sticky key, "
        "so observed follows set only over many callers; a steady gap on a busy route means the buckets or the "
        "routing table are not what you think (`edgectl status`).",
        "percent",
        [("max by (route) (edge_route_new_percent{route=~\"$route\"})", "set {{route}}"),
         ("100 * (\n" + share(requests('backend="new"', by="route"), requests(by="route")) + "\n)", "observed {{route}}")],
        w=16,
    ))
    b.add(graph(
        "Routing reloads (ok / error) and latest reload accepted",
        "routing.yaml loads per interval by result, and whether the latest load was accepted (1) or rejected (0). "
        "A rejected file leaves the last good table in force, so the latest rollout step or rollback did NOT take "
        "effect (alert EdgeRoutingReloadFailing); the error is in GET /_edge/routes on the admin port.",
        "short",
        [("sum by (result) (increase(edge_routing_reload_total[$__rate_interval]))", "{{result}}"),
         ("min by (instance) (edge_routing_last_reload_ok)", "latest accepted {{instance}}")],
        w=8,
    ))

    b.row("Traffic and errors by side")
    b.add(graph(
        "Requests/s by route and backend",
        "Responses served by the edge, per route and the side (new | legacy) that served them.",
        "reqps", [(requests(), "{{route}} / {{backend}}")],
    ))
    b.add(graph(
        "5xx share by route and backend",
        "Share of responses with status 5xx. Alert EdgeHighErrorRate above 2 % for 5m; EdgeNewSideWorseThanLegacy "
        "when new is over twice legacy. Rollback: `edgectl rollback ROUTE`. 0 where a route and backend served "
        "traffic without any 5xx.",
        "percentunit", [(share(requests('status_class="5xx"'), requests()), "{{route}} / {{backend}}")],
    ))
    b.add(graph(
        "4xx share by route and backend",
        "Share of responses with status 4xx (refused input, unknown orders, 409 conflicts). A side answering many "
        "more 4xx than the other on the same route is a behaviour difference the shadow may not see (write "
        "routes are never shadowed). 0 where a route and backend served traffic without any 4xx.",
        "percentunit", [(share(requests('status_class="4xx"'), requests()), "{{route}} / {{backend}}")],
    ))
    b.add(graph(
        "Latency p50 / p99 by route and backend",
        "histogram_quantile over edge_request_duration_seconds. Alert EdgeLatencyP99High above 500 ms for 5m.",
        "s",
        [(p(0.5, "route, backend", 'edge_request_duration_seconds_bucket{route=~"$route"}'), "p50 {{route}} / {{backend}}"),
         (p(0.99, "route, backend", 'edge_request_duration_seconds_bucket{route=~"$route"}'), "p99 {{route}} / {{backend}}")],
    ))
    b.add(graph(
        "Upstream errors/s by kind",
        "Failed upstream calls: timeout (slower than timeout_ms), connect (refused/reset), 5xx, pool_full (the "
        "route's share of the upstream pool was in use). Alert EdgeUpstreamErrors above 1/s per route and kind for 2m.",
        "reqps",
        [(f"sum by (route, backend, kind) ({rate('edge_upstream_errors_total' + route_sel())})", "{{kind}} {{route}} / {{backend}}")],
    ))
    b.add(graph(
        "409 price_changed/s by route and backend",
        "Answers 409 whose envelope says price_changed: the caller was charged a total other than the one it was "
        "priced. Many on a route after a gray step means calc_price and the checkout routes are served by "
        "different sides for the same user (the checkout group must move together). 0 where a route had traffic "
        "without any.",
        "reqps",
        [(zero_if_none(f"sum by (route, backend) ({rate('edge_price_changed_total' + route_sel())})", requests()),
          "{{route}} / {{backend}}")],
    ))
    b.add(graph(
        "Requests refused before routing",
        "Requests the edge answered itself, before any route: malformed or over a limit (400/431 by reason), and "
        "bodies over the limit (413). Not in the per-route panels.",
        "reqps",
        [("sum by (reason) (rate(edge_bad_requests_total[$__rate_interval]))", "{{reason}}"),
         ("sum(rate(edge_body_too_large_total[$__rate_interval]))", "413 body too large")],
        w=24, h=6,
    ))

    b.row("Shadow comparison (details: dashboard \"Shopping edge: shadow diffs\")")
    b.add(graph(
        "Shadow mismatch (beyond rounding), rounding-only and skipped share by route",
        "beyond rounding = outcome mismatch / comparisons made (match + rounding + mismatch; alert "
        "ShadowMismatchRateHigh > 5 %); rounding only = amounts that differ by rounding alone / comparisons made "
        "(not alerted); skipped / all shadow requests (alert ShadowSkippedHigh > 20 %). 0 where a route was "
        "shadowed without any.",
        "percentunit",
        [(share(shadow_requests('outcome="mismatch"'), shadow_requests(COMPARED)), "beyond rounding {{route}}"),
         (share(shadow_requests('outcome="rounding"'), shadow_requests(COMPARED)), "rounding only {{route}}"),
         (share(shadow_requests('outcome="skipped"'), shadow_requests()), "skipped {{route}}")],
    ))
    b.add(graph(
        "Shadow requests/s by outcome",
        "Shadowed requests per route and outcome (match, rounding, mismatch = beyond rounding, error, skipped = "
        "shadow pool full).",
        "reqps",
        [(f"sum by (route, outcome) ({rate('edge_shadow_requests_total' + route_sel())})", "{{route}} {{outcome}}")],
    ))
    return b.build()


# ------------------------------------------------------------------------------------ edge: shadow

def fields_table(expr_metric: str, size: str | None) -> str:
    """Top 10 fields over the time range, and one "(none)" row at 0 for each shadowed route without any: never an
    empty table, and no "(none)" beside a route's real fields."""
    sel = route_sel(f'size="{size}"') if size else route_sel()
    found = f"topk(10, sum by (route, field) ({rate(expr_metric + sel, '$__range')}))"
    none = (f'label_replace(0 * sum by (route) ({rate("edge_shadow_requests_total" + route_sel(), "$__range")}), '
            '"field", "(none)", "", "")')
    return f"{found}\nor\n(\n  {none}\nunless on (route)\n  {found}\n)"


def shadow() -> dict[str, Any]:
    b = Board(
        "shopping-shadow", "Shopping edge: shadow diffs",
        "Shadow traffic of the routes with `shadow:` in routing.yaml: the other side is called too, off the "
        "request path, and the two answers are diffed. Which fields differ (beyond rounding, by rounding only), "
        "which differ between two calls to the same side (noise), and what the shadow calls cost. Examples of "
        "each differing field: the edge admin's GET /_edge/shadow (link above; `edgectl shadow ROUTE`). "
        "Generated by grafana/build.py (make dashboards): do not edit the JSON.",
    )
    b.variable(query_variable("route", "Route", "edge_shadow_requests_total", "route"))
    b.variable(db.TextBoxVariable("edge_admin").label("Edge admin URL").default_value(EDGE_ADMIN)
               .description("The edge's admin listener, for the links to its shadow diff page (/_edge/shadow)."))
    b.builder.link(db.DashboardLink("Shadow diff page (edge admin /_edge/shadow)").type(dm.DashboardLinkType.LINK)
                   .url("${edge_admin}/_edge/shadow").icon("external link").target_blank(True)
                   .tooltip("Mismatch counts and example pairs per route and field"))
    per_route = (db.DashboardLink("Diff examples for ${__data.fields.route} (/_edge/shadow)")
                 .url("${edge_admin}/_edge/shadow?route=${__data.fields.route}").target_blank(True),)

    b.row("Which fields differ")
    b.add(top_table(
        "Top fields differing beyond rounding",
        "The 10 normalised field paths (list indexes as [*]) that differed beyond rounding most often over the "
        "time range (mean per second): these make a request a mismatch. A field that differs by design belongs "
        "in the route's shadow.ignore. Click a row for the route's examples on the edge's diff page. A shadowed "
        "route without any shows \"(none)\" at 0.",
        "reqps", fields_table("edge_shadow_mismatch_fields_total", "beyond"), "per second", links=per_route,
    ))
    b.add(top_table(
        "Top fields off by rounding only",
        "Amount fields that differed by at most one minor unit of the currency (old shopping rounds floats): "
        "expected, shown, not alerted. A shadowed route without any shows \"(none)\" at 0.",
        "reqps", fields_table("edge_shadow_mismatch_fields_total", "rounding"), "per second", links=per_route,
    ))
    b.add(graph(
        "Differing fields/s: beyond rounding against rounding only",
        "Field differences per second by size, per route (a request may have several). 0 where a route was "
        "shadowed without any.",
        "reqps",
        [(zero_if_none(f"sum by (route, size) ({rate('edge_shadow_mismatch_fields_total' + route_sel())})",
                       f'label_replace({shadow_requests()}, "size", "beyond", "", "")'), "{{size}} {{route}}")],
    ))
    b.add(top_table(
        "Shadow noise fields",
        "Fields that differ between two calls to the same side: noise, not mismatches. Candidates for the route's "
        "shadow.ignore. A shadowed route with no noise at all shows field \"(none)\" at 0.",
        "reqps", fields_table("edge_shadow_noise_fields_total", None), "per second", links=per_route,
    ))

    b.row("Comparisons")
    b.add(graph(
        "Comparisons/s: match, rounding only, beyond rounding",
        "Comparisons made per route: match, rounding (amounts off by rounding alone), mismatch (beyond rounding; "
        "alert ShadowMismatchRateHigh above 5 % of comparisons for 10m).",
        "reqps",
        [(f"sum by (route, outcome) ({rate('edge_shadow_requests_total' + route_sel(COMPARED))})", "{{outcome}} {{route}}")],
    ))
    b.add(graph(
        "Shadow calls failed or skipped/s",
        "error: the shadow side failed or timed out (nothing compared); skipped: the bounded shadow pool was full "
        "(alert ShadowSkippedHigh above 20 % for 10m: the sample is biased toward fast requests). 0 where a "
        "route was shadowed without any.",
        "reqps",
        [(zero_if_none(total("route, outcome", rate("edge_shadow_requests_total" + route_sel('outcome=~"error|skipped"'))),
                       f'label_replace({shadow_requests()}, "outcome", "skipped", "", "")'), "{{outcome}} {{route}}")],
    ))

    b.row("Cost of the shadow")
    b.add(graph(
        "Shadow call latency p50 / p99 by route and side called",
        "Duration of the shadow-side and noise calls (edge_shadow_duration_seconds), by the side called. They run "
        "after the client has its answer, bounded by EDGE_SHADOW_TIMEOUT_MS.",
        "s",
        [(p(0.5, "route, side", 'edge_shadow_duration_seconds_bucket{route=~"$route"}'), "p50 {{route}} → {{side}}"),
         (p(0.99, "route, side", 'edge_shadow_duration_seconds_bucket{route=~"$route"}'), "p99 {{route}} → {{side}}")],
    ))
    b.add(graph(
        "Shadow calls in flight",
        "Shadow calls running now in the bounded pool (EDGE_SHADOW_MAX_INFLIGHT). At the limit, new shadows are "
        "skipped.",
        "short", [("sum by (instance) (edge_shadow_inflight)", "{{instance}}")],
    ))
    return b.build()


# --------------------------------------------------------------------------------------- consumers

def topic_sel(*matchers: str) -> str:
    return "{" + ", ".join(['topic=~"$topic"', *matchers]) + "}"


def consumers() -> dict[str, Any]:
    b = Board(
        "shopping-consumers", "Shopping consumers: Kafka events",
        "The shopping-consumers process: old shopping's Kafka events applied on the new side or delivered to old "
        "shopping (routing.yaml `consumers:`), lag, processing time; the outbox relay, the expiry sweeper and the "
        "refund retrier of the same process. Generated by grafana/build.py (make dashboards): do not edit the JSON.",
    )
    b.variable(query_variable("topic", "Topic", "consumer_events_total", "topic"))
    events = "consumer_events_total"

    b.row("Events")
    b.add(graph(
        "Events/s by topic and outcome",
        "Kafka events handled by the consumers: processed (applied on the new side), forwarded_legacy (delivered "
        "to old shopping's /event/*: routing.yaml `consumers:` gives it the order), duplicate, retried, "
        "dead_lettered, skipped_not_owner.",
        "reqps", [(f"sum by (topic, outcome) ({rate(events + topic_sel())})", "{{topic}} {{outcome}}")], w=24,
    ))
    b.add(graph(
        "Dead-lettered events by topic",
        "Events that failed every retry (alert ConsumerDeadLetters on any). Their effect has not happened.",
        "short",
        [(total("topic", "increase(" + events + topic_sel('outcome="dead_lettered"') + "[$__rate_interval])"), "{{topic}}")],
        w=8,
    ))
    b.add(graph(
        "Events delivered to old shopping/s by topic",
        "Events whose order old shopping owns (routing.yaml `consumers:`), delivered to its POST /event/{name} "
        "(outcome forwarded_legacy), against those applied on the new side (processed).",
        "reqps",
        [(total("topic", rate(events + topic_sel('outcome="forwarded_legacy"'))), "legacy {{topic}}"),
         (total("topic", rate(events + topic_sel('outcome="processed"'))), "new {{topic}}")],
        w=8,
    ))
    b.add(graph(
        "Consumer lag by topic and partition",
        "Events not yet consumed. Alert ConsumerLagHigh above 1000 for 5m.",
        "short", [(f"max by (topic, partition) (consumer_lag{topic_sel()})", "{{topic}}[{{partition}}]")], w=8,
    ))
    b.add(graph(
        "Processing time p50 / p99 by topic",
        "histogram_quantile over consumer_processing_seconds (one event applied, DB commit included).",
        "s",
        [(p(0.5, "topic", f"consumer_processing_seconds_bucket{topic_sel()}"), "p50 {{topic}}"),
         (p(0.99, "topic", f"consumer_processing_seconds_bucket{topic_sel()}"), "p99 {{topic}}")],
        w=12,
    ))
    b.add(graph(
        "Event age p99 when fetched / when applied, by topic",
        "histogram_quantile over consumer_event_age_seconds: now − the event's Kafka timestamp. 'fetched' is the "
        "producer's, broker's and network's share of the delay, 'applied' adds this process's (queue, DB commit "
        "or delivery to old shopping). Lag counts the events waiting; this says how late they are.",
        "s",
        [(p(0.99, "topic, stage", f"consumer_event_age_seconds_bucket{topic_sel()}"), "p99 {{topic}} {{stage}}")],
        w=12,
    ))

    b.row("Outbox relay")
    b.add(graph(
        "Outbox: unpublished rows (relay lease holder)",
        "Outbox rows (noti, purchased) not yet published, as the process holding the outbox_relay lease counts "
        "them. Alert OutboxBacklogGrowing above 100 and rising for 10m.",
        "short", [("max by (instance) (outbox_unpublished and on (job, instance) outbox_relay_leader == 1)", "{{instance}}")],
    ))
    b.add(graph(
        "Outbox: oldest unpublished row",
        "How long the oldest unpublished outbox row has waited, read from the database by every consumers process "
        "(true when no relay runs). Alert OutboxUnpublishedOld above 5 min.",
        "s", [("max(outbox_oldest_unpublished_seconds)", "oldest row")],
    ))
    b.add(graph(
        "Outbox: published/s by topic, publish errors/s",
        "Rows the relay published (acks=all) per topic, and failed publish attempts (the rows wait and go out "
        "later). Alert OutboxRelayFailing on errors for 5m.",
        "reqps",
        [("sum by (topic) (rate(outbox_published_total[$__rate_interval]))", "published {{topic}}"),
         ("sum by (instance) (rate(outbox_publish_errors_total[$__rate_interval]))", "errors {{instance}}")],
    ))
    b.add(graph(
        "Singletons: relay, expiry sweeper, refund retrier and capture reconciler lease holders",
        "1 on the process holding the lease. Exactly one outbox relay, one expiry sweeper, one refund retrier and "
        "one PayPal capture reconciler should be 1 across instances; 0 everywhere means nobody publishes (or "
        "expires unpaid orders, or resubmits refunds, or settles PayPal captures in doubt).",
        "short",
        [("sum(outbox_relay_leader)", "outbox relay"), ("sum(expiry_sweeper_leader)", "expiry sweeper"),
         ("sum(refund_retrier_leader)", "refund retrier"), ("sum(capture_reconciler_leader)", "capture reconciler")],
    ))

    b.row("Expiry sweeper and refund retrier")
    b.add(graph(
        "Expiry sweeper: orders cancelled at their deadline, sweep errors",
        "Unpaid orders the sweeper moved to cancelled (increase per interval), and sweeps that failed (the next "
        "period tries again).",
        "short",
        [("sum(increase(expiry_orders_expired_total[$__rate_interval]))", "expired"),
         ("sum(increase(expiry_sweep_errors_total[$__rate_interval]))", "sweep errors")],
    ))
    b.add(graph(
        "Refund retrier: resubmissions, refunds failed for good, pass errors",
        "Refund submissions the retrier sent again (same idempotency key), refunds it moved to failed after the "
        "last attempt (alert RefundFailedForGood: a person must act), and retrier passes that failed. Refunds "
        "by status: dashboard \"Shopping payments: PSPs\".",
        "short",
        [("sum by (provider) (increase(refunds_retried_total[$__rate_interval]))", "resubmitted {{provider}}"),
         ("sum by (provider) (increase(refunds_failed_total[$__rate_interval]))", "failed for good {{provider}}"),
         ("sum(increase(refund_retry_errors_total[$__rate_interval]))", "pass errors")],
    ))
    b.add(graph(
        "PayPal capture reconciler: payments settled by outcome, pass errors",
        "PayPal payments paypal_finished left in doubt that the reconciler settled, by outcome: captured (money "
        "PayPal had; the order paid), declined / not_approved (the order payable again), pending (a PENDING "
        "capture, read again), awaiting_payer (paid_from_client, never captured), settled (someone else did "
        "first); and passes stopped by a PSP or database error. In doubt now: dashboard \"Shopping payments: PSPs\".",
        "short",
        [("sum by (outcome) (increase(paypal_captures_reconciled_total[$__rate_interval]))", "{{outcome}}"),
         ("sum(increase(capture_reconcile_errors_total[$__rate_interval]))", "pass errors")],
    ))
    return b.build()


# ---------------------------------------------------------------------------------------- payments

PROVIDERS = ("paypal", "adyen")


def prov(*matchers: str) -> str:
    return "{" + ", ".join(['provider=~"$provider"', *matchers]) + "}"


def payments() -> dict[str, Any]:
    b = Board(
        "shopping-payments", "Shopping payments: PSPs",
        "Payments on the new side through PayPal and Adyen: what shoppers were answered (payments_total, one per "
        "pay call), every HTTP attempt to a PSP by operation and outcome (psp_requests_total), the attempts' "
        "latency and retries, and refunds by status (the consumers process's refund retrier). Old shopping's own "
        "PSP calls are not counted here. Generated by grafana/build.py (make dashboards): do not edit the JSON.",
    )
    b.variable(
        db.CustomVariable("provider").label("PSP").values(",".join(PROVIDERS)).multi(True).include_all(True)
        .all_value(".*").current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )
    pay = "payments_total"
    psp = "psp_requests_total"

    b.row("Payments answered to shoppers")
    b.add(graph(
        "Payment success share by PSP",
        "Pay calls answered authorised or captured / all pay calls answered, per PSP. pending (the PSP has not "
        "decided), refused (the card or payer was refused: the shopper's problem, not ours) and error (we could "
        "not get an answer: ours) are the rest. 0 where a PSP had payments and none succeeded.",
        "percentunit",
        [(share(total("provider", rate(pay + prov('result=~"authorised|captured"'))),
                f"sum by (provider) ({rate(pay + prov())})"), "{{provider}}")],
        w=8,
    ))
    b.add(graph(
        "Payments/s by PSP and result",
        "Pay calls answered to shoppers by result: authorised, captured, pending, refused, error.",
        "reqps", [(f"sum by (provider, result) ({rate(pay + prov())})", "{{provider}} {{result}}")], w=16,
    ))

    b.row("Calls to the PSPs")
    b.add(graph(
        "PSP calls/s by operation and outcome",
        "Every HTTP attempt to a PSP (retries included): token, create_order, capture, get_order, refund, pay; "
        "outcome ok, rejected (the PSP said no), unavailable (5xx), timeout, network.",
        "reqps", [(f"sum by (provider, operation, outcome) ({rate(psp + prov())})", "{{provider}} {{operation}} {{outcome}}")],
    ))
    b.add(graph(
        "PSP call failure share by PSP (not ok)",
        "Attempts whose outcome is not ok / all attempts, per PSP. unavailable, timeout and network are the PSP "
        "or the way there failing (check its status page); rejected is an answer. 0 where a PSP was called "
        "without any failure.",
        "percentunit",
        [(share(total("provider", rate(psp + prov('outcome!="ok"'))), total("provider", rate(psp + prov()))),
          "{{provider}}")],
    ))
    b.add(graph(
        "PSP latency p99 by PSP and operation",
        "99th percentile of one HTTP attempt to the PSP (psp_request_seconds), by operation. The pay routes' "
        "timeout_ms (routing.yaml, 10 s) bounds a whole pay call including retries.",
        "s", [(p(0.99, "provider, operation", f"psp_request_seconds_bucket{prov()}"), "p99 {{provider}} {{operation}}")],
    ))
    b.add(graph(
        "PSP retries/s by operation",
        "Attempts made again after a failed one (psp_retries_total): a PSP that needs retries is slow to fail or "
        "flapping. 0 where a PSP was called without any retry.",
        "reqps",
        [(zero_if_none(f"sum by (provider, operation) ({rate('psp_retries_total' + prov())})",
                       f"sum by (provider, operation) ({rate(psp + prov())})"), "{{provider}} {{operation}}")],
    ))

    b.row("PayPal captures in doubt")
    b.add(graph(
        "PayPal payments in doubt",
        "Orders in payment_confirming whose PayPal payment is still created, older than 30 s, found by the capture "
        "reconciler's last pass (consumers process; 0 on instances not holding its lease). Settled within a period "
        "or two unless PayPal fails, a capture is PENDING, or nobody finished an approved order (awaiting_payer). "
        "Alert PayPalCapturesInDoubt after 30m.",
        "short", [("max(paypal_captures_in_doubt)", "in doubt")],
    ))

    b.row("Refunds")
    b.add(graph(
        "Refunds by status",
        "Refunds per status, read from the database by every consumers process (refunds_in_state): pending "
        "(submitted, no answer yet), retrying (waiting to be submitted again), succeeded, failed (for good: "
        "alert RefundFailedForGood). Alert RefundsRetryingPiling above 10 retrying for 15m.",
        "short", [("max by (status) (refunds_in_state)", "{{status}}")],
    ))
    b.add(graph(
        "Refunds resubmitted and failed for good by PSP",
        "Refund submissions the retrier sent again (same idempotency key), and refunds it gave up on after the "
        "last attempt (someone must refund by hand), per interval.",
        "short",
        [(f"sum by (provider) (increase(refunds_retried_total{prov()}[$__rate_interval]))", "resubmitted {{provider}}"),
         (f"sum by (provider) (increase(refunds_failed_total{prov()}[$__rate_interval]))", "failed for good {{provider}}")],
    ))
    return b.build()


# ------------------------------------------------------------------------------------------- files

BOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "edge.json": migration,
    "shadow.json": shadow,
    "consumers.json": consumers,
    "payments.json": payments,
}


def render() -> dict[str, str]:
    """File name → the JSON text to commit (stable: sorted keys, two-space indent, one final newline)."""
    return {name: json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n" for name, build in BOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write the JSON (default {OUT})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out's files differ")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        stale = []
        for name, text in files.items():
            path = args.out / name
            old = path.read_text(encoding="utf-8") if path.exists() else ""
            if old != text:
                stale.append(name)
                sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                           f"{path} (committed)", f"{name} (grafana/build.py)", n=2))
        extra = sorted({p.name for p in args.out.glob("*.json")} - set(files))
        if stale or extra:
            print(f"stale: {stale}; not generated by grafana/build.py: {extra}. Run `make dashboards`.", file=sys.stderr)
            return 1
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
