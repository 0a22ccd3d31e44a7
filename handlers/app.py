"""The new side as an aiohttp sub-app, mounted by the edge under /order2."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web

from handlers.routes import NEW_ROUTES, NewHandler, NewRoute

PREFIX = "/order2"
# Set on every request the new side serves, so the edge's access log and metrics name it.
NEW_ROUTE_NAME = web.RequestKey("new_route", str)


def _direct(route: NewRoute) -> Callable[[web.Request], object]:
    handler: NewHandler = route.handler

    async def direct(request: web.Request) -> web.StreamResponse:
        request[NEW_ROUTE_NAME] = route.name
        return await handler(request, request.match_info)

    return direct


def create_new_side(routes: Mapping[str, NewRoute] = NEW_ROUTES) -> web.Application:
    app = web.Application()
    for route in routes.values():
        app.router.add_route(route.method, route.path, _direct(route), name=route.name)
    return app
