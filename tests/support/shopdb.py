"""A real, seeded shop database for tests that go through the new side."""

from __future__ import annotations

from shop.db import create_all, drop_all, make_engine
from shop.seed import demo_rows, seed_demo


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


def demo_buyers(n: int) -> list[int]:
    """The first n demo users (from 2: user 1 is the worked example) whose selected cart lines are all
    active SKUs with stock for a few checkouts, and who own address id == user id."""
    rows = demo_rows()
    inactive = {s["id"] for s in rows["skus"] if not s["active"] or s["stock"] < 5}
    blocked = {c["user_id"] for c in rows["cart_items"] if c["selected"] and c["sku_id"] in inactive}
    shopping = {c["user_id"] for c in rows["cart_items"] if c["selected"]}
    return [u for u in range(2, 200) if u in shopping and u not in blocked][:n]
