"""No spelling of a migrated path escapes its route (proxy/paths.py, RoutingTable.match).

The edge matches routing.yaml on the path old shopping will serve. Proved on the repo's own
routing.yaml: any percent-encoding of a route's literal characters and of its parameter values
picks the same route, the same parameters and the same side as the plain path, and the route
old shopping's own router (aiohttp, as in emulators/legacy) picks for it. Dot segments, empty
segments and encoded slashes still never make a parameter.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import unquote

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from emulators.legacy import routes as legacy_routes
from proxy.gray import goes_new
from proxy.paths import PCHAR, UNRESERVED, is_origin_form, normalise_path
from proxy.routing import RouteSpec, RoutingTable, parse_routing

REPO_ROUTING = Path(__file__).resolve().parents[2] / "routing.yaml"
TABLE = parse_routing(REPO_ROUTING.read_text(encoding="utf-8"))
ROUTES = sorted(TABLE.routes.values(), key=lambda r: r.name)
NEW_SIDE_ONLY = frozenset({"payment_callback"})


def old_shopping_router() -> web.Application:
    app = web.Application()
    legacy_routes.add_routes(app)
    return app


OLD_SHOPPING = old_shopping_router()


def old_shopping_route(method: str, raw_path: str) -> str | None:
    """The route old shopping's aiohttp router picks for a raw path (None: none of its routes)."""
    request = make_mocked_request(method, raw_path, app=OLD_SHOPPING)
    match = asyncio.run(OLD_SHOPPING.router.resolve(request))
    return None if match.http_exception is not None else match.route.name


def encode_char(c: str, how: int) -> str:
    """0: as is (when it may stand unencoded), 1: %xx lowercase hex, 2: %XX uppercase hex."""
    if how == 0 and (c in PCHAR):
        return c
    escaped = "".join(f"%{b:02X}" for b in c.encode())
    return escaped.lower() if how == 1 else escaped


@st.composite
def spellings(draw: st.DrawFn, text: str) -> str:
    return "".join(encode_char(c, draw(st.integers(0, 2))) for c in text)


# Parameter values an order id, a payment type or an event name could be; never "." or "..".
param_values = st.text(
    alphabet=st.sampled_from(sorted(UNRESERVED) + list("!$&'()*+,;=:@ é€")), min_size=1, max_size=12,
).filter(lambda v: v.strip(".") != "")


@st.composite
def requests(draw: st.DrawFn) -> tuple[RouteSpec, str, str, dict[str, str]]:
    """A route of the repo's table, its plain path, a re-encoded spelling of it, and its params."""
    route = draw(st.sampled_from(ROUTES))
    plain: list[str] = []
    spelled: list[str] = []
    params: dict[str, str] = {}
    names = iter(route.param_names)
    for segment in route.segments:
        if segment is None:
            value = draw(param_values)
            params[next(names)] = value
            plain.append("".join(encode_char(c, 2) for c in value))
            spelled.append(draw(spellings(value)))
        else:
            plain.append(segment)
            spelled.append(draw(spellings(segment)))
    return route, "/".join(plain), "/".join(spelled), params


@settings(max_examples=400, deadline=None)
@given(req=requests(), user=st.integers(1, 10**6))
def test_any_re_encoding_of_a_route_picks_the_same_route_params_and_side(
    req: tuple[RouteSpec, str, str, dict[str, str]], user: int,
) -> None:
    route, plain, spelled, params = req
    method = route.methods[0]
    for raw in (plain, spelled):
        matched = TABLE.match(method, raw)
        assert matched is not None, raw
        assert (matched[0].name, matched[1]) == (route.name, params), raw
    on_new = [goes_new(TABLE.match(method, raw)[0], str(user), str(user)) for raw in (plain, spelled)]  # type: ignore[index]
    assert on_new[0] == on_new[1]


@settings(max_examples=200, deadline=None)
@given(req=requests())
def test_the_edge_picks_the_route_old_shoppings_router_picks(req: tuple[RouteSpec, str, str, dict[str, str]]) -> None:
    route, _, spelled, _ = req
    # Adyen's webhook bridge is the new side's only (old shopping never served it): its router picks nothing.
    expected = None if route.name in NEW_SIDE_ONLY else route.name
    assert old_shopping_route(route.methods[0], spelled) == expected
    assert TABLE.match(route.methods[0], spelled)[0].name == route.name  # type: ignore[index]


