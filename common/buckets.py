"""The one gray bucket of every process: a stable 64-bit hash of a key, mod 10000.

The edge buckets callers by their sticky key (proxy/gray.py), the consumers bucket events by
their order id (consumers/ownership.py): the same function, so "bucket < new_percent × 100 goes
new" means the same thing in routing.yaml's `routes:` and `consumers:`, raising a percentage
only ever adds keys to new, and every process and machine computes the same answer.
"""

from __future__ import annotations

from hashlib import blake2b

BUCKETS = 10_000


def bucket_of(key: str) -> int:
    """BLAKE2b-64 (big-endian) of the UTF-8 key, mod 10000: stable across processes, machines and
    Python versions (unlike ``hash()``)."""
    return int.from_bytes(blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big") % BUCKETS


def in_new(key: str, basis_points: int) -> bool:
    """Whether ``key`` falls in the new side's share of ``basis_points`` (new_percent × 100) buckets."""
    if basis_points <= 0:
        return False
    if basis_points >= BUCKETS:
        return True
    return bucket_of(key) < basis_points
