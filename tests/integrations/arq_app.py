"""The arq worker settings and jobs the integration tests run in real worker processes.

Workers run ``arq tests.integrations.arq_app.WorkerSettings``; the queue is named
for the test run (``FT_TEST_ARQ_QUEUE``, inherited from the test process).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, cast

import redis
from arq import Retry
from arq.connections import RedisSettings
from arq.worker import func

import flow_tracker
from flow_tracker.integrations import arq as ft_arq
from tests.integrations import job_bodies

REDIS_URL = os.environ.get("FT_TEST_ARQ_REDIS", "redis://127.0.0.1:6379/15")
QUEUE = os.environ.get("FT_TEST_ARQ_QUEUE", "ft-arq-default")
_redis = redis.Redis.from_url(REDIS_URL)


async def succeed(ctx: dict[str, Any], i: int) -> int:
    assert isinstance(flow_tracker.current(), flow_tracker.Tracker)
    return job_bodies.my_job(i)


async def fail(ctx: dict[str, Any], i: int) -> None:
    job_bodies.failing_job(i)


async def flaky(ctx: dict[str, Any], i: int) -> int:
    """Asks for a retry on its first attempt, succeeds on the second."""
    with flow_tracker.flow("try"):
        if ctx["job_try"] == 1:
            raise Retry(defer=0.2)
    return i


async def always_fail(ctx: dict[str, Any], i: int) -> None:
    """Retried while tries are left (max_tries=3), then fails with its own error."""
    with flow_tracker.flow("try"):
        if ctx["job_try"] < 3:
            raise Retry(defer=0.2)
        raise ConnectionError("never works")


async def parent_job(ctx: dict[str, Any]) -> str:
    job = await ctx["redis"].enqueue_job("child_job")
    return str(job.job_id)


async def child_job(ctx: dict[str, Any]) -> str:
    return "child"


async def killed_once(ctx: dict[str, Any], key: str) -> str:
    """Hangs on its first run (the test kills its worker there); returns on the next."""
    with flow_tracker.flow("work"):
        if _redis.incr(f"ft-arq:{key}:runs") == 1:
            _redis.set(f"ft-arq:{key}:started", os.getpid())
            await asyncio.sleep(600)
    return "done"


@ft_arq.tracked(
    flow_tracker_exclusive={"name": "ft-test-charge", "key": "{user_id}", "on_conflict": "skip"}
)
async def charge(ctx: dict[str, Any], user_id: str) -> str:
    """Runs inside its own critical section (the per-function option)."""
    return job_bodies.charge(user_id)


async def guarded_block(ctx: dict[str, Any], user_id: str) -> str:
    """A critical section as a block inside the job."""
    async with flow_tracker.exclusive("ft-test-charge", key=user_id, on_conflict="skip"):
        return job_bodies.charge(user_id)


class WorkerSettings:
    """What ``arq tests.integrations.arq_app.WorkerSettings`` runs."""

    functions = [
        succeed,
        fail,
        flaky,
        func(always_fail, max_tries=3),
        parent_job,
        child_job,
        killed_once,
        charge,
        guarded_block,
    ]
    queue_name = QUEUE
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = 4
    poll_delay = 0.1
    keep_result = 600


ft_arq.install(WorkerSettings)

# A workflow of three steps on arq; each step counts its runs in Redis.
orders = flow_tracker.workflow("arq_orders", queue="arq", queue_name=QUEUE)


def hit(context: dict[str, Any], step: str) -> int:
    """Count one run of ``step`` in the run with this context; return how many so far."""
    return int(_redis.incr(f"ft-arq:{context['key']}:{step}"))


@orders.step()
def validate(context: dict[str, Any]) -> dict[str, Any]:
    hit(context, "validate")
    return {"total": 42}


@orders.step(depends_on=["validate"], retries=2, backoff=0.2, jitter=0.0)
def pay(context: dict[str, Any], validate: dict[str, Any]) -> dict[str, Any]:
    if hit(context, "pay") == 1:
        raise TimeoutError("the gateway timed out")
    return {"paid": validate["total"]}


@orders.step(depends_on=["pay"])
async def confirm(context: dict[str, Any], pay: dict[str, Any]) -> str:
    hit(context, "confirm")
    await asyncio.sleep(0)
    return f"paid {pay['paid']}"


# A step past its timeout: arq has no per-job limit at enqueue, so the worker's own
# deadline ends each attempt (the function's late return changes nothing).
timed = flow_tracker.workflow("arq_timed", queue="arq", queue_name=QUEUE)


@timed.step(timeout=1, retries=1, backoff=0.2, jitter=0.0)
def hang(context: dict[str, Any]) -> str:
    hit(context, "hang")
    for _ in range(100):
        time.sleep(0.1)
    return "never"


def runs(key: str) -> dict[str, int]:
    """How often each step (or job) counting under ``key`` ran."""
    found = {}
    for name in _redis.scan_iter(f"ft-arq:{key}:*"):
        counter = name.decode().rsplit(":", 1)[1]
        if counter != "started":
            found[counter] = int(_redis.get(name) or 0)
    return found


def started_pid(key: str) -> int | None:
    """The pid of the worker that runs ``killed_once(key)``'s first run, once it runs."""
    value = _redis.get(f"ft-arq:{key}:started")
    return None if value is None else int(value)


def clear_queue() -> None:
    """Delete this run's queue and the jobs, results and marks arq keeps for it."""
    ids = [i.decode() for i in cast("list[bytes]", _redis.zrange(QUEUE, 0, -1))]
    keys = [f"arq:{kind}:{i}" for i in ids for kind in ("job", "in-progress", "retry", "result")]
    _redis.delete(QUEUE, *keys)
