"""The PSP emulator behaves like the sandboxes where the clients cannot show it, and keeps its knobs to loopback.

What it proves: Adyen webhooks (AUTHORISATION, CAPTURE, REFUND, REFUND_FAILED, the last with
success "true") are signed so that adapters/adyen_hmac.py (written separately from the
emulator's signer) verifies them, and a changed field does not; they are delivered until
``[accepted]``; the duplicate and out-of-order knobs deliver copies and newest-first; PayPal's
amount rules and the approve link behave as PayPal's; the control API answers loopback peers only
and is absent from the public port; ``python -m emulators.psp`` opens both listeners.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from adapters.adyen_hmac import AdyenHmac, verified_items
from emulators.psp import create_admin_app
from tests.support.listeners import PROC_NET_TCP, listening_addresses
from tests.support.net import free_port
from tests.support.psp import (
    ADYEN_API_KEY,
    HMAC_KEY,
    MERCHANT,
    PAYPAL_CLIENT_ID,
    PAYPAL_SECRET,
    Psp,
    WebhookSink,
)

pytest_plugins = ["tests.support.psp_fixtures"]

ROOT = Path(__file__).resolve().parents[2]
CARD = {"type": "scheme", "number": "4111111111111111", "holderName": "Ada"}


async def paid(psp: Psp, key: str = "pay-1", reference: str = "O-1") -> str:
    payment = await psp.adyen().pay(reference=reference, amount=Decimal("96.07"), currency="EUR", payment_method=CARD,
                                    return_url="https://shop.example/r", idempotency_key=key)
    assert payment.psp_reference
    return payment.psp_reference


async def refund(psp: Psp, psp_reference: str, amount: str, key: str) -> str:
    done = await psp.adyen().refund(psp_reference, amount=Decimal(amount), currency="EUR", reference=f"R-{key}",
                                    idempotency_key=key)
    return done.psp_reference


async def test_every_webhook_is_signed_so_the_adapter_verifies_it(psp: Psp, webhook_sink: WebhookSink) -> None:
    ref = await paid(psp)
    await refund(psp, ref, "10.00", "refund-1")
    await psp.fault(path="/v71/payments/*/refunds", adyen_refund_failed=True, times=1)
    await refund(psp, ref, "5.00", "refund-2")
    await refund(psp, ref, "1000.00", "refund-3")  # more than is left
    await webhook_sink.wait_for(6)
    key = AdyenHmac.from_hex(HMAC_KEY)
    items = [item for body in webhook_sink.received for item in verified_items(body, key)]
    assert [(i["eventCode"], i["success"]) for i in items] == [
        ("AUTHORISATION", "true"), ("CAPTURE", "true"), ("REFUND", "true"),
        ("REFUND", "true"), ("REFUND_FAILED", "true"),  # REFUND_FAILED arrives with success "true"
        ("REFUND", "false")]
    assert all(i["merchantAccountCode"] == MERCHANT for i in items)
    assert {i["originalReference"] for i in items[1:]} == {ref}
    for field in ("pspReference", "merchantReference", "eventCode", "success"):
        tampered = dict(copy.deepcopy(items[2]))
        tampered[field] = tampered[field] + "x"
        assert not key.verify(tampered), field
    assert not AdyenHmac.from_hex("11" * 32).verify(items[0])


async def test_a_webhook_is_delivered_again_until_it_is_accepted(make_psp, webhook_sink: WebhookSink) -> None:
    psp = await make_psp(webhook_retry_seconds=0.2)
    webhook_sink.status = 503
    await paid(psp)
    deadline = time.monotonic() + 10
    while not any(d["attempts"] >= 2 for d in (await psp.webhooks())["deliveries"]):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    webhook_sink.status = 200
    await webhook_sink.wait_for(2)
    first = (await psp.webhooks())["deliveries"][0]
    assert first["accepted"] and first["attempts"] >= 2


async def test_the_duplicate_knob_delivers_each_notification_several_times(psp: Psp, webhook_sink: WebhookSink) -> None:
    await psp.fault(webhooks={"copies": 3})
    await paid(psp)
    items = await webhook_sink.wait_for(6)
    assert [i["eventCode"] for i in items] == ["AUTHORISATION"] * 3 + ["CAPTURE"] * 3
    assert len({i["additionalData"]["hmacSignature"] for i in items[:3]}) == 1  # the same notification, 3 times


async def test_the_out_of_order_knob_holds_notifications_and_delivers_them_newest_first(
        psp: Psp, webhook_sink: WebhookSink) -> None:
    await psp.fault(webhooks={"out_of_order": True})
    ref = await paid(psp)
    await refund(psp, ref, "1.00", "refund-1")
    hooks = await psp.webhooks()
    assert [h["eventCode"] for h in hooks["held"]] == ["AUTHORISATION", "CAPTURE", "REFUND"]
    assert webhook_sink.items() == []
    assert await (await psp.admin.post("/_psp/webhooks/flush")).json() == {"flushed": 3}
    items = await webhook_sink.wait_for(3)
    assert [i["eventCode"] for i in items] == ["REFUND", "CAPTURE", "AUTHORISATION"]


async def test_paypal_refuses_decimals_a_currency_does_not_have(psp: Psp) -> None:
    token = await psp.paypal()._access_token()  # the one test that speaks raw HTTP to the emulator
    for value, status in (("1040.00", 422), ("1040.5", 422), ("0", 422), ("1040", 201)):
        async with psp.session.post(
            psp.url + "/v2/checkout/orders", headers={"Authorization": f"Bearer {token.value}"},
            json={"intent": "CAPTURE", "purchase_units": [{"amount": {"currency_code": "JPY", "value": value}}]},
        ) as resp:
            body = await resp.json()
            assert resp.status == status, (value, body)
            if status == 422:
                assert body["details"][0]["issue"] in ("DECIMAL_PRECISION", "CANNOT_BE_ZERO_OR_NEGATIVE")


async def test_the_approve_link_approves_and_sends_the_payer_back_to_the_return_url(psp: Psp) -> None:
    client = psp.paypal()
    order = await client.create_order(reference="O-1", amount=Decimal("5.00"), currency="USD", request_id="c-1",
                                      return_url="https://shop.example/paypal/back", cancel_url="https://shop.example/x")
    assert order.status == "PAYER_ACTION_REQUIRED" and order.approve_url
    assert (await client.get_order(order.id)).status == "PAYER_ACTION_REQUIRED"
    async with psp.session.get(order.approve_url, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"].startswith(f"https://shop.example/paypal/back?token={order.id}&PayerID=")
    assert (await client.get_order(order.id)).status == "APPROVED"


async def test_a_pending_capture_ends_by_the_knob_and_only_a_pending_one(psp: Psp) -> None:
    client = psp.paypal()
    order = await client.create_order(reference="O-2", amount=Decimal("5.00"), currency="USD", request_id="c-2")
    assert order.approve_url and await psp.approve(order.approve_url) == 200
    await psp.fault(path="/v2/checkout/orders/*/capture", paypal_capture_status="PENDING", times=1)
    result = await client.capture_order(order.id, request_id="c-2:capture")
    assert not result.paid and result.capture is not None and result.capture.status == "PENDING"
    settle = f"/_psp/paypal/captures/{result.capture.id}/settle"
    assert (await psp.admin.post(settle, json={"status": "PAID"})).status == 400
    assert (await psp.admin.post("/_psp/paypal/captures/NOPE/settle", json={"status": "COMPLETED"})).status == 404
    assert (await psp.admin.post(settle, json={"status": "COMPLETED"})).status == 200
    read = await client.get_order(order.id)
    assert [(c.id, c.status) for c in read.captures] == [(result.capture.id, "COMPLETED")]
    assert (await psp.admin.post(settle, json={"status": "DECLINED"})).status == 409  # ended already


async def test_the_public_port_has_no_control_paths(psp: Psp) -> None:
    for method in ("GET", "POST", "DELETE"):
        async with psp.session.request(method, psp.url + "/_psp/faults", json={"path": "*", "error_status": 500}) as resp:
            assert resp.status in (404, 405)
    assert (await (await psp.admin.get("/_psp/faults")).json())["rules"] == []  # none of those set a rule


async def test_a_bad_knob_is_refused_and_names_the_field(psp: Psp) -> None:
    for body, field in (({"path": "/x", "error_status": 700}, "error_status"), ({"path": "/x", "nope": 1}, "nope"),
                        ({"webhooks": {"copies": 0}}, "webhooks"), ({"path": "x"}, "path")):
        resp = await psp.admin.post("/_psp/faults", json=body)
        assert resp.status == 400 and field in (await resp.json())["field"], body
    assert (await (await psp.admin.get("/_psp/faults")).json())["rules"] == []


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (the one a default route would use), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: connect() on UDP only picks the source address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_the_control_api_refuses_a_peer_that_is_not_loopback(
        psp: Psp, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    exposed = await aiohttp_server(create_admin_app(psp.server.app), host=address)
    async with psp.session.post(str(exposed.make_url("/_psp/faults")), json={"path": "*", "error_status": 500}) as resp:
        assert resp.status == 403
    async with psp.session.get(str(exposed.make_url("/_psp/state"))) as resp:
        assert resp.status == 403
    assert (await (await psp.admin.get("/_psp/faults")).json())["rules"] == []  # nothing was set


def answers(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> int | None:
    """The HTTP status `url` answers with, or None while nothing listens there."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers or {}), timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.mark.skipif(not PROC_NET_TCP.exists(), reason="reads the listening sockets from /proc/net/tcp")
