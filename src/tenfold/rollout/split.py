"""The sticky A/B split: which of 100 buckets a user key falls in, and which arm a bucket goes to.

HAProxy computes the same bucket in its frontend (``req.fhdr(<user key header>),xxh32,mod(100)``), so
the Python side (the server attributing a prediction, the feedback join, the canary analysis) and the
load balancer always agree. A bucket goes to the canary when it is below the canary percentage: raising
the percentage only ever moves users from stable to canary, never back and forth.
"""

from __future__ import annotations

import xxhash

BUCKETS = 100
STABLE, CANARY = "stable", "canary"
ARMS = (STABLE, CANARY)


def bucket_of(user_key: str) -> int:
    """The user's bucket, 0..99: xxh32 (seed 0) of the key's UTF-8 bytes, modulo 100, as HAProxy hashes it."""
    return xxhash.xxh32_intdigest(user_key.encode(), seed=0) % BUCKETS


def arm_of(bucket: int, canary_percent: int) -> str:
    """``canary`` when ``bucket`` is below ``canary_percent`` (0-100), else ``stable``."""
    if not 0 <= canary_percent <= 100:
        raise ValueError(f"canary percent {canary_percent} is not within 0..100")
    return CANARY if bucket < canary_percent else STABLE
