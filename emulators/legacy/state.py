"""Typed key of the emulator's database engine (set by ``app.create_app``'s cleanup context).

The fault table and the request stats keep their keys next to their types
(``faults.FAULTS``, ``stats.STATS``).
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

ENGINE = web.AppKey("legacy_engine", AsyncEngine)
