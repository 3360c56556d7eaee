"""RQ: every job (or the opted-in ones) tracked as a process.

Call :func:`install` in the process that enqueues and in the worker, before it
forks work-horses; with the ``rq worker`` command, from the module it loads with
``-c``::

    # myapp/rq_settings.py  ->  rq worker -c myapp.rq_settings
    from flow_tracker.integrations import rq as ft_rq
    ft_rq.install()                      # or install(track_all=False) + @ft_rq.tracked

RQ has no enqueue or execution hooks that wrap a job, so two methods are
wrapped, once per interpreter: ``Queue.enqueue_job`` (the job's row is stored
as queued before the job reaches Redis, and marked failed if that fails) and
``Job.perform`` (the job runs as the current process). Both the forking
``Worker`` and ``SimpleWorker`` call ``Job.perform``; the final state is stored
before ``perform`` returns, so the work-horse's ``os._exit`` loses nothing.
The forking ``Worker``'s ``fork_work_horse`` is wrapped too: its work-horses
hand their records to the worker, which stores them on its own connection
(:mod:`flow_tracker.relay`), instead of connecting to the database for each job.

In a forked work-horse the job's end is stored before ``perform`` returns even
with ``completion_timeout=0``, since ``os._exit`` skips the flush at exit.

A job function decorated with ``@flow_tracker.exclusive(...)`` runs inside that
critical section; a skip ends the job ``skipped``, not failed.

Jobs enqueued with ``enqueue_many`` are recorded together, in one write, before
the batch reaches Redis; jobs scheduled for later, or waiting on another job,
get their row when they start. Retries (``Retry(max=...)``) run on the same row, attempt + 1.
"""

from __future__ import annotations

import contextvars
import functools
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from flow_tracker import config, job_systems, relay, runtime
from flow_tracker.errors import Skipped
from flow_tracker.jobs import (
    TRACE_HEADER,
    enqueued_together,
    finish_job,
    record_enqueued,
    record_publish_failed,
    skip_if_requeued,
    start_job,
    trace_carrier,
    warm_up,
)
from flow_tracker.status import Status
from flow_tracker.store.workflows import Dispatch
from flow_tracker.tracker import outcome_of
from flow_tracker.workflows import timeouts
from flow_tracker.workflows.engine import execute_step
from flow_tracker.workflows.queues import LEGACY_RQ_STEP_FUNCTION

try:
    import rq
    from redis import Redis
    from rq.job import Job
    from rq.queue import Queue
    from rq.timeouts import JobTimeoutException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "flow_tracker.integrations.rq needs RQ: pip install 'flow-tracker[rq]'"
    ) from exc

JOB_SYSTEM = "rq"
DEFAULT_QUEUE = "default"  # RQ's own default queue, where steps go unless named
# The job that runs a workflow step, enqueued by path so workers import it by name.
STEP_FUNCTION = "flow_tracker.integrations.rq.workflow_step"
MIN_VERSION = (2, 0)
OPT_IN_ATTRIBUTE = "__flow_tracker__"
META_OPT_IN = "flow_tracker"
META_MAX_RETRIES = "flow_tracker_max_retries"
HORSE_FLUSH_TIMEOUT_S = 10.0

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_track_all = True
_installed = False
_install_pid = 0  # the worker's own process; its forked work-horses have other pids
_connection: Redis | None = None  # for flow_tracker.requeue


def _pending(jobs: Sequence[tuple[str, str | None, Any]]) -> set[str]:
    # Every job except those RQ knows were dropped by a dead worker: started
    # longer than lost_after ago (its running row never came), or failed as
    # abandoned. Queued, deferred, finished (stored while the tracking database
    # was away) or otherwise failed jobs are not lost; neither is a job RQ does
    # not know (expired): without proof, nothing is marked lost.
    job_ids = [job_id for job_id, _queue, _payload in jobs]
    if _connection is None:
        return set(job_ids)
    recent = datetime.now(timezone.utc) - timedelta(seconds=config.current().lost_after)
    dropped = set()
    for job in Job.fetch_many(job_ids, connection=_connection):
        if job is None:
            continue
        status = str(getattr(job.get_status(), "value", job.get_status()))
        started = job.started_at
        if started is not None and started.tzinfo is None:
            started = started.replace(tzinfo=timezone.utc)
        died_mid_start = status == "started" and started is not None and started <= recent
        abandoned = status == "failed" and "abandon" in str(job.exc_info or "").lower()
        # Taken off its queue by a worker killed before it marked the job started.
        orphaned = status == "queued" and _position(job) is None
        if died_mid_start or abandoned or orphaned:
            dropped.add(job.id)
    return set(job_ids) - dropped