def test_the_emulator_process_serves_both_psps_and_its_knobs_on_loopback_only() -> None:
    port, admin = free_port(), free_port()
    env = {**os.environ, "PAYPAL_CLIENT_ID": PAYPAL_CLIENT_ID, "PAYPAL_SECRET": PAYPAL_SECRET,
           "ADYEN_API_KEY": ADYEN_API_KEY, "ADYEN_MERCHANT_ACCOUNT": MERCHANT, "ADYEN_HMAC_KEY": HMAC_KEY}
    command = [sys.executable, "-m", "emulators.psp", "--host", "0.0.0.0", "--port", str(port),
               "--admin-port", str(admin), "--no-webhooks"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    basic = base64.b64encode(f"{PAYPAL_CLIENT_ID}:{PAYPAL_SECRET}".encode()).decode()
    try:
        health = f"http://127.0.0.1:{admin}/_psp/health"
        deadline = time.monotonic() + 30
        while answers(health) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "the emulator did not come up"
            time.sleep(0.1)
        assert (listening_addresses(port), listening_addresses(admin)) == ({"0.0.0.0"}, {"127.0.0.1"})
        assert answers(health) == 200
        assert answers(f"http://127.0.0.1:{port}/_psp/health") == 404
        # The credentials came from the same settings the clients read.
        assert answers(f"http://127.0.0.1:{port}/v1/oauth2/token", b"grant_type=client_credentials",
                       {"Authorization": f"Basic {basic}"}) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=15)[0]
    assert proc.returncode == 0, out  # SIGTERM closes both listeners cleanly
    for secret in (PAYPAL_SECRET, ADYEN_API_KEY, HMAC_KEY):
        assert secret not in out
