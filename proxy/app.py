"""The edge's composition root: ``create_app(settings)`` builds the whole process.

Every resource (routing state and its watcher, the upstream ClientSession, the admin
site) lives in a ``cleanup_ctx``; app state sits under typed ``web.AppKey``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from decimal import Decimal

import structlog
from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry

from handlers.app import NEW_ROUTE_NAME, PREFIX, create_new_side
from handlers.context import SHOP, db_ready, setup_new_side
from common import envelope as codes
from handlers.errors import answer, answer_new, error_middleware
from handlers.routes import NEW_ROUTES, NewHandler, NewRoute
from proxy.admin import create_admin_app
from proxy.cors import setup_cors
from proxy.forwarder import Forwarder, make_session
from proxy.gray import goes_new, sticky_value
from common.logs import flush_stdout_periodically
from proxy.limits import limits_middleware, parser_limits
from proxy.metrics import EdgeMetrics
from proxy.rates import RateRing, collect
from proxy.paths import is_origin_form, normalise_path
from proxy.reloader import RoutingState
from proxy.routing import PASSTHROUGH
from proxy.routing_file import RoutingLoader
from proxy.shadowing import Shadower
from shadow.rounding import rounding_units
from shop.caller import CALLER_HEADER, InvalidCallerId, canonical_caller_id
from common.settings import Settings
from shop.tokens import bearer_matches

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", EdgeMetrics)
ROUTING = web.AppKey("routing", RoutingState)
FORWARDER = web.AppKey("forwarder", Forwarder)
SHADOWER = web.AppKey("shadower", Shadower)
NEW_SIDE = web.AppKey("new_routes", Mapping)
ADMIN_APP = web.AppKey("admin_app", web.Application)
READINESS = web.AppKey("readiness", list)

REQUEST_ID = web.RequestKey("request_id", str)
ROUTE = web.RequestKey("route", str)
BACKEND = web.RequestKey("backend", str)
# The canonical caller id (shop.caller), set before routing when the request has one.
CALLER_ID = web.RequestKey("caller_id", str)

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = structlog.get_logger("edge")


def _request_id(request: web.Request) -> str:
    incoming = request.headers.get("X-Request-Id")
    # Kept when well-formed (so a trace spans app → edge → old shopping), replaced when not, so it can't inject into logs.
    if incoming and _REQUEST_ID_OK.match(incoming):
        return incoming
    # A correlation id, not a secret: the Mersenne Twister (reseeded in every forked worker) costs no
    # getrandom(2) syscall per request, which os.urandom did (≈ 4 % of a passthrough's py-spy samples).
    return f"{random.getrandbits(96):024x}"


def _route_and_backend(request: web.Request) -> tuple[str, str]:
    """What served the request: set by dispatch, or by the new side's direct /order2 routes."""
    route = request.get(ROUTE) or request.get(NEW_ROUTE_NAME) or PASSTHROUGH
    return route, request.get(BACKEND) or ("new" if NEW_ROUTE_NAME in request else "legacy")


