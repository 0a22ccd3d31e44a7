"""edgectl's edits of routing.yaml: change ``new_percent`` values (or ``consumers:`` entries) and nothing else, then write atomically.

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

from common.consumer_routing import CONSUMER_EVENTS, LEGACY, parse_consumers
from common.routing_values import check_percent
from common.routing_yaml import read_document
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


def _safe_load(text: str) -> Any:
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise EditError(f"the edit would not be valid YAML ({exc}); nothing written") from None


def _check_only_percents_changed(before: str, after: str, wanted: Mapping[str, Decimal]) -> None:
    old, new = _safe_load(before), _safe_load(after)
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


# --- consumers: which side applies each event type ------------------------------------------------
#
# An owner as the operator gives it: "legacy", "new", or a percentage written as {new_percent: N}.
# Semantically every form is a percentage (common/consumer_routing.py: legacy = 0, new = 100, an
# absent event type = 0), so "unchanged" and --expect compare percentages, not spellings.

OwnerArg = str | Decimal
WORDS = {"legacy": Decimal(0), "new": Decimal(100)}


def parse_owner(raw: str) -> OwnerArg:
    """An OWNER argument: legacy, new, or a percentage by the same rule as PERCENT."""
    word = raw.strip().lower()
    if word in WORDS:
        return word
    try:
        return parse_percent(raw)
    except EditError as exc:
        raise EditError(f"{exc} (OWNER is legacy, new or a percentage 0..100)") from None


def owner_percent(owner: OwnerArg) -> Decimal:
    return WORDS[owner] if isinstance(owner, str) else owner


def owner_text(percent: Decimal) -> str:
    """A share of orders as routing.yaml would spell it: legacy, new or {new_percent: N}."""
    if percent <= 0:
        return "legacy"
    if percent >= 100:
        return "new"
    return f"{{{KEY}: {format_percent(percent)}}}"


def _spelled(owner: OwnerArg) -> str:
    # A percentage is written as one even at 0 or 100: the operator asked for a split, keep it visible.
    return owner if isinstance(owner, str) else f"{{{KEY}: {format_percent(owner)}}}"


@dataclass(frozen=True, slots=True)
class ConsumerChange:
    event: str
    old: Decimal
    new: Decimal
    shown: str  # the new value as written (a percentage stays {new_percent: N} even at 0 or 100)
    note: str = ""

    @property
    def changed(self) -> bool:
        return self.old != self.new


def consumer_owners(text: str) -> dict[str, Decimal]:
    """Every event type's share on new, by the consumers' own rules (RoutingError when they reject it)."""
    root = read_document(text)
    top = root.value if root is not None and isinstance(root.value, dict) else {}
    rules = parse_consumers(top.get("consumers"))
    return {event: rules.get(event, LEGACY).new_percent for event in CONSUMER_EVENTS}


def _unknown_event(name: str) -> EditError:
    hint = ""
    if name.endswith("_cm") and name.removesuffix("_cm") in CONSUMER_EVENTS:
        hint = f"; {name} is the topic, the event type is {name.removesuffix('_cm')}"
    return EditError(f"unknown event type {name!r} (event types: {', '.join(CONSUMER_EVENTS)}{hint})")


_FLOW_MAPPING = re.compile(r"\{[^{}\n#]*\}")


def _eol(lines: list[str]) -> str:
    return "\r\n" if lines and lines[0].endswith("\r\n") else "\n"


def _section_indent(tree: CommentedMap) -> int:
    # New lines under consumers: indent as routes: entries are (the file's own style), else 2.
    routes = tree.get("routes")
    if isinstance(routes, CommentedMap) and routes and not routes.fa.flow_style():
        return max(1, int(routes.lc.key(next(iter(routes)))[1]))
    return 2


def _new_line_after(lines: list[str], line: int, text: str, eol: str) -> Edit:
    """Insert ``text`` as a line of its own after ``line`` (which may be the last, without a line break)."""
    end = len(lines[line])
    lead = "" if lines[line].endswith("\n") else eol
    return line, end, end, f"{lead}{text}{eol}"


def _insert_consumer(lines: list[str], tree: CommentedMap, event: str, owner: OwnerArg) -> Edit:
    eol = _eol(lines)
    entry = f"{event}: {_spelled(owner)}"
    if "consumers" not in tree:
        if tree.fa.flow_style() or not lines:
            raise EditError("the file has no consumers: section and is not a block mapping: "
                            f"add `consumers:` with `  {entry}` by hand")
        return _new_line_after(lines, len(lines) - 1, f"consumers:{eol}{' ' * _section_indent(tree)}{entry}", eol)
    section = tree["consumers"]
    if section is None:
        line, col = tree.lc.key("consumers")
        rest = lines[line][col:].split(":", 1)[1] if ":" in lines[line][col:] else ""
        if rest.strip() and not rest.strip().startswith("#"):
            raise EditError(f"consumers: (line {line + 1}) is {rest.strip()!r}: replace it by hand with `  {entry}` below it")
        return _new_line_after(lines, line, f"{' ' * (col + _section_indent(tree))}{entry}", eol)
    if not section:
        raise EditError(f"consumers: is an empty flow mapping: write `consumers: {{{entry}}}` by hand")
    names = list(section)
    if section.fa.flow_style():
        line, col = section.lc.key(names[0])
        return line, col, col, f"{entry}, "
    order = CONSUMER_EVENTS.index(event)
    later = [n for n in names if n in CONSUMER_EVENTS and CONSUMER_EVENTS.index(n) > order]
    last = names[-1]
    last_line, _ = section.lc.key(last)
    value_line, value_col = section.lc.value(last)
    one_line = value_line == last_line and (
        not isinstance(section[last], CommentedMap)
        or (section[last].fa.flow_style() and _FLOW_MAPPING.match(lines[last_line], value_col) is not None)
    )
    if later or not one_line:
        # In front of the next event type in domain order (or the first one): a line of its own.
        line, col = section.lc.key(later[0] if later else names[0])
        return line, col, col, f"{entry}{eol}{' ' * col}"
    return _new_line_after(lines, last_line, f"{' ' * section.lc.key(last)[1]}{entry}", eol)


def _replace_consumer(lines: list[str], section: CommentedMap, event: str, owner: OwnerArg) -> tuple[Edit, str]:
    value = section[event]
    line, col = section.lc.value(event)
    where = f"consumers.{event} (line {line + 1})"
    if isinstance(value, CommentedMap):
        if isinstance(owner, str) and value.fa.flow_style():
            m = _FLOW_MAPPING.match(lines[line], col)
            if m is None:
                raise EditError(f"{where} is a flow mapping over several lines: edit it by hand")
            replacement, end = _keep_comment_column(lines[line], m.end(), owner, len(m.group(0)))
            return (line, col, end, replacement), ""
        # {new_percent: N} stays a mapping: only its number changes (a block one keeps its lines).
        line, col = value.lc.value(KEY)
        token, _ = _token_at(lines[line], col, f"consumers.{event}.{KEY} (line {line + 1})")
        target = owner_percent(owner)
        replacement, end = _keep_comment_column(lines[line], col + len(token), _requote(token, format_percent(target)), len(token))
        note = "" if not isinstance(owner, str) else f"written as {KEY}: {format_percent(target)} in its block mapping, the same as {owner}"
        return (line, col, end, replacement), note
    m = _TOKEN.match(lines[line], col)
    token = m.group(0) if m else ""
    if token.strip("\"'") not in WORDS:
        raise EditError(f"{where} is {token or lines[line].strip()!r}, not a plain legacy or new: edit it by hand")
    new = _requote(token, owner) if isinstance(owner, str) else _spelled(owner)
    replacement, end = _keep_comment_column(lines[line], col + len(token), new, len(token))
    return (line, col, end, replacement), ""


def set_consumers(text: str, wanted: Mapping[str, OwnerArg]) -> tuple[str, list[ConsumerChange]]:
    """The text with consumers[event] set for each wanted event type, and what changed.

    Raises EditError for an unknown event type, a file the consumers reject as it is, or a value
    edgectl cannot edit safely. An event type the section leaves out is inserted (in domain
    order); a missing section is appended at the end of the file.
    """
    unknown = [name for name in wanted if name not in CONSUMER_EVENTS]
    if unknown:
        raise _unknown_event(unknown[0])
    try:
        before = consumer_owners(text)
    except RoutingError as exc:
        raise EditError(f"the consumers reject the file as it is ({exc}): fix it by hand first") from None
    tree = _load_tree(text)
    lines = text.splitlines(keepends=True)
    changes: list[ConsumerChange] = []
    edits: list[Edit] = []
    section = tree.get("consumers")
    for event, owner in wanted.items():
        target = owner_percent(owner)
        note = ""
        if before[event] != target:
            if isinstance(section, CommentedMap) and event in section:
                edit, note = _replace_consumer(lines, section, event, owner)
            else:
                edit = _insert_consumer(lines, tree, event, owner)
            edits.append(edit)
        changes.append(ConsumerChange(event, before[event], target, _spelled(owner), note))
    for line, start, end, replacement in sorted(edits, reverse=True):
        lines[line] = lines[line][:start] + replacement + lines[line][end:]
    new_text = "".join(lines)
    _check_only_consumers_changed(text, new_text, {c.event: c.new for c in changes})
    return new_text, changes


def _check_only_consumers_changed(before: str, after: str, wanted: Mapping[str, Decimal]) -> None:
    try:
        got = consumer_owners(after)
    except RoutingError as exc:
        raise EditError(f"the edit would be rejected by the consumers ({exc}); nothing written") from None
    for event, value in wanted.items():
        if got[event] != value:
            raise EditError(f"consumers.{event} would read {owner_text(got[event])}, not {owner_text(value)}; nothing written")
    old, new = _safe_load(before), _safe_load(after)
    old_section, new_section = old.pop("consumers", None) or {}, new.pop("consumers", None) or {}
    for event in wanted:
        old_section.pop(event, None)
        new_section.pop(event, None)
    if old != new or old_section != new_section:
        raise EditError("the edit would change more than consumers: (unusual YAML layout?): edit it by hand")
