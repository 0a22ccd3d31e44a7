"""Send one request to a PSP and classify a non-2xx answer; the one place the clients touch aiohttp.

Headers (bearer tokens, API keys) never leave this module inside an error: aiohttp's
``ClientResponseError`` carries the request's headers in its ``request_info`` (and its repr), so
``raise_for_status`` and ``resp.json()`` are not used; the body is read as bytes and parsed here,
and transport errors are re-raised as ``PspUnavailable`` naming only the error's class.
Request bodies are never logged or quoted either (Adyen's carry card data).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from adapters.errors import PspAuthRejected, PspError, PspRejected, PspTimeout, PspUnavailable

# Statuses after which the same request may succeed: the PSP is busy, overloaded or mid-request.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any  # the parsed JSON; None when there was no body or it was not JSON

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def retry_after(self) -> float | None:
        raw = self.headers.get("Retry-After")
        try:
            return max(0.0, float(raw)) if raw else None
        except ValueError:
            return None  # an HTTP date: rare from an API, and the backoff covers it


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    provider: str,
    operation: str,
    headers: Mapping[str, str],
    json: Any = None,
    form: Mapping[str, str] | None = None,
) -> Reply:
    data: Any = None
    if json is not None:
        data = orjson.dumps(json)
        headers = {**headers, "Content-Type": "application/json"}
    elif form is not None:
        data = aiohttp.FormData(dict(form))
    try:
        async with session.request(method, url, headers=headers, data=data, allow_redirects=False) as resp:
            raw = await resp.read()
            status, reply_headers = resp.status, resp.headers
    except TimeoutError:  # the session's own timeout (aiohttp's ServerTimeoutError is one too)
        raise PspTimeout(provider, operation, detail="read timeout") from None
    except aiohttp.ClientError as exc:
        raise PspUnavailable(provider, operation, detail=type(exc).__name__) from None
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    return Reply(status, reply_headers, body)


def failure(reply: Reply, provider: str, operation: str, *, code: str | None = None,
            detail: str | None = None, debug_id: str | None = None) -> PspError:
    """The error for a non-2xx `reply`: rejected for good (4xx), or outcome unknown (5xx, busy)."""
    kwargs: dict[str, Any] = {"status": reply.status, "code": code, "detail": detail, "debug_id": debug_id}
    if reply.status in (401, 403):
        return PspAuthRejected(provider, operation, **kwargs)
    if reply.status >= 500 or reply.status in RETRYABLE_STATUSES:
        return PspUnavailable(provider, operation, retry_after=reply.retry_after(), **kwargs)
    return PspRejected(provider, operation, **kwargs)


def text_field(doc: Any, name: str, limit: int = 200) -> str | None:
    """A short string field of a PSP's error body (its error name, a debug id), or None."""
    value = doc.get(name) if isinstance(doc, dict) else None
    return value[:limit] if isinstance(value, str) and value else None
