"""What every queue integration does, in one place: the contract each queue module shares.

* :func:`record_enqueued` - in the enqueuing process, *before* the broker gets the
  message: the job's process row is stored as ``queued`` (durably, when the
  database is reachable) with job system, job id, task name, queue, captured
  arguments (redacted for display, kept intact for re-enqueue) and the parent
  process when enqueued from inside one.
* :func:`record_publish_failed` - the broker refused the message: the row says so.
* :func:`start_job` / :func:`finish_job` - in the worker: the same row becomes
  ``running`` (host, pid, worker, attempt), then ``completed``, ``retrying``
  (same row, attempt + 1 next time, flows of each attempt kept apart),
  ``failed``, ``skipped`` or ``cancelled``. The job's tracker is
  ``flow_tracker.current()`` while it runs.
* :func:`job_body` - the job's own function as the queue runs it: inside its
  critical section (the ``flow_tracker_exclusive`` option), skipped when
  :func:`flow_tracker.requeue` already sent a copy of this job (a broker that
  redelivers by itself would otherwise run it twice), and a skipped critical
  section inside it ends the job ``skipped`` instead of failing it.

A job's process id is derived from its system and job id
(:func:`flow_tracker.ids.process_id_for`), so the enqueuing process, every retry
and every worker agree on the row without carrying anything in the message.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from flow_tracker import config, runtime
from flow_tracker import events as ev
from flow_tracker.errors import DatabaseUnavailableError, Skipped, UsageError
from flow_tracker.ids import process_id_for
from flow_tracker.locks import Exclusive, exclusive
from flow_tracker.nulls import NULL_TRACKER, NullTracker
from flow_tracker.recording import open_tracker
from flow_tracker.sink import MemorySink
from flow_tracker.status import Status
from flow_tracker.tracker import CURRENT_NODE, Tracker, describe_error

F = TypeVar("F", bound=Callable[..., Any])
EXCLUSIVE_OPTION = "flow_tracker_exclusive"
WRAPPED_MARK = "__flow_tracker_job_body__"


def _payload(payload: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    # Kept for re-enqueue exactly as given, so it must be valid JSON that
    # PostgreSQL accepts (JSONB refuses \u0000); otherwise it is not kept.
    if payload is None:
        return None
    try:
        text = json.dumps(payload)
    except (TypeError, ValueError):
        return None
    return None if "\\u0000" in text else payload


# A bulk enqueue's queued rows, collected to be stored in one write (see enqueued_together),
# and the jobs whose rows were stored ahead of their publish (see recorded_ahead).
_COLLECTING: contextvars.ContextVar[list[ev.Change] | None] = contextvars.ContextVar(
    "flow_tracker_enqueue_batch", default=None
)
_RECORDED_AHEAD: contextvars.ContextVar[frozenset[tuple[str, str]]] = contextvars.ContextVar(
    "flow_tracker_recorded_ahead", default=frozenset()
)


@contextlib.contextmanager
def enqueued_together() -> Iterator[None]:
    """Store the queued rows recorded inside the block in one write, as the block ends.

    For a bulk enqueue (RQ's ``enqueue_many``, a Celery or Dramatiq group): one
    round trip for the batch instead of one per job. The caller publishes the
    messages only after the block, so every row is still stored before its
    message. Rows recorded in a block that raises are not stored (their
    messages were not published). A block inside another adds to the outer one.
    """
    if _COLLECTING.get() is not None:
        yield
        return
    events: list[ev.Change] = []
    token = _COLLECTING.set(events)
    try:
        yield
    finally:
        _COLLECTING.reset(token)
    if events:
        try:
            runtime.sink().write_now(events)
        except Exception as exc:
            runtime.report_internal_error(exc, "storing a batch of queued jobs")


@contextlib.contextmanager
def recorded_ahead(job_system: str, job_ids: Iterable[str]) -> Iterator[None]:
    """Inside the block, :func:`record_enqueued` passes over these jobs: stored already."""
    ahead = _RECORDED_AHEAD.get() | {(job_system, str(job_id)) for job_id in job_ids}
    token = _RECORDED_AHEAD.set(frozenset(ahead))
    try:
        yield
    finally:
        _RECORDED_AHEAD.reset(token)


def record_enqueued(
    *,
    job_system: str,
    job_id: str,
    name: str,
    queue: str | None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    payload: Mapping[str, Any] | None = None,
    category: str | None = None,
    max_attempts: int | None = None,
) -> uuid.UUID | None:
    """Store a job as ``queued`` before it is published; return its process id.

    Waits for the row to be stored unless the database is known to be
    unreachable: then the row is kept in memory and stored when the database
    returns. Inside :func:`enqueued_together` the row is stored with the rest
    of the batch as the block ends. Never raises.
    """
    settings = config.current()
    if not settings.enabled:
        return None
    try:
        process_id = process_id_for(job_system, job_id)
        if (job_system, job_id) in _RECORDED_AHEAD.get():
            return process_id
        now = time.time()
        parent = CURRENT_NODE.get()
        row: dict[str, Any] = {
            "name": name,
            "category": category or settings.default_category,
            "status": Status.QUEUED.value,
            "created_at": now,
            "queued_at": now,
            "updated_at": now,
            "job_system": job_system,
            "job_id": job_id,
            "queue": queue,
            "job_args": {"args": list(args), "kwargs": dict(kwargs or {})},
            "job_payload": _payload(payload),
            "attempt": 1,
            "max_attempts": max_attempts,
        }
        if parent is not None and isinstance(parent._tracker, Tracker):
            row["parent_process_id"] = parent._tracker._id_int
        event = (ev.PROCESS_START, process_id.int, row)
        batch = _COLLECTING.get()
        if batch is not None:
            batch.append(event)
        else:
            runtime.sink().write_now((event,))
        return process_id
    except Exception as exc:
        runtime.report_internal_error(exc, f"recording an enqueued {job_system} job")
        return None


def record_publish_failed(job_system: str, job_id: str, exc: BaseException) -> None:
    """Mark a job whose message the broker refused as failed, with the broker's error."""
    if not config.current().enabled:
        return
    try:
        now = time.time()
        cls, message, trace = describe_error(exc)
        fields = {
            "status": Status.FAILED.value,
            "finished_at": now,
            "updated_at": now,
            "error": (cls, f"publishing to the broker failed: {message}", trace),
        }
        process_id = process_id_for(job_system, job_id)
        runtime.sink().put((ev.PROCESS_UPDATE, process_id.int, fields))
    except Exception as internal:
        runtime.report_internal_error(internal, f"recording a failed {job_system} publish")


# Trace context carried in a job's message (W3C ``traceparent``...), injected at
# enqueue and read as the job starts by the OpenTelemetry exporter when installed.
TRACE_HEADER = "flow_tracker_trace"
TRACE_INJECTORS: list[Callable[[], dict[str, str]]] = []
JOB_TRACE_CARRIER: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "flow_tracker_job_trace", default=None
)


