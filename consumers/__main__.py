"""`shopping-consumers [--admin-port 8082] [--log-level info]`: the Kafka consumers and the outbox relay."""

from __future__ import annotations

import argparse
import asyncio
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shopping-consumers", description="Kafka consumers and the outbox relay")
    parser.add_argument("--admin-port", type=int, help="metrics and health on 127.0.0.1 (default $SHOP_CONSUMER_ADMIN_PORT or 8082)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    from common.settings import Settings, SettingsError

    try:
        settings = Settings.from_env(**({"consumer_admin_port": args.admin_port} if args.admin_port else {}))
    except SettingsError as exc:
        sys.exit(f"shopping-consumers: bad setting: {exc}")
    from common.logs import configure_logging
    from consumers.app import run

    configure_logging(args.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from common.routing_yaml import RoutingError

    try:
        asyncio.run(run(settings))
    except RoutingError as exc:  # routing.yaml's consumers: unreadable at start: never guess who owns the events
        sys.exit(f"shopping-consumers: {settings.routing_file}: {exc}")


if __name__ == "__main__":
    main()
