"""A run's life: its steps' process rows, its lock, its end, and the release of waiting steps.

The pieces here take the caller's connection: they are parts of the
transactions of :mod:`.actions`, :mod:`.recovery` and :mod:`flow_tracker.store.starting`,
never a transaction of their own (see :mod:`flow_tracker.store`), except
:func:`finish_run`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, case, insert, select, update
from sqlalchemy.engine import Connection

from flow_tracker.status import RunState, Status, StepState
from flow_tracker.store.engine import Store
from flow_tracker.store.jobs import record_transitions
from flow_tracker.store.schema import processes, workflow_runs, workflow_steps
from flow_tracker.store.workflows.dispatch import Dispatch, Ended

CATEGORY = "workflows"
# The states as the store's SQL compares them: plain strings in a fixed order (the
# enums, RunState and StepState, are in flow_tracker.status).
PENDING = StepState.PENDING.value
RESOLVED = StepState.RESOLVED.value
ACTIVE = (StepState.QUEUED.value, StepState.RUNNING.value, StepState.RETRYING.value)
"""A step that holds its run open (:data:`flow_tracker.status.STEP_ACTIVE_STATES`)."""
DONE = (StepState.COMPLETED.value, StepState.SKIPPED.value, StepState.RESOLVED.value)
"""A step whose children may go on (:data:`flow_tracker.status.STEP_DONE_STATES`)."""
TAKEABLE = (StepState.QUEUED.value, StepState.RETRYING.value)
RUN_RUNNING = RunState.RUNNING.value
ERROR_LIMIT = 4_000


def utc_now() -> datetime:
    """The local clock, in UTC: the time written on the rows a change touches."""
    return datetime.now(timezone.utc)


def error_columns(error: tuple[str, str] | None) -> tuple[str | None, str | None]:
    """A step's ``(class, message)`` error as its two columns, cut to fit."""
    if error is None:
        return None, None
    cls, message = error
    return cls[:255], message[:ERROR_LIMIT]


# -- starting a run ------------------------------------------------------------------


def dispatch_of(system: str, workflow: str, run_id: uuid.UUID, step: Mapping[str, Any]) -> Dispatch:
    """The first message of a step queued with its run, from its row's values."""
    return Dispatch(system, workflow, run_id, step["name"], step["job_id"], step["queue_name"])


def insert_step_processes(
    conn: Connection,
    run_id: uuid.UUID,
    workflow: str,
    system: str,
    steps: Sequence[Mapping[str, Any]],
    now: datetime,
) -> None:
    """Write the process rows of ``steps`` queued now, so the dashboard shows them queued."""
    if not steps:
        return
    conn.execute(
        insert(processes),
        [
            {
                "id": s["process_id"],
                "name": f"{workflow}.{s['name']}",
                "category": CATEGORY,
                "status": Status.QUEUED.value,
                "created_at": now,
                "queued_at": now,
                "updated_at": now,
                "job_system": system,
                "job_id": s["job_id"],
                "queue": s["queue_name"],
                "job_args": {"workflow": workflow, "run": str(run_id), "step": s["name"]},
                "attempt": 1,
                "parent_process_id": run_id,
            }
            for s in steps
        ],
    )


# -- a worker takes a step, then stores its end -------------------------------------------


def lock_run(conn: Connection, run_id: uuid.UUID) -> Any | None:
    """The run's row, locked until the end of ``conn``'s transaction (None: no such run)."""
    return conn.execute(
        select(
            workflow_runs.c.status,
            workflow_runs.c.name,
            workflow_runs.c.queue,
            workflow_runs.c.active,
            workflow_runs.c.failed,
            workflow_runs.c.created_at,
        )
        .where(workflow_runs.c.id == run_id)
        .with_for_update()
    ).first()


def finish_run(store: Store, run_id: uuid.UUID) -> str | None:
    """End a running run with no active step left: ``completed``, or ``failed`` with its root cause.

    Called by the worker whose step end brought the count of active steps to
    zero (see :mod:`flow_tracker.store.step_writes`), and by the reaper for a run
    whose last worker died in between. Returns the status it ended with, or None.
    """
    now = utc_now()
    with store.begin_write() as conn:
        run = lock_run(conn, run_id)
        if run is None or run.status != RUN_RUNNING or int(run.active) > 0:
            return None
        return end_run(conn, run_id, run, now)


def end_run(conn: Connection, run_id: uuid.UUID, run: Any, now: datetime) -> str:
    """End the locked ``run``: ``completed``, or ``failed`` with its root cause (returned)."""
    ended = RunState.FAILED.value if int(run.failed) > 0 else RunState.COMPLETED.value
    values: dict[str, Any] = {"status": ended, "finished_at": now, "updated_at": now}
    if ended == RunState.FAILED.value:
        values["failed_step"] = _root_failure(conn, run_id)
    conn.execute(update(workflow_runs).where(workflow_runs.c.id == run_id).values(**values))
    end_run_process(conn, run_id, run, ended, now, values.get("failed_step"))
    return ended


