"""The monitoring config as data for the tests: PromQL metric names, the Grafana dashboards' queries,
the alert rules, promtool. Used by tests/integration/test_monitoring_config.py (the files on their own)
and tests/e2e/test_monitoring_live.py (the same names and queries against the running process)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "prometheus"
GRAFANA = REPO / "grafana"
DASHBOARDS = {
    "edge": GRAFANA / "dashboards" / "edge.json",
    "consumers": GRAFANA / "dashboards" / "consumers.json",
}
# alerts.yml groups about the shopping-consumers process (its consumers, its outbox relay, its refund retrier).
CONSUMERS_ALERT_GROUPS = ("consumers", "outbox", "refunds")


# ---------------------------------------------------------------------------------- promtool

def promtool() -> str:
    """promtool's path; called inside each test (not a fixture) so a missing one is a FAILED test."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH, so the Prometheus config, alert rules and their unit tests "
            "cannot be checked. Install it with `bash scripts/ensure-promtool.sh` "
            "(Debian package `prometheus`); `make test` does this first.",
            pytrace=False,
        )
    return path


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


# ---------------------------------------------------------------- PromQL metric-name extraction

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
GRAFANA_VAR = re.compile(r"\$\{\w+(?::\w+)?\}|\$\w+|\[\[\w+\]\]")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan",
})


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (also tolerates Grafana `$var` macros).

    Strings, label matchers, range/subquery brackets and grouping label lists are removed first,
    so what remains as a bare identifier not followed by `(` is a metric name.
    """
    assert "__name__" not in expr, f"select metrics by name, not via __name__: {expr}"
    s = _STRING.sub('""', expr)
    s = GRAFANA_VAR.sub("5m", s)
    s = _BRACKETS.sub("", s)
    s = _MATCHERS.sub("", s)
    s = _GROUPING.sub("", s)
    names = set()
    for m in _IDENT.finditer(s):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def concrete(expr: str, interval: str = "5m") -> str:
    """A panel expression as Prometheus would get it: Grafana's interval macros filled in, `$var` as `.*`."""
    filled = re.sub(r"\$__(?:rate_interval|interval|range)\b", interval, expr)
    return GRAFANA_VAR.sub(".*", filled)  # $route / $topic sit inside =~ regexes


# ------------------------------------------------------------------------------------- Grafana

def load_dashboard(name: str) -> dict[str, Any]:
    return json.loads(DASHBOARDS[name].read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def panel_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    return {
        f"{panel['title']} [{target.get('refId', i)}]": target["expr"]
        for panel in panels(dashboard)
        for i, target in enumerate(panel.get("targets", []))
        if target.get("expr")
    }


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def _var_query(var: dict[str, Any]) -> str:
    q = var.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or "")



# -------------------------------------------------------------------------------------- alerts

def alert_rules(groups: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """The alerting rules of alerts.yml, of `groups` only when given."""
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] if groups is None or group["name"] in groups
            for rule in group["rules"] if "alert" in rule]
