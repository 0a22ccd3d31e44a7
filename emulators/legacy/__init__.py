"""Stand-in for the old Python shopping service (a system we do not own).

Serves the legacy envelope on the shared database for the paths the edge passes
through (cart, order list), 501 for the migrated routes it does not emulate yet.
Its ``/_emulator/*`` knobs (faults, stats, health) for tests and local runs are on a
separate loopback listener (``create_admin_app``), never on the port the edge forwards to.
Run it with ``python -m emulators.legacy --port 8090 --db-url URL`` (knobs on 127.0.0.1:8099).
"""

from __future__ import annotations

from emulators.legacy.admin import create_admin_app
from emulators.legacy.app import create_app

__all__ = ["create_admin_app", "create_app"]
