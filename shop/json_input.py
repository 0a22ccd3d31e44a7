"""The rules every JSON request body of the new side obeys, before any handler looks at it.

One place for what a client can send that Python's ``json`` accepts but the rest of the
stack cannot take: nesting deep enough to exhaust the stack (``json.loads`` itself raises
RecursionError near 1000 levels, the encoders and any recursive reader of the document
sooner), and lone UTF-16 surrogates (``"\\ud800"`` decodes to a ``str`` that no UTF-8
encoder — the database driver, the outbox's JSON column — will write). Both are 400
``bad_request`` naming the field, answered before any work is done.

The document is checked by an iterative walk (an explicit stack, never recursion), so the
check itself cannot run out of stack whatever the client sends.
"""

from __future__ import annotations

import json
import re
from typing import Any

from shop.errors import BadRequest

MAX_DEPTH = 64  # containers inside containers; far beyond any body of legacy-api.md (3 levels)
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json_body(raw: bytes, charset: str | None) -> Any:
    """The body as a JSON value; 400 ``bad_request`` (data names the field) for anything the handlers must not see."""
    try:
        text = raw.decode(charset or "utf-8")
    except LookupError:
        raise BadRequest(data={"field": "body", "reason": "unknown charset"}) from None
    except UnicodeDecodeError:
        raise BadRequest(data={"field": "body", "reason": "malformed JSON"}) from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # JSONDecodeError, and integers beyond Python's 4300-digit conversion limit
        raise BadRequest(data={"field": "body", "reason": "malformed JSON"}) from None
    check_document(doc)
    return doc


def check_document(doc: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH and lone surrogates in any string or key (400 naming its path)."""
    # (value, its path, its depth); the path is built only when a problem is reported.
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(doc, (), 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise _surrogate(path)
        elif isinstance(value, dict):
            if depth == MAX_DEPTH:
                raise _too_deep()
            for key, item in value.items():
                if _SURROGATE.search(key):
                    raise _surrogate((*path, key))
                stack.append((item, (*path, key), depth + 1))
        elif isinstance(value, list):
            if depth == MAX_DEPTH:
                raise _too_deep()
            stack.extend((item, (*path, i), depth + 1) for i, item in enumerate(value))


def has_lone_surrogate(text: str) -> bool:
    """True for a str no UTF-8 encoder takes: a lone surrogate from a JSON escape, or header bytes
    that were not UTF-8 (aiohttp decodes them with surrogateescape)."""
    return _SURROGATE.search(text) is not None


def json_path(path: tuple[str | int, ...]) -> str:
    """``("items", 0, "name")`` → ``items[0].name``; a lone surrogate is shown as the escape the client sent."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", part)
            out += f".{shown}" if out else shown
    return out or "body"


def _too_deep() -> BadRequest:
    return BadRequest(data={"field": "body", "reason": f"nested deeper than {MAX_DEPTH} levels"})


def _surrogate(path: tuple[str | int, ...]) -> BadRequest:
    return BadRequest(data={"field": json_path(path), "reason": "lone UTF-16 surrogate (not valid Unicode)"})
