"""Old shopping's order actions: the app's "I have paid" and the user's cancel.

``POST /shopping/orders/{order_id}/paid_from_client`` (route paid_from_client): removes the
order's SKUs from the caller's cart and moves pending_payment / payment_failed →
payment_confirming. From payment_confirming or further along it only answers the status
the order is in, so repeating it (or calling it after the payment already went through) is
harmless. A cancelled order is 409 ``invalid_state`` and the cart is left as it was.

``POST /shopping/orders/{order_id}/cancel`` (not migrated): pending_payment / payment_failed /
authorized → cancelled; the stock, the locked coupon and the wallet reservation go back in
the same transaction, and only when this call's guarded update won, so two cancels at once
(or a cancel racing the new side's expiry sweeper) release everything exactly once. An
order already cancelled answers cancelled; any other state is 409 ``invalid_state``.

Both are owner only: 401 for anonymous callers, 404 ``order_not_found`` for another
user's order exactly like a missing one. Actor ``legacy`` in the status history.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import delete, select

from emulators.legacy import envelope
from emulators.legacy.caller import require_user
from emulators.legacy.envelope import ApiError, ok
from emulators.legacy.order_rows import (
    AUTHORIZED,
    CANCELLED,
    PAYMENT_CONFIRMING,
    PAYMENT_FAILED,
    PENDING_PAYMENT,
    check_order_id,
    move_status,
    owned_order,
    release_holdings,
    retrying,
)
from emulators.legacy.state import ENGINE
from shop.schema import cart_items, order_items

CONFIRMABLE = (PENDING_PAYMENT, PAYMENT_FAILED)
CANCELLABLE = (PENDING_PAYMENT, PAYMENT_FAILED, AUTHORIZED)


async def paid_from_client(request: web.Request) -> web.Response:
    uid = require_user(request)
    order_id = check_order_id(request.match_info["order_id"])
    engine = request.app[ENGINE]

    async def work() -> str:
        async with engine.begin() as conn:
            order = await owned_order(conn, order_id, uid)
            sku_ids = (await conn.execute(
                select(order_items.c.sku_id).where(order_items.c.order_id == order.id).order_by(order_items.c.sku_id)
            )).scalars().all()
            if sku_ids:
                await conn.execute(
                    delete(cart_items).where(cart_items.c.user_id == uid, cart_items.c.sku_id.in_(sku_ids))
                )
            _, status = await move_status(conn, order.id, CONFIRMABLE, PAYMENT_CONFIRMING, "paid_from_client")
            if status == CANCELLED:
                # Too late: the raise rolls the cart deletion back too.
                raise ApiError(409, envelope.INVALID_STATE, "invalid_state", {"status": status})
            return status

    return ok({"order_id": order_id, "status": await retrying(work)})


async def cancel(request: web.Request) -> web.Response:
    uid = require_user(request)
    order_id = check_order_id(request.match_info["order_id"])
    engine = request.app[ENGINE]

    async def work() -> str:
        async with engine.begin() as conn:
            order = await owned_order(conn, order_id, uid)
            moved, status = await move_status(conn, order.id, CANCELLABLE, CANCELLED, "cancel")
            if moved:
                await release_holdings(conn, order.id)
            elif status != CANCELLED:
                raise ApiError(409, envelope.INVALID_STATE, "invalid_state", {"status": status})
            return status

    return ok({"order_id": order_id, "status": await retrying(work)})
