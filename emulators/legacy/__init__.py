"""Stand-in for the old Python shopping service (a system we do not own).

Serves the legacy envelope on the shared database for the paths the edge passes
through (cart, order list), 501 for the migrated routes it does not emulate yet,
and ``/_emulator/*`` knobs (faults, stats, health) for tests and local runs.
Run it with ``python -m emulators.legacy --port 8090 --db-url URL``.
"""

from __future__ import annotations

from emulators.legacy.app import create_app

__all__ = ["create_app"]
