"""The emulator's control API: fault knobs, request stats and health, on a listener of its own.

The edge forwards every path it does not route to old shopping's public port, so whatever the
emulator served there any client could reach through the edge's public port (and make old
shopping fail in the middle of a demo). The knobs are therefore served only by this app, on
127.0.0.1 and its own port (``python -m emulators.legacy --admin-port``, default the public
port + 9: 8099 next to :8090); the public app has no ``/_emulator`` paths at all.

``create_admin_app(legacy_app)`` shares the legacy app's fault table and stats, so a rule set
here applies to the public port at once.
"""

from __future__ import annotations

from aiohttp import web

from emulators.legacy import faults, stats
from emulators.legacy.errors import error_middleware
from emulators.legacy.faults import FAULTS
from emulators.legacy.stats import STATS

ADMIN_PREFIX = "/_emulator"
ADMIN_HOST = "127.0.0.1"
ADMIN_PORT_OFFSET = 9  # default admin port = public port + 9 (8099 next to 8090)


def create_admin_app(legacy: web.Application) -> web.Application:
    admin = web.Application(middlewares=[error_middleware])
    admin[FAULTS] = legacy[FAULTS]
    admin[STATS] = legacy[STATS]
    r = admin.router
    r.add_get(ADMIN_PREFIX + "/faults", faults.list_faults, name="emulator_faults_list")
    r.add_post(ADMIN_PREFIX + "/faults", faults.set_fault, name="emulator_faults_set")
    r.add_delete(ADMIN_PREFIX + "/faults", faults.clear_faults, name="emulator_faults_clear")
    r.add_get(ADMIN_PREFIX + "/stats", stats.get_stats, name="emulator_stats")
    r.add_delete(ADMIN_PREFIX + "/stats", stats.reset_stats, name="emulator_stats_reset")
    r.add_get(ADMIN_PREFIX + "/health", health, name="emulator_health")
    return admin


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})
