"""Stand-in for the old Python shopping service (a system we do not own).

Serves the legacy envelope on the shared database for the paths the edge passes
through (cart, order list) and old shopping's own versions of the migrated routes
(pricing, checkout, detail, the pay routes and refunds, which call the PSPs itself, and
the events), so the edge can gray each of them between old and new.
Its ``/_emulator/*`` knobs (faults, stats, health) for tests and local runs are on a
separate loopback listener (``create_admin_app``), never on the port the edge forwards to.
Run it with ``python -m emulators.legacy --port 8090 --db-url URL`` (knobs on 127.0.0.1:8099).
"""

from __future__ import annotations

from emulators.legacy.admin import create_admin_app
from emulators.legacy.app import create_app

__all__ = ["create_admin_app", "create_app"]
