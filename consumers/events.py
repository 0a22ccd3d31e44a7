"""How the consumer applies each event type of shop.events.EVENT_TYPES on the new side.

The handler the runner calls is thin: parse → one `Shop.tx("consumer")` → the same `shop.events`
function `POST /event/{name}` uses → the outcome. A message the shop refuses for good (not the
schema, not applicable) becomes a PoisonMessage, i.e. the DLQ with the reason.
"""

from __future__ import annotations

import json

from consumers.runner import Event, EventHandler, PoisonMessage
from shop import events as ev
from shop.events import EventType
from shop.bootstrap import Shop
from shop.errors import ShopError


def consumer_name(event_type: EventType) -> str:
    """processed_events.consumer for the new side's applier of this event type."""
    return f"shopping-new:{event_type.name}"


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
