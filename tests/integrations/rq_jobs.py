"""Job functions the RQ integration tests run in real workers."""

from __future__ import annotations

import os

from redis import Redis
from rq import Queue, get_current_job

import flow_tracker
from tests.integrations import job_bodies


def succeed(i: int) -> int:
    return job_bodies.my_job(i)


def fail(i: int) -> None:
    job_bodies.failing_job(i)


def flaky(i: int) -> int:
    """Fails while it has retries left beyond one; enqueue with Retry(max=1)."""
    job = get_current_job()
    assert job is not None
    with flow_tracker.flow("try"):
        if job.retries_left:
            raise ConnectionError("flaky upstream")
    return i


def always_fail(i: int) -> None:
    with flow_tracker.flow("try"):
        raise ConnectionError("never works")


def slow_progress(steps: int) -> str:
    return job_bodies.progress_job(steps)


def parent_job(queue_name: str) -> str:
    redis = Redis.from_url(os.environ["FT_TEST_REDIS"])
    return str(Queue(queue_name, connection=redis).enqueue(child_job).id)


def child_job() -> str:
    return "child"


def noop() -> None:
    """A trivial job, for the benchmark."""


def sleepy(i: int, seconds: float) -> int:
    return job_bodies.sleepy_job(i, seconds)


@flow_tracker.exclusive("ft-test-charge", key="{user_id}", on_conflict="skip")
def charge(user_id: str) -> str:
    """Runs inside its critical section (RQ's per-job option is the decorator)."""
    return job_bodies.charge(user_id)


def guarded_block(user_id: str) -> str:
    """A critical section as a block inside the job."""
    return job_bodies.guarded_block(user_id)


def count_run(key: str) -> int:
    """Counts its runs in Redis, to prove a job ran exactly once."""
    return int(Redis.from_url(os.environ["FT_TEST_REDIS"]).incr(key))
