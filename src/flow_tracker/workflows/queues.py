"""Workflow steps on Celery, RQ and Dramatiq: the step task each runs, and how steps are sent.

Each integration's ``install`` calls the function here for its system: it
declares the one task that runs any step (``flow_tracker.workflow_step``), which
the integration does not track itself (the step's own process is its record),
and registers how a step is sent, with the system's own delayed delivery for a
retry's backoff:

* Celery: ``send_task`` with ``countdown`` (the worker holds the message until due);
* RQ: ``Queue.enqueue_in`` (the worker must run with its scheduler:
  ``rq worker --with-scheduler``);
* Dramatiq: ``broker.enqueue(message, delay=...)`` (its delay queue).

No worker is held while a step waits to retry.
"""

from __future__ import annotations

import functools
import time
from datetime import timedelta
from typing import Any

from flow_tracker.store.workflows import Dispatch
from flow_tracker.workflows import timeouts
from flow_tracker.workflows.definition import on_queue_used
from flow_tracker.workflows.engine import STEP_TASK_NAME, execute_step, register_sender

RQ_STEP_FUNCTION = "flow_tracker.workflows.queues.rq_step"
# How often a queue delivers a step it could not take (the database away) before the
# reaper's recovery is left to send it again.
DELIVERY_RETRIES = 10


# -- Celery ------------------------------------------------------------------------------

_celery_apps: list[Any] = []


def install_celery(app: Any) -> None:
    """Declare the step task on ``app`` (once) and send steps through it."""
    if not any(known is app for known in _celery_apps):
        _celery_apps.append(app)

        @app.task(  # type: ignore[untyped-decorator]
            name=STEP_TASK_NAME,
            shared=False,
            autoretry_for=(Exception,),
            retry_backoff=True,
            max_retries=DELIVERY_RETRIES,
        )
        def workflow_step(workflow: str, run_id: str, step: str, job_id: str) -> None:
            execute_step("celery", workflow, run_id, step, job_id)

    register_sender("celery", functools.partial(_send_celery, app))


def _send_celery(app: Any, dispatch: Dispatch) -> None:
    app.send_task(
        STEP_TASK_NAME,
        args=dispatch.args(),
        queue=dispatch.queue_name,
        task_id=dispatch.message_id(),
        countdown=dispatch.delay if dispatch.delay > 0 else None,
        **timeouts.celery_options(dispatch),  # the step's timeout: Celery's time limits
    )


# -- RQ ----------------------------------------------------------------------------------


def rq_step(workflow: str, run_id: str, step: str, job_id: str) -> None:
    """The RQ job that runs one step (enqueued by path, so workers import it by name)."""
    execute_step("rq", workflow, run_id, step, job_id)


def install_rq(connection: Any) -> None:
    """Send steps through RQ, with ``connection`` (or the running job's) to Redis."""
    register_sender("rq", functools.partial(_send_rq, connection))


def _send_rq(connection: Any, dispatch: Dispatch) -> None:
    from rq import Queue, get_current_job

    job = get_current_job()
    conn = connection if connection is not None else getattr(job, "connection", None)
    if conn is None:
        raise RuntimeError(
            "RQ needs a Redis connection to send workflow steps: "
            "flow_tracker.integrations.rq.install(connection=Redis(...))"
        )
    queue = Queue(dispatch.queue_name, connection=conn)
    options: dict[str, Any] = {"job_id": dispatch.message_id(), "result_ttl": 0}
    options.update(timeouts.rq_options(dispatch))  # the step's timeout: RQ's job_timeout
    if dispatch.delay > 0:
        queue.enqueue_in(timedelta(seconds=dispatch.delay), rq_step, *dispatch.args(), **options)
    else:
        queue.enqueue(rq_step, *dispatch.args(), **options)


# -- Dramatiq ----------------------------------------------------------------------------


def install_dramatiq(broker: Any) -> None:
    """Declare the step actor on ``broker`` (once) and send steps through it."""
    import dramatiq

    if STEP_TASK_NAME not in broker.actors:

        def workflow_step(workflow: str, run_id: str, step: str, job_id: str) -> None:
            execute_step("dramatiq", workflow, run_id, step, job_id)

        declare = dramatiq.actor(
            actor_name=STEP_TASK_NAME, broker=broker, max_retries=DELIVERY_RETRIES
        )
        declare(workflow_step)
    register_sender("dramatiq", functools.partial(_send_dramatiq, broker))
    # A worker consumes the queues declared on its broker: every queue steps use.
    on_queue_used("dramatiq", broker.declare_queue)


def _send_dramatiq(broker: Any, dispatch: Dispatch) -> None:
    import dramatiq

    message: Any = dramatiq.Message(
        queue_name=dispatch.queue_name,
        actor_name=STEP_TASK_NAME,
        args=tuple(dispatch.args()),
        kwargs={},
        options=timeouts.dramatiq_options(dispatch),  # the step's timeout: its time_limit
        message_id=dispatch.message_id(),
        message_timestamp=int(time.time() * 1000),
    )
    delay = int(dispatch.delay * 1000)
    broker.enqueue(message, delay=delay if delay > 0 else None)
