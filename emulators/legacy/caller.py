"""Caller identity as the API gateway hands it over: ``X-User-Id`` (absent = anonymous)."""

from __future__ import annotations

import re

from aiohttp import web

from emulators.legacy import envelope
from emulators.legacy.envelope import ApiError, bad_request


# ASCII digits only: str.isdigit() also takes "²", "１" and "١", which int() then refuses or reads
# as another number. 18 digits keep the id inside the BIGINT columns.
_USER_ID = re.compile(r"[0-9]{1,18}")


def user_id(request: web.Request) -> int | None:
    raw = request.headers.get("X-User-Id", "").strip()
    if not raw:
        return None
    if not _USER_ID.fullmatch(raw) or int(raw) <= 0:
        raise bad_request("X-User-Id", "must be a positive integer")
    return int(raw)


def require_user(request: web.Request) -> int:
    """The caller's user id; anonymous callers get 401 ``login_required``."""
    uid = user_id(request)
    if uid is None:
        raise ApiError(401, envelope.LOGIN_REQUIRED, "login_required", None)
    return uid
