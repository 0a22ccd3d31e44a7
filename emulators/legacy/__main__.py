"""``python -m emulators.legacy --port 8090 --db-url URL [--host 127.0.0.1] [--admin-port N] [--create-schema]``.

Two listeners: the public port (old shopping's API, what the edge forwards to) and the
control API (``/_emulator/*``: fault knobs, stats, health) on 127.0.0.1 only, on
``--admin-port`` (default ``--port`` + 9, so 8099 next to 8090).

PayPal, Adyen and the refund API's token come from the same variables as the new side's
(``PAYPAL_BASE_URL``, ``PAYPAL_CLIENT_ID``, ``PAYPAL_SECRET``, ``ADYEN_BASE_URL``, ``ADYEN_API_KEY``,
``ADYEN_MERCHANT_ACCOUNT``, ``SHOP_SERVICE_TOKEN``; default: the PSP emulator on :8091, no token),
as the PSP emulator reads them; ``--psp-url`` points both PSPs elsewhere, ``--psp-timeout`` and
``--psp-attempts`` bound each PSP call (secrets stay out of the command line).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from common.settings import Settings
from emulators.legacy.admin import ADMIN_HOST, ADMIN_PORT_OFFSET, create_admin_app
from emulators.legacy.app import create_app
from emulators.legacy.psp_calls import DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT_SECONDS, PspSettings

log = logging.getLogger("emulators.legacy")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emulators.legacy", description="old-shopping emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--admin-port", type=int, default=None,
        help=f"port of the control API (/_emulator/*), always on {ADMIN_HOST} (default: --port + {ADMIN_PORT_OFFSET})",
    )
    parser.add_argument("--db-url", required=True, help="SQLAlchemy async URL of the shared database")
    parser.add_argument("--create-schema", action="store_true", help="create missing tables before serving")
    parser.add_argument("--random-seed", type=int, default=0, help="seed of the fault knobs' random source")
    parser.add_argument("--psp-url", default=None,
                        help="base URL of both PSPs (default: PAYPAL_BASE_URL and ADYEN_BASE_URL)")
    parser.add_argument("--psp-timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                        help="seconds per PSP call attempt")
    parser.add_argument("--psp-attempts", type=int, default=DEFAULT_ATTEMPTS,
                        help="attempts per PSP call (same idempotency key)")
    args = parser.parse_args(argv)
    if not 0 < args.psp_timeout <= 120 or not 1 <= args.psp_attempts <= 10:
        parser.error("--psp-timeout: 0..120 seconds, --psp-attempts: 1..10")
    admin_port: int = args.port + ADMIN_PORT_OFFSET if args.admin_port is None else args.admin_port
    if not 0 < admin_port < 65536 or admin_port == args.port:
        parser.error(f"--admin-port {admin_port}: a free port other than --port")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    psp = PspSettings(
        paypal_url=args.psp_url or settings.paypal_base_url, paypal_client_id=settings.paypal_client_id,
        paypal_secret=settings.paypal_secret, adyen_url=args.psp_url or settings.adyen_base_url,
        adyen_api_key=settings.adyen_api_key, adyen_merchant_account=settings.adyen_merchant_account,
        timeout_seconds=args.psp_timeout, attempts=args.psp_attempts,
    )
    app = create_app(args.db_url, create_schema=args.create_schema, random_seed=args.random_seed, psp=psp,
                     service_token=settings.service_token)
    app.cleanup_ctx.append(_admin_listener(admin_port))
    web.run_app(app, host=args.host, port=args.port, print=None)


def _admin_listener(port: int) -> Callable[[web.Application], AsyncIterator[None]]:
    async def listener(app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(create_admin_app(app), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, ADMIN_HOST, port).start()
            log.info("control API (/_emulator/*) on http://%s:%d", ADMIN_HOST, port)
            yield
        finally:
            await runner.cleanup()

    return listener


if __name__ == "__main__":
    main()
