"""By hand: retry or resolve a failed step, cancel a run (:mod:`flow_tracker.workflows.manage`)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.engine import Connection

from flow_tracker.status import RunState, Status, StepState
from flow_tracker.store.audit import Hook
from flow_tracker.store.engine import Store
from flow_tracker.store.jobs import record_transitions
from flow_tracker.store.schema import processes, workflow_runs, workflow_steps
from flow_tracker.store.workflows.dispatch import Dispatch, Ended, Hold, held
from flow_tracker.store.workflows.runs import (
    PENDING,
    RESOLVED,
    after_step,
    end_run_process,
    lock_run,
    reopen_run,
    step_row,
    utc_now,
)


class NotAllowed(Exception):
    """A manual action that does not apply (the caller turns it into a UsageError)."""


def _failed_step(conn: Connection, run_id: uuid.UUID, step: str, verb: str) -> tuple[Any, Any]:
    """The run (locked) and the step a manual action applies to: a failed step of a live run.

    Raises:
        LookupError: no such run or step.
        NotAllowed: the run was cancelled, or the step is not failed.
    """
    run = lock_run(conn, run_id)
    if run is None:
        raise LookupError(f"no workflow run {run_id}")
    if run.status == RunState.CANCELLED.value:
        raise NotAllowed(f"workflow run {run_id} was cancelled; nothing in it starts again")
    row = step_row(conn, run_id, step)
    if row is None:
        raise LookupError(f"workflow run {run_id} has no step {step!r}")
    if row.status != StepState.FAILED.value:
        raise NotAllowed(f"step {step!r} is {row.status}, not failed: only a failed step is {verb}")
    return run, row


def retry_failed_step(
    store: Store,
    run_id: uuid.UUID,
    step: str,
    reason: str,
    hold: Hold | None = None,
    *,
    audit: Hook | None = None,
) -> Ended:
    """Queue a failed step again (its attempts go on counting); reopen a failed run.

    ``hold``: whether its message waits in the outbox (stored with the change).
    ``audit``: writes the action's audit row, committed with the change.
    """
    now = utc_now()
    with store.begin_write() as conn:
        run, row = _failed_step(conn, run_id, step, "retried")
        conn.execute(
            update(workflow_steps)
            .where(and_(workflow_steps.c.run_id == run_id, workflow_steps.c.name == step))
            .values(
                status=StepState.QUEUED.value,
                queued_at=now,
                finished_at=None,
                error_class=None,
                error_message=None,
                updated_at=now,
            )
        )
        conn.execute(
            update(processes)
            .where(processes.c.id == row.process_id)
            .values(status=Status.QUEUED.value, queued_at=now, updated_at=now)
        )
        reopen_run(conn, run_id, run, now, f"step {step} retried by hand")
        conn.execute(
            update(workflow_runs)
            .where(workflow_runs.c.id == run_id)
            .values(active=workflow_runs.c.active + 1, failed=workflow_runs.c.failed - 1)
        )
        record_transitions(conn, [run_id, row.process_id], "retried", now, reason)
        again = Dispatch(run.queue, run.name, run_id, step, row.job_id, row.queue_name, 0.0, False)
        ended = held(conn, Ended([again], None), hold)
        if audit is not None:
            audit(conn, {"attempts_before": int(row.attempts or 0)})
        return ended


def resolve_failed_step(
    store: Store,
    run_id: uuid.UUID,
    step: str,
    result: Any,
    reason: str,
    hold: Hold | None = None,
    *,
    audit: Hook | None = None,
) -> Ended:
    """Mark a failed step resolved with ``result``; what waits on it goes on.

    ``hold``: whether the messages of the children it releases wait in the outbox.
    ``audit``: writes the action's audit row, committed with the change.
    """
    now = utc_now()
    with store.begin_write() as conn:
        run, row = _failed_step(conn, run_id, step, "resolved")
        conn.execute(
            update(workflow_steps)
            .where(and_(workflow_steps.c.run_id == run_id, workflow_steps.c.name == step))
            .values(status=RESOLVED, result=result, finished_at=now, updated_at=now)
        )
        reopen_run(conn, run_id, run, now, f"step {step} resolved by hand")
        reopened = lock_run(conn, run_id)
        record_transitions(conn, [run_id, row.process_id], RESOLVED, now, reason)
        ended = after_step(
            conn, run_id, reopened, now, list(row.children or ()), active=0, failed=-1
        )
        ended = held(conn, ended, hold)
        if audit is not None:
            audit(conn, {"released": sorted({d.step for d in ended.dispatches})})
        return ended


ALREADY_CANCELLED = -1


def cancel_run(store: Store, run_id: uuid.UUID, reason: str, *, audit: Hook | None = None) -> int:
    """Cancel a running run: no step that has not started starts. Returns the steps cancelled.

    :data:`ALREADY_CANCELLED` when the run was cancelled before: nothing changed.
    ``audit``: writes the action's audit row, committed with the change.
    """
    now = utc_now()
    waiting = (PENDING, StepState.QUEUED.value, StepState.RETRYING.value)
    with store.begin_write() as conn:
        run = lock_run(conn, run_id)
        if run is None:
            raise LookupError(f"no workflow run {run_id}")
        if run.status == RunState.CANCELLED.value:
            if audit is not None:
                audit(conn, {"cancelled_steps": 0, "already_cancelled": True})
            return ALREADY_CANCELLED
        if run.status == RunState.COMPLETED.value:
            raise NotAllowed(f"workflow run {run_id} has completed; there is nothing to cancel")
        rows = conn.execute(
            update(workflow_steps)
            .where(and_(workflow_steps.c.run_id == run_id, workflow_steps.c.status.in_(waiting)))
            .values(status=StepState.CANCELLED.value, finished_at=now, updated_at=now)
            .returning(workflow_steps.c.process_id, workflow_steps.c.status)
        ).all()
        started = [r.process_id for r in rows if r.process_id is not None]
        if started:
            conn.execute(
                update(processes)
                .where(
                    and_(
                        processes.c.id.in_(started),
                        processes.c.status.in_((Status.QUEUED.value, Status.RETRYING.value)),
                    )
                )
                .values(status=Status.CANCELLED.value, finished_at=now, updated_at=now)
            )
        running = conn.execute(
            select(func.count()).where(
                and_(
                    workflow_steps.c.run_id == run_id,
                    workflow_steps.c.status == StepState.RUNNING.value,
                )
            )
        ).scalar_one()
        conn.execute(
            update(workflow_runs)
            .where(workflow_runs.c.id == run_id)
            .values(
                status=RunState.CANCELLED.value, active=running, finished_at=now, updated_at=now
            )
        )
        end_run_process(conn, run_id, run, RunState.CANCELLED.value, now, None)
        record_transitions(conn, [run_id], RunState.CANCELLED.value, now, reason)
        if audit is not None:
            audit(conn, {"cancelled_steps": len(rows)})
    return len(rows)
