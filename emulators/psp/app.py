"""Composition root of the PSP emulator: ``create_app(PspConfig)``, PayPal and Adyen on one port.

Paths and shapes are the PSPs' own (``/v1/oauth2/token``, ``/v2/checkout/orders…``,
``/v2/payments/captures/{id}/refund``, ``/v71/payments…``), so the clients in ``adapters/`` talk
to it exactly as to the sandboxes, with only the base URL changed. State lives in memory, per
app. One middleware records every call (method, path, idempotency key, status, replayed or
not, which fault applied) and applies the fault rules; the knobs that set them and the reads of
state are on ``admin.create_admin_app``, a listener of its own on loopback.

"Act then time out": the handler acts, its answer is stored under the request's idempotency
key, and then it holds the connection without answering until the client gives up and closes
it (at most ``hang_seconds``), so the client sees a timeout although the PSP did the work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from emulators.psp import adyen, paypal
from emulators.psp.state import CALL, HITS, STATE, PspConfig, PspState

log = logging.getLogger("emulators.psp")


@web.middleware
async def call_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    state.call_count += 1
    record: dict[str, Any] = {
        "n": state.call_count,
        "method": request.method,
        "path": request.path,
        "key": request.headers.get("PayPal-Request-Id") or request.headers.get("Idempotency-Key"),
        "status": None,
        "replayed": False,
        "fault": None,
    }
    state.calls.append(record)
    request[CALL] = record
    hits = state.faults.take(request.path)
    request[HITS] = hits
    if hits.delay_ms:
        await asyncio.sleep(hits.delay_ms / 1000)
    if hits.error_status is not None:
        record.update(status=hits.error_status, fault="error_status")
        return fault_answer(request.path, hits.error_status)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        record["status"] = exc.status
        raise
    record["status"] = response.status
    return response


def fault_answer(path: str, status: int) -> web.Response:
    """An injected failure in the shape of the PSP the path belongs to."""
    if path.startswith("/v71/"):
        return web.json_response({"status": status, "errorCode": "000", "errorType": "internal",
                                  "message": "Unable to process the request (emulated fault)"}, status=status)
    names = {429: "RATE_LIMIT_REACHED", 503: "SERVICE_UNAVAILABLE"}
    return web.json_response({"name": names.get(status, "INTERNAL_SERVER_ERROR"),
                              "message": "An internal server error has occurred (emulated fault).",
                              "debug_id": "emulated", "details": []}, status=status)


def create_app(config: PspConfig | None = None) -> web.Application:
    config = config or PspConfig()
    app = web.Application(middlewares=[call_middleware])
    app[STATE] = PspState(config)
    app.cleanup_ctx.append(_webhook_sender)
    paypal.add_routes(app)
    adyen.add_routes(app)
    return app


async def _webhook_sender(app: web.Application) -> AsyncIterator[None]:
    sender = app[STATE].webhooks
    await sender.start()
    try:
        yield
    finally:
        await sender.stop()
