"""A real, seeded shop database for tests that go through the new side."""

from __future__ import annotations

from shop.db import create_all, drop_all, make_engine
from shop.seed import seed_demo


async def seed_database(url: str) -> str:
    """Recreate the contract's tables at `url` and load the demo data (the worked example included)."""
    engine = make_engine(url)
    try:
        await drop_all(engine)
        await create_all(engine)
        await seed_demo(engine)
    finally:
        await engine.dispose()
    return url
