"""shadow/store.py: first examples per field, a hard byte cap, example building, request summaries."""

from __future__ import annotations

import json

from shadow.store import ExampleStore, make_example, render_body, summarise_request


def example(n: int, size: int = 10) -> dict:
    return {"request_id": f"r{n}", "body": "x" * size}


def test_keeps_the_first_examples_per_field() -> None:
    store = ExampleStore(per_field=5)
    results = [store.add("calc_price", "data.total", example(i)) for i in range(8)]
    assert results == [True] * 5 + [False] * 3
    assert [e["request_id"] for e in store.examples("calc_price", "data.total")] == [f"r{i}" for i in range(5)]
    assert not store.wants("calc_price", "data.total")
    assert store.wants("calc_price", "data.tariff")
    assert store.examples("calc_price", "nothing") == []


def test_bytes_used_is_the_json_size() -> None:
    store = ExampleStore()
    ex = example(1, 100)
    store.add("r", "f", ex)
    assert store.bytes_used == len(json.dumps(ex))
    store.clear("r")
    assert store.bytes_used == 0 and store.routes() == []


def test_byte_cap_holds_under_a_flood_of_megabyte_bodies() -> None:
    """Every response mismatches, on many fields, with 1 MB bodies: the total never passes the cap."""
    cap = 5_000_000
    big = b'{"data": {"blob": "' + b"x" * 1_000_000 + b'"}}'
    # raw (uncut) 2 MB examples: the store alone keeps the cap
    raw_store = ExampleStore(per_field=5, max_bytes=cap)
    accepted = 0
    for i in range(200):
        raw = {"request_id": str(i), "primary": big.decode(), "shadow": big.decode()}
        accepted += raw_store.add("calc_price", f"data.f{i % 40}", raw)
        assert raw_store.bytes_used <= cap
    assert accepted == 2 and raw_store.dropped == 198
    # built examples cut each body to 16 KB, so many more fit, and the cap still holds
    store = ExampleStore(per_field=5, max_bytes=cap)
    for i in range(1000):
        field = f"data.f{i % 100}"
        if store.wants("calc_price", field):
            store.add("calc_price", field, make_example(
                request_id=str(i), request_summary={"method": "POST"}, primary_side="legacy", primary_status=200,
                primary_body=big, shadow_status=200, shadow_body=big, diff={"x": 1}))
        assert store.bytes_used <= cap
    assert 100 < store.stored < 500 and len(store.fields("calc_price")) == 100
    assert sum(len(json.dumps(e)) for f in store.fields("calc_price")
               for e in store.examples("calc_price", f)) == store.bytes_used


def test_make_example_pretty_prints_and_cuts_bodies() -> None:
    ex = make_example(request_id="abc", request_summary={"path": "/x"}, primary_side="legacy", primary_status=200,
                      primary_body=b'{"a": 1}', shadow_status=500, shadow_body=b"\xff" + b"y" * 100, diff=None,
                      max_body_chars=50)
    assert ex["primary"] == {"side": "legacy", "status": 200, "body": '{\n  "a": 1\n}'}
    assert ex["shadow"]["side"] == "new" and ex["shadow"]["status"] == 500
    assert ex["shadow"]["body"].startswith("\ufffd" + "y" * 49) and "truncated" in ex["shadow"]["body"]
    json.dumps(ex)
    noise = make_example(request_id="n", request_summary=None, primary_side="new", primary_status=200,
                         primary_body=b"{}", shadow_status=200, shadow_body=b"{}", diff={}, kind="noise")
    assert noise["shadow"]["side"] == "new"
    assert render_body(b'{"a": "' + b"z" * 100 + b'"}', 20).endswith("characters in all]")


def test_request_summary_has_no_secrets() -> None:
    s = summarise_request(
        "POST", "/shopping/cal_price/v4_4", "token=abc&page=2",
        {"Authorization": "Bearer s3cret", "Cookie": "sid=1", "X-User-Id": "1001", "Content-Type": "application/json"},
        json.dumps({"items": [{"sku_id": 1}], "card_number": "4111", "nested": {"password": "p"}}).encode(),
    )
    text = json.dumps(s)
    assert "s3cret" not in text and "sid=1" not in text and "4111" not in text and '"p"' not in text
    assert "abc" not in s["query"] and "page=2" in s["query"]
    assert s["headers"] == {"X-User-Id": "1001", "Content-Type": "application/json"}
    assert summarise_request("POST", "/x", body=b"\x00bin")["body"] == "<4 bytes, not JSON>"
