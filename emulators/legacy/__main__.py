"""``python -m emulators.legacy --port 8090 --db-url URL [--host 127.0.0.1] [--create-schema]``."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from emulators.legacy.app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emulators.legacy", description="old-shopping emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--db-url", required=True, help="SQLAlchemy async URL of the shared database")
    parser.add_argument("--create-schema", action="store_true", help="create missing tables before serving")
    parser.add_argument("--random-seed", type=int, default=0, help="seed of the fault knobs' random source")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.db_url, create_schema=args.create_schema, random_seed=args.random_seed)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