def trace_carrier() -> dict[str, str] | None:
    """The trace context to put in an enqueued job's message; None without a tracer."""
    carrier: dict[str, str] = {}
    for inject in TRACE_INJECTORS:
        try:
            carrier.update(inject())
        except Exception as exc:
            runtime.report_internal_error(exc, "injecting trace context into a job")
    return carrier or None


def start_job(
    *,
    job_system: str,
    job_id: str,
    name: str,
    queue: str | None,
    attempt: int,
    worker: str | None = None,
    category: str | None = None,
    trace: Mapping[str, str] | None = None,
    durable: bool | None = None,
    started_at: float | None = None,
) -> Tracker | NullTracker:
    """Open the job's process in the worker and make it current (``running``).

    With ``durable_start`` (the default) the running row is stored before the
    job's code runs: a worker killed a moment later leaves a row that says where
    the job ran and stops getting heartbeats, so the reaper finds it. Buffered,
    it would have died with the worker and the job would look queued forever.
    With ``completion_timeout=0`` the row is buffered like everything else, since
    then an earlier attempt's end may still be buffered and must be stored first.

    The same transaction looks for a copy :func:`flow_tracker.requeue` made of
    the job (see :func:`skip_if_requeued`). ``durable=False`` buffers the running
    row whatever the settings (a workflow step stored it running already), and
    ``started_at`` (epoch seconds) is the start that write stored.
    """
    settings = config.current()
    extra = _job_start_fields(job_system, job_id, queue, worker)
    process_id = process_id_for(job_system, job_id)
    if durable is None:
        durable = settings.durable_start and settings.completion_timeout > 0
    copies: list[uuid.UUID] = []
    token = JOB_TRACE_CARRIER.set(trace if isinstance(trace, Mapping) else None)
    try:
        tracker = open_tracker(
            name,
            category,
            None,
            process_id=process_id,
            attempt=max(1, attempt),
            extra=extra,
            durable=durable,
            copies=copies if durable else None,
            started_at=started_at,
        )
    finally:
        JOB_TRACE_CARRIER.reset(token)
    if not isinstance(tracker, Tracker):
        return NULL_TRACKER
    if copies:
        _REQUEUED_COPIES[tracker] = copies[0]
    return tracker


