"""Adyen standard webhooks from the emulator: signed, delivered in order, retried until ``[accepted]``.

One ``NotificationRequestItem`` per request (``{"live": "false", "notificationItems": [...]}``),
signed with the HMAC key the way Adyen signs (written here from Adyen's rule, independently of
``adapters/adyen_hmac.py``, so a test that verifies these with the adapter checks two
implementations against each other). Like Adyen, a delivery counts only when the answer is 2xx
with ``[accepted]`` in the body; otherwise it is retried (a few times, quickly: an emulator).

One worker delivers in the order the events happened, each ``copies`` times (the duplicate
knob); while the out-of-order knob is on, notifications are held and ``flush`` sends them newest
first. Every attempt is recorded for ``GET /_psp/webhooks``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
from collections import deque
from datetime import UTC, datetime
from typing import Any

import aiohttp

from emulators.psp.faults import FaultTable

log = logging.getLogger("emulators.psp.webhooks")

MAX_RECORDED = 10_000


def sign(item: dict[str, Any], key: bytes) -> str:
    amount = item.get("amount") or {}
    fields = [item.get("pspReference"), item.get("originalReference"), item.get("merchantAccountCode"),
              item.get("merchantReference"), amount.get("value"), amount.get("currency"), item.get("eventCode"),
              item.get("success")]
    text = ":".join("" if f is None else str(f) for f in fields)
    return base64.b64encode(hmac.new(key, text.encode(), hashlib.sha256).digest()).decode()


def event_date() -> str:
    return datetime.now(UTC).astimezone().isoformat(timespec="seconds")


class WebhookSender:
    def __init__(self, url: str | None, key: bytes, faults: FaultTable, *, attempts: int = 5,
                 retry_seconds: float = 0.2, timeout: float = 5.0) -> None:
        self.url = url
        self._key = key
        self._faults = faults
        self._attempts = attempts
        self._retry_seconds = retry_seconds
        self._timeout = timeout
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._held: list[dict[str, Any]] = []
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDED)
        self.emitted = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"WebhookSender(url={self.url!r})"

    def emit(self, **fields: Any) -> dict[str, Any]:
        """Sign and queue one notification item (held while the out-of-order knob is on)."""
        item = {k: v for k, v in fields.items() if v is not None}
        item.setdefault("eventDate", event_date())
        item["additionalData"] = {**item.get("additionalData", {}), "hmacSignature": sign(item, self._key)}
        self.emitted += 1
        if self._faults.webhook_out_of_order:
            self._held.append(item)
        else:
            self._queue.put_nowait(item)
        return item

    def flush(self) -> int:
        held, self._held = self._held, []
        for item in reversed(held):
            self._queue.put_nowait(item)
        return len(held)

    @property
    def held(self) -> list[dict[str, Any]]:
        return list(self._held)

    def pending(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        self._task = asyncio.create_task(self._run(), name="psp-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            for copy in range(self._faults.webhook_copies):
                try:
                    await self._deliver(item, copy)
                except Exception:  # one bad delivery must not stop every later webhook
                    log.exception("webhook %s %s: delivery failed", item.get("eventCode"), item.get("pspReference"))

    async def _deliver(self, item: dict[str, Any], copy: int) -> None:
        body = {"live": "false", "notificationItems": [{"NotificationRequestItem": item}]}
        record: dict[str, Any] = {"eventCode": item.get("eventCode"), "pspReference": item.get("pspReference"),
                                  "merchantReference": item.get("merchantReference"), "success": item.get("success"),
                                  "copy": copy, "attempts": 0, "accepted": False, "url": self.url}
        self.deliveries.append(record)
        if self.url is None or self._session is None:
            return
        for attempt in range(1, self._attempts + 1):
            record["attempts"] = attempt
            try:
                async with self._session.post(self.url, json=body) as resp:
                    text = await resp.text()
                    record["status"] = resp.status
                    if 200 <= resp.status < 300 and "[accepted]" in text:
                        record["accepted"] = True
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                record["status"] = type(exc).__name__
            await asyncio.sleep(self._retry_seconds * 2 ** (attempt - 1))
        log.warning("webhook %s %s not accepted after %d attempts", item.get("eventCode"),
                    item.get("pspReference"), self._attempts)
