"""Caller identity as the API gateway hands it over: ``X-User-Id`` (absent = anonymous)."""

from __future__ import annotations

from aiohttp import web

from emulators.legacy import envelope
from emulators.legacy.envelope import ApiError, bad_request


def user_id(request: web.Request) -> int | None:
    raw = request.headers.get("X-User-Id", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise bad_request("X-User-Id", "must be a positive integer")
    return int(raw)


def require_user(request: web.Request) -> int:
    """The caller's user id; anonymous callers get 401 ``login_required``."""
    uid = user_id(request)
    if uid is None:
        raise ApiError(401, envelope.LOGIN_REQUIRED, "login_required", None)
    return uid
