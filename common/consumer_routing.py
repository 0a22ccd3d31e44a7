"""routing.yaml's `consumers:` section: which side applies each Kafka event type.

```yaml
consumers:
  payment_notified: legacy          # old shopping applies every event (the consumer delivers it over HTTP)
  payment_failed: new               # the new consumer applies every event
  purchased: {new_percent: 25}      # 25 % of orders on new, sticky by order id
```

A split is sticky by order id with the edge's bucket (common/buckets.py: BLAKE2b-64 of the order
id mod 10000; new when bucket < new_percent × 100), so one order's events all go to one side,
and raising the percentage only moves orders legacy → new. `legacy` is `{new_percent: 0}` and
`new` is `{new_percent: 100}`; an event type the section leaves out belongs to old shopping.

Parsed by proxy/routing.py as part of the whole file, and by the consumers process
(:func:`parse_consumers_file`) for the parts it needs: `version`, `legacy_url` and `consumers:`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Literal

from common.buckets import BUCKETS, in_new
from common.routing_values import interpolate, keys, legacy_url, percent
from common.routing_yaml import Node, RoutingError, fail, read_document

# The event types of domain.md "Kafka events" (shop.events.EVENT_TYPES has the same names).
CONSUMER_EVENTS = ("payment_notified", "payment_failed", "purchased", "refund_notified", "group_update")
CONSUMER_OWNERS = ("legacy", "new")
# The top-level keys of routing.yaml (proxy/routing.py checks the ones the edge reads).
TOP_LEVEL_KEYS = ("version", "legacy_url", "defaults", "routes", "consumers", "groups")
DEFAULT_LEGACY_URL = "http://127.0.0.1:8090"

Owner = Literal["new", "legacy"]


@dataclass(frozen=True, slots=True)
class ConsumerRule:
    """Who applies one event type: the share of orders (by bucket) that goes to the new consumer."""

    new_percent: Decimal

    @property
    def basis_points(self) -> int:
        return int(self.new_percent * 100)

    def owner(self, order_id: str) -> Owner:
        return "new" if in_new(order_id, self.basis_points) else "legacy"

    def describe(self) -> str | dict[str, float]:
        """As routing.yaml would spell it (for /_edge/routes and logs)."""
        if self.basis_points <= 0:
            return "legacy"
        if self.basis_points >= BUCKETS:
            return "new"
        return {"new_percent": float(self.new_percent)}


LEGACY = ConsumerRule(Decimal(0))
NEW = ConsumerRule(Decimal(100))


def _rule(where: str, node: Node) -> ConsumerRule:
    if isinstance(node.value, dict):
        spec = keys(where, node, ("new_percent",), ("new_percent",))
        return ConsumerRule(percent(f"{where}.new_percent", spec["new_percent"]))
    if node.value == "legacy":
        return LEGACY
    if node.value == "new":
        return NEW
    raise fail(where, node, "must be legacy, new or {new_percent: N}")


def parse_consumers(node: Node | None) -> Mapping[str, ConsumerRule]:
    """The `consumers:` mapping (None or empty: every event type stays with old shopping)."""
    if node is None or node.value is None:
        return MappingProxyType({})
    return MappingProxyType({
        event: _rule(f"consumers.{event}", owner) for event, owner in keys("consumers", node, CONSUMER_EVENTS).items()
    })


def parse_legacy_url(
    node: Node | None, env: Mapping[str, str], interpolation_vars: Collection[str], default: str,
) -> str:
    """`legacy_url` with ${VAR} filled in from ``env`` (only ``interpolation_vars``), or ``default``."""
    if node is None:
        return legacy_url("legacy_url", None, default, "the default legacy URL (EDGE_LEGACY_URL)")
    url, used = interpolate("legacy_url", node, env, interpolation_vars)
    source = " and ".join(f"the value of ${{{name}}}" for name in used) or None
    return legacy_url("legacy_url", node, url, source)


def check_version(node: Node) -> None:
    if node.value != 1 or isinstance(node.value, bool):
        raise fail("version", node, "only version 1 is understood")


@dataclass(frozen=True, slots=True)
class ConsumersTable:
    """What the consumers process reads from routing.yaml."""

    legacy_url: str
    consumers: Mapping[str, ConsumerRule]
    source_hash: str

    def rule(self, event: str) -> ConsumerRule:
        return self.consumers.get(event, LEGACY)


def parse_consumers_file(
    text: str,
    env: Mapping[str, str],
    *,
    interpolation_vars: Collection[str],
    default_legacy_url: str = DEFAULT_LEGACY_URL,
) -> ConsumersTable:
    """The consumers' part of a routing.yaml text, or RoutingError (and nothing else).

    Checked: the top-level keys, `version`, `legacy_url` and `consumers:`; `routes:` and
    `defaults:` are the edge's, which rejects a bad one on its own.
    """
    try:
        root = read_document(text)
        if root is None:
            raise RoutingError("routing.yaml: the file is empty")
        top = keys("", root, TOP_LEVEL_KEYS, ("version", "routes"))
        check_version(top["version"])
        return ConsumersTable(
            legacy_url=parse_legacy_url(top.get("legacy_url"), env, interpolation_vars, default_legacy_url),
            consumers=parse_consumers(top.get("consumers")),
            source_hash=hashlib.sha256(text.encode()).hexdigest(),
        )
    except RoutingError:
        raise
    except Exception as exc:  # a value no rule above foresaw: still a rejection, never a crash of the caller
        raise RoutingError(f"routing.yaml: rejected, a value could not be checked ({exc.__class__.__name__})") from exc