def _position(job: Job) -> int | None:
    queue = Queue(job.origin, connection=_connection)
    return queue.get_job_position(job.id)


def _requeue(payload: Mapping[str, Any], job_id: str) -> None:
    # The stored call again, under a new job id (flow_tracker.requeue).
    if _connection is None:
        raise RuntimeError(
            "RQ needs a Redis connection to requeue: "
            "flow_tracker.integrations.rq.install(connection=Redis(...))"
        )
    queue = Queue(payload.get("queue") or "default", connection=_connection)
    queue.enqueue_call(
        func=payload["func"],
        args=tuple(payload.get("args") or ()),
        kwargs=dict(payload.get("kwargs") or {}),
        job_id=job_id,
    )


def tracked(func: F) -> F:
    """Mark a job function as tracked when :func:`install` ran with ``track_all=False``."""
    setattr(func, OPT_IN_ATTRIBUTE, True)
    return func


def install(*, track_all: bool = True, connection: Redis | None = None) -> None:
    """Track the RQ jobs of this interpreter; calling it again changes nothing else.

    Args:
        track_all: False tracks only jobs whose function is decorated with
            :func:`tracked` or that were enqueued with ``meta={"flow_tracker": True}``.
        connection: the Redis connection :func:`flow_tracker.requeue` enqueues
            with. Without it, the connection of the last queue that enqueued or
            ran a job here is used.
    """
    job_systems.check_version("RQ", rq.__version__, MIN_VERSION)
    global _track_all, _installed, _install_pid, _connection
    with _lock:
        _track_all = track_all
        if connection is not None:
            _connection = connection
        job_systems.register(
            job_systems.JobSystem(
                name=JOB_SYSTEM,
                default_queue=DEFAULT_QUEUE,
                requeue=_requeue,
                probe=_pending,
                send_step=_send_step,
                time_limits=(JobTimeoutException,),
            )
        )
        if _installed:
            return
        _installed = True
        _install_pid = os.getpid()
        _wrap_enqueue_job()
        _wrap_enqueue_many()
        _wrap_perform()
        _wrap_fork_work_horse()
        _wrap_work()
    warm_up()


def _is_tracked(job: Job) -> bool:
    if job.func_name in (STEP_FUNCTION, LEGACY_RQ_STEP_FUNCTION):
        return False  # a workflow step: its own process records it
    if _track_all or job.meta.get(META_OPT_IN):
        return True
    try:
        return bool(getattr(job.func, OPT_IN_ATTRIBUTE, False))
    except Exception:  # the function cannot be imported here (enqueued by name)
        return False


def _wrap_enqueue_job() -> None:
    original = Queue.enqueue_job

    @functools.wraps(original)
    def enqueue_job(self: Queue, job: Job, *args: Any, **kwargs: Any) -> Job:
        recorded = _record_enqueue(self, job)
        try:
            return original(self, job, *args, **kwargs)
        except Exception as exc:
            if recorded:
                record_publish_failed(JOB_SYSTEM, job.id, exc)
            raise

    Queue.enqueue_job = enqueue_job  # type: ignore[method-assign]


# Set while Queue.enqueue_many runs: its jobs are recorded together (one write).
_IN_ENQUEUE_MANY: contextvars.ContextVar[list[Job] | None] = contextvars.ContextVar(
    "flow_tracker_rq_enqueue_many", default=None
)


