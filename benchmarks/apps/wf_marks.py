"""Timestamps the workflow benchmark's tasks and steps leave in Redis.

Each task or step of a measured chain or fan-in stores when it started and
ended (``time.time()``, one clock for every process on the machine), so the
hand-off from a parent's end to its child's start is measured the same way for
the queue's native chaining and for flow-tracker's workflows.
"""

from __future__ import annotations

import os
import time

from redis import Redis

REDIS_URL = os.environ.get("FT_BENCH_REDIS", "redis://127.0.0.1:6379/10")
_redis = Redis.from_url(REDIS_URL)


def started(key: str, index: int) -> None:
    """Note that task ``index`` of run ``key`` starts now."""
    _redis.hset(f"wfb:{key}", f"{index}s", time.time())


def ended(key: str, index: int) -> None:
    """Note that task ``index`` of run ``key`` ends now."""
    _redis.hset(f"wfb:{key}", f"{index}e", time.time())


def count(key: str) -> None:
    """Count one run of the join of run ``key`` (it must run once)."""
    _redis.incr(f"wfb:{key}:joins")


def step(key: str, index: int) -> int:
    """A trivial task or step: its marks, nothing else."""
    started(key, index)
    ended(key, index)
    return index


def marks(key: str) -> dict[str, float]:
    """Every mark of run ``key``."""
    found: dict[bytes, bytes] = _redis.hgetall(f"wfb:{key}")  # type: ignore[assignment]
    return {k.decode(): float(v) for k, v in found.items()}


def joins(key: str) -> int:
    """How often the join of run ``key`` ran."""
    return int(_redis.get(f"wfb:{key}:joins") or 0)
