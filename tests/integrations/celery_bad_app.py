"""A Celery app whose tasks declare bad critical sections, between good ones.

Run by real workers in ``test_celery.py``: a bad ``flow_tracker_exclusive``
option must fail the task's jobs without running them, and must not leave the
tasks declared after it unwrapped. Each body counts its runs in Redis, so a
test can prove that a refused body never ran.
"""

from __future__ import annotations

import os

from celery import Celery
from redis import Redis

import flow_tracker
from flow_tracker.integrations import celery as ft_celery

REDIS_URL = os.environ.get("FT_TEST_BACKEND", "redis://127.0.0.1:6379/14")

app = Celery(
    "ft_bad_tests",
    broker=os.environ.get("FT_TEST_BROKER", REDIS_URL),
    backend=REDIS_URL,
)
app.conf.update(broker_connection_retry_on_startup=True, task_default_queue="ft-default")
ft_celery.install(app)

SECTION = {"name": "ft-test-charge", "key": "{user_id}", "on_conflict": "skip"}


def ran(task: str, user_id: str) -> str:
    """Count one run of ``task`` for ``user_id`` in Redis."""
    Redis.from_url(REDIS_URL).incr(f"ft-test-ran:{task}:{user_id}")
    return f"{task} ran for {user_id}"


@app.task(
    shared=False,
    flow_tracker_exclusive=flow_tracker.exclusive("ft-test-charge", key="{account}"),
)
def bad_template(user_id: str) -> str:
    """Its key template names an argument the task does not have."""
    return ran("bad_template", user_id)


@app.task(shared=False)
def plain_neighbour(user_id: str) -> str:
    """No option: tracked like any task, declared after a bad one."""
    return ran("plain_neighbour", user_id)


@app.task(shared=False, flow_tracker_exclusive={**SECTION, "on_conflict": "maybe"})
def bad_on_conflict(user_id: str) -> str:
    """An unknown ``on_conflict``."""
    return ran("bad_on_conflict", user_id)


@app.task(shared=False, flow_tracker_exclusive="ft-test-charge")
def bad_type(user_id: str) -> str:
    """A lock name where an exclusive or a dict belongs."""
    return ran("bad_type", user_id)


@app.task(shared=False, flow_tracker_exclusive=SECTION)
def good_neighbour(user_id: str) -> str:
    """A valid section, declared after the bad ones: it must still be taken."""
    return ran("good_neighbour", user_id)
