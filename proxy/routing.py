"""routing.yaml: parsed and validated once into frozen specs; the hot path only matches.

Every error names the key path and the line, e.g. ``routes.calc_price.new_percent (line 7): …``,
so ops can fix a rejected file without guessing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from urllib.parse import unquote

from common.consumer_routing import TOP_LEVEL_KEYS, ConsumerRule, check_version, parse_consumers, parse_legacy_url
from common.routing_values import keys as _keys
from common.routing_values import percent as _percent
from common.routing_yaml import Node as _Node
from common.routing_yaml import RoutingError, read_document
from common.routing_yaml import fail as _fail
from proxy.paths import normalise_path
from shadow.normalise import CompareRules
from common.settings import ROUTING_INTERPOLATION_VARS

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_STICKY_KEY = ("header:X-User-Id", "header:X-Device-Id", "client_ip")
DEFAULT_TIMEOUT_MS = 3000
PASSTHROUGH = "passthrough"

_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_ROUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ShadowSpec:
    percent: Decimal
    rules: CompareRules = CompareRules()
    # Share of shadowed requests whose primary side is also called a second time (Diffy's noise sample).
    noise_percent: Decimal = Decimal(10)

    @property
    def basis_points(self) -> int:
        return int(self.percent * 100)

    @property
    def noise_basis_points(self) -> int:
        return int(self.noise_percent * 100)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    name: str
    methods: tuple[str, ...]
    path: str
    new_percent: Decimal
    timeout_ms: int
    writes: bool = False
    shadow: ShadowSpec | None = None
    allow_new: frozenset[str] = frozenset()
    deny_new: frozenset[str] = frozenset()
    # Path split into segments; None stands for a {param} segment.
    segments: tuple[str | None, ...] = ()
    param_names: tuple[str, ...] = ()

    @property
    def new_basis_points(self) -> int:
        # bucket < new_percent * 100 goes new; a Decimal keeps 0.5 % exact (50 of 10000 buckets).
        return int(self.new_percent * 100)


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """Routes that must share one new_percent (a caller priced by one side is charged by the same side)."""

    name: str
    routes: tuple[str, ...]
    allow_split: bool = False


@dataclass(frozen=True, slots=True)
class RoutingTable:
    version: int
    legacy_url: str
    timeout_ms: int
    sticky_key: tuple[str, ...]
    routes: Mapping[str, RouteSpec]
    consumers: Mapping[str, ConsumerRule]  # common/consumer_routing.py
    source_hash: str
    groups: Mapping[str, GroupSpec] = field(default_factory=dict)
    _static: Mapping[tuple[str, str], RouteSpec] = field(repr=False, default_factory=dict)
    _templated: Mapping[tuple[str, int], tuple[RouteSpec, ...]] = field(repr=False, default_factory=dict)
    # Route name → its template's segments in the normal form of proxy.paths (None: a {param}).
    _literals: Mapping[str, tuple[str | None, ...]] = field(repr=False, init=False, default_factory=dict)

    def __post_init__(self) -> None:
        # Templates are compared in the same normal form as requests, so a template that spells a
        # character encoded matches every spelling of it too, and two spellings of one path collide.
        static: dict[tuple[str, str], RouteSpec] = {}
        for (method, path), route in self._static.items():
            key = (method, normalise_path(path))
            other = static.get(key)
            if other is not None and other is not route:
                raise RoutingError(
                    f"routes.{route.name}.match.path: {method} {route.path} is the same path as route "
                    f"{other.name!r} once percent-encoding is normalised"
                )
            static[key] = route
        literals = {
            route.name: tuple(None if seg is None else normalise_path(seg) for seg in route.segments)
            for route in self.routes.values()
        }
        object.__setattr__(self, "_static", MappingProxyType(static))
        object.__setattr__(self, "_literals", MappingProxyType(literals))

    def match(self, method: str, raw_path: str) -> tuple[RouteSpec, dict[str, str]] | None:
        """The route for a request path (without its query), or None for passthrough.

        Matched on the path old shopping will serve (proxy.paths.normalise_path), so no
        percent-encoding of a migrated path escapes its route. A ``{param}`` never matches
        an empty segment, ``.``, ``..`` (however encoded) or one holding an encoded slash or
        backslash: such a path names no route, and goes to old shopping as it was received.
        """
        path = normalise_path(raw_path)
        route = self._static.get((method, path))
        if route is not None:
            return route, {}
        parts = path.split("/")
        candidates = self._templated.get((method, len(parts)))
        if not candidates:
            return None
        for route in candidates:
            params: dict[str, str] = {}
            names = iter(route.param_names)
            for want, got in zip(self._literals.get(route.name, route.segments), parts):
                if want is None:
                    if not _safe_param(got):
                        break
                    params[next(names)] = unquote(got)
                elif want != got:
                    break
            else:
                return route, params
        return None


def _safe_param(segment: str) -> bool:
    """A normalised segment that can be a parameter value (dots already decoded, hex uppercase)."""
    return segment not in ("", ".", "..") and "%2F" not in segment and "%5C" not in segment


# --- loading -------------------------------------------------------------------------------------


def _timeout(where: str, node: _Node) -> int:
    raw = node.value
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 600_000:
        raise _fail(where, node, "must be a whole number of milliseconds from 1 to 600000")
    return raw


def _str_list(where: str, node: _Node) -> tuple[str, ...]:
    if not isinstance(node.value, list):
        raise _fail(where, node, "must be a list")
    out = []
    for i, item in enumerate(node.value):
        if isinstance(item.value, bool) or not isinstance(item.value, str | int):
            raise _fail(f"{where}[{i}]", item, "must be a string")
        out.append(str(item.value))
    return tuple(out)


def _template(where: str, node: _Node) -> tuple[tuple[str | None, ...], tuple[str, ...]]:
    path = node.value
    if not isinstance(path, str) or not path.startswith("/"):
        raise _fail(where, node, "must be a path starting with /")
    if "?" in path or "#" in path or "//" in path:
        raise _fail(where, node, "must be a plain path without query, fragment or empty segments")
    segments: list[str | None] = []
    names: list[str] = []
    for seg in path.split("/"):
        m = _PARAM.match(seg)
        if m:
            if m.group(1) in names:
                raise _fail(where, node, f"parameter {{{m.group(1)}}} appears twice")
            names.append(m.group(1))
            segments.append(None)
        elif "{" in seg or "}" in seg:
            raise _fail(where, node, f"bad template segment {seg!r}: a parameter must be a whole segment like {{order_id}}")
        elif seg in (".", ".."):
            raise _fail(where, node, "must not contain . or .. segments")
        else:
            segments.append(seg)
    return tuple(segments), tuple(names)


def _route(name: str, node: _Node, default_timeout: int, new_routes: Collection[str] | None, placeholders: Collection[str]) -> RouteSpec:
    where = f"routes.{name}"
    if not _ROUTE_NAME.match(name):
        raise _fail(where, node, "route names are letters, digits and _ (at most 64)")
    if name == PASSTHROUGH:
        raise _fail(where, node, f"{PASSTHROUGH!r} is reserved for unmatched paths")
    keys = _keys(where, node, ("match", "new_percent", "shadow", "allow_new", "deny_new", "writes", "timeout_ms"), ("match",))
    match = _keys(f"{where}.match", keys["match"], ("methods", "path"), ("methods", "path"))
    methods = tuple(m.upper() for m in _str_list(f"{where}.match.methods", match["methods"]))
    if not methods:
        raise _fail(f"{where}.match.methods", match["methods"], "must name at least one method")
    for m in methods:
        if m not in HTTP_METHODS:
            raise _fail(f"{where}.match.methods", match["methods"], f"unknown method {m!r}")
    segments, names = _template(f"{where}.match.path", match["path"])
    new_percent = _percent(f"{where}.new_percent", keys["new_percent"]) if "new_percent" in keys else Decimal(0)
    writes = False
    if "writes" in keys:
        if not isinstance(keys["writes"].value, bool):
            raise _fail(f"{where}.writes", keys["writes"], "must be true or false")
        writes = keys["writes"].value
    shadow = None
    if "shadow" in keys:
        if writes:
            raise _fail(f"{where}.shadow", keys["shadow"], "a route with writes: true is never shadowed")
        shadow = _shadow(f"{where}.shadow", keys["shadow"])
    allow = frozenset(_str_list(f"{where}.allow_new", keys["allow_new"])) if "allow_new" in keys else frozenset()
    deny = frozenset(_str_list(f"{where}.deny_new", keys["deny_new"])) if "deny_new" in keys else frozenset()
    if allow & deny:
        raise _fail(f"{where}.allow_new", keys["allow_new"], f"user ids both allowed and denied: {sorted(allow & deny)}")
    if new_routes is not None and name not in new_routes and (new_percent > 0 or allow or shadow):
        if name in placeholders:
            raise _fail(where, node, f"the new-side handler of {name!r} is a placeholder (not migrated yet, it answers 501), so it can only have new_percent: 0 and no shadow or allow_new")
        raise _fail(where, node, f"no new-side handler is named {name!r}, so it can only have new_percent: 0 and no shadow")
    timeout = _timeout(f"{where}.timeout_ms", keys["timeout_ms"]) if "timeout_ms" in keys else default_timeout
    return RouteSpec(
        name=name,
        methods=methods,
        path=match["path"].value,
        new_percent=new_percent,
        timeout_ms=timeout,
        writes=writes,
        shadow=shadow,
        allow_new=allow,
        deny_new=deny,
        segments=segments,
        param_names=names,
    )


def _shadow(where: str, node: _Node) -> ShadowSpec:
    keys = _keys(where, node, ("percent", "ignore", "tolerance", "unordered_lists", "noise_percent"), ("percent",))
    ignore = _str_list(f"{where}.ignore", keys["ignore"]) if "ignore" in keys else ()
    unordered = False
    if "unordered_lists" in keys:
        if not isinstance(keys["unordered_lists"].value, bool):
            raise _fail(f"{where}.unordered_lists", keys["unordered_lists"], "must be true or false")
        unordered = keys["unordered_lists"].value
    tolerance: Decimal | None = None
    if "tolerance" in keys:
        raw = keys["tolerance"].value
        if isinstance(raw, bool) or not isinstance(raw, int | Decimal | str):
            raise _fail(f"{where}.tolerance", keys["tolerance"], "must be a number ≥ 0")
        try:
            tolerance = raw if isinstance(raw, Decimal) else Decimal(str(raw))
        except InvalidOperation:
            raise _fail(f"{where}.tolerance", keys["tolerance"], "must be a number ≥ 0") from None
    try:
        rules = CompareRules(ignore=ignore, tolerance=tolerance, unordered_lists=unordered)
    except ValueError as exc:
        key = "ignore" if "ignore" in str(exc).lower() or "path" in str(exc).lower() else "tolerance"
        raise _fail(f"{where}.{key}", keys.get(key, node), str(exc)) from None
    noise = _percent(f"{where}.noise_percent", keys["noise_percent"]) if "noise_percent" in keys else Decimal(10)
    return ShadowSpec(percent=_percent(f"{where}.percent", keys["percent"]), rules=rules, noise_percent=noise)


def _groups(node: _Node, route_nodes: Mapping[str, _Node], routes: Mapping[str, RouteSpec]) -> dict[str, GroupSpec]:
    group_nodes = _keys("groups", node, node.value.keys() if isinstance(node.value, dict) else ())
    groups: dict[str, GroupSpec] = {}
    owner: dict[str, str] = {}
    for name, gnode in group_nodes.items():
        where = f"groups.{name}"
        if not _ROUTE_NAME.match(name):
            raise _fail(where, gnode, "group names are letters, digits and _ (at most 64)")
        if name in routes:
            # edgectl set NAME must mean one thing.
            raise _fail(where, gnode, f"{name!r} is already a route name")
        keys = _keys(where, gnode, ("routes", "allow_split"), ("routes",))
        members = _str_list(f"{where}.routes", keys["routes"])
        if not members:
            raise _fail(f"{where}.routes", keys["routes"], "must name at least one route")
        for member in members:
            if member not in routes:
                raise _fail(f"{where}.routes", keys["routes"], f"unknown route {member!r}")
            if member in owner:
                raise _fail(f"{where}.routes", keys["routes"], f"route {member!r} is already in group {owner[member]!r}; a route belongs to one group")
            owner[member] = name
        allow_split = False
        if "allow_split" in keys:
            if not isinstance(keys["allow_split"].value, bool):
                raise _fail(f"{where}.allow_split", keys["allow_split"], "must be true or false")
            allow_split = keys["allow_split"].value
        percents = {routes[m].new_percent for m in members}
        if len(percents) > 1 and not allow_split:
            def at(member: str) -> str:
                pnode = route_nodes[member].value.get("new_percent")
                line = f" (line {pnode.line})" if pnode is not None else " (absent: 0)"
                return f"{member}={routes[member].new_percent.normalize():f}{line}"
            raise _fail(
                where, gnode,
                f"the routes of group {name!r} must have one new_percent, but {', '.join(at(m) for m in members)}: "
                f"callers would be priced by one side and charged by the other; `edgectl set {name} N` moves them together "
                "(or add allow_split: true to the group)",
            )
        groups[name] = GroupSpec(name=name, routes=tuple(members), allow_split=allow_split)
    return groups


def parse_routing(
    text: str,
    env: Mapping[str, str] | None = None,
    *,
    new_routes: Collection[str] | None = None,
    placeholders: Collection[str] = (),
    default_legacy_url: str = "http://127.0.0.1:8090",
    interpolation_vars: Collection[str] = ROUTING_INTERPOLATION_VARS,
) -> RoutingTable:
    """Validate a whole routing.yaml text into a RoutingTable, or raise RoutingError (and nothing else).

    ``new_routes`` are the route names the new side has real handlers for; routes outside it may
    exist (for their own metrics label and timeout) but can never send traffic to new.
    ``placeholders`` only sharpens the message for routes whose new handler is a 501 stand-in.
    Processes build these through proxy/routing_file.py's RoutingLoader, not by hand.
    """
    try:
        return _parse(text, env or {}, new_routes, placeholders, default_legacy_url, interpolation_vars)
    except RoutingError:
        raise
    except Exception as exc:  # a value no rule above foresaw: still a rejection, never a crash of the caller
        raise RoutingError(f"routing.yaml: rejected, a value could not be checked ({exc.__class__.__name__})") from exc


def _parse(
    text: str,
    env: Mapping[str, str],
    new_routes: Collection[str] | None,
    placeholders: Collection[str],
    default_legacy_url: str,
    interpolation_vars: Collection[str],
) -> RoutingTable:
    root = read_document(text)
    if root is None:
        raise RoutingError("routing.yaml: the file is empty")
    top = _keys("", root, TOP_LEVEL_KEYS, ("version", "routes"))
    check_version(top["version"])
    legacy_url = parse_legacy_url(top.get("legacy_url"), env, interpolation_vars, default_legacy_url)

    timeout = DEFAULT_TIMEOUT_MS
    sticky: tuple[str, ...] = DEFAULT_STICKY_KEY
    if "defaults" in top:
        defaults = _keys("defaults", top["defaults"], ("timeout_ms", "sticky_key"))
        if "timeout_ms" in defaults:
            timeout = _timeout("defaults.timeout_ms", defaults["timeout_ms"])
        if "sticky_key" in defaults:
            sticky = _str_list("defaults.sticky_key", defaults["sticky_key"])
            for i, key in enumerate(sticky):
                kind, _, arg = key.partition(":")
                if not (key == "client_ip" or (kind in ("header", "cookie") and _HEADER_NAME.match(arg))):
                    raise _fail(f"defaults.sticky_key[{i}]", defaults["sticky_key"], f"{key!r} is not header:NAME, cookie:NAME or client_ip")
            if not sticky:
                raise _fail("defaults.sticky_key", defaults["sticky_key"], "must name at least one key")

    routes_node = top["routes"]
    if routes_node.value is None:
        routes_node = _Node({}, routes_node.line)
    route_nodes = _keys("routes", routes_node, routes_node.value.keys() if isinstance(routes_node.value, dict) else ())
    routes: dict[str, RouteSpec] = {}
    seen: dict[tuple[str, tuple[str | None, ...]], str] = {}
    for name, node in route_nodes.items():
        route = _route(name, node, timeout, new_routes, placeholders)
        for method in route.methods:
            other = seen.get((method, route.segments))
            if other is not None:
                raise _fail(f"routes.{name}.match.path", node.value["match"], f"{method} {route.path} is already matched by route {other!r}")
            seen[(method, route.segments)] = name
        routes[name] = route

    consumers = parse_consumers(top.get("consumers"))
    groups = _groups(top["groups"], route_nodes, routes) if "groups" in top else {}

    static: dict[tuple[str, str], RouteSpec] = {}
    templated: dict[tuple[str, int], list[RouteSpec]] = {}
    for route in routes.values():
        for method in route.methods:
            if route.param_names:
                templated.setdefault((method, len(route.segments)), []).append(route)
            else:
                static[(method, route.path)] = route
    return RoutingTable(
        version=1,
        legacy_url=legacy_url,
        timeout_ms=timeout,
        sticky_key=sticky,
        routes=MappingProxyType(routes),
        consumers=consumers,
        source_hash=hashlib.sha256(text.encode()).hexdigest(),
        groups=MappingProxyType(groups),
        _static=MappingProxyType(static),
        _templated=MappingProxyType({k: tuple(v) for k, v in templated.items()}),
    )
