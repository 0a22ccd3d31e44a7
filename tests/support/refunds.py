"""What the refund tests share: a paid order whose payment the PSP emulator really captured, an edge
serving the refund route (and the events route) at 100 % on the new side, and a read of everything a
refund could write, to prove that a refused one wrote nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shop import schema as t
from tests.builders import insert_order, insert_payment
from tests.support.edge import dead_url, edge_settings, internal_headers, routing_doc, write_routing
from tests.support.psp import ADYEN_API_KEY, MERCHANT, PAYPAL_CLIENT_ID, PAYPAL_SECRET, Psp

REFUND_PATH = "/refund/refund"
REFUND_ROUTE = {"match": {"methods": ["POST"], "path": REFUND_PATH}, "new_percent": 100, "writes": True,
                "timeout_ms": 30000}
EVENTS_ROUTE = {"match": {"methods": ["POST"], "path": "/event/{name}"}, "new_percent": 100, "writes": True}
PAYPAL_REFUNDS = "/v2/payments/captures/*/refund"
ADYEN_REFUNDS = "/v71/payments/*/refunds"


def psp_settings(psp: Psp, **changes: Any) -> dict[str, Any]:
    """Settings overrides that point a process's PSP clients at the emulator, with quick backoff."""
    return {"paypal_base_url": psp.url, "adyen_base_url": psp.url, "paypal_client_id": PAYPAL_CLIENT_ID,
            "paypal_secret": PAYPAL_SECRET, "adyen_api_key": ADYEN_API_KEY, "adyen_merchant_account": MERCHANT,
            "psp_backoff_seconds": 0.01, "psp_backoff_max_seconds": 0.05, **changes}


async def refund_edge(aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path, db_url: str, psp: Psp,
                      **settings: Any) -> TestClient:
    # Old shopping is a dead URL: at 100 % nothing may reach it, and a test would see a 502 if it did.
    legacy = dead_url()
    routing = write_routing(tmp_path / "routing.yaml", routing_doc(legacy, refund=REFUND_ROUTE, events=EVENTS_ROUTE))
    from proxy.app import create_app

    app = create_app(edge_settings(routing, legacy, **{"db_url": db_url, **psp_settings(psp), **settings}),
                     registry=CollectorRegistry())
    return await aiohttp_client(app)


async def paid_order(engine: AsyncEngine, psp: Psp, order_id: str, *, provider: str = "paypal",
                     amount: Decimal = Decimal("96.07"), currency: str = "EUR", status: str = "paid") -> int:
    """An order in `status` whose whole total `provider` captured (in the emulator and in `payments`); the payment id."""
    if provider == "paypal":
        ref = {"capture_id": await psp.paypal_capture(order_id, amount, currency)}
    else:
        ref = {"psp_reference": await psp.adyen_payment(order_id, amount, currency)}
    async with engine.begin() as conn:
        await insert_order(conn, order_id, status=status, total=amount, currency=currency)
        return await insert_payment(conn, order_id, provider=provider, amount=amount, currency=currency, **ref)


async def post_refund(client: TestClient, body: Any, headers: dict[str, str] | None = None,
                      path: str = REFUND_PATH) -> tuple[int, dict[str, Any]]:
    resp = await client.post(path, json=body, headers=internal_headers() if headers is None else headers)
    return resp.status, await resp.json()


async def refunds_of(engine: AsyncEngine, order_id: str) -> list[dict[str, Any]]:
    r = t.refunds.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(t.refunds).where(r.order_id == order_id).order_by(r.id))
        return [dict(row._mapping) for row in rows]


async def order_status(engine: AsyncEngine, order_id: str) -> str:
    async with engine.connect() as conn:
        return (await conn.execute(select(t.orders.c.status).where(t.orders.c.id == order_id))).scalar_one()


async def history(engine: AsyncEngine, order_id: str) -> list[tuple[str | None, str, str]]:
    h = t.order_status_history.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(h.from_status, h.to_status, h.actor).where(h.order_id == order_id).order_by(h.id))
        return [tuple(row) for row in rows]


async def notis(engine: AsyncEngine, order_id: str) -> list[str]:
    o = t.outbox.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(o.payload).where(o.topic == "noti", o.key == order_id).order_by(o.id))
        return [row.payload["template"] for row in rows]


async def written(engine: AsyncEngine, psp: Psp) -> tuple[Any, ...]:
    """Everything a refund request could write: rows of each table it touches, order statuses, PSP refund calls."""
    async with engine.connect() as conn:
        counts = [(await conn.execute(select(func.count()).select_from(table))).scalar_one()
                  for table in (t.refunds, t.outbox, t.order_status_history, t.processed_events)]
        statuses = sorted(tuple(r) for r in await conn.execute(select(t.orders.c.id, t.orders.c.status)))
    calls = len(await psp.calls("POST", "/refund")) + len(await psp.calls("POST", "/refunds"))
    return (*counts, statuses, calls)
