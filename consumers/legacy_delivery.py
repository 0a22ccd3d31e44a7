"""Old shopping's share of the events: delivered to its `POST {legacy_url}/event/{name}`, at least once.

What the seed's orders service did over HTTP. One pooled aiohttp session, a timeout per call,
`X-Request-Id` and `Idempotency-Key` set to the event id (old shopping dedupes by it, so a
redelivery after a lost answer changes nothing). The body is the event's JSON as it came.

How old shopping's answer is judged (the runner does the waiting, consumers/runner.py):
- 2xx → applied by old shopping: counted ``forwarded_legacy``, the offset may move on;
- unreachable, reset, timed out, 5xx, 408 / 425 / 429, or anything else that is not an answer
  about the event → ``LegacyUnavailable`` (a ConnectionError: transient): the partition pauses
  and the same event is retried with backoff until old shopping takes it; nothing is skipped;
- 409 → ``LegacyNotYet``: old shopping says the order is not in a state for it yet (a
  `purchased` before its payment, the topics are not ordered): retried up to the runner's
  ``max_attempts``, then the DLQ, as the new side's NotYet;
- any other 4xx → old shopping refused the event for good: ``PoisonMessage`` (the DLQ with its
  status and answer as the reason).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping

import aiohttp
import structlog

from consumers.runner import Event, PoisonMessage
from common.settings import DEFAULT_TOPICS

log = structlog.get_logger("consumers.legacy")

# Old shopping's path names are legacy-api.md's topic names, whatever SHOP_TOPIC_* renames the topics to.
LEGACY_EVENT_NAMES: Mapping[str, str] = DEFAULT_TOPICS
FORWARDED = "forwarded_legacy"
_RETRY_4XX = frozenset({408, 425, 429})
_REASON_CHARS = 300


class LegacyUnavailable(ConnectionError):
    """Old shopping could not take the event now (down, slow, 5xx): transient, retried until it does."""


class LegacyNotYet(Exception):
    """Old shopping answered 409: the order is not ready for this event yet; retried a few times."""


def _header_value(event_id: object) -> str:
    if not isinstance(event_id, str) or not event_id or len(event_id) > 128 or not event_id.isascii() or not event_id.isprintable():
        raise PoisonMessage("event_id must be printable ASCII of 1..128 characters to be delivered to old shopping")
    return event_id


class LegacyDelivery:
    def __init__(self, session: aiohttp.ClientSession, legacy_url: Callable[[], str], *, timeout: float) -> None:
        self._session = session
        self._legacy_url = legacy_url  # read per call: a routing.yaml reload may change it
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def deliver(self, event_type: str, event: Event) -> str:
        name = LEGACY_EVENT_NAMES[event_type]
        event_id = _header_value(event.payload.get("event_id"))
        url = f"{self._legacy_url()}/event/{name}"
        headers = {"Content-Type": "application/json", "X-Request-Id": event_id, "Idempotency-Key": event_id}
        body = json.dumps(event.payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
        try:
            async with self._session.post(url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False) as resp:
                status = resp.status
                text = "" if 200 <= status < 300 else (await resp.content.read(_REASON_CHARS)).decode("utf-8", "replace")
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise LegacyUnavailable(f"old shopping unreachable for /event/{name}: {exc.__class__.__name__}") from None
        if 200 <= status < 300:
            return FORWARDED
        reason = f"old shopping answered {status} to /event/{name}: {' '.join(text.split())}"[:500]
        if status == 409:
            raise LegacyNotYet(reason)
        if 400 <= status < 500 and status not in _RETRY_4XX:
            log.warning("legacy_refused_event", event_name=name, event_id=event_id, status=status)
            raise PoisonMessage(reason)
        raise LegacyUnavailable(reason)


def legacy_session(pool_size: int) -> aiohttp.ClientSession:
    """The one session to old shopping; built inside the running loop."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=pool_size), raise_for_status=False)
