"""The Celery app the integration tests run in real worker processes.

Broker and result backend come from ``FT_TEST_BROKER`` / ``FT_TEST_BACKEND``; the
tracking database from ``FLOW_TRACKER_DATABASE_URL`` (read by flow-tracker itself).
"""

from __future__ import annotations

import os

from celery import Celery

import flow_tracker
from flow_tracker.integrations import celery as ft_celery
from tests.integrations import job_bodies

app = Celery(
    "ft_tests",
    broker=os.environ.get("FT_TEST_BROKER", "redis://127.0.0.1:6379/14"),
    backend=os.environ.get("FT_TEST_BACKEND", "redis://127.0.0.1:6379/14"),
)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    task_default_queue="ft-default",
    # Messages a killed worker had prefetched, not started, come back after this
    # (Redis broker; Celery's default is an hour).
    broker_transport_options={"visibility_timeout": 10},
)
ft_celery.install(app)

if os.environ.get("FT_TEST_OTEL_FILE"):  # the worker's spans, for the test to read
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from flow_tracker.exporters import opentelemetry as ft_otel
    from tests.support.span_file import SpanFileExporter

    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(SpanFileExporter(os.environ["FT_TEST_OTEL_FILE"]))
    )
    ft_otel.install(provider)


@app.task
def succeed(i: int) -> int:
    return job_bodies.my_job(i)


@app.task
def fail(i: int) -> None:
    job_bodies.failing_job(i)


@app.task(bind=True, max_retries=3)
def flaky(self: object, i: int) -> int:
    """Fails its first attempt, succeeds on the second."""
    request = self.request  # type: ignore[attr-defined]
    with flow_tracker.flow("try"):
        flow_tracker.log(f"attempt {request.retries + 1}")
        if request.retries == 0:
            raise self.retry(countdown=0, exc=ConnectionError("flaky upstream"))  # type: ignore[attr-defined]
    return i


@app.task(bind=True, max_retries=2)
def always_retry(self: object, i: int) -> None:
    """Retries until its retries are exhausted (3 attempts), then fails."""
    with flow_tracker.flow("try"):
        raise self.retry(countdown=0, exc=ConnectionError("never works"))  # type: ignore[attr-defined]


@app.task
def slow_progress(steps: int) -> str:
    return job_bodies.progress_job(steps)


@app.task(acks_late=False)  # Celery's default: a killed worker takes the message with it
def sleepy(i: int, seconds: float) -> int:
    return job_bodies.sleepy_job(i, seconds)


@app.task
def parent_task() -> str:
    child = child_task.apply_async(queue=os.environ.get("FT_TEST_QUEUE", "ft-default"))
    return str(child.id)


@app.task
def child_task() -> str:
    return "child"


@app.task(
    flow_tracker_exclusive=flow_tracker.exclusive(
        "ft-test-charge", key="{user_id}", on_conflict="skip"
    )
)
def charge(user_id: str) -> str:
    """Runs inside the task's own critical section (the per-task option)."""
    return job_bodies.charge(user_id)


@app.task
def guarded_block(user_id: str) -> str:
    """A critical section as a block inside the task."""
    return job_bodies.guarded_block(user_id)
