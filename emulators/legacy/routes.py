"""The table of legacy shopping routes the emulator answers.

Each row is (route name, method, path, handler). A row without a handler is a route
the edge migrates that the emulator does not implement yet: it answers 501
``not_migrated_in_emulator`` naming the route. Implementing one means giving its row
a handler; names are the route names of legacy-api.md / routing.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from emulators.legacy import (
    cart,
    checkout,
    coupons,
    envelope,
    events,
    order_actions,
    order_detail,
    orders,
    payments,
    pricing,
    refunds,
)
from emulators.legacy.envelope import ApiError


@dataclass(frozen=True, slots=True)
class LegacyRoute:
    name: str
    method: str
    path: str
    handler: Handler | None = None


ROUTES: tuple[LegacyRoute, ...] = (
    # Not migrated: old shopping keeps serving these through the edge's passthrough.
    LegacyRoute("cart_get", "GET", "/shopping/cart", cart.get_cart),
    LegacyRoute("cart_post", "POST", "/shopping/cart", cart.post_cart),
    LegacyRoute("orders_list", "GET", "/shopping/orders", orders.list_orders),
    LegacyRoute("order_cancel", "POST", "/shopping/orders/{order_id}/cancel", order_actions.cancel),
    # Migrated to the new handlers (legacy-api.md). Old shopping's own versions, for the
    # edge's passthrough, gray release and shadow comparison.
    LegacyRoute("calc_price", "POST", "/shopping/cal_price/v4_4", pricing.calc_price),
    LegacyRoute("coupons", "POST", "/shopping/user_coupons_for_order", coupons.list_coupons),
    LegacyRoute("place_order", "POST", "/shopping/cart/checkout/entries", checkout.place_order),
    LegacyRoute("detail", "GET", "/shopping/orders_v43/{order_id}", order_detail.detail),
    LegacyRoute("paypal_pay", "POST", "/shopping/orders/{order_id}/pay/{ptype}/paypal", payments.paypal_pay),
    LegacyRoute(
        "paypal_finished", "POST", "/shopping/orders/{order_id}/paypal_finished/{pay_id}", payments.paypal_finished
    ),
    LegacyRoute("adyen_pay", "POST", "/shopping/orders/{order_id}/pay/any/adyen", payments.adyen_pay),
    LegacyRoute("payment_methods", "GET", "/shopping/orders/{order_id}/pay_cm", order_detail.payment_methods),
    LegacyRoute(
        "paid_from_client", "POST", "/shopping/orders/{order_id}/paid_from_client", order_actions.paid_from_client
    ),
    LegacyRoute("refund", "POST", "/refund/refund", refunds.refund),
    LegacyRoute("events", "POST", "/event/{name}", events.event),
)


def not_migrated(name: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise ApiError(501, envelope.NOT_MIGRATED, "not_migrated_in_emulator", {"route": name})

    handler.__name__ = f"not_migrated_{name}"
    return handler


def add_routes(app: web.Application, routes: tuple[LegacyRoute, ...] = ROUTES) -> None:
    for route in routes:
        handler = route.handler if route.handler is not None else not_migrated(route.name)
        app.router.add_route(route.method, route.path, handler, name=route.name)