@pytest.mark.parametrize(
    ("method", "raw", "route"),
    [
        ("POST", "/shopping/cart/checkout/%65ntries", "place_order"),
        ("POST", "/shopping/%63al_price/v4_4", "calc_price"),
        ("POST", "/shopping/cal%5Fprice/v4_4", "calc_price"),
        ("POST", "/shopping/cal%5fprice/v4%5F4", "calc_price"),
        ("GET", "/shopping/%6Frders_v43/ID", "detail"),
        ("POST", "/%72efund/%72efund", "refund"),
        ("POST", "/shopping/orders/A1/paid%5Ffrom%5Fclient", "paid_from_client"),
    ],
)
def test_the_probed_spellings_pick_their_route(method: str, raw: str, route: str) -> None:
    matched = TABLE.match(method, raw)
    assert matched is not None and matched[0].name == route
    assert old_shopping_route(method, raw) == route


@pytest.mark.parametrize(
    "raw",
    [
        "/shopping/orders_v43/%2e", "/shopping/orders_v43/%2E%2e", "/shopping/orders_v43/.%2E", "/shopping/orders_v43/%2E.",
        "/shopping/orders_v43/a%2fb", "/shopping/orders_v43/%2F", "/shopping/orders_v43/a%5Cb", "/shopping/orders_v43/a\\b",
        "/shopping%2Forders_v43/A1", "/shopping/orders_v43//", "/shopping/%2E/orders_v43/A1",
        "/shopping/x/%2E%2E/orders_v43/A1", "/shopping/orders_v43/A1/",
    ],
)
def test_dot_segments_empty_segments_and_encoded_slashes_never_make_a_parameter(raw: str) -> None:
    assert TABLE.match("GET", raw) is None


def test_a_double_encoded_character_is_not_the_character() -> None:
    # %2565 is "%65" to old shopping, not "e": decoding twice would invent a route it doesn't serve.
    assert TABLE.match("POST", "/shopping/cart/checkout/%2565ntries") is None
    assert old_shopping_route("POST", "/shopping/cart/checkout/%2565ntries") is None


def test_a_literal_with_a_reserved_character_matches_its_encoded_spelling_too() -> None:
    text = "version: 1\nroutes:\n  odd:\n    match: {methods: [GET], path: '/shop/a:b@c'}\n"
    table: RoutingTable = parse_routing(text)
    for raw in ("/shop/a:b@c", "/shop/a%3Ab%40c", "/shop/a%3ab@c", "/sh%6Fp/a:b%40c"):
        assert table.match("GET", raw) is not None, raw


def test_a_template_spelled_encoded_matches_the_plain_path() -> None:
    text = "version: 1\nroutes:\n  cart:\n    match: {methods: [GET], path: /shopping/c%61rt}\n"
    assert parse_routing(text).match("GET", "/shopping/cart") is not None


def test_two_spellings_of_one_path_in_one_file_are_rejected() -> None:
    text = ("version: 1\nroutes:\n  a:\n    match: {methods: [GET], path: /shopping/cart}\n"
            "  b:\n    match: {methods: [GET], path: /shopping/c%61rt}\n")
    with pytest.raises(ValueError, match="same path"):
        parse_routing(text)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_normalising_is_idempotent_and_keeps_what_the_path_decodes_to(path: str) -> None:
    once = normalise_path(path)
    assert normalise_path(once) == once
    assert unquote(once) == unquote(path)


def test_normal_form_examples() -> None:
    assert normalise_path("/shopping/cart/checkout/%65ntries") == "/shopping/cart/checkout/entries"
    assert normalise_path("/a%2fb%5c%3a%7E") == "/a%2Fb%5C:~"
    assert normalise_path("/%2E%2E/x") == "/../x"  # decoded, not resolved: old shopping doesn't resolve either
    assert normalise_path("/a//b") == "/a//b"
    assert normalise_path("/a%zz%") == "/a%25zz%25"
    assert normalise_path("/caf%c3%a9") == "/caf%C3%A9"


@pytest.mark.parametrize(
    ("target", "ok"),
    [("/shopping/cart", True), ("/shopping/cart?a=1", True), ("//x/y", True), ("http://x/shopping/cart", False),
     ("HTTP://x/shopping/cart", False), ("*", False), ("x:80", False), ("/shopping/cart#frag", False), ("", False)],
)
def test_only_origin_form_targets_are_paths(target: str, ok: bool) -> None:
    assert is_origin_form(target) is ok
