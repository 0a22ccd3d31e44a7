"""edgectl's edits of routing.yaml: change ``new_percent`` values and nothing else, then write atomically.

ruamel.yaml's round-trip loader finds where each value sits (line and column), but the text is
edited in place at those positions instead of being re-dumped: a dump re-indents block sequences
and may re-flow lines an operator wrote by hand, while a positional edit leaves every other
byte of the file as it was. A semantic check afterwards proves that only the intended values
changed, so a surprising layout can at worst make edgectl refuse, never write a wrong file.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from common.routing_values import check_percent
from proxy.routing import RoutingError

KEY = "new_percent"
# One scalar token at a known column: double-quoted, single-quoted or plain (stops at flow punctuation).
_TOKEN = re.compile(r"\"[^\"\\\n]*\"|'[^'\n]*'|[^\s,\[\]{}#\"']+")


class EditError(Exception):
    """The edit was refused; the file is untouched and the message says why."""


@dataclass(frozen=True, slots=True)
class Change:
    route: str
    old: Decimal
    new: Decimal

    @property
    def changed(self) -> bool:
        return self.old != self.new


def parse_percent(raw: str) -> Decimal:
    """A PERCENT argument, by the same rule routing.yaml's new_percent is checked with."""
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise EditError(f"{raw!r} is not a number from 0 to 100") from None
    try:
        return check_percent(value, "PERCENT")
    except RoutingError as exc:
        raise EditError(str(exc).removeprefix("PERCENT: ")) from None


def format_percent(value: Decimal) -> str:
    # 12.50 → "12.5", 20.00 → "20", 1E+1 → "10": the shortest form a person would type.
    text = format(value.normalize(), "f")
    return text if "." not in text else text.rstrip("0").rstrip(".")


def _load_tree(text: str) -> CommentedMap:
    try:
        tree = YAML(typ="rt").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise EditError(f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(tree, CommentedMap) or not isinstance(tree.get("routes"), CommentedMap):
        raise EditError("the file has no routes: mapping")
    return tree


def route_names(text: str) -> list[str]:
    return [str(name) for name in _load_tree(text)["routes"]]


def _token_at(line: str, col: int, where: str) -> tuple[str, Decimal]:
    m = _TOKEN.match(line, col)
    token = m.group(0) if m else ""
    try:
        value = Decimal(token.strip("\"'")) if token else None
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        # Tags, anchors, aliases, multi-line scalars: rare enough to leave to a human editor.
        raise EditError(f"{where} is {token or line.strip()!r}, not a plain number: edit it by hand")
    return token, value


def _requote(token: str, text: str) -> str:
    """The new value written with the quoting the old one had."""
    quote = token[0] if token[0] in "\"'" else ""
    return f"{quote}{text}{quote}"


# What may sit between the value and a trailing comment: closing flow brackets, then the gap.
_GAP_BEFORE_COMMENT = re.compile(r"([\]}]*)( +)(?=#)")


def _keep_comment_column(line: str, end: int, replacement: str, old_len: int) -> tuple[str, int]:
    """Widen or narrow the gap before a trailing comment so aligned comments stay aligned."""
    gap = _GAP_BEFORE_COMMENT.match(line, end)
    if gap is None:
        return replacement, end
    width = max(1, len(gap.group(2)) - (len(replacement) - old_len))
    return replacement + gap.group(1) + " " * width, gap.end()


def _insert_anchor(route: CommentedMap) -> Any:
    # Right after `match` reads best; with match as the last key, in front of the first one.
    keys = list(route)
    i = keys.index("match") + 1 if "match" in keys else len(keys)
    return keys[i] if i < len(keys) else keys[0]


Edit = tuple[int, int, int, str]  # line, start column, end column, replacement


def _plan(lines: list[str], routes: CommentedMap, name: str, new: Decimal) -> tuple[Change, Edit | None]:
    where = f"routes.{name}.{KEY}"
    route = routes[name]
    if not isinstance(route, CommentedMap) or not route:
        raise EditError(f"routes.{name} (line {routes.lc.key(name)[0] + 1}) is not a mapping of settings")
    if KEY in route:
        line, col = route.lc.value(KEY)
        token, old = _token_at(lines[line], col, f"{where} (line {line + 1})")
        if old == new:
            return Change(name, old, new), None
        replacement, end = _keep_comment_column(lines[line], col + len(token), _requote(token, format_percent(new)), len(token))
        return Change(name, old, new), (line, col, end, replacement)
    old = Decimal(0)  # an absent new_percent means 0 (proxy/routing.py)
    if new == old:
        return Change(name, old, new), None
    line, col = route.lc.key(_insert_anchor(route))
    if route.fa.flow_style():
        insert = f"{KEY}: {format_percent(new)}, "
    else:
        eol = "\r\n" if lines[line].endswith("\r\n") else "\n"
        insert = f"{KEY}: {format_percent(new)}{eol}{' ' * col}"
    return Change(name, old, new), (line, col, col, insert)


def set_percents(text: str, wanted: Mapping[str, Decimal]) -> tuple[str, list[Change]]:
    """The text with routes[name].new_percent set for each wanted route, and what changed.

    Raises EditError for an unknown route or a value edgectl cannot edit safely.
    """
    routes = _load_tree(text)["routes"]
    unknown = [name for name in wanted if name not in routes]
    if unknown:
        known = ", ".join(str(n) for n in routes) or "none"
        raise EditError(f"unknown route {', '.join(map(repr, unknown))} (routes in the file: {known})")
    lines = text.splitlines(keepends=True)
    changes: list[Change] = []
    edits: list[Edit] = []
    for name, new in wanted.items():
        change, edit = _plan(lines, routes, name, new)
        changes.append(change)
        if edit is not None:
            edits.append(edit)
    # Bottom-up, so positions still to be applied are not shifted by the ones already applied.
    for line, start, end, replacement in sorted(edits, reverse=True):
        lines[line] = lines[line][:start] + replacement + lines[line][end:]
    new_text = "".join(lines)
    _check_only_percents_changed(text, new_text, {c.route: c.new for c in changes})
    return new_text, changes


def _check_only_percents_changed(before: str, after: str, wanted: Mapping[str, Decimal]) -> None:
    def load(text: str) -> Any:
        try:
            return YAML(typ="safe", pure=True).load(text)
        except YAMLError as exc:
            raise EditError(f"the edit would not be valid YAML ({exc}); nothing written") from None

    old, new = load(before), load(after)
    for name, value in wanted.items():
        got = new["routes"][name].pop(KEY, 0)
        old["routes"][name].pop(KEY, None)
        if isinstance(got, bool) or Decimal(str(got)) != value:
            raise EditError(f"routes.{name}.{KEY} would read {got!r}, not {format_percent(value)}; nothing written")
    if old != new:
        raise EditError("the edit would change more than new_percent (unusual YAML layout?): edit it by hand")


def write_atomic(path: Path, data: bytes, expected: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename, keeping its mode (and owner when we may).

    ``expected`` is the content the edit started from: when someone else changed the file in
    the meantime, their edit wins and ours is refused instead of silently overwriting it.
    """
    target = Path(os.path.realpath(path))  # a symlinked routing.yaml keeps its link
    st = target.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".edgectl.tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), st.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        if target.read_bytes() != expected:
            raise EditError(f"{path} changed while edgectl was editing it; nothing written, run the command again")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems cannot open a directory, which is fine.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
