"""routing.yaml `consumers:` (common/consumer_routing.py) and the ownership in force (consumers/ownership.py).

Proves: each form (legacy, new, {new_percent: N}) parses, in the edge's whole-file parse and in
the consumers' own; bad values are rejected naming key and line; a split is sticky by order id,
with the edge's bucket, and roughly the share asked for; the consumers' event names are the
shop's; a bad file keeps the last good ownership and is counted, a good one applies within 1 s.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from common.buckets import bucket_of
from common.consumer_routing import CONSUMER_EVENTS, parse_consumers_file
from common.routing_yaml import RoutingError
from consumers.ownership import ConsumersLoader, Ownership
from handlers.routes import NEW_ROUTES
from proxy.routing import parse_routing
from shop.events import EVENT_TYPES
from common.settings import DEFAULT_TOPICS, ROUTING_INTERPOLATION_VARS

REPO = Path(__file__).resolve().parents[2]
HEAD = "version: 1\nlegacy_url: ${EDGE_LEGACY_URL:-http://127.0.0.1:8090}\nroutes: {}\nconsumers:\n"


def consumers_text(**rules: str) -> str:
    return HEAD + "".join(f"  {name}: {rule}\n" for name, rule in rules.items())


def parse(text: str):
    return parse_consumers_file(text, {}, interpolation_vars=ROUTING_INTERPOLATION_VARS)


def test_the_event_names_are_the_shops() -> None:
    assert set(CONSUMER_EVENTS) == set(EVENT_TYPES) == set(DEFAULT_TOPICS)


def test_each_form_parses_the_same_for_the_edge_and_the_consumers() -> None:
    text = consumers_text(payment_notified="legacy", payment_failed="new", purchased="{new_percent: 12.5}")
    ours = parse(text)
    edge = parse_routing(text, {}, new_routes=NEW_ROUTES.keys())
    assert ours.consumers == edge.consumers
    assert {n: r.describe() for n, r in ours.consumers.items()} == {
        "payment_notified": "legacy", "payment_failed": "new", "purchased": {"new_percent": 12.5}}
    assert ours.consumers["purchased"].new_percent == Decimal("12.5")
    assert ours.rule("refund_notified").describe() == "legacy"  # left out: old shopping's
    assert ours.legacy_url == "http://127.0.0.1:8090"


def test_the_repo_files_give_every_event_type_to_old_shopping() -> None:
    for path in (REPO / "routing.yaml", REPO / "tests" / "fixtures" / "routing-all-legacy.yaml"):
        table = parse(path.read_text())
        assert {n: r.describe() for n, r in table.consumers.items()} == {n: "legacy" for n in CONSUMER_EVENTS}


@pytest.mark.parametrize(("rule", "message"), [
    ("both", "must be legacy, new or {new_percent: N}"),
    ("{new_percent: 101}", "outside 0..100"),
    ("{new_percent: 0.001}", "more than two decimals"),
    ("{new_percent: lots}", "not a number"),
    ("{new_percent: 5, sticky: user}", "unknown key"),
    ("{}", "is required"),
    ("50", "must be legacy, new or {new_percent: N}"),
])
def test_bad_values_are_rejected_naming_key_and_line(rule: str, message: str) -> None:
    text = consumers_text(payment_failed="new", purchased=rule)
    for parser in (parse, lambda t: parse_routing(t, {}, new_routes=NEW_ROUTES.keys())):
        with pytest.raises(RoutingError) as err:
            parser(text)
        assert "consumers.purchased" in str(err.value) and "(line 6)" in str(err.value), str(err.value)
        assert message in str(err.value)


def test_an_unknown_event_type_is_rejected_naming_it() -> None:
    with pytest.raises(RoutingError, match=r"consumers\.payment_notifed \(line 5\): unknown key"):
        parse(consumers_text(payment_notifed="new"))


def test_a_split_is_sticky_by_order_id_with_the_edges_bucket_and_about_the_share_asked() -> None:
    rule = parse(consumers_text(payment_notified="{new_percent: 50}")).rule("payment_notified")
    orders = [f"L{n:015d}" for n in range(4000)]
    sides = [rule.owner(o) for o in orders]
    assert sides == [rule.owner(o) for o in orders]  # the same order always to the same side
    assert all((side == "new") == (bucket_of(o) < 5000) for o, side in zip(orders, sides))
    assert 0.45 < sides.count("new") / len(orders) < 0.55
    wider = parse(consumers_text(payment_notified="{new_percent: 80}")).rule("payment_notified")
    assert all(wider.owner(o) == "new" for o, side in zip(orders, sides) if side == "new")  # raising only adds


async def test_a_bad_file_keeps_the_last_good_ownership_and_a_good_one_applies_within_a_second(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(consumers_text(payment_notified="new"))
    registry = CollectorRegistry()
    loader = ConsumersLoader(env={}, default_legacy_url="http://127.0.0.1:8090", max_bytes=1 << 20)
    ownership = Ownership(path, loader=loader, registry=registry, drop_settle=0)
    watch = asyncio.create_task(ownership.watch(0.05))
    try:
        def count(result: str) -> float:
            return registry.get_sample_value("consumer_routing_reload_total", {"result": result}) or 0.0

        (tmp_path / "bad.yaml").write_text(consumers_text(payment_notified="sideways"))
        (tmp_path / "bad.yaml").replace(path)
        deadline = time.monotonic() + 1
        while count("error") < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert count("error") == 1
        assert ownership.owner("payment_notified", "O-1") == "new"
        assert "consumers.payment_notified (line 5)" in str(ownership.last_error)
        (tmp_path / "good.yaml").write_text(consumers_text(payment_notified="legacy"))
        started = time.monotonic()
        (tmp_path / "good.yaml").replace(path)
        while ownership.owner("payment_notified", "O-1") != "legacy":
            assert time.monotonic() - started < 1.0, "the flip did not apply within 1 s"
            await asyncio.sleep(0.02)
        assert count("ok") == 2 and count("error") == 1
    finally:
        watch.cancel()


def test_a_bad_file_at_start_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(consumers_text(payment_notified="{new_percent: 500}"))
    loader = ConsumersLoader(env={}, default_legacy_url="http://127.0.0.1:8090", max_bytes=1 << 20)
    with pytest.raises(RoutingError, match="consumers.payment_notified.new_percent"):
        Ownership(path, loader=loader, registry=CollectorRegistry())
