"""Mismatch examples kept in memory, with a hard cap on their total size.

:class:`ExampleStore` keeps, per (route, field), **the first** ``per_field`` examples it is
given and drops later ones (``add`` returns ``False``). Keeping the first ones rather than
rotating means no churn under a flood (no allocate/free per mismatch, ``wants`` lets the
caller skip building examples at all once a field is full), and what ops look at does not
change under their eyes; ``clear(route)`` starts a route afresh (e.g. after a fix is
deployed). The size of an example is ``len(json.dumps(example, default=str))`` (ASCII
JSON, so characters are bytes); the sum over stored examples never exceeds ``max_bytes``:
an example that would cross the cap is dropped (and counted in ``dropped``), nothing is
evicted. Python object overhead comes on top of that figure (roughly 2x for text).

:func:`make_example` builds an example from the raw answers: bodies pretty-printed when
they are JSON, and cut to ``max_body_chars``, so that one 1 MB body cannot take the whole
budget. :func:`summarise_request` builds a request summary without secrets.

Fields should be the bounded labels (:class:`shadow.fields.FieldLimiter`) so that the
number of (route, field) keys is bounded too. Not thread-safe: use from the event loop.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["ExampleStore", "make_example", "render_body", "summarise_request"]

DEFAULT_MAX_BODY_CHARS = 16_384
OTHER_SIDE = {"legacy": "new", "new": "legacy"}


def _size(example: Mapping[str, Any]) -> int:
    return len(json.dumps(example, default=str))


class ExampleStore:
    def __init__(self, per_field: int = 5, max_bytes: int = 5_000_000) -> None:
        if per_field < 0 or max_bytes < 0:
            raise ValueError("per_field and max_bytes must be >= 0")
        self.per_field = per_field
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self.stored = 0   # examples accepted since start (or last clear)
        self.dropped = 0  # examples refused because the byte cap was reached
        self._examples: dict[str, dict[str, list[tuple[int, dict[str, Any]]]]] = {}

    def wants(self, route: str, field: str) -> bool:
        """Whether ``add`` could keep an example for this (route, field) now (cheap check
        before building one)."""
        kept = self._examples.get(route, {}).get(field, ())
        return len(kept) < self.per_field and self.bytes_used < self.max_bytes

    def add(self, route: str, field: str, example: Mapping[str, Any]) -> bool:
        fields = self._examples.get(route)
        kept = fields.get(field) if fields else None
        if kept is not None and len(kept) >= self.per_field:
            return False
        if self.per_field == 0:
            return False
        size = _size(example)
        if self.bytes_used + size > self.max_bytes:
            self.dropped += 1
            return False
        if fields is None:
            fields = self._examples[route] = {}
        if kept is None:
            kept = fields[field] = []
        kept.append((size, dict(example)))
        self.bytes_used += size
        self.stored += 1
        return True

    def examples(self, route: str, field: str) -> list[dict[str, Any]]:
        return [dict(e) for _, e in self._examples.get(route, {}).get(field, ())]

    def routes(self) -> list[str]:
        return sorted(self._examples)

    def fields(self, route: str) -> list[str]:
        return sorted(self._examples.get(route, ()))

    def clear(self, route: str | None = None) -> None:
        if route is None:
            self._examples.clear()
            self.bytes_used = 0
            return
        for kept in self._examples.pop(route, {}).values():
            self.bytes_used -= sum(size for size, _ in kept)

    def summary(self) -> dict[str, int]:
        return {"per_field": self.per_field, "max_bytes": self.max_bytes, "bytes_used": self.bytes_used,
                "stored": self.stored, "dropped": self.dropped}

    def snapshot(self, route: str | None = None) -> dict[str, Any]:
        """``summary()`` plus ``"routes": {route: {field: [examples]}}`` (one route when given)."""
        routes = [route] if route is not None else self.routes()
        return {
            **self.summary(),
            "routes": {r: {f: self.examples(r, f) for f in self.fields(r)} for r in routes if r in self._examples},
        }


def render_body(body: bytes | str | None, max_chars: int = DEFAULT_MAX_BODY_CHARS) -> str:
    """A body as text: pretty-printed JSON when it parses, else UTF-8 (invalid bytes
    replaced); cut to ``max_chars`` with a note saying how much was cut."""
    if body is None:
        return ""
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "replace")
    if len(raw) <= max_chars * 8:  # do not parse huge bodies only to cut them
        try:
            text = json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
        except (ValueError, RecursionError):
            pass
        else:
            if len(text) > max_chars:
                return text[:max_chars] + f"\n… [truncated: {len(text)} characters in all]"
            return text
    text = raw[: max_chars * 4].decode("utf-8", "replace")
    if len(text) > max_chars or len(raw) > max_chars * 4:
        return text[:max_chars] + f"\n… [truncated: {len(raw)} bytes in all]"
    return text


def make_example(
    *,
    request_id: str,
    request_summary: Any,
    primary_side: str,
    primary_status: int,
    primary_body: bytes | str | None,
    shadow_status: int,
    shadow_body: bytes | str | None,
    diff: Mapping[str, Any] | None,
    kind: str = "shadow",
    max_body_chars: int = DEFAULT_MAX_BODY_CHARS,
    at: float | None = None,
) -> dict[str, Any]:
    """One example as stored and shown by the report. ``primary_side`` is ``legacy`` or
    ``new``; for a noise example both bodies come from that side."""
    shadow_side = primary_side if kind == "noise" else OTHER_SIDE.get(primary_side, "shadow")
    return {
        "request_id": str(request_id),
        "request": request_summary,
        "kind": kind,
        "primary_side": primary_side,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if at is None else at)),
        "primary": {"side": primary_side, "status": primary_status, "body": render_body(primary_body, max_body_chars)},
        "shadow": {"side": shadow_side, "status": shadow_status, "body": render_body(shadow_body, max_body_chars)},
        "diff": dict(diff) if diff is not None else None,
    }


SECRET = re.compile(r"auth|token|secret|passw|cookie|session|api[-_]?key|signature|card|cvv|cvc|iban", re.I)
REDACTED = "[redacted]"


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 20:
        return "…"
    if isinstance(value, Mapping):
        return {k: (REDACTED if SECRET.search(str(k)) else _redact(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, depth + 1) for v in value]
    return value


def summarise_request(
    method: str,
    path: str,
    query: str = "",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    *,
    keep_headers: tuple[str, ...] = ("content-type", "x-user-id", "x-device-id", "x-platform", "accept-language"),
    max_body_chars: int = 2048,
) -> dict[str, Any]:
    """A request summary without secrets: method, path, query (values of secret-looking
    parameters redacted), an allow-list of headers, and the JSON body with secret-looking
    keys (auth, token, password, cookie, card, …) redacted; non-JSON bodies only by size."""
    summary: dict[str, Any] = {"method": method, "path": path}
    if query:
        parts = []
        for pair in query.split("&"):
            name, sep, _ = pair.partition("=")
            parts.append(f"{name}={REDACTED}" if sep and SECRET.search(name) else pair)
        summary["query"] = "&".join(parts)[:max_body_chars]
    if headers:
        keep = {h.lower() for h in keep_headers}
        summary["headers"] = {k: v for k, v in headers.items() if k.lower() in keep and not SECRET.search(k)}
    if body:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            summary["body"] = f"<{len(body)} bytes, not JSON>"
        else:
            text = json.dumps(_redact(parsed), ensure_ascii=False)
            summary["body"] = text if len(text) <= max_body_chars else text[:max_body_chars] + "…"
    return summary
