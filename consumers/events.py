"""Each Kafka event type: its topic, how it is parsed, and the shop function that applies it.

The handler the runner calls is thin: parse → one `Shop.tx("consumer")` → the same `shop.events`
function `POST /event/{name}` uses → the outcome. A message the shop refuses for good (not the
schema, not applicable) becomes a PoisonMessage, i.e. the DLQ with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from consumers.runner import Event, EventHandler, PoisonMessage
from shop import events as ev
from shop.bootstrap import Shop
from shop.errors import ShopError
from shop.uow import UnitOfWork


@dataclass(frozen=True, slots=True)
class EventType:
    name: str  # routing.yaml `consumers:` key and `/event/{name}` path segment
    default_topic: str
    parse: Callable[[Mapping[str, Any]], Any]
    apply: Callable[[UnitOfWork, Any, str], Awaitable[str]]


EVENT_TYPES: Mapping[str, EventType] = MappingProxyType({
    e.name: e for e in (
        EventType("payment_notified", "payment_notified_cm", ev.parse_payment_notified, ev.apply_payment_notified),
        EventType("payment_failed", "payment_failed_cm", ev.parse_payment_failed, ev.apply_payment_failed),
        EventType("purchased", "purchased", ev.parse_purchased, ev.apply_purchased),
        EventType("refund_notified", "refund_notified", ev.parse_refund_notified, ev.apply_refund_notified),
        EventType("group_update", "group_update", ev.parse_group_update, ev.apply_group_update),
    )
})


def consumer_name(event_type: EventType) -> str:
    """processed_events.consumer for the new side's applier of this event type."""
    return f"shopping-new:{event_type.name}"


def _refusal(exc: ShopError) -> str:
    return f"{exc.msg}: {json.dumps(exc.data, default=str, ensure_ascii=False)}"[:500]


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