def after_step(
    conn: Connection,
    run_id: uuid.UUID,
    run: Any,
    now: datetime,
    children: list[str],
    *,
    active: int,
    failed: int,
) -> Ended:
    """Queue the children now ready, count the run's active and failed steps, end it if done."""
    ready: list[Any] = []
    if children and run.status == RUN_RUNNING:
        ready = _release(conn, run_id, children, now)
        insert_step_processes(conn, run_id, run.name, run.queue, [r._mapping for r in ready], now)
    active_now = int(run.active) + active + len(ready)
    failed_now = int(run.failed) + failed
    conn.execute(
        update(workflow_runs)
        .where(workflow_runs.c.id == run_id)
        .values(active=active_now, failed=failed_now, updated_at=now)
    )
    ended: str | None = None
    if run.status == RUN_RUNNING and active_now <= 0:
        ended = end_run(conn, run_id, lock_run(conn, run_id), now)
    dispatches = [
        Dispatch(run.queue, run.name, run_id, r.name, r.job_id, r.queue_name) for r in ready
    ]
    return Ended(dispatches, ended)


def _release(conn: Connection, run_id: uuid.UUID, children: list[str], now: datetime) -> list[Any]:
    """One parent fewer to wait for; the children now waiting for none are queued (returned)."""
    becomes_ready = and_(workflow_steps.c.waiting == 1, workflow_steps.c.status == PENDING)
    rows = conn.execute(
        update(workflow_steps)
        .where(and_(workflow_steps.c.run_id == run_id, workflow_steps.c.name.in_(children)))
        .values(
            waiting=workflow_steps.c.waiting - 1,
            status=case((becomes_ready, StepState.QUEUED.value), else_=workflow_steps.c.status),
            queued_at=case((becomes_ready, now), else_=workflow_steps.c.queued_at),
            updated_at=now,
        )
        .returning(
            workflow_steps.c.name,
            workflow_steps.c.status,
            workflow_steps.c.waiting,
            workflow_steps.c.job_id,
            workflow_steps.c.process_id,
            workflow_steps.c.queue_name,
        )
    ).all()
    # A count reaches zero once (each parent ends once), so a queued row at zero was
    # queued by this statement.
    return [r for r in rows if r.status == StepState.QUEUED.value and r.waiting == 0]


def _root_failure(conn: Connection, run_id: uuid.UUID) -> str | None:
    """The step that failed first: the root cause of the run's failure."""
    return conn.execute(
        select(workflow_steps.c.name)
        .where(
            and_(
                workflow_steps.c.run_id == run_id, workflow_steps.c.status == StepState.FAILED.value
            )
        )
        .order_by(workflow_steps.c.finished_at, workflow_steps.c.name)
        .limit(1)
    ).scalar()


def end_run_process(
    conn: Connection, run_id: uuid.UUID, run: Any, status: str, now: datetime, failed_step: Any
) -> None:
    """The run's process ends with it, with the reason in its history."""
    error: dict[str, Any] = {"error_class": None, "error_message": None, "error_traceback": None}
    reason = "every step completed"
    if status == RunState.FAILED.value and failed_step:
        cause = conn.execute(
            select(workflow_steps.c.error_class, workflow_steps.c.error_message).where(
                and_(workflow_steps.c.run_id == run_id, workflow_steps.c.name == failed_step)
            )
        ).first()
        detail = (
            f"{cause.error_class}: {cause.error_message}" if cause and cause.error_class else ""
        )
        reason = f"step {failed_step} failed" + (f" ({detail})" if detail else "")
        error = {
            "error_class": "flow_tracker.StepFailed",
            "error_message": reason[:ERROR_LIMIT],
            "error_traceback": None,
        }
    elif status == RunState.CANCELLED.value:
        reason = "cancelled"
    started = run.created_at
    duration = (now - started).total_seconds() * 1000.0 if started is not None else None
    conn.execute(
        update(processes)
        .where(processes.c.id == run_id)
        .values(status=status, finished_at=now, updated_at=now, duration_ms=duration, **error)
    )
    record_transitions(conn, [run_id], status, now, reason)


def step_row(conn: Connection, run_id: uuid.UUID, step: str) -> Any | None:
    """A step's row (not locked: the run's lock covers its steps)."""
    return conn.execute(
        select(workflow_steps).where(
            and_(workflow_steps.c.run_id == run_id, workflow_steps.c.name == step)
        )
    ).first()


def reopen_run(conn: Connection, run_id: uuid.UUID, run: Any, now: datetime, reason: str) -> None:
    """A failed run goes on: running again, on its row and its process."""
    if run.status != RunState.FAILED.value:
        return
    conn.execute(
        update(workflow_runs)
        .where(workflow_runs.c.id == run_id)
        .values(status=RUN_RUNNING, finished_at=None, failed_step=None, updated_at=now)
    )
    conn.execute(
        update(processes)
        .where(processes.c.id == run_id)
        .values(
            status=RUN_RUNNING,
            finished_at=None,
            duration_ms=None,
            error_class=None,
            error_message=None,
            error_traceback=None,
            updated_at=now,
        )
    )
    record_transitions(conn, [run_id], RUN_RUNNING, now, reason)
