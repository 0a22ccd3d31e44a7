"""The PSP emulator's control API (``/_psp/*``): fault knobs, call log, state, webhooks, health.

Served, like old shopping's knobs (emulators/legacy/admin.py, issue 9), by an app of its own on a
listener of its own on 127.0.0.1 (``python -m emulators.psp --admin-port``, default the public
port + 9: 8100 next to 8091); the public app has no ``/_psp`` paths at all. On top of the bind,
every request from a peer that is not a loopback address is refused with 403, so the knobs stay
closed even if the app is ever mounted on a wider listener.

- ``GET|POST|DELETE /_psp/faults`` (emulators/psp/faults.py for the body)
- ``GET|DELETE /_psp/calls``: every call (method, path, idempotency key, status, replayed, fault)
- ``GET /_psp/state``: PayPal orders, captures, refunds; Adyen payments, refunds
- ``GET /_psp/webhooks``: deliveries (with attempts and whether ``[accepted]``), held, pending;
  ``POST /_psp/webhooks/flush``: deliver the held ones, newest first
- ``POST /_psp/paypal/captures/{capture_id}/settle`` ``{"status": "COMPLETED" | "DECLINED"}``: a PENDING
  capture ends, as PayPal's does when the eCheck clears or its review ends (GET of the order shows it)
- ``GET /_psp/health``
"""

from __future__ import annotations

import ipaddress

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from emulators.psp import adyen, paypal
from emulators.psp.faults import CallRule, FaultError
from emulators.psp.state import STATE

ADMIN_PREFIX = "/_psp"
ADMIN_HOST = "127.0.0.1"
ADMIN_PORT_OFFSET = 9


def create_admin_app(psp: web.Application) -> web.Application:
    admin = web.Application(middlewares=[loopback_only])
    admin[STATE] = psp[STATE]
    r = admin.router
    r.add_get(ADMIN_PREFIX + "/faults", list_faults)
    r.add_post(ADMIN_PREFIX + "/faults", set_faults)
    r.add_delete(ADMIN_PREFIX + "/faults", clear_faults)
    r.add_get(ADMIN_PREFIX + "/calls", list_calls)
    r.add_delete(ADMIN_PREFIX + "/calls", clear_calls)
    r.add_get(ADMIN_PREFIX + "/state", get_state)
    r.add_get(ADMIN_PREFIX + "/webhooks", list_webhooks)
    r.add_post(ADMIN_PREFIX + "/webhooks/flush", flush_webhooks)
    r.add_post(ADMIN_PREFIX + "/paypal/captures/{capture_id}/settle", settle_paypal_capture)
    r.add_get(ADMIN_PREFIX + "/health", health)
    return admin


def is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


@web.middleware
async def loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not is_loopback(request.remote):
        return web.json_response({"error": "the PSP emulator's control API answers loopback only"}, status=403)
    return await handler(request)


def bad(field: str, message: str) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=400)


async def list_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].faults.to_json())


async def set_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return bad("body", "not JSON")
    if not isinstance(body, dict) or not body:
        return bad("body", "a JSON object: a call rule (path…), webhooks, or both")
    rule_fields = {k: v for k, v in body.items() if k != "webhooks"}
    try:
        rule = CallRule.from_json(rule_fields) if rule_fields else None
        was_out_of_order = state.faults.webhook_out_of_order
        if "webhooks" in body:
            state.faults.set_webhooks(body["webhooks"])
    except FaultError as exc:
        return bad(exc.field, str(exc))
    if rule is not None:
        state.faults.set(rule)
    if was_out_of_order and not state.faults.webhook_out_of_order:
        state.webhooks.flush()
    return web.json_response(state.faults.to_json())


async def clear_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    pattern = request.query.get("path")
    removed = state.faults.clear(pattern)
    if pattern is None:
        state.webhooks.flush()  # nothing stays held once the out-of-order knob is gone
    return web.json_response({"removed": removed, **state.faults.to_json()})


async def list_calls(request: web.Request) -> web.Response:
    return web.json_response({"calls": list(request.app[STATE].calls)})


async def clear_calls(request: web.Request) -> web.Response:
    request.app[STATE].calls.clear()
    return web.json_response({"calls": []})


async def get_state(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"paypal": paypal.snapshot(state), "adyen": adyen.snapshot(state)})


async def list_webhooks(request: web.Request) -> web.Response:
    sender = request.app[STATE].webhooks
    return web.json_response({"url": sender.url, "emitted": sender.emitted, "deliveries": list(sender.deliveries),
                              "held": sender.held, "pending": sender.pending()})


async def flush_webhooks(request: web.Request) -> web.Response:
    return web.json_response({"flushed": request.app[STATE].webhooks.flush()})


async def settle_paypal_capture(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return bad("body", "not JSON")
    status = body.get("status") if isinstance(body, dict) else None
    if status not in paypal.PENDING_ENDS:
        return bad("status", f"one of {', '.join(paypal.PENDING_ENDS)}")
    try:
        capture = paypal.settle_pending_capture(request.app[STATE], request.match_info["capture_id"], status)
    except KeyError:
        return web.json_response({"error": "no such capture"}, status=404)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=409)
    return web.json_response(capture)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})
