"""``GET /shopping/orders``: the caller's order list, newest first.

Reads the shared ``orders`` table as it is now, so orders the new side placed show
up with whatever status either side (or a consumer) last set.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy import select

from emulators.legacy.caller import require_user
from emulators.legacy.envelope import bad_request, ok
from emulators.legacy.state import ENGINE
from shop.schema import forex_rates, orders

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


async def list_orders(request: web.Request) -> web.Response:
    uid = require_user(request)
    limit = _limit(request.query.get("limit"))
    async with request.app[ENGINE].connect() as conn:
        rows = await conn.execute(
            select(
                orders.c.id,
                orders.c.status,
                orders.c.currency,
                orders.c.total,
                orders.c.created_at,
                forex_rates.c.exponent,
            )
            .select_from(orders.outerjoin(forex_rates, forex_rates.c.currency == orders.c.currency))
            .where(orders.c.user_id == uid)
            .order_by(orders.c.created_at.desc(), orders.c.id.desc())
            .limit(limit)
        )
        items = [_order(row) for row in rows]
    return ok({"orders": items, "limit": limit})


def _order(row: Any) -> dict[str, Any]:
    exponent = 2 if row.exponent is None else int(row.exponent)
    return {
        "id": row.id,
        "status": row.status,
        "currency": row.currency,
        # Old shopping formats money through float; stored totals are already rounded
        # to the currency exponent, so the string matches the stored value.
        "total": "%.*f" % (exponent, float(row.total)),
        "created_at": _iso(row.created_at),
    }


def _iso(value: datetime | None) -> str | None:
    # The shared database keeps naive UTC timestamps.
    return None if value is None else value.replace(microsecond=0).isoformat() + "Z"


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isdigit() or int(raw) < 1:
        raise bad_request("limit", f"must be an integer in 1..{MAX_LIMIT}")
    # Old shopping clamps rather than rejects a large page.
    return min(int(raw), MAX_LIMIT)
