"""A job the delivery tests enqueue again in real RQ workers: it counts its runs in Redis."""

from __future__ import annotations

import os

import redis

REDIS_URL = os.environ.get("FT_TEST_WF_REDIS", "redis://127.0.0.1:6379/12")


def count(key: str) -> int:
    """Add one to ``ft-delivery:{key}`` (how often this job ran); return the total."""
    return int(redis.Redis.from_url(REDIS_URL).incr(f"ft-delivery:{key}"))


def runs(key: str) -> int:
    """How often :func:`count` ran for ``key``."""
    return int(redis.Redis.from_url(REDIS_URL).get(f"ft-delivery:{key}") or 0)