# Jobs started here that flow_tracker.requeue had already sent again, and the copy.
_REQUEUED_COPIES: weakref.WeakKeyDictionary[Tracker, uuid.UUID] = weakref.WeakKeyDictionary()


def warm_up() -> None:
    """Prepare a worker process so that the children it forks record jobs at once.

    Besides :func:`flow_tracker.runtime.warm_up` (driver, schema, writer), the
    statements a job's start and end need are built by writing a sample job in
    a transaction that is rolled back, so that the children forked afterwards
    (RQ work-horses, Celery prefork) inherit them built. Never raises.

    A database that cannot be reached is said in one line, as the writer says an
    outage, and the jobs run: a traceback here would be chained to whatever the
    queue was handling as it imported the app (Celery's own ``AttributeError``
    while it looks the app up, suggesting ``-A`` is wrong).
    """
    settings = config.current()
    if not settings.enabled:
        return
    try:
        runtime.store().check_connection()
    except DatabaseUnavailableError as exc:
        runtime.internal_log.error(
            "flow-tracker: %s; jobs run, and their records are kept in memory until it is back",
            exc,
        )
        return
    except Exception:  # anything else: the warm-up below reports it (and never raises)
        pass
    runtime.warm_up()
    try:
        capture = MemorySink()
        sample = Tracker(
            "flow-tracker warm-up",
            category=settings.default_category,
            metadata=None,
            settings=settings,
            writer=capture,
            process_id=uuid.uuid4(),
        )
        sample._begin(None, _job_start_fields("warm-up", "warm-up", None, None))
        sample.complete(status=Status.COMPLETED)
        events = capture.events
        store = runtime.store()
        builder = runtime.writer().batch_writer

        def rehearse(conn: Any) -> None:
            builder.store(conn, events, commit=False)  # start and end in one batch
            builder.store(conn, events[:1], copies_of=(1,), commit=False)  # and in two
            builder.store(conn, events[1:], commit=False)

        store.write_connections.run(rehearse)
        store.write_connections.close()  # children must open their own
    except Exception as exc:
        runtime.report_internal_error(exc, "warming up job statements")


def _job_start_fields(
    job_system: str, job_id: str, queue: str | None, worker: str | None
) -> dict[str, Any]:
    return {
        "job_system": job_system,
        "job_id": job_id,
        "queue": queue,
        "worker": worker,
        # A retry starts clean: the previous attempt's end and error are history.
        "finished_at": None,
        "duration_ms": None,
        "error": None,
    }


def finish_job(
    tracker: Tracker | NullTracker,
    status: Status,
    error: BaseException | None = None,
    *,
    wait: bool = True,
    finished_at: float | None = None,
) -> None:
    """End the job's process with ``status`` (storing ``error``); wait until it is stored.

    ``wait=False`` lets the final state follow with the writer's next batch;
    ``finished_at`` (epoch seconds) is its end when another write stored it.
    """
    if isinstance(tracker, Tracker):
        try:
            tracker.complete(error=error, status=status, wait=wait, finished_at=finished_at)
        except Exception as exc:
            runtime.report_internal_error(exc, "finishing a job")


