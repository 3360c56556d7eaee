"""Steps whose worker died, retries whose message was lost, runs whose last worker died."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, select, update

from flow_tracker.status import Status, StepState
from flow_tracker.store.clock import database_now
from flow_tracker.store.engine import Store
from flow_tracker.store.jobs import LOST_ERROR_CLASS, record_transitions
from flow_tracker.store.schema import processes, workflow_runs, workflow_steps
from flow_tracker.store.workflows.dispatch import NOTHING, Dispatch, Ended, Hold, held
from flow_tracker.store.workflows.runs import RUN_RUNNING, after_step, lock_run, step_row, utc_now


def lost_steps(store: Store, limit: int = 500) -> list[Any]:
    """Steps of running runs still active whose process was marked lost (their worker died)."""
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                select(
                    workflow_steps.c.run_id,
                    workflow_steps.c.name,
                    workflow_steps.c.status,
                    workflow_steps.c.process_id,
                    processes.c.lost_count,
                )
                .select_from(
                    workflow_steps.join(
                        processes, processes.c.id == workflow_steps.c.process_id
                    ).join(workflow_runs, workflow_runs.c.id == workflow_steps.c.run_id)
                )
                .where(
                    and_(
                        workflow_runs.c.status == RUN_RUNNING,
                        workflow_steps.c.status.in_(
                            (StepState.QUEUED.value, StepState.RUNNING.value)
                        ),
                        processes.c.status == Status.LOST.value,
                    )
                )
                .limit(limit)
            ).all()
        )


def overdue_retries(store: Store, older_than: float, limit: int = 500) -> list[Dispatch]:
    """Steps waiting to retry ``older_than`` seconds past their time: their message was lost."""
    with store.engine.connect() as conn:
        now = database_now(conn)
        rows = conn.execute(
            select(
                workflow_steps.c.run_id,
                workflow_steps.c.name,
                workflow_steps.c.job_id,
                workflow_steps.c.queue_name,
                workflow_runs.c.name.label("workflow"),
                workflow_runs.c.queue,
            )
            .select_from(
                workflow_steps.join(workflow_runs, workflow_runs.c.id == workflow_steps.c.run_id)
            )
            .where(
                and_(
                    workflow_runs.c.status == RUN_RUNNING,
                    workflow_steps.c.status == StepState.RETRYING.value,
                    workflow_steps.c.next_attempt_at < now - timedelta(seconds=older_than),
                )
            )
            .limit(limit)
        ).all()
    return [
        Dispatch(r.queue, r.workflow, r.run_id, r.name, r.job_id, r.queue_name, 0.0, False)
        for r in rows
    ]


def requeue_lost_step(
    store: Store,
    run_id: uuid.UUID,
    step: str,
    process_id: uuid.UUID,
    max_lost: int,
    reason: str,
    hold: Hold | None = None,
) -> Ended:
    """Queue a step whose worker died again, on the same process row; fail it past ``max_lost``.

    ``hold``: whether its message waits in the outbox (stored with the change).
    """
    now = utc_now()
    with store.begin_write() as conn:
        run = lock_run(conn, run_id)
        if run is None or run.status != RUN_RUNNING:
            return NOTHING
        lost = conn.execute(
            select(processes.c.lost_count, processes.c.error_class).where(
                and_(processes.c.id == process_id, processes.c.status == Status.LOST.value)
            )
        ).first()
        row = step_row(conn, run_id, step)
        if (
            lost is None
            or row is None
            or row.status not in (StepState.QUEUED.value, StepState.RUNNING.value)
        ):
            return NOTHING  # another reaper got there first
        lost_count = int(lost.lost_count or 0)
        if lost.error_class != LOST_ERROR_CLASS:
            # Lost by its own worker's word (an end it could not store, a worker
            # stopping under it), not by the reaper, which counts what it marks:
            # counted here, so that max_lost bounds every way a step runs again.
            lost_count += 1
            conn.execute(
                update(processes)
                .where(processes.c.id == process_id)
                .values(lost_count=processes.c.lost_count + 1)
            )
        if lost_count >= max_lost:
            message = f"lost {lost_count} times (max_lost={max_lost}); not enqueued again"
            conn.execute(
                update(workflow_steps)
                .where(and_(workflow_steps.c.run_id == run_id, workflow_steps.c.name == step))
                .values(
                    status=StepState.FAILED.value,
                    finished_at=now,
                    updated_at=now,
                    error_class="flow_tracker.Lost",
                    error_message=message,
                )
            )
            record_transitions(conn, [process_id], Status.FAILED.value, now, message)
            return after_step(conn, run_id, run, now, [], active=-1, failed=+1)
        conn.execute(
            update(workflow_steps)
            .where(and_(workflow_steps.c.run_id == run_id, workflow_steps.c.name == step))
            .values(status=StepState.QUEUED.value, queued_at=now, updated_at=now)
        )
        conn.execute(
            update(processes)
            .where(processes.c.id == process_id)
            .values(status=Status.QUEUED.value, queued_at=now, updated_at=now, finished_at=None)
        )
        record_transitions(conn, [process_id], "requeued", now, reason)
        again = Dispatch(run.queue, run.name, run_id, step, row.job_id, row.queue_name, 0.0, False)
        return held(conn, Ended([again], None), hold)


def stalled_runs(store: Store, limit: int = 500) -> list[uuid.UUID]:
    """Running runs with no active step: their last step's worker died before ending them."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(workflow_runs.c.id)
            .where(and_(workflow_runs.c.status == RUN_RUNNING, workflow_runs.c.active <= 0))
            .limit(limit)
        ).all()
    return [uuid.UUID(str(r.id)) for r in rows]
