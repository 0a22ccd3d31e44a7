"""The new side as an aiohttp sub-app, mounted by the edge under /order2.

These direct paths are for internal callers only (legacy-api.md): the sub-app only maps a path
to its NewRoute and hands both to ``serve``, the edge's function that checks the service token
and runs the handler, so no direct call can bypass that check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from handlers.routes import NEW_ROUTES, NewRoute

PREFIX = "/order2"
# Set on every request the new side serves, so the edge's access log and metrics name it.
NEW_ROUTE_NAME = web.RequestKey("new_route", str)

Serve = Callable[[web.Request, NewRoute], Awaitable[web.StreamResponse]]


def _direct(route: NewRoute, serve: Serve) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def direct(request: web.Request) -> web.StreamResponse:
        return await serve(request, route)

    return direct


def create_new_side(serve: Serve, routes: Mapping[str, NewRoute] = NEW_ROUTES) -> web.Application:
    app = web.Application()
    for route in routes.values():
        app.router.add_route(route.method, route.path, _direct(route, serve), name=route.name)
    return app
