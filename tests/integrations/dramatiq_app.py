"""The Dramatiq broker and actors the integration tests run in real worker processes."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

import flow_tracker
from flow_tracker.integrations import dramatiq as ft_dramatiq
from tests.integrations import job_bodies

REDIS_URL = os.environ.get("FT_TEST_DRAMATIQ_REDIS", "redis://127.0.0.1:6379/11")
QUEUE = os.environ.get("FT_TEST_DRAMATIQ_QUEUE", "ft-default")

# A worker that dies leaves its unacknowledged messages; other workers put them
# back after heartbeat_timeout. Tests shorten it, and do the upkeep on every call.
broker = RedisBroker(
    url=REDIS_URL,
    heartbeat_timeout=int(os.environ.get("FT_TEST_DRAMATIQ_HEARTBEAT_TIMEOUT_MS", "60000")),
    maintenance_chance=1_000_000,
)
broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL)))
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)
ft_dramatiq.install(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True)
def succeed(i: int) -> int:
    return job_bodies.my_job(i)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def fail(i: int) -> None:
    job_bodies.failing_job(i)


@dramatiq.actor(queue_name=QUEUE, max_retries=1, min_backoff=1, max_backoff=10)
def flaky(i: int) -> int:
    """Fails its first attempt, succeeds on the second."""
    message = CurrentMessage.get_current_message()
    assert message is not None
    with flow_tracker.flow("try"):
        if not message.options.get("retries"):
            raise ConnectionError("flaky upstream")
    return i


@dramatiq.actor(queue_name=QUEUE, max_retries=2, min_backoff=1, max_backoff=10)
def always_fail(i: int) -> None:
    with flow_tracker.flow("try"):
        raise ConnectionError("never works")


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def slow_progress(steps: int) -> str:
    return job_bodies.progress_job(steps)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True)
def parent_job() -> str:
    return str(child_job.send().message_id)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def child_job() -> str:
    return "child"


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop() -> None:
    """A trivial job, for the benchmark."""


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def sleepy(i: int, seconds: float) -> int:
    return job_bodies.sleepy_job(i, seconds)


@dramatiq.actor(
    queue_name=QUEUE,
    max_retries=3,
    store_results=True,
    flow_tracker_exclusive={"name": "ft-test-charge", "key": "{user_id}", "on_conflict": "skip"},
)
def charge(user_id: str) -> str:
    """Runs inside the actor's own critical section (the per-actor option)."""
    return job_bodies.charge(user_id)


@dramatiq.actor(queue_name=QUEUE, max_retries=3, store_results=True)
def guarded_block(user_id: str) -> str:
    """A critical section as a block inside the actor."""
    return job_bodies.guarded_block(user_id)
