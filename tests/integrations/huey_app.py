"""The Huey instance and tasks the integration tests run in real ``huey_consumer`` processes.

``huey_consumer tests.integrations.huey_app.huey``: the instance is named for the
test run (``FT_TEST_HUEY_NAME``, inherited by the consumers), so its Redis keys
are this run's own, and it also carries the test workflows (``huey_orders``...),
whose steps go to this instance.
"""

from __future__ import annotations

import os
import time

from huey import RedisHuey
from huey.exceptions import RetryTask
from redis import Redis

import flow_tracker
from flow_tracker.integrations import huey as ft_huey
from tests.integrations import job_bodies
from tests.workflows import steps

REDIS_URL = os.environ.get("FT_TEST_HUEY_REDIS", "redis://127.0.0.1:6379/13")
NAME = os.environ.get("FT_TEST_HUEY_NAME", "ft_huey_default")

huey = RedisHuey(NAME, url=REDIS_URL, store_none=True)  # a skipped task returns None
ft_huey.install(huey)
WORKFLOWS = steps.declare("huey", NAME)


@huey.task()
def succeed(i: int) -> int:
    return job_bodies.my_job(i)


@huey.task()
def fail(i: int) -> None:
    job_bodies.failing_job(i)


@huey.task(retries=1, context=True)
def flaky(i: int, task: object = None) -> int:
    """Fails its first attempt (one retry left), succeeds on the second."""
    with flow_tracker.flow("try"):
        if getattr(task, "retries", 0):
            raise ConnectionError("flaky upstream")
    return i


@huey.task(retries=2)
def always_fail(i: int) -> None:
    with flow_tracker.flow("try"):
        raise ConnectionError("never works")


@huey.task()
def asks_retry(key: str) -> str:
    """Asks Huey for one more run with RetryTask (control flow, not a failure)."""
    with flow_tracker.flow("try"):
        if _redis().incr(f"ft-huey-asks-{key}") == 1:
            raise RetryTask("not yet")
    return key


@huey.task()
def slow_progress(steps: int) -> str:
    return job_bodies.progress_job(steps)


@huey.task()
def sleepy(i: int, seconds: float) -> int:
    return job_bodies.sleepy_job(i, seconds)


@huey.task()
def stall_once(key: str) -> str:
    """Hangs on its first run (its consumer is killed there); returns on the next."""
    with flow_tracker.flow("work"):
        if _redis().incr(f"ft-huey-stall-{key}") == 1:
            _redis().set(f"ft-huey-stall-{key}-pid", os.getpid())
            time.sleep(600)
    return f"done {key}"


@huey.task(
    flow_tracker_exclusive={"name": "ft-test-charge", "key": "{user_id}", "on_conflict": "skip"},
)
def charge(user_id: str) -> str:
    """Runs inside the task's own critical section (the per-task option)."""
    return job_bodies.charge(user_id)


@huey.task()
def guarded_block(user_id: str) -> str:
    """A critical section as a block inside the task."""
    return job_bodies.guarded_block(user_id)


def _redis() -> Redis:
    return Redis.from_url(REDIS_URL)
