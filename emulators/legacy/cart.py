"""``GET/POST /shopping/cart``: the caller's cart lines, as old shopping serves them.

The rows are shared with the new side (checkout reads them, ``paid_from_client`` and
``purchased`` delete them), so writes are single-row statements keyed on the unique
``(user_id, sku_id)``: update first, insert if nothing matched, and if a concurrent
insert won the race, update again. No read-modify-write of ``qty``.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from aiohttp import web
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from emulators.legacy import envelope
from emulators.legacy.body import read_json
from emulators.legacy.caller import require_user
from emulators.legacy.envelope import ApiError, bad_request, ok
from emulators.legacy.state import ENGINE
from shop.schema import cart_items, skus

MAX_QTY = 999
_FIELDS = {"sku_id", "qty", "selected"}


async def get_cart(request: web.Request) -> web.Response:
    uid = require_user(request)
    async with request.app[ENGINE].connect() as conn:
        return ok({"items": await _lines(conn, uid)})


async def post_cart(request: web.Request) -> web.Response:
    uid = require_user(request)
    sku_id, qty, selected = _parse(await read_json(request))
    engine = request.app[ENGINE]
    async with engine.connect() as conn:
        sku = (await conn.execute(select(skus.c.id, skus.c.active).where(skus.c.id == sku_id))).first()
    if sku is None:
        raise ApiError(422, envelope.SKU_NOT_FOUND, "sku_not_found", {"sku_id": sku_id})
    if qty == 0:
        async with engine.begin() as conn:
            await conn.execute(
                delete(cart_items).where(cart_items.c.user_id == uid, cart_items.c.sku_id == sku_id)
            )
    else:
        if not sku.active:
            raise ApiError(422, envelope.SKU_UNAVAILABLE, "sku_unavailable", {"sku_id": sku_id})
        await _upsert(engine, uid, sku_id, qty, selected)
    async with engine.connect() as conn:
        return ok({"items": await _lines(conn, uid)})


async def _lines(conn: AsyncConnection, uid: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(cart_items.c.sku_id, skus.c.name, cart_items.c.qty, cart_items.c.selected, skus.c.price)
        .select_from(cart_items.join(skus, skus.c.id == cart_items.c.sku_id))
        .where(cart_items.c.user_id == uid)
        .order_by(cart_items.c.id)
    )
    return [
        {
            "sku_id": row.sku_id,
            "name": row.name,
            "qty": row.qty,
            "selected": bool(row.selected),
            # Old shopping formats money through float; prices are cents, so this is exact.
            "unit_price": "%.2f" % float(row.price),
        }
        for row in rows
    ]


async def _upsert(engine: AsyncEngine, uid: int, sku_id: int, qty: int, selected: bool | None) -> None:
    where = (cart_items.c.user_id == uid, cart_items.c.sku_id == sku_id)
    changes: dict[str, Any] = {"qty": qty}
    if selected is not None:
        changes["selected"] = selected
    async with engine.begin() as conn:
        if (await conn.execute(update(cart_items).where(*where).values(**changes))).rowcount:
            return
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(cart_items).values(
                    user_id=uid, sku_id=sku_id, qty=qty, selected=True if selected is None else selected
                )
            )
    except IntegrityError:
        # Someone (the other side, or a double tap) inserted the line meanwhile.
        async with engine.begin() as conn:
            await conn.execute(update(cart_items).where(*where).values(**changes))


def _parse(body: Any) -> tuple[int, int, bool | None]:
    if not isinstance(body, dict):
        raise bad_request("body", "must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise bad_request(unknown[0], "unknown field")
    sku_id = body.get("sku_id")
    if not _is_int(sku_id) or sku_id <= 0:
        raise bad_request("sku_id", "must be a positive integer")
    qty = body.get("qty")
    if not _is_int(qty) or not 0 <= qty <= MAX_QTY:
        raise bad_request("qty", f"must be an integer in 0..{MAX_QTY}")
    selected = body.get("selected")
    if selected is not None and not isinstance(selected, bool):
        raise bad_request("selected", "must be a boolean")
    return sku_id, qty, selected


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
