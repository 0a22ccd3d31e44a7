"""How the consumer handles each event type of shop.events.EVENT_TYPES: on the new side, or old shopping's.

`owned_handler` is what the runner calls per topic: it reads the order id (payload `order_id`,
else the message key), asks the ownership in force (routing.yaml `consumers:`,
consumers/ownership.py) and either applies the event here or delivers it to old shopping
(consumers/legacy_delivery.py). The side is asked again on every attempt, so an event that
waits out old shopping's outage goes wherever a flip meanwhile sent its order.

Applying here is thin: parse → one `Shop.tx("consumer")` → the same `shop.events` function
`POST /event/{name}` uses → the outcome. A message the shop refuses for good (not the schema,
not applicable) becomes a PoisonMessage, i.e. the DLQ with the reason.
"""

from __future__ import annotations

import json

from consumers.legacy_delivery import LegacyDelivery
from consumers.ownership import Ownership
from consumers.runner import Event, EventHandler, PoisonMessage
from shop import events as ev
from shop.events import EventType, consumer_name
from shop.bootstrap import Shop
from shop.errors import ShopError


def _refusal(exc: ShopError) -> str:
    return f"{exc.reason}: {json.dumps(exc.data, default=str, ensure_ascii=False)}"[:500]


def apply_locally(shop: Shop, event_type: EventType) -> EventHandler:
    consumer = consumer_name(event_type)

    async def handle(event: Event) -> str:
        try:
            parsed = event_type.parse(event.payload)
            async with shop.tx("consumer") as uow:
                return await event_type.apply(uow, parsed, consumer)
        except (ev.InvalidEvent, ev.Unapplicable) as exc:
            raise PoisonMessage(_refusal(exc)) from None

    return handle


def order_id_of(event: Event) -> str:
    """The order the event is about: payload `order_id`, else the message key; PoisonMessage when neither reads."""
    raw = event.payload.get("order_id")
    if raw is None:
        raw = event.key
    elif isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    elif not isinstance(raw, str):
        raise PoisonMessage("order_id is not a string")
    if not raw or len(raw) > 128:
        raise PoisonMessage("no order id: neither a payload order_id nor a message key")
    return raw


def owned_handler(shop: Shop, event_type: EventType, ownership: Ownership, legacy: LegacyDelivery) -> EventHandler:
    local = apply_locally(shop, event_type)

    async def handle(event: Event) -> str:
        if ownership.owner(event_type.name, order_id_of(event)) == "new":
            return await local(event)
        return await legacy.deliver(event_type.name, event)

    return handle
