"""How the consumer handles each event type of shop.events.EVENT_TYPES: on the new side, or old shopping's.

`owned_handler` is what the runner calls per topic: it reads the order id (payload `order_id`,
else the message key), asks the ownership in force (routing.yaml `consumers:`,
consumers/ownership.py) and either applies the event here or delivers it to old shopping
(consumers/legacy_delivery.py). The side is asked again on every attempt, so an event that
waits out old shopping's outage goes wherever a flip meanwhile sent its order.

Applying here is thin: parse → one `Shop.tx("consumer")` → the same `shop.events` function
`POST /event/{name}` uses → the outcome. A message the shop refuses for good (not the schema,
not applicable) becomes a PoisonMessage, i.e. the DLQ with the reason.

Batches (`apply_batch`, what the runner uses): the longest run at the front of the batch that is
owned here and parses goes through the event type's `apply_batch` in one `Shop.tx("consumer")`;
an event of old shopping's is delivered alone, by the runner's one-event path. The owner of each event is asked once
per batch. An event the shop refuses inside a batch is `BatchFailed(index)`: the runner applies
the ones before it again and that one alone, where it becomes the PoisonMessage above.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from consumers.legacy_delivery import LegacyDelivery
from consumers.ownership import Ownership
from consumers.runner import BatchFailed, Event, EventHandler, PoisonMessage
from shop import events as ev
from shop.events import EventFailed, EventType, consumer_name
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


class OwnedHandler:
    """The runner's handler for one event type: each event applied here or delivered to old shopping."""

    def __init__(self, shop: Shop, event_type: EventType, ownership: Ownership, legacy: LegacyDelivery) -> None:
        self._shop = shop
        self._type = event_type
        self._consumer = consumer_name(event_type)
        self._ownership = ownership
        self._legacy = legacy
        self._local = apply_locally(shop, event_type)

    def _owned_here(self, event: Event) -> bool:
        return self._ownership.owner(self._type.name, order_id_of(event)) == "new"

    async def __call__(self, event: Event) -> str:
        if self._owned_here(event):
            return await self._local(event)
        if await self._applied_here(event):
            return "duplicate"
        return await self._legacy.deliver(self._type.name, event)

    async def _applied_here(self, event: Event) -> bool:
        """A redelivery of an event the new side applied before a flip gave its order to old shopping,
        which does not know our claims: not delivered (the new side's side of shop.events.counterpart)."""
        event_id = event.payload.get("event_id")
        if not isinstance(event_id, str):
            return False  # the delivery refuses it with its reason
        async with self._shop.tx("consumer") as uow:
            return bool(await uow.claimed(self._consumer, [event_id]))

    async def apply_batch(self, events: Sequence[Event]) -> list[str]:
        parsed = []
        for i, event in enumerate(events):
            try:
                if not self._owned_here(event):
                    raise BatchFailed(i)  # delivered alone: old shopping's answers are judged per event
                parsed.append(self._type.parse(event.payload))
            except (PoisonMessage, ev.InvalidEvent):
                raise BatchFailed(i) from None  # alone, it goes to the DLQ with its reason
        try:
            async with self._shop.tx("consumer") as uow:
                return await self._type.apply_batch(uow, parsed, self._consumer)
        except EventFailed as failed:
            raise BatchFailed(failed.index) from failed.error


def owned_handler(shop: Shop, event_type: EventType, ownership: Ownership, legacy: LegacyDelivery) -> EventHandler:
    return OwnedHandler(shop, event_type, ownership, legacy)
