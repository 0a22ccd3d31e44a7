"""routing.yaml validation and matching (proxy/routing.py)."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from handlers.routes import NEW_ROUTES
from proxy.routing import PASSTHROUGH, RoutingError, parse_routing

REPO_ROUTING = Path(__file__).resolve().parents[2] / "routing.yaml"

GOOD = """\
version: 1
legacy_url: ${EDGE_LEGACY_URL:-http://127.0.0.1:8090}
defaults:
  timeout_ms: 3000
consumers:
  payment_notified: new
routes:
  calc_price:
    match: {methods: [POST], path: /shopping/cal_price/v4_4}
    new_percent: 0.5
    shadow: {percent: 25, ignore: ["root['data']['server_time']"], tolerance: 0.01}
    allow_new: ["1001", 7]
  detail:
    match: {methods: [GET], path: "/shopping/orders_v43/{order_id}"}
    timeout_ms: 800
  place_order:
    match: {methods: [POST], path: /shopping/cart/checkout/entries}
    writes: true
"""


def parse(text: str, env: dict[str, str] | None = None):
    return parse_routing(text, env or {}, new_routes=NEW_ROUTES.keys())


def test_repo_routing_file_is_valid() -> None:
    table = parse(REPO_ROUTING.read_text())
    assert set(table.routes) == set(NEW_ROUTES)
    # Every write path stays unshadowed; every legacy path of legacy-api.md has its route.
    assert all(r.shadow is None for r in table.routes.values() if r.writes)
    assert table.match("POST", "/shopping/cal_price/v4_4")[0].name == "calc_price"
    assert table.match("GET", "/shopping/orders/A1/pay_cm")[0].name == "payment_methods"


@pytest.mark.parametrize("path", sorted((REPO_ROUTING.parent / "bench").glob("routing-*.yaml")), ids=lambda p: p.name)
def test_bench_routing_files_are_valid_and_match_the_repo_routes(path: Path) -> None:
    """The benches run the production routes with other shares: same names, same paths, only the dial differs."""
    table, repo = parse(path.read_text()), parse(REPO_ROUTING.read_text())
    assert {n: (r.methods, r.path) for n, r in table.routes.items()} == {n: (r.methods, r.path) for n, r in repo.routes.items()}


def test_good_file_parses_into_specs() -> None:
    table = parse(GOOD, {"EDGE_LEGACY_URL": "http://old:9000/"})
    assert table.legacy_url == "http://old:9000"
    calc = table.routes["calc_price"]
    assert calc.new_percent == Decimal("0.5") and calc.new_basis_points == 50
    assert calc.shadow is not None and calc.shadow.percent == 25 and calc.shadow.rules.tolerance == Decimal("0.01")
    assert calc.shadow.rules.ignore == ("root['data']['server_time']",) and calc.shadow.noise_percent == 10
    assert calc.allow_new == frozenset({"1001", "7"})
    assert calc.timeout_ms == 3000 and table.routes["detail"].timeout_ms == 800
    assert table.routes["place_order"].writes and table.routes["place_order"].new_percent == 0
    assert table.consumers == {"payment_notified": "new"}


def test_env_default_used_when_unset() -> None:
    assert parse(GOOD).legacy_url == "http://127.0.0.1:8090"


@pytest.mark.parametrize(
    ("mutation", "where", "line"),
    [
        (("    new_percent: 0.5", "    new_percent: 0.5\n    colour: red"), "routes.calc_price.colour", 11),
        (("new_percent: 0.5", "new_percent: 101"), "routes.calc_price.new_percent", 10),
        (("new_percent: 0.5", "new_percent: -1"), "routes.calc_price.new_percent", 10),
        (("new_percent: 0.5", "new_percent: 0.001"), "routes.calc_price.new_percent", 10),
        (("new_percent: 0.5", "new_percent: lots"), "routes.calc_price.new_percent", 10),
        (("new_percent: 0.5", "new_percent: true"), "routes.calc_price.new_percent", 10),
        (("    writes: true", "    writes: true\n    shadow: {percent: 5}"), "routes.place_order.shadow", 19),
        (("payment_notified: new", "payment_notifed: new"), "consumers.payment_notifed", 6),
        (("payment_notified: new", "payment_notified: both"), "consumers.payment_notified", 6),
        (("path: /shopping/cart/checkout/entries", "path: /shopping/cal_price/v4_4}\n    methods_note: x\n    x: {"), None, None),
        (("timeout_ms: 800", "timeout_ms: 0"), "routes.detail.timeout_ms", 15),
        (('"/shopping/orders_v43/{order_id}"', '"/shopping/orders_v43/id-{order_id}"'), "routes.detail.match.path", 14),
        (("version: 1", "version: 2"), "version", 1),
    ],
)
def test_bad_files_name_key_and_line(mutation: tuple[str, str], where: str | None, line: int | None) -> None:
    old, new = mutation
    assert old in GOOD
    with pytest.raises(RoutingError) as err:
        parse(GOOD.replace(old, new, 1))
    if where is not None:
        assert where in str(err.value)
        assert f"(line {line})" in str(err.value)


def test_duplicate_path_is_rejected_with_both_names() -> None:
    text = GOOD.replace("/shopping/cart/checkout/entries", "/shopping/cal_price/v4_4")
    with pytest.raises(RoutingError, match=r"routes.place_order.match.path \(line 17\).*already matched by route 'calc_price'"):
        parse(text)


def test_same_shape_templates_are_duplicates() -> None:
    text = GOOD + '  other:\n    match: {methods: [GET], path: "/shopping/orders_v43/{id}"}\n'
    with pytest.raises(RoutingError, match="already matched by route 'detail'"):
        parse_routing(text, {})


def test_duplicate_yaml_key_is_rejected() -> None:
    with pytest.raises(RoutingError, match=r"routes.calc_price \(line \d+\): duplicate key"):
        parse(GOOD + "  calc_price:\n    match: {methods: [GET], path: /x}\n")


def test_unquoted_template_in_flow_mapping_gets_a_hint() -> None:
    with pytest.raises(RoutingError, match="must be quoted"):
        parse(GOOD.replace('"/shopping/orders_v43/{order_id}"', "/shopping/orders_v43/{order_id}"))


def test_route_without_new_handler_cannot_go_new() -> None:
    text = GOOD + "  cart:\n    match: {methods: [GET], path: /shopping/cart}\n    new_percent: 5\n"
    with pytest.raises(RoutingError, match="no new-side handler is named 'cart'"):
        parse(text)
    # …but may exist at 0 % for its own label and timeout.
    assert parse(text.replace("new_percent: 5", "new_percent: 0")).routes["cart"].new_percent == 0


def test_empty_and_garbage_files_are_rejected() -> None:
    for text in ("", "just a string", "version: 1\n", "- a\n- b\n", "version: 1\nroutes: {a: [}\n"):
        with pytest.raises(RoutingError):
            parse(text)


def test_match_static_and_templates() -> None:
    table = parse(GOOD)
    assert table.match("POST", "/shopping/cal_price/v4_4")[0].name == "calc_price"
    assert table.match("GET", "/shopping/cal_price/v4_4") is None
    route, params = table.match("GET", "/shopping/orders_v43/ORD%20123")
    assert route.name == "detail" and params == {"order_id": "ORD 123"}


@pytest.mark.parametrize(
    "raw_path",
    [
        "/shopping/orders_v43/..",
        "/shopping/orders_v43/.",
        "/shopping/orders_v43/%2E%2E",
        "/shopping/orders_v43/a%2Fb",
        "/shopping/orders_v43/a%2fb",
        "/shopping/orders_v43/",
        "/shopping/orders_v43/a/b",
        "/shopping/x/../cal_price/v4_4",
        "/shopping%2Fcal_price/v4_4",
        "/shopping/cal_price/v4_4/",
        "//shopping/cal_price/v4_4",
    ],
)
def test_tricky_paths_never_pick_a_route_they_do_not_spell(raw_path: str) -> None:
    method = "GET" if "orders_v43" in raw_path else "POST"
    assert parse(GOOD).match(method, raw_path) is None


def test_passthrough_name_is_reserved() -> None:
    with pytest.raises(RoutingError, match="reserved"):
        parse(GOOD + f"  {PASSTHROUGH}:\n    match: {{methods: [GET], path: /x}}\n")


@pytest.mark.parametrize(
    ("shadow", "where"),
    [
        ('{percent: 25, ignore: ["root[data"]}', "routes.calc_price.shadow.ignore"),
        ("{percent: 25, tolerance: -1}", "routes.calc_price.shadow.tolerance"),
        ("{percent: 25, tolerance: lots}", "routes.calc_price.shadow.tolerance"),
        ("{percent: 25, unordered_lists: maybe}", "routes.calc_price.shadow.unordered_lists"),
        ("{percent: 25, noise_percent: 200}", "routes.calc_price.shadow.noise_percent"),
        ("{ignore: []}", "routes.calc_price.shadow.percent"),
        ("{percent: 25, sample: 3}", "routes.calc_price.shadow.sample"),
    ],
)
def test_bad_shadow_blocks_are_rejected(shadow: str, where: str) -> None:
    text = GOOD.replace("""shadow: {percent: 25, ignore: ["root['data']['server_time']"], tolerance: 0.01}""", f"shadow: {shadow}")
    with pytest.raises(RoutingError, match=re.escape(where)):
        parse(text)
