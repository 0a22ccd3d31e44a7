"""`shopping-db`: create, seed, check and drop the shared shopping database."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from shop.db import check_schema, create_all, drop_all, make_engine
from shop.seed import seed_demo
from common.settings import Settings, SettingsError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopping-db", description=__doc__)
    parser.add_argument("--db-url", help="database URL (default: SHOP_DB_URL, else the local SQLite file)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("create", help="create missing tables and indexes")
    seed = commands.add_parser("seed", help="create missing tables, then replace all rows with demo data")
    seed.add_argument("--demo", action="store_true", required=True, help="the deterministic demo data set")
    commands.add_parser("check", help="exit 1 and list the problems if the schema does not match the contract")
    commands.add_parser("drop", help="drop every table of the contract")
    return parser


async def _create(engine: AsyncEngine) -> int:
    await create_all(engine)
    print("tables created")
    return 0


async def _seed(engine: AsyncEngine) -> int:
    await create_all(engine)
    await seed_demo(engine)
    print("demo data seeded")
    return 0


async def _check(engine: AsyncEngine) -> int:
    problems = await check_schema(engine)
    for problem in problems:
        print(problem)
    if problems:
        print(f"schema check failed: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("schema OK")
    return 0


async def _drop(engine: AsyncEngine) -> int:
    await drop_all(engine)
    print("tables dropped")
    return 0


_COMMANDS: dict[str, Callable[[AsyncEngine], Awaitable[int]]] = {
    "create": _create,
    "seed": _seed,
    "check": _check,
    "drop": _drop,
}


async def _run(command: str, db_url: str) -> int:
    engine = make_engine(db_url)
    try:
        return await _COMMANDS[command](engine)
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        db_url = args.db_url or Settings.from_env().db_url
    except SettingsError as exc:
        print(f"shopping-db: {exc}", file=sys.stderr)
        return 2
    try:
        shown = make_url(db_url).render_as_string(hide_password=True)
    except ArgumentError as exc:
        print(f"shopping-db: bad database URL: {exc}", file=sys.stderr)
        return 2
    # Say where we are writing (without the password) so a wrong SHOP_DB_URL is obvious.
    print(f"database: {shown}", file=sys.stderr)
    try:
        return asyncio.run(_run(args.command, db_url))
    except (OSError, DBAPIError) as exc:
        # An unreachable or refusing server is an operator problem, not a bug: no traceback.
        print(f"shopping-db: database error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
