"""The path old shopping will serve: one canonical spelling of a request path, for matching.

Old shopping (aiohttp/yarl) percent-decodes a path before routing it, so ``/shopping/%63al_price``
*is* ``/shopping/cal_price`` to it. The edge therefore matches routing.yaml on a normal form
in which every spelling of a path that old shopping serves the same way is the same string:

- RFC 3986 §6.2.2.1/§6.2.2.2: the hex of every escape is uppercased and escapes of unreserved
  characters (ALPHA / DIGIT / ``-._~``) are decoded;
- also decoded: the sub-delims and ``:``/``@``, which §3.3 allows unencoded in a segment and
  which yarl decodes as well (a literal like ``/a:b`` can't be dodged as ``/a%3Ab``);
- everything else (``/``, ``%``, ``?``, ``#``, ``\\``, controls, non-ASCII) stays or becomes an
  uppercase escape; a stray ``%`` becomes ``%25``. An encoded slash therefore never splits a
  segment, as it doesn't for old shopping.

Only percent-encoding is normalised. yarl neither removes dot segments nor merges ``//``, so
neither does this: ``/a/../b`` and ``/a//b`` are other paths to old shopping, and to the edge.
"""

from __future__ import annotations

import re
import string

UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# RFC 3986 §3.3 pchar = unreserved / pct-encoded / sub-delims / ":" / "@"
PCHAR = UNRESERVED | frozenset("!$&'()*+,;=:@")
_HEX = frozenset(string.hexdigits)
# A path already in normal form when it has no escape and nothing to escape (almost every request).
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")


def normalise_path(path: str) -> str:
    """``path`` (no query) in the edge's normal form; idempotent, and the identity on plain paths."""
    if _PLAIN.fullmatch(path):
        return path
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == "%" and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            byte = int(path[i + 1 : i + 3], 16)
            decoded = chr(byte)
            out.append(decoded if byte < 0x80 and decoded in PCHAR else f"%{byte:02X}")
            i += 3
            continue
        if c == "/" or c in PCHAR:
            out.append(c)
        else:
            out.extend(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        i += 1
    return "".join(out)


def is_origin_form(target: str) -> bool:
    """RFC 9112 §3.2.1: ``absolute-path [ "?" query ]``; no fragment, scheme, authority or ``*``."""
    return target.startswith("/") and "#" not in target
