"""``POST /shopping/user_coupons_for_order`` (route coupons): which coupons fit this cart.

Old shopping's way: price the cart once without a coupon, then once more with each of
the caller's coupons (status unused / locked / expired) plus the public ``coupon_code``
if given and not already held. A usable coupon shows what it takes off in the request
currency (a free-shipping coupon: the shipping fee it saves); usable ones come first,
biggest discount first; unusable ones carry the reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy import select

from emulators.legacy.body import read_json
from emulators.legacy.caller import user_id as caller_user_id
from emulators.legacy.envelope import ok
from emulators.legacy.pricing import (
    Picked, coupon_by_code, coupon_row, compute, load, money, parse_request, with_coupon,
)
from emulators.legacy.state import ENGINE
from shop.schema import coupons as coupons_table
from shop.schema import user_coupons

LISTED_STATUSES = ("unused", "locked", "expired")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.replace(microsecond=0).isoformat() + "Z"


def _option(p: Picked, discount: str | None, reason: str | None) -> dict[str, Any]:
    c = p.coupon
    out: dict[str, Any] = {
        "user_coupon_id": p.user_coupon_id,
        "coupon_id": c.coupon_id,
        "code": c.code,
        "title": c.title,
        "kind": c.kind,
        "discount": discount,
        "expires_at": _iso(c.ends_at),
    }
    if reason is not None:
        out["reason"] = reason
    return out


async def list_coupons(request: web.Request) -> web.Response:
    uid = caller_user_id(request)
    req = parse_request(await read_json(request))
    async with request.app[ENGINE].connect() as conn:
        cart = await load(conn, req, uid, with_coupon=False)
        picks: list[Picked] = []
        if uid is not None:
            u, c = user_coupons.c, coupons_table.c
            rows = await conn.execute(
                select(u.id.label("user_coupon_id"), u.status, coupons_table)
                .select_from(user_coupons.join(coupons_table, c.id == u.coupon_id))
                .where(u.user_id == uid, u.status.in_(LISTED_STATUSES))
                .order_by(u.id)
            )
            picks = [Picked(coupon_row(r), r.user_coupon_id, r.status) for r in rows]
        if req.coupon_code is not None:
            public = await coupon_by_code(conn, req.coupon_code)
            if public is not None and public.coupon_id not in {p.coupon.coupon_id for p in picks}:
                picks.append(Picked(public, None, "unused"))

    base = compute(cart)
    exp = cart.exponent
    usable: list[tuple[float, int, dict[str, Any]]] = []
    unusable: list[tuple[int, dict[str, Any]]] = []
    for pick in picks:
        priced = compute(with_coupon(cart, pick))
        if priced.coupon_error is not None:
            unusable.append((pick.user_coupon_id or 0, _option(pick, None, priced.coupon_error)))
            continue
        off = base.shown["shipping_fee"] if priced.free_shipping else priced.shown["coupon_discount"]
        usable.append((off, pick.user_coupon_id or 0, _option(pick, money(off, exp), None)))
    # Ties (and the unusable list) in user_coupon id order, a bare public code first.
    usable.sort(key=lambda entry: (-entry[0], entry[1]))
    unusable.sort(key=lambda entry: entry[0])
    return ok({"usable": [entry[2] for entry in usable], "unusable": [entry[1] for entry in unusable]})
