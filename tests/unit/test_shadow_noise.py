"""shadow/noise.py: Diffy's rule, noise vs mismatch verdicts, bounded fields."""

from __future__ import annotations

import json

import pytest

from shadow.fields import OTHER
from shadow.noise import DiffStats, NoiseRule


def feed(stats: DiffStats, field: str, *, compared: int, mismatches: int, samples: int, noise: int,
         route: str = "calc_price") -> None:
    for i in range(compared):
        stats.record_comparison(route, [field] if i < mismatches else [])
    for i in range(samples):
        stats.record_noise(route, [field] if i < noise else [])


def test_field_that_always_differs_in_noise_too_is_noise() -> None:
    stats = DiffStats()
    feed(stats, "data.server_time", compared=100, mismatches=100, samples=10, noise=10)
    assert stats.verdict("calc_price", "data.server_time") == "noise"


def test_full_mismatch_without_noise_is_mismatch() -> None:
    stats = DiffStats()
    feed(stats, "data.summary.total", compared=100, mismatches=100, samples=10, noise=0)
    assert stats.verdict("calc_price", "data.summary.total") == "mismatch"


def test_half_mismatch_with_45_percent_noise_is_noise_under_the_relative_rule() -> None:
    stats = DiffStats()
    feed(stats, "data.x", compared=100, mismatches=50, samples=100, noise=45)
    s = stats.field_stats("calc_price", "data.x")
    assert (s.mismatch_rate, s.noise_rate) == (0.5, 0.45)
    assert stats.verdict("calc_price", "data.x") == "noise"  # 0.05 < 0.2 * 0.5
    loose = DiffStats(NoiseRule(relative=0.05))
    feed(loose, "data.x", compared=100, mismatches=50, samples=100, noise=45)
    assert loose.verdict("calc_price", "data.x") == "mismatch"  # 0.05 > 0.025


def test_absolute_threshold_and_ok() -> None:
    stats = DiffStats()
    feed(stats, "data.rare", compared=10_000, mismatches=2, samples=0, noise=0)  # 0.02 % < 0.03 %
    assert stats.verdict("calc_price", "data.rare") == "noise"
    feed(stats, "data.often", compared=0, mismatches=0, samples=0, noise=0)
    stats.record_comparison("calc_price", ["data.often"] * 3)  # counted once per comparison
    assert stats.field_stats("calc_price", "data.often").mismatches == 1
    assert stats.verdict("calc_price", "data.never") == "ok"
    assert stats.verdict("unknown", "x") == "ok"


def test_no_noise_samples_yet_means_zero_noise_rate() -> None:
    stats = DiffStats()
    stats.record_comparison("detail", ["data.status"])
    assert stats.field_stats("detail", "data.status").noise_rate == 0.0
    assert stats.verdict("detail", "data.status") == "mismatch"
    assert stats.real_fields("detail", ["data.status", "data.other"]) == ["data.status"]


def test_rule_validation() -> None:
    with pytest.raises(ValueError):
        NoiseRule(relative=2)
    with pytest.raises(ValueError):
        NoiseRule(absolute=-0.1)


def test_fields_are_bounded_and_snapshot_is_json() -> None:
    stats = DiffStats(max_fields=10)
    for i in range(10_000):
        stats.record_comparison("calc_price", [f"data.k{i}"])
        stats.record_noise("calc_price", [f"noise.k{i}"])
    fields = stats.fields("calc_price")
    assert len(fields) == 11 and OTHER in fields
    snap = stats.snapshot()
    json.dumps(snap)
    route = snap["routes"]["calc_price"]
    assert route["compared"] == route["noise_samples"] == 10_000
    # comparisons and noise share the route's budget: data.k0..4 and noise.k0..4 got names
    assert route["fields"][OTHER]["mismatches"] == 9_995
    assert snap["rule"] == {"relative": 0.2, "absolute": 0.0003}
    stats.reset("calc_price")
    assert stats.routes() == []
