"""The emulator's state and what a handler needs of it: config, ids, the call record, the faults' effects."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from emulators.psp.faults import NO_HITS, FaultTable, Hits
from emulators.psp.idempotency import Act, Refusal, ReplayStore, fingerprint, once
from emulators.psp.webhooks import WebhookSender

if TYPE_CHECKING:
    from common.settings import Settings

MAX_CALLS = 10_000
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@dataclass(frozen=True, slots=True)
class PspConfig:
    paypal_client_id: str = "emulator"
    paypal_secret: str = field(default="emulator", repr=False)
    adyen_api_key: str = field(default="emulator", repr=False)
    adyen_merchant_account: str = "EmulatorMerchant"
    hmac_key_hex: str = field(default="00" * 32, repr=False)
    webhook_url: str | None = None
    # PayPal's sandbox tokens live 9 h; tests shorten it to watch a client refresh.
    paypal_token_ttl: int = 32_400
    # Adyen sends CAPTURE after AUTHORISATION when the merchant account captures automatically.
    adyen_auto_capture: bool = True
    webhook_attempts: int = 5
    webhook_retry_seconds: float = 0.2
    hang_seconds: float = 300.0
    random_seed: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> PspConfig:
        """The credentials the clients use, from the same settings, so the emulator accepts them and no others."""
        return cls(paypal_client_id=settings.paypal_client_id, paypal_secret=settings.paypal_secret,
                   adyen_api_key=settings.adyen_api_key, adyen_merchant_account=settings.adyen_merchant_account,
                   hmac_key_hex=settings.adyen_hmac_key, **overrides)


class PspState:
    """Everything the emulator knows: both PSPs' books, the replay store, the faults, the call log."""

    def __init__(self, config: PspConfig) -> None:
        self.config = config
        self.rng = random.Random(config.random_seed)
        self.replays = ReplayStore()
        self.faults = FaultTable()
        self.calls: deque[dict[str, Any]] = deque(maxlen=MAX_CALLS)
        self.call_count = 0
        self.webhooks = WebhookSender(config.webhook_url, bytes.fromhex(config.hmac_key_hex), self.faults,
                                      attempts=config.webhook_attempts, retry_seconds=config.webhook_retry_seconds)
        # PayPal
        self.tokens: dict[str, float] = {}  # access token → monotonic expiry
        self.orders: dict[str, dict[str, Any]] = {}
        self.captures: dict[str, dict[str, Any]] = {}  # capture id → capture (with its order id)
        self.paypal_refunds: dict[str, dict[str, Any]] = {}
        # Adyen
        self.payments: dict[str, dict[str, Any]] = {}  # pspReference → payment
        self.adyen_refunds: dict[str, dict[str, Any]] = {}
        self.redirects: dict[str, str] = {}  # MD of a redirect action → pspReference

    def new_id(self, length: int) -> str:
        return "".join(self.rng.choice(_ID_CHARS) for _ in range(length))

    def __repr__(self) -> str:
        return f"PspState(orders={len(self.orders)}, payments={len(self.payments)})"


STATE = web.AppKey("psp_state", PspState)
CALL = web.RequestKey("psp_call", dict)  # this call's record in the call log
HITS = web.RequestKey("psp_hits", Hits)  # the fault rules' effects on this call


def call_hits(request: web.Request) -> Hits:
    return request.get(HITS, NO_HITS)


def note(request: web.Request, **fields: Any) -> None:
    record = request.get(CALL)
    if record is not None:
        record.update(fields)


async def hang_if_asked(request: web.Request) -> None:
    """After acting: with the act-then-time-out fault, never answer (until the client hangs up)."""
    if not call_hits(request).act_then_timeout:
        return
    note(request, fault="act_then_timeout")
    deadline = time.monotonic() + request.app[STATE].config.hang_seconds
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        await asyncio.sleep(0.05)
    raise web.HTTPRequestTimeout()  # only a client that waited `hang_seconds` reads this


async def respond_once(request: web.Request, provider: str, key_header: str, body: Any, act: Act, *,
                       replay_status: Callable[[int], int], reused: Act, echo_key: bool = False) -> web.Response:
    """Answer a POST that acts: `act` at most once per idempotency key, then the act-then-time-out fault."""
    state = request.app[STATE]
    key = request.headers.get(key_header)
    try:
        status, doc, replayed = await once(state.replays, provider, key,
                                           fingerprint(request.method, request.path, body), act,
                                           replay_status=replay_status, reused=reused)
    except Refusal as refusal:
        return web.json_response(refusal.body, status=refusal.status)
    note(request, replayed=replayed)
    if 200 <= status < 300 and not replayed:
        await hang_if_asked(request)
    return web.json_response(doc, status=status, headers={key_header: key} if echo_key and key else None)
