"""What every queue integration does, in one place: the contract of DESIGN.md section 4.

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

A job's process id is derived from its system and job id (UUIDv5), so the
enqueuing process, every retry and every worker agree on the row without
carrying anything in the message.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from flow_tracker import config, runtime
from flow_tracker import events as ev
from flow_tracker.nulls import NULL_TRACKER, NullTracker
from flow_tracker.recording import open_tracker
from flow_tracker.status import Status
from flow_tracker.tracker import CURRENT_NODE, Tracker, describe_error

# Fixed forever: changing it would give every job a new process id.
JOB_NAMESPACE = uuid.UUID("6f1c5b8e-2f4a-5d0e-9c41-7a3f0e2b9d15")


def process_id_for(job_system: str, job_id: str) -> uuid.UUID:
    """The process id of a queued job: the same in every process that sees the job."""
    return uuid.uuid5(JOB_NAMESPACE, f"{job_system}:{job_id}")


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
    returns. Never raises.
    """
    settings = config.current()
    if not settings.enabled:
        return None
    try:
        process_id = process_id_for(job_system, job_id)
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
        runtime.writer().write_now((ev.PROCESS_START, process_id.int, row))
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
        runtime.writer().put((ev.PROCESS_UPDATE, process_id.int, fields))
    except Exception as internal:
        runtime.report_internal_error(internal, f"recording a failed {job_system} publish")


def start_job(
    *,
    job_system: str,
    job_id: str,
    name: str,
    queue: str | None,
    attempt: int,
    worker: str | None = None,
    category: str | None = None,
) -> Tracker | NullTracker:
    """Open the job's process in the worker and make it current (``running``).

    With ``durable_start`` (the default) the running row is stored before the
    job's code runs: a worker killed a moment later leaves a row that says where
    the job ran and stops getting heartbeats, so the reaper finds it. Buffered,
    it would have died with the worker and the job would look queued forever.
    With ``completion_timeout=0`` the row is buffered like everything else, since
    then an earlier attempt's end may still be buffered and must be stored first.
    """
    settings = config.current()
    extra = _job_start_fields(job_system, job_id, queue, worker)
    tracker = open_tracker(
        name,
        category,
        None,
        process_id=process_id_for(job_system, job_id),
        attempt=max(1, attempt),
        extra=extra,
        durable=settings.durable_start and settings.completion_timeout > 0,
    )
    return tracker if isinstance(tracker, Tracker) else NULL_TRACKER


class _Capture:
    """Stands in for the writer to capture the events a sample job produces."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self.healthy = True

    def put(self, event: ev.Event) -> None:
        self.events.append(event)

    def put_flow(self, event: ev.Event) -> bool:
        self.events.append(event)
        return True

    def put_log(self, event: ev.Event, rank: int) -> bool:
        self.events.append(event)
        return True

    def flush(self, timeout: float) -> bool:
        return True


def warm_up() -> None:
    """Prepare a worker process so that the children it forks record jobs at once.

    Besides :func:`flow_tracker.runtime.warm_up` (driver, schema, writer), the
    statements a job's start and end need are compiled by writing a sample job
    in a transaction that is rolled back: SQLAlchemy caches compiled statements
    per process, and without this every RQ work-horse compiled them anew
    (~6 ms a job). Never raises.
    """
    runtime.warm_up()
    settings = config.current()
    if not settings.enabled:
        return
    try:
        capture = _Capture()
        sample = Tracker(
            "flow-tracker warm-up",
            category=settings.default_category,
            metadata=None,
            settings=settings,
            writer=capture,  # type: ignore[arg-type]
            process_id=uuid.uuid4(),
        )
        sample._begin(None, _job_start_fields("warm-up", "warm-up", None, None))
        sample.complete(status=Status.COMPLETED)
        events = capture.events
        store = runtime.store()
        builder = runtime.writer().batch_writer
        with store.engine.connect() as conn:
            transaction = conn.begin()
            try:
                builder.write(conn, events)  # start and end in one batch
                builder.write(conn, events[:1])  # and in two
                builder.write(conn, events[1:])
            finally:
                transaction.rollback()
        store.engine.dispose()
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
    tracker: Tracker | NullTracker, status: Status, error: BaseException | None = None
) -> None:
    """End the job's process with ``status`` (storing ``error``) and wait until it is stored."""
    if isinstance(tracker, Tracker):
        try:
            tracker.complete(error=error, status=status)
        except Exception as exc:
            runtime.report_internal_error(exc, "finishing a job")
