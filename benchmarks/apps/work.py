"""The two benchmark jobs, shared by every queue: trivial, and 10 flows + 10 logs."""

from __future__ import annotations

import os

from redis import Redis

import flow_tracker

_redis: Redis | None = None
COUNTER = "flow-tracker-bench:done"


def _done() -> None:
    global _redis
    if _redis is None:
        _redis = Redis.from_url(os.environ.get("FT_BENCH_REDIS", "redis://127.0.0.1:6379/10"))
    _redis.incr(COUNTER)


def trivial() -> None:
    """Does nothing but say it is done."""
    _done()


def busy() -> None:
    """Ten flows, each with one log entry."""
    for step in range(10):
        with flow_tracker.flow(f"step {step}") as flow:
            flow.info("processed", data={"step": step})
    _done()
