"""PayPal-Request-Id and Idempotency-Key as the PSPs honour them: a repeat gets the first answer.

A POST that carries a key runs under that key's lock; the first one that acts (2xx) stores its
answer, and every later request with the same key gets it back without acting again: Adyen with
the same status, PayPal with 200 where the first was 201 ("201 Created; 200 OK for a repeat").
A request still being worked on (the "act then time out" fault hangs *after* storing) is
therefore already answerable. Failures (4xx, injected 5xx) are not stored: the same key may
succeed later, e.g. a capture retried after the payer approved.

Stricter than the PSPs on one point, to catch client bugs: the same key with another method,
path or body is refused with 422 ``IDEMPOTENCY_KEY_REUSED`` instead of silently answered with
another operation's first answer.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Stored:
    fingerprint: bytes
    status: int
    body: Any


def fingerprint(method: str, path: str, body: Any) -> bytes:
    return hashlib.sha256(f"{method} {path} ".encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()


class ReplayStore:
    def __init__(self) -> None:
        self._answers: dict[tuple[str, str], Stored] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def lock(self, provider: str, key: str) -> asyncio.Lock:
        return self._locks.setdefault((provider, key), asyncio.Lock())

    def get(self, provider: str, key: str) -> Stored | None:
        return self._answers.get((provider, key))

    def put(self, provider: str, key: str, stored: Stored) -> None:
        self._answers[(provider, key)] = stored

    def __len__(self) -> int:
        return len(self._answers)


class Refusal(Exception):
    """Raised by an act that refuses (a 4xx in its PSP's shape): nothing happened, nothing is stored."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


Act = Callable[[], tuple[int, Any]]


async def once(store: ReplayStore, provider: str, key: str | None, print_: bytes, act: Act, *,
               replay_status: Callable[[int], int], reused: Act) -> tuple[int, Any, bool]:
    """(status, body, replayed): `act` runs at most once per key; without a key it runs every time.

    `reused` renders the answer to a key seen before with another request.
    """
    if key is None:
        status, body = act()
        return status, body, False
    async with store.lock(provider, key):
        stored = store.get(provider, key)
        if stored is not None:
            if stored.fingerprint != print_:
                status, body = reused()
                return status, body, False
            return replay_status(stored.status), stored.body, True
        status, body = act()
        if 200 <= status < 300:
            store.put(provider, key, Stored(print_, status, body))
        return status, body, False
