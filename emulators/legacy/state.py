"""Typed keys of the emulator's resources (set by ``app.create_app`` and its cleanup contexts).

The fault table and the request stats keep their keys next to their types
(``faults.FAULTS``, ``stats.STATS``).
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from emulators.legacy.psp_calls import PspClient

ENGINE = web.AppKey("legacy_engine", AsyncEngine)
PSP = web.AppKey("legacy_psp", PspClient)
# SHOP_SERVICE_TOKEN for the internal /refund/refund; "" = unset, which refuses every caller.
SERVICE_TOKEN = web.AppKey("legacy_service_token", str)
