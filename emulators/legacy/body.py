"""Old shopping's one JSON body reader: every route with a JSON body (cart, pricing, checkout, knobs) uses it.

Malformed JSON, nesting deeper than MAX_DEPTH (old shopping's answer: 400, never a crash in
the decoder) and a string or key holding a lone UTF-16 surrogate (``"\\ud800"``: valid JSON
text, but no database write of it can succeed) are 400 ``bad_request`` naming the field.

The nesting is measured on the raw text before ``json.loads`` runs (``json.loads`` itself
raises RecursionError near 1000 levels): one pass over the brackets outside strings, no
recursion. Once the depth is known to be small, the surrogate search may recurse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from emulators.legacy.envelope import bad_request

MAX_DEPTH = 64
# A JSON string literal (skipped whole: brackets inside it do not nest) or one bracket. A string
# left open runs to the end of the text: then every match succeeds on its first try and the scan
# is linear (requiring the closing quote made a text of `"\` pairs rescan the rest from every quote).
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)
_LONE = re.compile("[\ud800-\udfff]")


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        text = raw.decode(request.charset or "utf-8")
    except (LookupError, UnicodeDecodeError):
        raise bad_request("body", "malformed JSON") from None
    if _deeper_than(text, MAX_DEPTH):
        raise bad_request("body", f"nested deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(text)
    except ValueError:  # JSONDecodeError, over-long integers
        raise bad_request("body", "malformed JSON") from None
    for where in _lone_surrogates(body, ""):
        raise bad_request(where, "lone UTF-16 surrogate")
    return body


def lone_surrogate(text: str) -> bool:
    """A str no UTF-8 write takes: a JSON \\ud800 escape, or header bytes that were not UTF-8."""
    return _LONE.search(text) is not None


def _deeper_than(text: str, limit: int) -> bool:
    if "[" not in text and "{" not in text:
        return False
    depth = 0
    for token in _TOKEN.finditer(text):
        first = token.group()[0]
        if first == "[" or first == "{":
            depth += 1
            if depth > limit:
                return True
        elif first == "]" or first == "}":
            depth -= 1
    return False


def _lone_surrogates(value: Any, where: str) -> Iterator[str]:
    """Paths (``items[0].name``) of strings and keys with a lone surrogate; ``value`` is at most MAX_DEPTH deep."""
    if isinstance(value, str):
        if _LONE.search(value):
            yield where or "body"
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _lone_surrogates(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{key}" if where else key
            if _LONE.search(key):
                yield name.encode("utf-8", "backslashreplace").decode("utf-8")
            yield from _lone_surrogates(item, name)