def _wrap_enqueue_many() -> None:
    # enqueue_many saves its jobs on a Redis pipeline through Queue._enqueue_job
    # (not enqueue_job) and executes the pipeline at the end. Each job is recorded
    # as _enqueue_job saves it (its meta is saved with it), the rows are stored in
    # one write, and only then is the pipeline executed: one round trip to the
    # database for the batch, every row still stored before its job reaches Redis.
    original_many = Queue.enqueue_many
    original_one = getattr(Queue, "_enqueue_job", None)
    if original_one is None:  # pragma: no cover - an RQ without it: rows at start
        return

    @functools.wraps(original_one)
    def _enqueue_job(self: Queue, job: Job, *args: Any, **kwargs: Any) -> Job:
        recorded = _IN_ENQUEUE_MANY.get()
        if recorded is not None and _record_enqueue(self, job):
            recorded.append(job)
        done: Job = original_one(self, job, *args, **kwargs)
        return done

    @functools.wraps(original_many)
    def enqueue_many(self: Queue, job_datas: Any, pipeline: Any = None, **kwargs: Any) -> Any:
        job_datas = list(job_datas)
        if any(getattr(data, "depends_on", None) for data in job_datas):
            # RQ executes its own pipeline between deferring such jobs and
            # enqueueing those already met: left as RQ does it (rows at start).
            return original_many(self, job_datas, pipeline=pipeline, **kwargs)
        pipe = pipeline if pipeline is not None else self.connection.pipeline()
        recorded: list[Job] = []
        token = _IN_ENQUEUE_MANY.set(recorded)
        try:
            with enqueued_together():
                jobs = original_many(self, job_datas, pipeline=pipe, **kwargs)
        finally:
            _IN_ENQUEUE_MANY.reset(token)
        if pipeline is None:
            try:
                pipe.execute()
            except Exception as exc:
                for job in recorded:
                    record_publish_failed(JOB_SYSTEM, job.id, exc)
                raise
        return jobs

    Queue._enqueue_job = _enqueue_job  # type: ignore[method-assign]
    Queue.enqueue_many = enqueue_many  # type: ignore[method-assign,assignment]


def _record_enqueue(queue: Queue, job: Job) -> bool:
    global _connection
    try:
        if _connection is None:
            _connection = queue.connection
        if not _is_tracked(job):
            return False
        # Kept in the job's meta (saved with it) to number the attempts of retries.
        job.meta[META_MAX_RETRIES] = job.retries_left or 0
        carrier = trace_carrier()
        if carrier:
            job.meta[TRACE_HEADER] = carrier  # the worker continues the sender's trace
        args, kwargs = list(job.args or ()), dict(job.kwargs or {})
        record_enqueued(
            job_system=JOB_SYSTEM,
            job_id=job.id,
            name=job.func_name or job.id,
            queue=queue.name,
            args=args,
            kwargs=kwargs,
            payload={"func": job.func_name, "args": args, "kwargs": kwargs, "queue": queue.name},
            max_attempts=(job.retries_left or 0) + 1,
        )
        return True
    except Exception as exc:
        runtime.report_internal_error(exc, "recording an RQ enqueue")
        return False


def _attempt(job: Job) -> int:
    max_retries = job.meta.get(META_MAX_RETRIES)
    if isinstance(max_retries, int):
        return max_retries - (job.retries_left or 0) + 1
    return (getattr(job, "number_of_retries", None) or 0) + 1


def _wrap_perform() -> None:
    original = Job.perform

    @functools.wraps(original)
    def perform(self: Job) -> Any:
        try:
            tracker = (
                start_job(
                    job_system=JOB_SYSTEM,
                    job_id=self.id,
                    name=self.func_name or self.id,
                    queue=self.origin,
                    attempt=_attempt(self),
                    worker=self.worker_name,
                    trace=self.meta.get(TRACE_HEADER),
                )
                if _is_tracked(self)
                else None
            )
        except Exception as exc:
            runtime.report_internal_error(exc, "starting an RQ job")
            tracker = None
        if tracker is None:
            return original(self)
        if skip_if_requeued(tracker):
            finish_job(tracker, Status.SKIPPED)
            _store_before_exit()
            return None
        try:
            result = original(self)
        except Skipped:  # exclusive(..., on_conflict="skip") as a block: not a failure
            finish_job(tracker, Status.SKIPPED)
            _store_before_exit()
            return None
        except BaseException as exc:
            status = outcome_of(exc)[0]
            if status is Status.FAILED and _will_retry(self):
                status = Status.RETRYING
            finish_job(tracker, status, exc)
            _store_before_exit()
            raise
        finish_job(tracker, Status.COMPLETED)
        _store_before_exit()
        return result

    Job.perform = perform  # type: ignore[method-assign]


