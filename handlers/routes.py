"""The new side's migrated routes: name → new-side path and handler.

The edge calls ``NEW_ROUTES[name].handler(request, params)`` in-process when routing.yaml
sends a request to new; the same handlers answer direct calls under ``/order2`` through
the sub-app of handlers/app.py. Route names are the ones routing.yaml and the metrics use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from aiohttp import web

from handlers.checkout import place_order
from handlers.events import event
from handlers.orders import detail, paid_from_client, payment_methods
from handlers.payment_callback import adyen_webhook
from handlers.payments import adyen_pay, paypal_finished, paypal_pay
from handlers.pricing import calc_price, coupons
from handlers.refund import refund
from shop.errors import NotMigrated

NewHandler = Callable[[web.Request, Mapping[str, str]], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class NewRoute:
    name: str
    method: str
    path: str  # under /order2
    handler: NewHandler
    # True while the handler is a 501 stand-in (its issue has not landed): routing.yaml then treats
    # the route as having no new handler, so it can't be dialled above 0 % (proxy/routing_file.py).
    placeholder: bool = False


def not_migrated(name: str) -> NewHandler:
    async def handler(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
        raise NotMigrated(data={"route": name})

    handler.__name__ = f"{name}_not_migrated"
    return handler


def placeholder(name: str, method: str, path: str) -> NewRoute:
    """A route whose new handler is not written yet: it answers 501 not_migrated and stays at 0 %."""
    return NewRoute(name, method, path, not_migrated(name), placeholder=True)


def _routes(*routes: NewRoute) -> Mapping[str, NewRoute]:
    return MappingProxyType({r.name: r for r in routes})


NEW_ROUTES: Mapping[str, NewRoute] = _routes(
    NewRoute("calc_price", "POST", "/calc_price", calc_price),
    NewRoute("coupons", "POST", "/coupons", coupons),
    NewRoute("place_order", "POST", "/place_order", place_order),
    NewRoute("detail", "GET", "/detail/{order_id}", detail),
    NewRoute("paypal_pay", "POST", "/paypal/pay/{ptype}/{order_id}", paypal_pay),
    NewRoute("paypal_finished", "POST", "/Paypal/{order_id}/{pay_id}", paypal_finished),
    NewRoute("adyen_pay", "POST", "/adyen/any/{order_id}", adyen_pay),
    NewRoute("payment_methods", "GET", "/payment_methods/{order_id}", payment_methods),
    NewRoute("paid_from_client", "POST", "/paid_from_client/{order_id}", paid_from_client),
    NewRoute("refund", "POST", "/refund", refund),
    NewRoute("events", "POST", "/event/{name}", event),
    NewRoute("payment_callback", "POST", "/payment_callback/adyen", adyen_webhook),
)
