"""The edge's routing.yaml loader: the edge, its gunicorn master's pre-check, edgectl.

The bytes are read by common/routing_file.py (bounded: a regular file, at most
``Settings.routing_max_bytes``, never blocking), the same reader the consumers use; the text is
then parsed whole by proxy/routing.py.

Which route names have a real new-side handler (the guard "no handler → only 0 %") is derived
here, from ``NewRoute.placeholder``, and nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.routing_file import RoutingFileError, Snapshot, decode, read_bounded
from handlers.routes import NEW_ROUTES, NewRoute
from proxy.routing import RoutingTable, parse_routing
from common.settings import Settings


@dataclass(frozen=True, slots=True)
class RoutingLoader:
    """Everything a parse depends on besides the text, built once per process from its settings."""

    env: Mapping[str, str]
    migrated: frozenset[str]
    placeholders: frozenset[str]
    default_legacy_url: str
    max_bytes: int

    @classmethod
    def for_settings(cls, settings: Settings, new_routes: Mapping[str, NewRoute] = NEW_ROUTES) -> RoutingLoader:
        return cls(
            env=settings.interpolation_env,
            migrated=frozenset(name for name, route in new_routes.items() if not route.placeholder),
            placeholders=frozenset(name for name, route in new_routes.items() if route.placeholder),
            default_legacy_url=settings.legacy_url,
            max_bytes=settings.routing_max_bytes,
        )

    def read(self, path: str | os.PathLike[str]) -> Snapshot:
        return read_bounded(path, self.max_bytes)

    def parse(self, text: str) -> RoutingTable:
        if len(text) > self.max_bytes:  # text handed over directly (edgectl's edit) obeys the same cap
            raise RoutingFileError(f"routing.yaml would be {len(text)} characters, more than the {self.max_bytes} allowed")
        return parse_routing(
            text, self.env, new_routes=self.migrated, placeholders=self.placeholders, default_legacy_url=self.default_legacy_url,
        )

    def load(self, path: str | os.PathLike[str]) -> tuple[RoutingTable, Snapshot]:
        """Read and parse the file; RoutingError (RoutingFileError for the reading part) when refused."""
        snapshot = self.read(path)
        return self.parse(decode(path, snapshot.data)), snapshot
