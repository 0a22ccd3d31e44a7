"""Fault knobs: per-path added latency, injected error answers and abrupt connection resets.

``POST /_emulator/faults`` with ``{"path": "/shopping/cart", "delay_ms": 2000,
"error_rate": 0.5, "error_status": 500, "reset_rate": 0.0}`` sets the rule for that
path pattern (a second POST for the same pattern replaces it). A pattern is an exact
path, a prefix ending in ``*`` (``"/shopping/*"``) or ``"*"`` for everything.
Every rule that matches a request applies, in the order they were set: first the
delay, then the reset draw, then the error draw. ``GET`` lists the rules, ``DELETE``
clears them (``?path=PATTERN`` removes one). The knobs are served on the emulator's
admin listener (``admin.py``), never on the public port the rules apply to.

Draws come from one ``random.Random`` per app (seeded by ``create_app``), so rates of
0 and 1 are exact and other rates are reproducible.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import struct
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from emulators.legacy.body import read_json
from emulators.legacy.envelope import bad_request, error_response

log = logging.getLogger(__name__)

MAX_DELAY_MS = 600_000
_FIELDS = {"path", "delay_ms", "error_rate", "error_status", "reset_rate", "random_field"}


@dataclass(frozen=True, slots=True)
class FaultRule:
    path: str
    delay_ms: int = 0
    error_rate: float = 0.0
    error_status: int = 500
    reset_rate: float = 0.0
    random_field: str | None = None

    def matches(self, path: str) -> bool:
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: Any) -> FaultRule:
        """Validate a knob body; raises the 400 envelope naming the bad field."""
        if not isinstance(body, dict):
            raise bad_request("body", "must be a JSON object")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise bad_request(unknown[0], "unknown field")
        path = body.get("path")
        if not isinstance(path, str) or not (path.startswith("/") or path == "*"):
            raise bad_request("path", "must be an absolute path, a prefix ending in '*', or '*'")
        if "*" in path[:-1]:
            raise bad_request("path", "'*' is only allowed at the end")
        return cls(
            path=path,
            delay_ms=_int_field(body, "delay_ms", 0, 0, MAX_DELAY_MS),
            error_rate=_rate_field(body, "error_rate"),
            error_status=_int_field(body, "error_status", 500, 400, 599),
            reset_rate=_rate_field(body, "reset_rate"),
            random_field=_name_field(body, "random_field"),
        )


def _int_field(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(name, f"must be an integer in {low}..{high}")
    return value


def _name_field(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.isidentifier() or len(value) > 64:
        raise bad_request(name, "must be a plain key name")
    return value


def _rate_field(body: dict[str, Any], name: str) -> float:
    value = body.get(name, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise bad_request(name, "must be a number in 0..1")
    return float(value)


class FaultTable:
    """The app's fault rules and the random source their rates draw from."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._rules: dict[str, FaultRule] = {}

    def set(self, rule: FaultRule) -> None:
        self._rules.pop(rule.path, None)
        self._rules[rule.path] = rule

    def remove(self, pattern: str) -> bool:
        return self._rules.pop(pattern, None) is not None

    def clear(self) -> None:
        self._rules.clear()

    def rules(self) -> list[FaultRule]:
        return list(self._rules.values())

    def matching(self, path: str) -> list[FaultRule]:
        return [rule for rule in self._rules.values() if rule.matches(path)]

    def draw_token(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    def draw(self, rate: float) -> bool:
        """True with probability ``rate``; exact for 0 and 1."""
        return rate > 0.0 and self._rng.random() < rate


FAULTS = web.AppKey("legacy_faults", FaultTable)


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    table = request.app[FAULTS]
    for rule in table.matching(request.path):
        if rule.delay_ms:
            await asyncio.sleep(rule.delay_ms / 1000)
        if table.draw(rule.reset_rate):
            log.info("fault: resetting connection for %s %s (rule %s)", request.method, request.path, rule.path)
            return _reset(request)
        if table.draw(rule.error_rate):
            log.info(
                "fault: answering %d for %s %s (rule %s)", rule.error_status, request.method, request.path, rule.path
            )
            return error_response(
                rule.error_status, rule.error_status * 100, "injected_fault", {"fault": rule.path}
            )
    response = await handler(request)
    for rule in table.matching(request.path):
        if rule.random_field:
            response = _with_random_field(response, rule.random_field, table)
    return response


def _with_random_field(response: web.StreamResponse, name: str, table: FaultTable) -> web.StreamResponse:
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    try:
        doc = json.loads(response.body)
    except ValueError:
        return response
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
        doc["data"][name] = f"{table.draw_token()}"
        response.body = json.dumps(doc).encode()
    return response


def _reset(request: web.Request) -> web.StreamResponse:
    """Drop the connection without a response, as a TCP reset (RST) where the socket allows it."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                # Linger 0: closing sends RST instead of FIN, like a crashed or overloaded peer.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # aiohttp cannot write this on the aborted transport and drops it quietly.
    return web.Response(status=500)


async def list_faults(request: web.Request) -> web.Response:
    return web.json_response({"faults": [rule.to_json() for rule in request.app[FAULTS].rules()]})


async def set_fault(request: web.Request) -> web.Response:
    rule = FaultRule.from_json(await read_json(request))
    table = request.app[FAULTS]
    table.set(rule)
    log.info("fault rule set: %s", rule)
    return web.json_response({"fault": rule.to_json(), "faults": [r.to_json() for r in table.rules()]})


async def clear_faults(request: web.Request) -> web.Response:
    table = request.app[FAULTS]
    pattern = request.query.get("path")
    if pattern is None:
        table.clear()
        removed = True
    else:
        removed = table.remove(pattern)
    return web.json_response({"removed": removed, "faults": [r.to_json() for r in table.rules()]})
