"""The consumers' dashboard and alerts against the real `shopping-consumers` process.

The process runs on the real broker and MariaDB; events flow (a captured payment, the relay's
`purchased` and `noti`, one malformed message to the DLQ). Then:
- every metric name that the consumers dashboard's queries and the consumers/outbox alerts
  select, parsed out of their PromQL, is in a scrape of the process's /metrics (no copied list);
- a real Prometheus, with prometheus/prometheus.yml's `consumers` job pointed at the process
  and prometheus/alerts.yml loaded, returns data for every query of the dashboard, evaluates
  every rule without error, and fires ConsumerDeadLetters for the dead-lettered event while
  no other consumers/outbox alert fires.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from common import local_broker
from common.settings import DEFAULT_TOPICS
from shop import schema as t
from tests.support.broker import Broker, running_broker, wait_until
from tests.support.consumers_process import Consumers, captured, order_status, placed_order, produce
from tests.support.monitoring import (
    CONSUMERS_ALERT_GROUPS,
    PROMETHEUS,
    alert_rules,
    concrete,
    load_dashboard,
    metric_names,
    panel_exprs,
)
from tests.support.net import free_port
from tests.support.scrape import Scrape
from tests.support.shopdb import seed_database

pytestmark = pytest.mark.mariadb


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from running_broker(tmp_path)


def consumers_queries() -> dict[str, str]:
    """Where → PromQL: the consumers dashboard's panels and its variable, the consumers/outbox alerts."""
    board = load_dashboard("consumers")
    queries = {f"panel {where}": expr for where, expr in panel_exprs(board).items()}
    for var in board["templating"]["list"]:
        q = var.get("query")
        text = q.get("query", "") if isinstance(q, dict) else (q or "")
        if text.startswith("label_values("):
            queries[f"variable {var['name']}"] = text[len("label_values("):].split(",")[0]
    queries.update({f"alert {r['alert']}": r["expr"] for r in alert_rules(CONSUMERS_ALERT_GROUPS)})
    return queries


class Prometheus:
    """A real Prometheus scraping one consumers process every second, alerts.yml loaded."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        stock = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
        [job] = [j for j in stock["scrape_configs"] if j["job_name"] == "consumers"]
        job["static_configs"][0]["targets"] = [target]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(PROMETHEUS / f) for f in stock["rule_files"]],
            "scrape_configs": [job],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not on PATH: `bash scripts/ensure-promtool.sh` installs it (make test does)",
                        pytrace=False)
        self.log = tmp / "prometheus.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        local_broker.stop_broker(self.proc)  # terminate, wait, kill if it must


async def test_the_consumers_dashboard_and_alerts_match_the_running_process(
    broker: Broker, mariadb_url: str, tmp_path: Path,
) -> None:
    await local_broker.create_topics(broker.bootstrap, local_broker.event_topics(DEFAULT_TOPICS.values()))
    await seed_database(mariadb_url)
    order_id = await placed_order(mariadb_url, "live-1", clock=t.utcnow)
    consumers = Consumers(broker, mariadb_url, tmp_path / "consumers.log", SHOP_EXPIRY_SWEEP_SECONDS="1")
    consumers.start()
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{consumers.admin_port}")
    try:
        # Prometheus has the process's zero-valued series before anything happens, as in production.
        await wait_until(lambda: _safe(lambda: prometheus.value('up{job="consumers"}') == 1), timeout=60, interval=0.5)
        await produce(broker, "payment_notified_cm", order_id, captured(order_id, f"pn-live-{order_id}"))
        await produce(broker, "payment_notified_cm", order_id, {"not": "an event"})  # → payment_notified_cm.dlq
        await wait_until(lambda: _is(order_status(mariadb_url, order_id), "fulfilling"), timeout=60)
        await wait_until(lambda: consumers.count("payment_notified_cm", "dead_lettered") == 1, timeout=30)
        await wait_until(lambda: Scrape.of(f"http://127.0.0.1:{consumers.admin_port}/metrics").total(
            "outbox_published_total") >= 3, timeout=30)  # noti order_placed, noti order_paid, purchased
        await wait_until(lambda: _safe(lambda: prometheus.value(
            'sum(consumer_events_total{outcome="dead_lettered"})') == 1), timeout=30, interval=0.5)
        await asyncio.sleep(3)  # a few more scrapes and rule evaluations with everything in place

        # 1. Every name the dashboard and the alerts select is exported by the process.
        scrape = Scrape.of(f"http://127.0.0.1:{consumers.admin_port}/metrics")
        queries = consumers_queries()
        missing = {where: names - scrape.names for where, q in queries.items() if (names := metric_names(q)) - scrape.names}
        assert missing == {}, f"selected by the dashboard or an alert, not exported: {missing}"
        assert len(queries) >= 10 and all(metric_names(q) for q in queries.values())

        # 2. Every panel query returns data (a finite value) from the real Prometheus.
        empty = {}
        for where, expr in queries.items():
            if not where.startswith("panel "):
                continue
            result = prometheus.query(concrete(expr, "1m"))
            if not any(math.isfinite(float(r["value"][1])) for r in result):
                empty[where] = result
        assert empty == {}, f"dashboard queries without data: {empty}"

        # 3. The rules evaluate cleanly on real data, and the dead letter fired its alert, alone.
        groups = prometheus.get("/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert {r["name"] for r in rules} >= {r["alert"] for r in alert_rules()}
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
        firing = {(a["labels"]["alertname"], a["labels"].get("topic")) for a in prometheus.get("/api/v1/alerts")["alerts"]
                  if a["state"] == "firing"}
        assert firing == {("ConsumerDeadLetters", "payment_notified_cm")}, firing
    finally:
        prometheus.stop()
        assert consumers.stop() == 0, (tmp_path / "consumers.log").read_text()[-3000:]


def _safe(check: Any) -> bool:
    """A check against a server that may not answer yet."""
    try:
        return bool(check())
    except OSError:
        return False


async def _is(value: Any, want: Any) -> bool:
    return (await value) == want
