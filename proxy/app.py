"""The edge's composition root: ``create_app(settings)`` builds the whole process.

Every resource (routing state and its watcher, the upstream ClientSession, the admin
site) lives in a ``cleanup_ctx``; app state sits under typed ``web.AppKey``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp_cors
import structlog
from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry

from handlers.app import NEW_ROUTE_NAME, PREFIX, create_new_side
from handlers.context import db_ready, setup_new_side
from handlers.errors import answer_new, error_middleware, error_response
from handlers.routes import NEW_ROUTES, NewRoute
from proxy.admin import create_admin_app
from proxy.expiry_task import expiry_sweeper
from proxy.forwarder import Forwarder, make_session
from proxy.gray import goes_new, sticky_value
from common.logs import flush_stdout_periodically
from proxy.metrics import EdgeMetrics
from proxy.reloader import RoutingState
from proxy.routing import PASSTHROUGH
from proxy.shadowing import Shadower, wants_shadow
from shop.settings import Settings

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
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        route, backend = _route_and_backend(request)
        elapsed = time.perf_counter() - started
        app = request.app
        app[METRICS].observe(route, backend, request.method, status, elapsed)
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


async def _add_edge_headers(request: web.Request, response: web.StreamResponse) -> None:
    # on_response_prepare also covers streamed and error answers, which a middleware can't reach after prepare().
    response.headers["X-Edge-Route"], response.headers["X-Edge-Backend"] = _route_and_backend(request)
    if REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[REQUEST_ID]


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Every path that is not the new side's own: pick a route and a side, then serve it."""
    app = request.app
    settings = app[SETTINGS]
    table = app[ROUTING].table  # one read: a reload mid-request can't mix two tables
    request[ROUTE] = PASSTHROUGH
    request[BACKEND] = "legacy"
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        app[METRICS].body_too_large.inc()
        return error_response(413, 41301, "body_too_large", {"limit": settings.max_body_bytes})
    try:
        body = await request.read() if request.body_exists else b""
    except web.HTTPRequestEntityTooLarge:
        app[METRICS].body_too_large.inc()
        return error_response(413, 41301, "body_too_large", {"limit": settings.max_body_bytes})

    raw_path = request.raw_path
    query_at = raw_path.find("?")
    matched = table.match(request.method, raw_path if query_at < 0 else raw_path[:query_at])
    if matched is None:
        return await app[FORWARDER].forward(
            request, body, base_url=table.legacy_url, route=PASSTHROUGH,
            timeout_ms=table.timeout_ms, request_id=request[REQUEST_ID],
        )
    route, params = matched
    request[ROUTE] = route.name
    key = sticky_value(table.sticky_key, request.headers, lambda: request.cookies, request.remote)
    new_route: NewRoute | None = None
    if goes_new(route, request.headers.get("X-User-Id"), key):
        new_route = app[NEW_SIDE].get(route.name)
    if new_route is not None:
        request[BACKEND] = "new"
        response = await answer_new(new_route.handler, request, params)
    else:
        response = await app[FORWARDER].forward(
            request, body, base_url=table.legacy_url, route=route.name,
            timeout_ms=route.timeout_ms, request_id=request[REQUEST_ID],
        )
    if route.shadow is not None and route.name in app[NEW_SIDE] and wants_shadow(route, request[REQUEST_ID]):
        app[SHADOWER].launch(
            request, route, params, body, legacy_url=table.legacy_url, primary_side=request[BACKEND],
            primary=response, request_id=request[REQUEST_ID],
        )
    return response


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    session = make_session(app[SETTINGS].upstream_pool_size)
    app[FORWARDER] = Forwarder(session, app[METRICS])
    shadower = app[SHADOWER] = Shadower(app[SETTINGS], app[METRICS], app[FORWARDER], app[NEW_SIDE])
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
        loop.add_signal_handler(signal.SIGHUP, state.reload, "sighup")
        hup = True
    yield
    if hup:
        loop.remove_signal_handler(signal.SIGHUP)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _admin_site(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    runner = web.AppRunner(app[ADMIN_APP], access_log=None, handle_signals=False)
    await runner.setup()
    # reuse_port lets every gunicorn worker bind the admin port; /metrics sums all workers anyway.
    site = web.TCPSite(runner, settings.admin_host, settings.admin_port, reuse_port=True)
    await site.start()
    yield
    await runner.cleanup()


def _setup_cors(app: web.Application, origins: tuple[str, ...], routes: list[web.AbstractRoute]) -> None:
    cors = aiohttp_cors.setup(
        app,
        defaults={
            origin: aiohttp_cors.ResourceOptions(
                allow_credentials=origin != "*", expose_headers="*", allow_headers="*", allow_methods="*", max_age=600,
            )
            for origin in origins
        },
    )
    for route in routes:
        cors.add(route)


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    new_routes: Mapping[str, NewRoute] = NEW_ROUTES,
) -> web.Application:
    """The edge: every legacy path, routed by routing.yaml to the new side or old shopping."""
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    metrics = EdgeMetrics(registry)
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[access_middleware, error_middleware])
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[NEW_SIDE] = new_routes
    app[READINESS] = [lambda: db_ready(app)]
    # Loaded now, not lazily: an edge with a bad routing.yaml must refuse to start.
    app[ROUTING] = RoutingState(
        settings.routing_file,
        env=settings.interpolation_env,
        new_routes=new_routes.keys(),
        default_legacy_url=settings.legacy_url,
        metrics=metrics,
    )
    app[ADMIN_APP] = create_admin_app(app[ROUTING], metrics, settings, app[READINESS], lambda: app.get(SHADOWER))
    app.on_response_prepare.append(_add_edge_headers)
    setup_new_side(app, settings)
    app.cleanup_ctx.append(flush_stdout_periodically)
    app.cleanup_ctx.append(_upstream_session)
    app.cleanup_ctx.append(_routing_watcher)
    app.cleanup_ctx.append(expiry_sweeper(settings))
    if settings.admin_port is not None:
        app.cleanup_ctx.append(_admin_site)

    new_side = create_new_side(new_routes)
    app.add_subapp(PREFIX, new_side)
    if settings.cors_origins:
        # aiohttp-cors cannot wrap a "*" route, so CORS mode lists the methods; OPTIONS becomes the preflight.
        resource = app.router.add_resource("/{tail:.*}", name="edge")
        routes = [resource.add_route(m, dispatch) for m in (hdrs.METH_GET, hdrs.METH_POST, hdrs.METH_PUT, hdrs.METH_PATCH, hdrs.METH_DELETE)]
        routes += list(new_side.router.routes())
        _setup_cors(app, settings.cors_origins, routes)
    else:
        app.router.add_route("*", "/{tail:.*}", dispatch, name="edge")
    return app