@web.middleware
async def access_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Request id, response headers, one log line and the request metrics, for every request."""
    started = time.perf_counter()
    request_id = request[REQUEST_ID] = _request_id(request)
    # Each request runs in its own task (its own contextvars), so every log line it causes carries the id.
    structlog.contextvars.bind_contextvars(request_id=request_id)
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        route, backend = _route_and_backend(request)
        elapsed = time.perf_counter() - started
        app = request.app
        app[METRICS].observe(route, backend, request.method, status, elapsed)
        if status == 409 and response_says_price_changed(response):
            app[METRICS].price_changed.labels(route, backend).inc()
        if app[SETTINGS].access_log:
            log.info(
                "request",
                method=request.method,
                path=request.raw_path.partition("?")[0],
                route=route,
                backend=backend,
                status=status,
                duration_ms=round(elapsed * 1000, 3),
            )


_PRICE_CHANGED = "price_changed"  # shared/spec/legacy-api.md: 409, code 40901, this msg
_PEEK_LIMIT = 64 * 1024


def response_says_price_changed(response: web.StreamResponse | None) -> bool:
    """Whether a 409 carries the legacy envelope's price_changed (msg; code 40901 is shared with
    invalid_state). Only whole, unencoded bodies are read: a streamed or gzipped 409 is not counted."""
    if not isinstance(response, web.Response) or response.headers.get(hdrs.CONTENT_ENCODING, "identity") != "identity":
        return False
    body = response.body
    if not isinstance(body, bytes | bytearray) or len(body) > _PEEK_LIMIT or b"price_changed" not in body:
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("code") == codes.CONFLICT and parsed.get("msg") == _PRICE_CHANGED


def _bad_request(field: str, reason: str) -> web.Response:
    return answer(codes.BAD_REQUEST, {"field": field, "reason": reason})


@web.middleware
async def refuse_before_routing(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """What no side is asked to serve: a request target that is not a path, a caller id that is not canonical.

    Runs before dispatch and before the /order2 routes, so neither routing.yaml nor a new handler
    ever sees these; old shopping isn't asked either (its answer could differ from the new side's).
    """
    # aiohttp hands absolute-form (`GET http://x/a`, `curl -x`), authority-form (CONNECT x:80), `*`
    # and a fragment through as the raw target; only origin-form names a path both sides would serve.
    if not is_origin_form(request.raw_path):
        return _bad_request("request_target", "must be a path: /path?query, no scheme, host, fragment or *")
    given = request.headers.getall(CALLER_HEADER, ())
    if len(given) > 1:
        return _bad_request(CALLER_HEADER, "must be sent once")
    try:
        caller = canonical_caller_id(given[0] if given else None)
    except InvalidCallerId as exc:
        return _bad_request(CALLER_HEADER, str(exc))
    if caller is not None:
        request[CALLER_ID] = caller
    return await handler(request)


async def _add_edge_headers(request: web.Request, response: web.StreamResponse) -> None:
    # on_response_prepare also covers streamed and error answers, which a middleware can't reach after prepare().
    response.headers["X-Edge-Route"], response.headers["X-Edge-Backend"] = _route_and_backend(request)
    if REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[REQUEST_ID]


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Every path that is not the new side's own: pick a route and a side, then serve it."""
    app = request.app
    table = app[ROUTING].table  # one read: a reload mid-request can't mix two tables
    request[ROUTE] = PASSTHROUGH
    request[BACKEND] = "legacy"
    # Already read by limits_middleware, within the body size and time limits; this returns those bytes.
    body = await request.read() if request.body_exists else b""
    # A bearer token meant for the new side (right, wrong or stale) is no business of old shopping's.
    strip_authorization = hdrs.AUTHORIZATION in request.headers and _addresses_new_side(request.raw_path)

    raw_path = request.raw_path
    query_at = raw_path.find("?")
    path = raw_path if query_at < 0 else raw_path[:query_at]
    matched = table.match(request.method, path)
    if matched is None:
        return await app[FORWARDER].forward(
            request, body, base_url=table.legacy_url, route=PASSTHROUGH,
            timeout_ms=table.timeout_ms, request_id=request[REQUEST_ID], strip_authorization=strip_authorization,
        )
    route, params = matched
    request[ROUTE] = route.name
    key = sticky_value(table.sticky_key, request.headers, lambda: request.cookies, request.remote)
    new_route: NewRoute | None = None
    # The sticky key's X-User-Id is the canonical id too: refuse_before_routing let no other spelling through.
    if goes_new(route, request.get(CALLER_ID), key):
        new_route = app[NEW_SIDE].get(route.name)
    if new_route is not None:
        request[BACKEND] = "new"
        response = await _serve_new(request, route.name, new_route.handler, params, route.timeout_ms)
    else:
        response = await app[FORWARDER].forward(
            request, body, base_url=table.legacy_url, route=route.name,
            timeout_ms=route.timeout_ms, request_id=request[REQUEST_ID], strip_authorization=strip_authorization,
        )
    if route.shadow is not None and route.name in app[NEW_SIDE] and app[SHADOWER].wants(route):
        app[SHADOWER].launch(
            request, route, params, body, legacy_url=table.legacy_url, primary_side=request[BACKEND],
            primary=response, request_id=request[REQUEST_ID],
        )
    return response


def _addresses_new_side(target: str) -> bool:
    """Whether the path is under /order2 in any spelling: percent-encoding, letter case, an encoded slash
    (which servers that decode %2F would read as one)."""
    path = normalise_path(target.partition("?")[0]).lower().replace("%2f", "/")
    return path == PREFIX or path.startswith(PREFIX + "/")


async def _serve_new(
    request: web.Request, route: str, handler: NewHandler, params: Mapping[str, str], timeout_ms: int,
) -> web.StreamResponse:
    """A new handler's answer within the route's timeout; timeouts and 5xx counted like an upstream's."""
    metrics = request.config_dict[METRICS]
    deadline = asyncio.timeout(timeout_ms / 1000)
    try:
        async with deadline:
            response = await answer_new(handler, request, params)
    except TimeoutError:
        if not deadline.expired():
            metrics.upstream_error(route, "new", "5xx")  # the handler's own TimeoutError: a bug, a 500
            raise
        # Cancelled mid-transaction, the database rolls the work back; a checkout's retry with its
        # Idempotency-Key finds the order if the COMMIT landed just before (as with old shopping).
        metrics.upstream_error(route, "new", "timeout")
        log.warning("new_side_timeout", route=route, timeout_ms=timeout_ms)
        return answer(codes.UPSTREAM_TIMEOUT, {"route": route})
    except web.HTTPException as exc:
        # aiohttp's own answers (a 413 while reading the body…): error_middleware renders them, only 5xx count.
        if exc.status >= 500:
            metrics.upstream_error(route, "new", "5xx")
        raise
    except Exception:
        metrics.upstream_error(route, "new", "5xx")  # error_middleware logs it and answers 500
        raise
    if response.status >= 500:
        metrics.upstream_error(route, "new", "5xx")
    return response


