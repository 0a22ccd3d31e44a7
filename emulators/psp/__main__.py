"""``python -m emulators.psp --port 8091 [--host 127.0.0.1] [--admin-port N] [--webhook-url URL]``.

Two listeners: the public port (PayPal's and Adyen's APIs, what ``PAYPAL_BASE_URL`` and
``ADYEN_BASE_URL`` point at) and the control API (``/_psp/*``) on 127.0.0.1 only, on
``--admin-port`` (default ``--port`` + 9, so 8100 next to 8091). Credentials are the ones the
clients use, from the same settings (``PAYPAL_CLIENT_ID``, ``PAYPAL_SECRET``, ``ADYEN_API_KEY``,
``ADYEN_MERCHANT_ACCOUNT``, ``ADYEN_HMAC_KEY``), so a client configured for the emulator is
accepted and any other is not. Adyen webhooks go to ``--webhook-url`` (the edge's
``/payment_callback/adyen`` by default); ``--no-webhooks`` only records them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from aiohttp import web

from common.logs import configure_logging
from common.settings import Settings
from emulators.psp.admin import ADMIN_HOST, ADMIN_PORT_OFFSET, create_admin_app
from emulators.psp.app import create_app
from emulators.psp.state import PspConfig

log = logging.getLogger("emulators.psp")

DEFAULT_WEBHOOK_URL = "http://127.0.0.1:8080/payment_callback/adyen"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emulators.psp", description="PayPal and Adyen sandbox emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument(
        "--admin-port", type=int, default=None,
        help=f"port of the control API (/_psp/*), always on {ADMIN_HOST} (default: --port + {ADMIN_PORT_OFFSET})",
    )
    parser.add_argument("--webhook-url", default=DEFAULT_WEBHOOK_URL, help="where Adyen webhooks are POSTed")
    parser.add_argument("--no-webhooks", action="store_true", help="record Adyen webhooks without sending them")
    parser.add_argument("--token-ttl", type=int, default=32_400, help="PayPal access tokens' expires_in (seconds)")
    parser.add_argument("--random-seed", type=int, default=None, help="seed of the ids the emulator hands out")
    args = parser.parse_args(argv)
    admin_port: int = args.port + ADMIN_PORT_OFFSET if args.admin_port is None else args.admin_port
    if not 0 < admin_port < 65536 or admin_port == args.port:
        parser.error(f"--admin-port {admin_port}: a free port other than --port")
    settings = Settings.from_env()
    configure_logging("info")
    config = PspConfig.from_settings(settings, webhook_url=None if args.no_webhooks else args.webhook_url,
                                     paypal_token_ttl=args.token_ttl, random_seed=args.random_seed)
    asyncio.run(serve(create_app(config), args.host, args.port, admin_port))


async def serve(app: web.Application, host: str, port: int, admin_port: int) -> None:
    """Both listeners (the PSPs on `host`, the control API on loopback) until SIGINT or SIGTERM, then both closed."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runners = [web.AppRunner(app, access_log=None), web.AppRunner(create_admin_app(app), access_log=None)]
    try:
        for runner, (bind, at) in zip(runners, ((host, port), (ADMIN_HOST, admin_port)), strict=True):
            await runner.setup()
            await web.TCPSite(runner, bind, at).start()
        log.info("PSP emulator on http://%s:%d, control API (/_psp/*) on http://%s:%d", host, port, ADMIN_HOST,
                 admin_port)
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


if __name__ == "__main__":
    main()