def _wrap_fork_work_horse() -> None:
    # The work-horse hands its records to this worker over a socket pair opened
    # just before the fork (see flow_tracker.relay): no database connection per job.
    from rq.worker import Worker

    original = Worker.fork_work_horse

    @functools.wraps(original)
    def fork_work_horse(self: Worker, job: Job, queue: Queue) -> Any:
        pair = relay.open_for_child() if config.current().enabled else None
        try:
            return original(self, job, queue)  # the work-horse never returns from here
        finally:
            try:
                relay.after_fork_in_parent(pair, runtime.store(), runtime.writer().batch_writer)
            except Exception as exc:
                runtime.report_internal_error(exc, "serving a work-horse's records")

    Worker.fork_work_horse = fork_work_horse  # type: ignore[method-assign]


def _wrap_work() -> None:
    # A worker installed without connection= (``rq worker -c settings``) has no
    # job running while its delivery thread publishes the outbox's steps and
    # requeues, so neither a current job nor an enqueue here lends a connection:
    # the worker's own connection to Redis, known once it starts working, is the
    # one to publish with. One given to install() is kept.
    from rq.worker import BaseWorker

    original = BaseWorker.work

    @functools.wraps(original)
    def work(self: BaseWorker, *args: Any, **kwargs: Any) -> bool:
        try:
            _adopt_connection(self.connection)
        except Exception as exc:
            runtime.report_internal_error(exc, "reading an RQ worker's connection")
        return original(self, *args, **kwargs)

    BaseWorker.work = work  # type: ignore[method-assign]


def _adopt_connection(connection: Redis) -> None:
    """Publish steps and requeues with ``connection`` when install() was given none."""
    global _connection
    with _lock:
        if _connection is None:
            _connection = connection


def _store_before_exit() -> None:
    # A forking Worker's work-horse ends with os._exit, which skips flow-tracker's
    # exit flush: there, store everything now, even with completion_timeout=0.
    # A SimpleWorker runs jobs in the process that installed, and lives on.
    if os.getpid() != _install_pid:
        runtime.flush(HORSE_FLUSH_TIMEOUT_S)


def _will_retry(job: Job) -> bool:
    try:
        return bool(job.should_retry)
    except Exception:
        return bool(job.retries_left)


# -- workflow steps ------------------------------------------------------------------------
#
# A step is an RQ job of ``workflow_step``, not tracked as a job of its own (the step's
# process is its record). A retry's backoff is ``Queue.enqueue_in``: the worker must
# run with its scheduler (``rq worker --with-scheduler``); no worker waits meanwhile.


def workflow_step(workflow: str, run_id: str, step: str, job_id: str) -> None:
    """The RQ job that runs one workflow step."""
    execute_step(JOB_SYSTEM, workflow, run_id, step, job_id)


def _send_step(dispatch: Dispatch) -> None:
    job = rq.get_current_job()
    conn = _connection if _connection is not None else getattr(job, "connection", None)
    if conn is None:
        raise RuntimeError(
            "RQ needs a Redis connection to send workflow steps: "
            "flow_tracker.integrations.rq.install(connection=Redis(...))"
        )
    queue = Queue(dispatch.queue_name, connection=conn)
    options: dict[str, Any] = {"job_id": dispatch.message_id(), "result_ttl": 0}
    options.update(time_limit_options(dispatch))
    if dispatch.delay > 0:
        queue.enqueue_in(
            timedelta(seconds=dispatch.delay), workflow_step, *dispatch.args(), **options
        )
    else:
        queue.enqueue(workflow_step, *dispatch.args(), **options)


def time_limit_options(dispatch: Dispatch) -> dict[str, Any]:
    """The step's timeout as ``enqueue`` options: ``job_timeout`` in whole seconds.

    RQ's alarm counts no less than a second; the work-horse raises
    ``JobTimeoutException`` inside the step.
    """
    seconds = timeouts.limit_for(dispatch)
    return {} if seconds is None else {"job_timeout": max(1, math.ceil(seconds))}
