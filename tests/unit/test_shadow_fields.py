"""shadow/fields.py: deepdiff paths → metric field labels, bounded per route; the package is pure."""

from __future__ import annotations

import ast
import pickle
import random
import string
import sys
from pathlib import Path

import pytest

from shadow.fields import (
    MAX_FIELD_CHARS, MAX_KEY_CHARS, OTHER, WILDCARD, FieldLimiter, field_from_parts, normalise_path, parse_path,
)

SHADOW = Path(__file__).resolve().parents[2] / "shadow"


@pytest.mark.parametrize(("path", "field"), [
    ("root['data']['items'][3]['tariff']", "data.items[*].tariff"),
    ("root['data']['summary']['total']", "data.summary.total"),
    ("root", "$"),
    ("root[0]['a']", "[*].a"),
    ("root['data']['items'][12]", "data.items[*]"),
    ('root["it\'s"]', '["it\'s"]'),
    ("root['a b']['c']", '["a b"].c'),
    ("root['1001']", '["1001"]'),
    ("root['user-id']", "user-id"),
    ("data.items[*].tariff", "data.items[*].tariff"),  # already a field
    ("status", "status"),
])
def test_normalise_path(path: str, field: str) -> None:
    assert normalise_path(path) == field


def test_odd_keys_are_kept_but_truncated() -> None:
    key = "ключ with spaces/" + "x" * 200
    field = normalise_path(f"root['data'][{key!r}]")
    assert field.startswith('data["ключ with spaces/')
    assert len(field) <= len("data[") + MAX_KEY_CHARS + 2 + 1
    deep = field_from_parts(["k" * 100] * 20)
    assert len(deep) <= MAX_FIELD_CHARS


def test_unparseable_deepdiff_path_is_folded_leniently() -> None:
    # deepdiff writes a key holding both quote characters without escaping
    assert normalise_path("""root['data'][3]["a'b"c"]""") == """['data'][*]["a'b"c"]"""


def test_parse_path_both_spellings_and_wildcards() -> None:
    assert parse_path("root['data']['items'][*]['name']") == ("data", "items", WILDCARD, "name")
    assert parse_path("data.items[*].name") == ("data", "items", WILDCARD, "name")
    assert parse_path("root['a'][3]") == ("a", 3)
    assert parse_path('$["odd key"][0]') == ("odd key", 0)
    assert parse_path("root") == ()
    assert parse_path("rootcause.x") == ("rootcause", "x")
    for bad in ("root['a'", "data..x", "data[x]", "root[-1]", "a b"):
        with pytest.raises(ValueError):
            parse_path(bad)


def test_wildcard_survives_pickling() -> None:
    assert pickle.loads(pickle.dumps(WILDCARD)) is WILDCARD


def test_limiter_keeps_first_fields_then_other() -> None:
    lim = FieldLimiter(max_fields=2)
    assert lim.label("r", "a") == "a"
    assert lim.label("r", "b") == "b"
    assert lim.label("r", "c") == OTHER
    assert lim.label("r", "a") == "a"  # known fields keep their name
    assert lim.label("r2", "c") == "c"  # per route
    assert lim.label("r", "status") == "status"  # reserved: always by name
    assert lim.overflowed == 1


def test_ten_thousand_random_keys_give_bounded_labels() -> None:
    rnd = random.Random(4)
    lim = FieldLimiter(max_fields=50)
    labels = set()
    for _ in range(10_000):
        key = "".join(rnd.choices(string.ascii_letters + string.digits + " .'[]\"", k=rnd.randint(1, 80)))
        labels.add(lim.label("calc_price", normalise_path(f"root['data'][{key!r}]")))
    assert len(labels) <= 50 + 1
    assert OTHER in labels
    assert len(lim.fields("calc_price")) == 50


def test_routes_are_capped_too() -> None:
    lim = FieldLimiter(max_fields=5, max_routes=2)
    assert [lim.route(r) for r in ("a", "b", "c", "a")] == ["a", "b", OTHER, "a"]


def test_shadow_package_is_pure() -> None:
    """shadow/ imports only the standard library, deepdiff and itself (architecture.md)."""
    allowed = set(sys.stdlib_module_names) | {"deepdiff", "shadow", "__future__"}
    for source in SHADOW.glob("*.py"):
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{source.name}: relative import"
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{source.name} imports {name}"