def exclusive_option(value: object) -> Exclusive | None:
    """The critical section a job declares with the ``flow_tracker_exclusive`` option.

    Accepts an :func:`flow_tracker.exclusive` object or a dict of its arguments
    (``{"name": "financial", "key": "{user_id}", "on_conflict": "skip"}``).

    Raises:
        UsageError: anything else, or a dict :func:`flow_tracker.exclusive` refuses.
    """
    if value is None or value is False:
        return None
    if isinstance(value, Exclusive):
        return value
    if isinstance(value, Mapping):
        try:
            return exclusive(**dict(value))
        except TypeError as exc:
            raise UsageError(f"{EXCLUSIVE_OPTION}: {exc}") from None
    raise UsageError(
        f"{EXCLUSIVE_OPTION} takes flow_tracker.exclusive(...) or a dict of its arguments, "
        f"not {value!r}"
    )


def guarded_job_body(func: F, option: object, job: str) -> tuple[F, UsageError | None]:
    """The job's function as the queue should run it, and what was wrong with its option.

    Never raises, so that no queue machinery can swallow the error and leave the
    job unwrapped. A section that cannot be built from ``option`` (an unknown
    ``on_conflict``, a key template naming no argument, a wrong type) gives a
    body that *refuses to run*: the job fails with the :class:`UsageError`, on
    its process and in the queue, and its code never runs without its lock.

    Args:
        func: the job's function.
        option: the ``flow_tracker_exclusive`` option, None when there is none.
        job: how to name the job in the error (``"task shop.charge"``).
    """
    if getattr(func, WRAPPED_MARK, False):
        return func, None  # prepared already (a task announced twice)
    try:
        return job_body(func, exclusive_option(option)), None
    except Exception as exc:  # UsageError, or whatever building the section raised
        error = UsageError(f"{job}: bad {EXCLUSIVE_OPTION} option: {exc}")
        return _refusing_body(func, str(error)), error


def _refusing_body(func: F, reason: str) -> F:
    message = f"{reason} (the job was not run: its critical section could not be built)"

    @functools.wraps(func)
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UsageError(message)

    setattr(refuse, WRAPPED_MARK, True)
    return refuse  # type: ignore[return-value]


def skip_if_requeued(tracker: Tracker | NullTracker | None) -> bool:
    """Mark the job skipped and return True when a requeued copy of it exists.

    A broker that redelivers a dead worker's message by itself (Dramatiq, Celery
    with ``acks_late``, RQ with retries) may do so after an operator requeued the
    job: the copy carries the job on and this delivery stands down.

    The copy is looked for in the transaction that stores the job's running row
    (a durable start, see :func:`start_job`): :func:`flow_tracker.requeue` claims
    a job only while its row is still lost or failed, and that write takes it out
    of that state, so exactly one of the two runs. Without a durable start (the
    database away, ``durable_start=False``) the job runs.
    """
    if not isinstance(tracker, Tracker):
        return False
    copy = _REQUEUED_COPIES.pop(tracker, None)
    if copy is None:
        return False
    tracker.skip(f"requeued as process {copy}; this redelivery stands down")
    return True


def _current_tracker() -> Tracker | None:
    node = CURRENT_NODE.get()
    tracker = getattr(node, "_tracker", None)
    return tracker if isinstance(tracker, Tracker) else None


def job_body(func: F, section: Exclusive | None = None) -> F:
    """Wrap a job's function as the queue runs it (see the module's docstring).

    The wrapper returns None without running ``func`` when the job was
    requeued, and None when a critical section skipped, so that the queue
    records no failure (and retries nothing); the job's process says
    ``skipped`` and why. Every other result and exception passes unchanged.
    """
    if getattr(func, WRAPPED_MARK, False):
        return func
    guarded: Callable[..., Any] = section(func) if section is not None else func

    @functools.wraps(func)
    def body(*args: Any, **kwargs: Any) -> Any:
        try:
            requeued = skip_if_requeued(_current_tracker())
        except Exception as exc:
            runtime.report_internal_error(exc, "checking for a requeued copy of a job")
            requeued = False
        if requeued:
            return None
        try:
            return guarded(*args, **kwargs)
        except Skipped as exc:  # a skipped critical section
            tracker = _current_tracker()
            if tracker is not None and tracker._skip_reason is None:
                tracker.skip(str(exc))
            return None

    setattr(body, WRAPPED_MARK, True)
    return body  # type: ignore[return-value]
