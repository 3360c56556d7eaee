"""The workflows the queue tests run in real workers; each step counts its runs in Redis.

A run's context carries ``key``; step ``s`` of that run adds one to
``ft-wf:{key}:s`` each time it runs, so a test reads how often every step ran.

The queues are named for the test run (:data:`RUN`, which the workers inherit
from the test process's environment): a worker left running by an earlier or a
concurrent run, on its own tracking database, never takes this run's steps
(it would find no such run there and drop them), and clearing this run's queues
never empties another's.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import redis

import flow_tracker

REDIS_URL = os.environ.get("FT_TEST_WF_REDIS", "redis://127.0.0.1:6379/12")
_redis = redis.Redis.from_url(REDIS_URL)
LEAVES = 20
# Set once by the test process; its workers read it from the environment they inherit.
RUN = os.environ.setdefault("FT_TEST_WF_RUN", f"{os.getpid()}-{uuid.uuid4().hex[:6]}")


def queue_name(system: str) -> str:
    """The queue this test run's ``system`` workers consume (``ft-wf-<system>-<run>``)."""
    return f"ft-wf-{system}-{RUN}"


def clear_queues() -> int:
    """Delete what this run's queues hold in Redis (messages, delayed ones, acks).

    Only this run's: other runs' queues and counters in the same database stay.
    Returns how many keys were deleted.
    """
    keys = list(_redis.scan_iter(f"*ft-wf-*-{RUN}*"))
    return int(_redis.delete(*keys)) if keys else 0


def hit(context: dict[str, Any], step: str) -> int:
    """Count one run of ``step`` in this run; return how many so far."""
    return int(_redis.incr(f"ft-wf:{context['key']}:{step}"))


def declare(queue: str, queue_name: str) -> dict[str, flow_tracker.Workflow]:
    """The test workflows on ``queue``: ``<queue>_orders``, ``_fan_in`` and ``_killable``."""
    orders = flow_tracker.workflow(f"{queue}_orders", queue=queue, queue_name=queue_name)

    @orders.step()
    def validate(context: dict[str, Any]) -> dict[str, Any]:
        hit(context, "validate")
        return {"total": 42}

    @orders.step(depends_on=["validate"], retries=2, backoff=0.2, jitter=0.0)
    def charge(context: dict[str, Any], validate: dict[str, Any]) -> dict[str, Any]:
        attempt = hit(context, "charge")
        fails = int(_redis.get(f"ft-wf:{context['key']}:charge_fails") or context.get("fails", 0))
        if attempt <= fails:
            raise TimeoutError(f"the gateway timed out (attempt {attempt})")
        return {"paid": validate["total"]}

    @orders.step(depends_on=["validate"])
    def reserve_stock(context: dict[str, Any], validate: dict[str, Any]) -> str:
        hit(context, "reserve_stock")
        flow_tracker.log("reserved", data={"cart": context["key"]})
        return "reserved"

    @orders.step(depends_on=["charge", "reserve_stock"])
    def confirm(context: dict[str, Any], charge: Any, reserve_stock: Any) -> list[Any]:
        hit(context, "confirm")
        return [charge, reserve_stock]

    fan_in = flow_tracker.workflow(f"{queue}_fan_in", queue=queue, queue_name=queue_name)
    fan_in.step(name="root")(lambda context: hit(context, "root"))
    leaves = [f"leaf_{i}" for i in range(LEAVES)]
    for leaf in leaves:
        fan_in.step(name=leaf, depends_on=["root"])(
            lambda context, root, leaf=leaf: hit(context, leaf)
        )

    def join(context: dict[str, Any], **parents: Any) -> int:
        hit(context, "join")
        return sum(parents.values())

    fan_in.step(name="join", depends_on=leaves)(join)

    killable = flow_tracker.workflow(f"{queue}_killable", queue=queue, queue_name=queue_name)

    @killable.step()
    def slow(context: dict[str, Any]) -> str:
        if hit(context, "slow") == 1:
            _redis.set(f"ft-wf:{context['key']}:slow_started", os.getpid())
            time.sleep(600)  # killed here
        return "done"

    @killable.step(depends_on=["slow"])
    def after(context: dict[str, Any], slow: str) -> str:
        hit(context, "after")
        return slow

    throttled = flow_tracker.workflow(f"{queue}_throttled", queue=queue, queue_name=queue_name)

    @throttled.step(retries=1, backoff=300.0, jitter=0.0)
    def call_api(context: dict[str, Any]) -> str:
        # The policy's backoff (300 s) is past the tests' deadline: only the asked
        # delay, through the queue's own delayed delivery, lets the run end in time.
        if hit(context, "call_api") == 1:
            raise flow_tracker.RetryAfter(1.0)
        return "ok"

    timed = flow_tracker.workflow(f"{queue}_timed", queue=queue, queue_name=queue_name)

    @timed.step(timeout=1, retries=1, backoff=0.2, jitter=0.0)
    def hang(context: dict[str, Any]) -> str:
        hit(context, "hang")
        # Short sleeps: Dramatiq stops a thread between bytecodes, not inside one sleep.
        for _ in range(600):
            time.sleep(0.1)
        return "never"

    return {
        "orders": orders,
        "fan_in": fan_in,
        "killable": killable,
        "throttled": throttled,
        "timed": timed,
    }


def queue_contents() -> dict[str, int]:
    """How many items each of this run's queue keys holds in Redis (messages, delayed, acks)."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    size = {"list": client.llen, "hash": client.hlen, "zset": client.zcard, "set": client.scard}
    sizes = {}
    for name in client.scan_iter(f"*ft-wf-*-{RUN}*"):
        kind = client.type(name)
        sizes[name] = int(size[kind](name)) if kind in size else -1
    return sizes


def counts(key: str) -> dict[str, int]:
    """How often each step of the run with context ``key`` ran."""
    found = {}
    for name in _redis.scan_iter(f"ft-wf:{key}:*"):
        step = name.decode().rsplit(":", 1)[1]
        if not step.endswith(("_started", "_fails")):
            found[step] = int(_redis.get(name) or 0)
    return found


def started_pid(key: str) -> int | None:
    """The pid of the process running the first attempt of ``slow`` in run ``key``."""
    value = _redis.get(f"ft-wf:{key}:slow_started")
    return None if value is None else int(value)


def set_fails(key: str, fails: int) -> None:
    """Make ``charge`` of run ``key`` fail its first ``fails`` attempts."""
    _redis.set(f"ft-wf:{key}:charge_fails", fails)
