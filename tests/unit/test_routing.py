"""routing.yaml validation and matching (proxy/routing.py): every bad file is one RoutingError naming key and line."""

from __future__ import annotations

import re
import time
from decimal import Decimal
from pathlib import Path

import pytest

from handlers.routes import NEW_ROUTES, placeholder
from proxy.edgectl_yaml import set_percents
from proxy.routing import PASSTHROUGH, RoutingError, parse_routing
from proxy.routing_file import RoutingLoader
from common.routing_yaml import MAX_DEPTH, MAX_VALUES
from common.settings import ROUTING_INTERPOLATION_VARS, Settings
from tests.support.bad_routing import BAD_VALUES, BadFile, alias_bomb, deep, routing_text

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
    assert {name: rule.describe() for name, rule in table.consumers.items()} == {"payment_notified": "new"}


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


# --- bounded, unambiguous YAML (issue 9) ----------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda b: b.name)
def test_a_misleading_or_unbounded_value_is_rejected_naming_key_and_line(bad: BadFile, tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    bad.install(path, "http://old:9000")
    with pytest.raises(RoutingError) as err:
        parse(path.read_text())
    assert bad.names in str(err.value) and f"(line {bad.line})" in str(err.value)
    assert len(str(err.value)) < 400  # a log line, not the file echoed back


@pytest.mark.parametrize(
    ("value", "says"),
    [("05", "leading 0"), ("017", "leading 0"), ("1:30", "base-60"), (".nan", "not a finite"), (".inf", "not a finite"), ("0x10", "not a plain decimal")],
)
def test_yaml_1_1_surprises_say_what_they_would_have_meant(value: str, says: str) -> None:
    with pytest.raises(RoutingError, match=says):
        parse(routing_text("http://old:9000", value))


def test_decimal_values_with_underscores_and_plain_zero_still_parse() -> None:
    assert parse(routing_text("http://old:9000", "0")).routes["calc_price"].new_percent == 0
    assert parse(routing_text("http://old:9000", "1_0")).routes["calc_price"].new_percent == 10
    assert parse(routing_text("http://old:9000", "12.5")).routes["calc_price"].new_percent == Decimal("12.5")
    assert parse(routing_text("http://old:9000", '"08"')).routes["calc_price"].new_percent == 8  # quoted: the string 08


def test_an_alias_bomb_is_refused_at_its_first_anchor_in_milliseconds() -> None:
    started = time.monotonic()
    with pytest.raises(RoutingError, match=r"bomb.a0 \(line 8\): YAML anchors \(&a0\) are not allowed"):
        parse(routing_text("http://old:9000", "0", alias_bomb()))
    assert time.monotonic() - started < 0.5


def test_an_alias_alone_is_refused_too() -> None:
    with pytest.raises(RoutingError, match=r"routes.calc_price.new_percent \(line 6\): YAML aliases \(\*x\)"):
        parse(routing_text("http://old:9000", "*x"))


def test_nesting_is_capped_without_reaching_the_recursion_limit() -> None:
    started = time.monotonic()
    for text in (deep(20_000), "- " * 100_000 + "x", "{a: " * 50_000 + "1" + "}" * 50_000):
        # Ours at MAX_DEPTH, or libyaml's own cap when PyYAML has it: a rejection either way, never a RecursionError.
        with pytest.raises(RoutingError, match=f"nested deeper than {MAX_DEPTH} levels|exceeded maximum nesting depth"):
            parse(text)
    assert time.monotonic() - started < 2


def test_the_number_of_values_is_capped() -> None:
    text = routing_text("http://old:9000", "0", "filler: [" + ", ".join(["1"] * (MAX_VALUES + 1)) + "]\n")
    with pytest.raises(RoutingError, match=f"filler\\[{MAX_VALUES - 11}\\] \\(line 7\\): more than {MAX_VALUES} values"):
        parse(text)


def test_explicit_tags_are_refused() -> None:
    with pytest.raises(RoutingError, match=r"legacy_url \(line 2\): YAML tags \(tag:yaml.org,2002:python/object:os.system\)"):
        parse(routing_text("!!python/object:os.system x"))


def test_only_one_document_is_read() -> None:
    with pytest.raises(RoutingError, match="more than one YAML document"):
        parse(routing_text("http://old:9000") + "---\nversion: 1\n")


def test_a_huge_string_percentage_is_not_echoed_whole() -> None:
    with pytest.raises(RoutingError) as err:
        parse(routing_text("http://old:9000", '"' + "9" * 100_000 + '"'))
    assert "routes.calc_price.new_percent (line 6)" in str(err.value) and len(str(err.value)) < 300


# --- ${VAR} interpolation and credentials ---------------------------------------------------------


def test_only_allow_listed_variables_can_be_interpolated_and_the_error_names_not_reveals() -> None:
    env = {"EDGE_LEGACY_URL": "http://old:9000", "EDGE_ADMIN_TOKEN": "s3cret-token"}
    with pytest.raises(RoutingError) as err:
        parse(routing_text("${EDGE_ADMIN_TOKEN}"), env)
    assert "legacy_url (line 2): ${EDGE_ADMIN_TOKEN} cannot be used here" in str(err.value)
    assert "may interpolate only EDGE_LEGACY_URL" in str(err.value)
    assert "s3cret" not in str(err.value)
    with pytest.raises(RoutingError, match="cannot be used here"):
        parse(routing_text("http://${EDGE_ADMIN_TOKEN}:-x@old"), env)


def test_an_interpolated_value_that_is_not_a_url_is_named_by_its_variable() -> None:
    with pytest.raises(RoutingError) as err:
        parse(routing_text("${EDGE_LEGACY_URL}"), {"EDGE_LEGACY_URL": "not a url with s3cret"})
    assert "legacy_url (line 2): the value of ${EDGE_LEGACY_URL} is not an http(s) URL" in str(err.value)
    assert "s3cret" not in str(err.value)


@pytest.mark.parametrize(
    ("legacy_url", "env"),
    [("http://ops:pa55word@old:9000", {}), ("${EDGE_LEGACY_URL}", {"EDGE_LEGACY_URL": "http://ops:pa55word@old:9000"})],
)
def test_credentials_in_the_legacy_url_are_refused_without_showing_them(legacy_url: str, env: dict[str, str]) -> None:
    with pytest.raises(RoutingError, match=r"legacy_url \(line 2\): .*must not carry credentials") as err:
        parse(routing_text(legacy_url), env)
    assert "pa55word" not in str(err.value) and "ops" not in str(err.value)


def test_credentials_in_the_default_legacy_url_are_refused_too() -> None:
    text = routing_text("x").replace("legacy_url: x\n", "")
    with pytest.raises(RoutingError, match="default legacy URL .* must not carry credentials") as err:
        parse_routing(text, {}, default_legacy_url="http://ops:pa55word@old:9000")
    assert "pa55word" not in str(err.value)


def test_settings_capture_only_the_allow_listed_variables() -> None:
    settings = Settings.from_env({"EDGE_LEGACY_URL": "http://old:9000", "EDGE_ADMIN_TOKEN": "t", "SHOP_DB_URL": "mysql+aiomysql://u:pw@h/db"})
    assert dict(settings.interpolation_env) == {"EDGE_LEGACY_URL": "http://old:9000"}
    assert ROUTING_INTERPOLATION_VARS == ("EDGE_LEGACY_URL",)


# --- placeholder handlers -------------------------------------------------------------------------


def test_placeholder_routes_are_flagged_as_data() -> None:
    # Every route of the seed now has a real handler on the new side; the guard stays for the next one.
    assert {name for name, r in NEW_ROUTES.items() if r.placeholder} == set()


@pytest.mark.parametrize("block", ["new_percent: 10", 'allow_new: ["1001"]'])
def test_a_placeholder_route_cannot_send_traffic_to_new(block: str) -> None:
    text = REPO_ROUTING.read_text().replace(
        "    match: {methods: [POST], path: /refund/refund}\n    new_percent: 0\n",
        f"    match: {{methods: [POST], path: /refund/refund}}\n    {block}\n",
    )
    assert text != REPO_ROUTING.read_text()
    # No route of the seed is a placeholder any more: refund stands in for the next one built.
    loader = RoutingLoader.for_settings(Settings(), {**NEW_ROUTES, "refund": placeholder("refund", "POST", "/refund")})
    with pytest.raises(RoutingError, match=r"routes.refund \(line \d+\): the new-side handler of 'refund' is a placeholder"):
        loader.parse(text)
    assert loader.parse(REPO_ROUTING.read_text()).routes["refund"].new_percent == 0


def test_a_real_handler_may_be_dialled_up() -> None:
    checkout = parse(REPO_ROUTING.read_text()).groups["checkout"].routes
    text, _ = set_percents(REPO_ROUTING.read_text(), {name: Decimal(50) for name in checkout})
    assert RoutingLoader.for_settings(Settings()).parse(text).routes["calc_price"].new_percent == 50


def _grouped(groups: str, place_order: str = "0") -> str:
    return REPO_ROUTING.read_text().replace(
        "    match: {methods: [POST], path: /shopping/cart/checkout/entries}\n    new_percent: 0\n",
        f"    match: {{methods: [POST], path: /shopping/cart/checkout/entries}}\n    new_percent: {place_order}\n",
    ).split("groups:\n")[0] + "groups:\n" + groups


def test_the_repo_file_moves_the_checkout_routes_together() -> None:
    checkout = parse(REPO_ROUTING.read_text()).groups["checkout"]
    assert not checkout.allow_split and {"calc_price", "place_order", "paypal_pay", "adyen_pay"} <= set(checkout.routes)


def test_a_group_whose_members_differ_is_rejected_naming_group_and_lines() -> None:
    text = _grouped("  checkout:\n    routes: [calc_price, place_order]\n", place_order="10")
    with pytest.raises(RoutingError, match=r"groups.checkout \(line \d+\): .*calc_price=0 \(line \d+\), place_order=10 \(line \d+\).*allow_split"):
        parse(text)
    assert parse(text.rstrip("\n") + "\n    allow_split: true\n").routes["place_order"].new_percent == 10


@pytest.mark.parametrize(("groups", "message"), [
    ("  checkout:\n    routes: [calc_price, no_such_route]\n", r"groups.checkout.routes \(line \d+\): unknown route 'no_such_route'"),
    ("  a:\n    routes: [calc_price]\n  b:\n    routes: [coupons, calc_price]\n", r"groups.b.routes \(line \d+\): route 'calc_price' is already in group 'a'"),
    ("  detail:\n    routes: [calc_price]\n", r"groups.detail \(line \d+\): 'detail' is already a route name"),
    ("  checkout:\n    routes: []\n", r"must name at least one route"),
    ("  checkout:\n    routes: [calc_price]\n    allow_split: 1\n", r"groups.checkout.allow_split \(line \d+\): must be true or false"),
])
def test_bad_groups_are_rejected(groups: str, message: str) -> None:
    with pytest.raises(RoutingError, match=message):
        parse(_grouped(groups))
