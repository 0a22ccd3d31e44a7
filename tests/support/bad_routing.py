"""Every kind of routing.yaml the black-box probe of issue 9 broke the edge with, as installable files.

Each ``BadFile`` puts itself at a path (a file, a symlink, a FIFO, a directory) and says what the
rejection must name: the key and line for a bad value, a phrase for a file that can't be read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NEW_PERCENT_LINE = 6


def routing_text(legacy_url: str, new_percent: str = "0", extra: str = "") -> str:
    """A one-route routing.yaml, ``new_percent`` on line 6, ``extra`` appended at the top level."""
    return (
        "version: 1\n"
        f"legacy_url: {legacy_url}\n"
        "routes:\n"
        "  calc_price:\n"
        "    match: {methods: [POST], path: /shopping/cal_price/v4_4}\n"
        f"    new_percent: {new_percent}\n"
        f"{extra}"
    )


def alias_bomb(levels: int = 9) -> str:
    """Billion laughs: ``levels`` lines of nine aliases each, 9**levels values once expanded (half a KB at 9)."""
    lines = ["bomb:", '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def deep(depth: int = 20_000) -> str:
    return "[" * depth + "]" * depth


@dataclass(frozen=True)
class BadFile:
    name: str
    install: Callable[[Path, str], None]  # (path, legacy_url)
    names: str  # what the rejection message must contain
    line: int | None = None  # the line it must name, for a bad value


def _value(name: str, value: str) -> BadFile:
    def install(path: Path, legacy_url: str) -> None:
        _replace(path, lambda tmp: tmp.write_text(routing_text(legacy_url, value)))

    return BadFile(name, install, "routes.calc_price.new_percent", NEW_PERCENT_LINE)


def _text(name: str, make: Callable[[str], str], names: str, line: int | None) -> BadFile:
    def install(path: Path, legacy_url: str) -> None:
        _replace(path, lambda tmp: tmp.write_text(make(legacy_url)))

    return BadFile(name, install, names, line)


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """Atomically, as edgectl does: the watch must judge the finished file, not a half-written one."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    remove(path)
    tmp.replace(path)


def remove(path: Path) -> None:
    """Whatever a BadFile left at ``path``, gone (a directory can't be renamed over)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _symlink_to_dev_zero(path: Path, legacy_url: str) -> None:
    remove(path)
    path.symlink_to("/dev/zero")


def _fifo(path: Path, legacy_url: str) -> None:
    remove(path)
    os.mkfifo(path)


def _directory(path: Path, legacy_url: str) -> None:
    remove(path)
    path.mkdir()


def _oversize(path: Path, legacy_url: str) -> None:
    _replace(path, lambda tmp: tmp.write_text(routing_text(legacy_url, "0", "# padding\n" * 200_000)))


def _not_utf8(path: Path, legacy_url: str) -> None:
    _replace(path, lambda tmp: tmp.write_bytes(routing_text(legacy_url, "0").encode() + b"# \xff\xfe\n"))


BAD_VALUES = [
    _value("leading_zero", "05"),
    _value("octal", "017"),
    _value("sexagesimal", "1:30"),
    _value("nan", ".nan"),
    _value("inf", ".inf"),
    _value("minus_inf", "-.inf"),
    _value("hex", "0x10"),
    _value("five_thousand_digits", "1" + "0" * 5000),
    _value("tagged_int", '!!int "05"'),
    _value("deep_nesting", deep()),
]

BAD_FILES = [
    *BAD_VALUES,
    _text("alias_bomb", lambda url: routing_text(url, "0", alias_bomb()), "bomb.a0", 8),
    _text("admin_token_interpolated", lambda url: routing_text("${EDGE_ADMIN_TOKEN}"), "legacy_url", 2),
    _text("two_documents", lambda url: routing_text(url) + "---\n" + routing_text(url), "more than one YAML document", 7),
    BadFile("symlink_to_dev_zero", _symlink_to_dev_zero, "is a character device"),
    BadFile("fifo", _fifo, "is a FIFO"),
    BadFile("directory", _directory, "is a directory"),
    BadFile("oversize", _oversize, "more than the 1048576 allowed"),
    BadFile("not_utf8", _not_utf8, "is not UTF-8"),
]
