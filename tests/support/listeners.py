"""Which local addresses a port listens on, read from the kernel (Linux /proc/net/tcp): proves loopback-only binds."""

from __future__ import annotations

import socket
from pathlib import Path

PROC_NET_TCP = Path("/proc/net/tcp")
_LISTEN = "0A"


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses something listens on at ``port``: {"127.0.0.1"} for loopback only, {"0.0.0.0"} for all."""
    found = set()
    for line in PROC_NET_TCP.read_text().splitlines()[1:]:
        fields = line.split()
        address, hex_port = fields[1].split(":")
        if fields[3] == _LISTEN and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found