async def serve_direct(request: web.Request, new_route: NewRoute) -> web.StreamResponse:
    """A direct /order2 call: the new side for internal callers (the service token), else 404.

    Public callers get the 404 of any unknown /order2 path, so `new_percent: 0` closes the new
    side for every app and web caller, and they can't tell which /order2 paths exist.
    """
    config = request.config_dict
    if not bearer_matches(request.headers.get(hdrs.AUTHORIZATION), config[SETTINGS].service_token):
        raise web.HTTPNotFound()  # error_middleware answers it in the envelope, as the sub-app's own 404s
    request[NEW_ROUTE_NAME] = new_route.name
    table = config[ROUTING].table
    spec = table.routes.get(new_route.name)
    timeout_ms = spec.timeout_ms if spec is not None else table.timeout_ms
    return await _serve_new(request, new_route.name, new_route.handler, request.match_info, timeout_ms)


def _rounding_units(app: web.Application) -> Callable[[], Awaitable[Mapping[str, Decimal]]]:
    """The shadow's rounding unit per currency from the shop's forex table (cached reference data):
    one USD cent in each currency, as old shopping rounds in cents before converting."""
    last: list[tuple[object, Mapping[str, Decimal]]] = []

    async def units() -> Mapping[str, Decimal]:
        shop = app[SHOP]
        try:
            forex = (await shop.reference.get(shop.clock())).forex
        except Exception as exc:  # the database away: size by minor units until it is back
            log.warning("shadow_rounding_units_unavailable", error=exc.__class__.__name__)
            return {}
        if not last or last[0] is not forex:  # a new table only when the cache reloaded
            last[:] = [(forex, rounding_units({code: fx.rate for code, fx in forex.items()}))]
        return last[0][1]

    return units


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    session = make_session(app[SETTINGS].upstream_pool_size)
    app[FORWARDER] = Forwarder(session, app[METRICS], route_max_inflight=app[SETTINGS].route_inflight_limit)
    shadower = app[SHADOWER] = Shadower(app[SETTINGS], app[METRICS], app[FORWARDER], app[NEW_SIDE],
                                        units=_rounding_units(app))
    shadower.start()
    yield
    await shadower.stop()
    await session.close()


async def _routing_watcher(app: web.Application) -> AsyncIterator[None]:
    state = app[ROUTING]
    task = asyncio.create_task(state.watch(app[SETTINGS].routing_poll_seconds), name="routing-watch")
    loop = asyncio.get_running_loop()
    hup = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, state.reload_soon, "sighup")
        hup = True
    yield
    if hup:
        loop.remove_signal_handler(signal.SIGHUP)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await state.close()


async def _admin_site(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    runner = web.AppRunner(app[ADMIN_APP], access_log=None, handle_signals=False)
    await runner.setup()
    # reuse_port lets every gunicorn worker bind the admin port; /metrics sums all workers anyway.
    site = web.TCPSite(runner, settings.admin_host, settings.admin_port, reuse_port=True)
    await site.start()
    yield
    await runner.cleanup()


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    new_routes: Mapping[str, NewRoute] = NEW_ROUTES,
) -> web.Application:
    """The edge: every legacy path, routed by routing.yaml to the new side or old shopping."""
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    metrics = EdgeMetrics(registry)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[access_middleware, refuse_before_routing, error_middleware, limits_middleware(settings, metrics)],
        handler_args=parser_limits(settings),
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[NEW_SIDE] = new_routes
    app[READINESS] = [lambda: db_ready(app)]
    # Loaded now, not lazily: an edge with a bad routing.yaml must refuse to start.
    app[ROUTING] = RoutingState(
        settings.routing_file,
        loader=RoutingLoader.for_settings(settings, new_routes),
        metrics=metrics,
        parse_budget=settings.routing_parse_budget_seconds,
        drop_settle=settings.routing_drop_settle_seconds,
    )
    ring = RateRing(lambda: collect(registry, settings.prometheus_multiproc_dir), settings.rates_interval_seconds)
    app[ADMIN_APP] = create_admin_app(app[ROUTING], metrics, settings, app[READINESS], lambda: app.get(SHADOWER), ring)
    app.on_response_prepare.append(_add_edge_headers)
    setup_new_side(app, settings, registry)
    app.cleanup_ctx.append(flush_stdout_periodically)
    app.cleanup_ctx.append(_upstream_session)
    app.cleanup_ctx.append(_routing_watcher)
    app.cleanup_ctx.append(lambda _app: ring.run())
    if settings.admin_port is not None:
        app.cleanup_ctx.append(_admin_site)

    app.add_subapp(PREFIX, create_new_side(serve_direct, new_routes))
    # Every method of every other path, in CORS mode too: the CORS middleware answers only real preflights.
    app.router.add_route("*", "/{tail:.*}", dispatch, name="edge")
    if settings.cors_origins:
        setup_cors(app, settings.cors_origins)
    return app
