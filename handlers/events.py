"""`POST /event/{name}` on the new side: the Kafka events, delivered over HTTP (legacy-api.md).

Old shopping's event sender (and anything that replays an event by hand) calls it with
`Authorization: Bearer $SHOP_SERVICE_TOKEN`; without the token nothing is parsed, applied or
revealed (401), and an unset token refuses everyone. Thin: the JSON body → the event type's parser
→ one `Shop.tx("new")` → the same shop.events function the Kafka consumer runs, with the same
processed_events consumer name (shop.events.consumer_name), so an event that arrives both by HTTP
and by Kafka is applied once and the second delivery answers `duplicate`.

`{name}` is the legacy path segment: the default topic names of domain.md (`payment_notified_cm`,
`payment_failed_cm`, `purchased`, `refund_notified`, `group_update`), and also the event type's
own name (`payment_notified`), which routing.yaml `consumers:` uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from aiohttp import hdrs, web

from handlers.context import SERVICE_TOKEN, SHOP
from handlers.errors import to_response
from handlers.http import json_body, ok
from shop import events as ev
from shop.errors import Conflict, LoginRequired, NotFound
from common.settings import DEFAULT_TOPICS
from shop.tokens import bearer_matches

# Path segment → event type. The legacy API's names are fixed (old shopping's callers use them),
# whatever SHOP_TOPIC_* renames a topic to.
BY_PATH_NAME: Mapping[str, ev.EventType] = MappingProxyType({
    **{DEFAULT_TOPICS[name]: et for name, et in ev.EVENT_TYPES.items()},
    **ev.EVENT_TYPES,
})


async def event(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    if not bearer_matches(request.headers.get(hdrs.AUTHORIZATION), request.config_dict[SERVICE_TOKEN]):
        refused = to_response(LoginRequired(data={"reason": "service token required"}))
        refused.headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
        return refused
    name = params.get("name", "")
    event_type = BY_PATH_NAME.get(name)
    if event_type is None:
        raise NotFound("event_not_found", data={"name": name[:64], "known": sorted(DEFAULT_TOPICS.values())})
    payload = await json_body(request)
    if not isinstance(payload, dict):
        raise ev.InvalidEvent(data={"field": "body", "reason": "must be a JSON object"})
    parsed = event_type.parse(payload)
    try:
        async with request.config_dict[SHOP].tx("new") as uow:
            outcome = await event_type.apply(uow, parsed, ev.consumer_name(event_type))
    except ev.NotYet as exc:
        # The Kafka consumer retries this itself; an HTTP caller is told to, and nothing was written.
        raise Conflict("invalid_state", data={"reason": "not_yet_applicable", "detail": str(exc)}) from None
    return ok({"outcome": outcome})
