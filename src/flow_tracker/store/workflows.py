"""How workflow runs and their steps are stored (see :mod:`flow_tracker.workflows`).

Every change of a run's state is one transaction that first locks the run's row
(``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises
all writers anyway). That lock is what makes scheduling exactly-once:

* a step's end and the readiness of its children are decided together: the
  children's ``waiting`` counts drop in the same statement, and only the
  transaction that brings a count to zero queues that child;
* ``active`` (steps queued, running or waiting to retry) and ``failed`` on the
  run row say when the run has ended without counting its steps each time, so
  ending a step costs the same in a run of 3 steps or of 2,000;
* a worker takes a step only by moving it from ``queued`` or ``retrying`` to
  ``running`` (:mod:`flow_tracker.store.step_writes`, with the step's end: the
  two writes of every step, in the driver's own SQL); a second delivery of the
  same message finds it running and stands down, and a completed step is never
  taken again.

A step's process row (the tracked job) is written here when the step is queued,
so the dashboard shows it queued; the worker's tracker then updates that row.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from sqlalchemy import and_, case, func, insert, literal_column, select, update
from sqlalchemy.engine import Connection

from flow_tracker.ids import process_id_for
from flow_tracker.status import Status
from flow_tracker.store import outbox
from flow_tracker.store.audit import Hook
from flow_tracker.store.clock import database_now
from flow_tracker.store.dialect import guarded_json
from flow_tracker.store.engine import Store
from flow_tracker.store.jobs import LOST_ERROR_CLASS, record_transitions
from flow_tracker.store.schema import processes, workflow_run_tags, workflow_runs, workflow_steps
from flow_tracker.store.types import as_utc

CATEGORY = "workflows"
# Step statuses beyond a process's own.
PENDING = "pending"
RESOLVED = "resolved"
ACTIVE = (Status.QUEUED.value, Status.RUNNING.value, Status.RETRYING.value)
DONE = (Status.COMPLETED.value, Status.SKIPPED.value, RESOLVED)
TAKEABLE = (Status.QUEUED.value, Status.RETRYING.value)
RUN_RUNNING = Status.RUNNING.value
ERROR_LIMIT = 4_000


@dataclass(frozen=True)
class Dispatch:
    """A step to hand to its queue: everything a worker needs to find it."""

    system: str
    workflow: str
    run_id: uuid.UUID
    step: str
    job_id: str
    queue_name: str
    delay: float = 0.0
    first: bool = True
    """The step's first message. Later ones (a retry, a requeue) get a message id
    of their own: a broker may still hold the earlier message under the job id
    (RQ keeps the job, Dramatiq's Redis broker deletes a message's body by id
    when it is acknowledged, which may happen after the retry was sent)."""

    def args(self) -> list[str]:
        """The job's arguments, as every queue's step task takes them."""
        return [self.workflow, str(self.run_id), self.step, self.job_id]

    def message_id(self) -> str:
        """The broker's id for this message: the job id for the first one."""
        return self.job_id if self.first else f"{self.job_id}-{uuid.uuid4().hex[:12]}"

    def process_id(self) -> uuid.UUID:
        """The step's process id (the target of its outbox request)."""
        return process_id_for(self.system, self.job_id)

    def to_payload(self) -> dict[str, Any]:
        """As an outbox request stores it; its delay is the request's due time instead."""
        return {
            "workflow": self.workflow,
            "run_id": str(self.run_id),
            "step": self.step,
            "job_id": self.job_id,
            "queue_name": self.queue_name,
            "first": self.first,
        }

    @classmethod
    def from_payload(cls, system: str, payload: Mapping[str, Any]) -> Dispatch:
        """The dispatch an outbox request stored (:meth:`to_payload`), due now."""
        return cls(
            system,
            str(payload["workflow"]),
            uuid.UUID(str(payload["run_id"])),
            str(payload["step"]),
            str(payload["job_id"]),
            str(payload["queue_name"]),
            0.0,
            bool(payload.get("first", False)),
        )


@dataclass(frozen=True)
class Ended:
    """What storing a step's end (or a manual action) set in motion."""

    dispatches: list[Dispatch]
    run_status: str | None
    """The run's status when it ended in this transaction; None while it goes on."""
    held: bool = False
    """The dispatches were stored in the outbox with the change, for a worker to send."""


NOTHING = Ended([], None)

Hold = Callable[[str, str], bool]
"""Given a run's queue system and workflow: True when this process cannot send its steps,
which then go to the outbox in the transaction of the change (see :mod:`flow_tracker.delivery`)."""


def hold_in(conn: Connection, dispatches: Sequence[Dispatch]) -> None:
    """Store ``dispatches`` as outbox requests in ``conn``'s transaction, due after their delay."""
    for d in dispatches:
        outbox.add(
            conn,
            kind=outbox.STEP,
            job_system=d.system,
            workflow=d.workflow,
            target_id=d.process_id(),
            payload=d.to_payload(),
            due_in=d.delay,
        )


def _held(conn: Connection, ended: Ended, hold: Hold | None) -> Ended:
    """``ended``, its dispatches stored in the outbox if ``hold`` says this process cannot send."""
    if hold is None or not ended.dispatches:
        return ended
    first = ended.dispatches[0]
    if not hold(first.system, first.workflow):
        return ended
    hold_in(conn, ended.dispatches)
    return dataclasses.replace(ended, held=True)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def error_columns(error: tuple[str, str] | None) -> tuple[str | None, str | None]:
    """A step's ``(class, message)`` error as its two columns, cut to fit."""
    if error is None:
        return None, None
    cls, message = error
    return cls[:255], message[:ERROR_LIMIT]


# -- starting a run ------------------------------------------------------------------


def _dispatch(system: str, workflow: str, run_id: uuid.UUID, step: Mapping[str, Any]) -> Dispatch:
    return Dispatch(system, workflow, run_id, step["name"], step["job_id"], step["queue_name"])


def _insert_step_processes(
    conn: Connection,
    run_id: uuid.UUID,
    workflow: str,
    system: str,
    steps: Sequence[Mapping[str, Any]],
    now: datetime,
) -> None:
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


def _lock_run(conn: Connection, run_id: uuid.UUID) -> Any | None:
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
    now = _now()
    with store.begin_write() as conn:
        run = _lock_run(conn, run_id)
        if run is None or run.status != RUN_RUNNING or int(run.active) > 0:
            return None
        return _end_run(conn, run_id, run, now)


def _end_run(conn: Connection, run_id: uuid.UUID, run: Any, now: datetime) -> str:
    ended = Status.FAILED.value if int(run.failed) > 0 else Status.COMPLETED.value
    values: dict[str, Any] = {"status": ended, "finished_at": now, "updated_at": now}
    if ended == Status.FAILED.value:
        values["failed_step"] = _root_failure(conn, run_id)
    conn.execute(update(workflow_runs).where(workflow_runs.c.id == run_id).values(**values))
    _end_run_process(conn, run_id, run, ended, now, values.get("failed_step"))
    return ended


def _after_step(
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
        _insert_step_processes(conn, run_id, run.name, run.queue, [r._mapping for r in ready], now)
    active_now = int(run.active) + active + len(ready)
    failed_now = int(run.failed) + failed
    conn.execute(
        update(workflow_runs)
        .where(workflow_runs.c.id == run_id)
        .values(active=active_now, failed=failed_now, updated_at=now)
    )
    ended: str | None = None
    if run.status == RUN_RUNNING and active_now <= 0:
        ended = _end_run(conn, run_id, _lock_run(conn, run_id), now)
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
            status=case((becomes_ready, Status.QUEUED.value), else_=workflow_steps.c.status),
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
    return [r for r in rows if r.status == Status.QUEUED.value and r.waiting == 0]


def _root_failure(conn: Connection, run_id: uuid.UUID) -> str | None:
    """The step that failed first: the root cause of the run's failure."""
    return conn.execute(
        select(workflow_steps.c.name)
        .where(
            and_(workflow_steps.c.run_id == run_id, workflow_steps.c.status == Status.FAILED.value)
        )
        .order_by(workflow_steps.c.finished_at, workflow_steps.c.name)
        .limit(1)
    ).scalar()


def _end_run_process(
    conn: Connection, run_id: uuid.UUID, run: Any, status: str, now: datetime, failed_step: Any
) -> None:
    error: dict[str, Any] = {"error_class": None, "error_message": None, "error_traceback": None}
    reason = "every step completed"
    if status == Status.FAILED.value and failed_step:
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
    elif status == Status.CANCELLED.value:
        reason = "cancelled"
    started = run.created_at
    duration = (now - started).total_seconds() * 1000.0 if started is not None else None
    conn.execute(
        update(processes)
        .where(processes.c.id == run_id)
        .values(status=status, finished_at=now, updated_at=now, duration_ms=duration, **error)
    )
    record_transitions(conn, [run_id], status, now, reason)


# -- by hand: retry, resolve, cancel ---------------------------------------------------------


class NotAllowed(Exception):
    """A manual action that does not apply (the caller turns it into a UsageError)."""


def _step_row(conn: Connection, run_id: uuid.UUID, step: str) -> Any | None:
    return conn.execute(
        select(workflow_steps).where(
            and_(workflow_steps.c.run_id == run_id, workflow_steps.c.name == step)
        )
    ).first()


def _reopen_run(conn: Connection, run_id: uuid.UUID, run: Any, now: datetime, reason: str) -> None:
    """A failed run goes on: running again, on its row and its process."""
    if run.status != Status.FAILED.value:
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


def _failed_step(conn: Connection, run_id: uuid.UUID, step: str, verb: str) -> tuple[Any, Any]:
    """The run (locked) and the step a manual action applies to: a failed step of a live run.

    Raises:
        LookupError: no such run or step.
        NotAllowed: the run was cancelled, or the step is not failed.
    """
    run = _lock_run(conn, run_id)
    if run is None:
        raise LookupError(f"no workflow run {run_id}")
    if run.status == Status.CANCELLED.value:
        raise NotAllowed(f"workflow run {run_id} was cancelled; nothing in it starts again")
    row = _step_row(conn, run_id, step)
    if row is None:
        raise LookupError(f"workflow run {run_id} has no step {step!r}")
    if row.status != Status.FAILED.value:
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
    now = _now()
    with store.begin_write() as conn:
        run, row = _failed_step(conn, run_id, step, "retried")
        conn.execute(
            update(workflow_steps)
            .where(and_(workflow_steps.c.run_id == run_id, workflow_steps.c.name == step))
            .values(
                status=Status.QUEUED.value,
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
        _reopen_run(conn, run_id, run, now, f"step {step} retried by hand")
        conn.execute(
            update(workflow_runs)
            .where(workflow_runs.c.id == run_id)
            .values(active=workflow_runs.c.active + 1, failed=workflow_runs.c.failed - 1)
        )
        record_transitions(conn, [run_id, row.process_id], "retried", now, reason)
        again = Dispatch(run.queue, run.name, run_id, step, row.job_id, row.queue_name, 0.0, False)
        ended = _held(conn, Ended([again], None), hold)
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
    now = _now()
    with store.begin_write() as conn:
        run, row = _failed_step(conn, run_id, step, "resolved")
        conn.execute(
            update(workflow_steps)
            .where(and_(workflow_steps.c.run_id == run_id, workflow_steps.c.name == step))
            .values(status=RESOLVED, result=result, finished_at=now, updated_at=now)
        )
        _reopen_run(conn, run_id, run, now, f"step {step} resolved by hand")
        reopened = _lock_run(conn, run_id)
        record_transitions(conn, [run_id, row.process_id], RESOLVED, now, reason)
        ended = _after_step(
            conn, run_id, reopened, now, list(row.children or ()), active=0, failed=-1
        )
        ended = _held(conn, ended, hold)
        if audit is not None:
            audit(conn, {"released": sorted({d.step for d in ended.dispatches})})
        return ended


ALREADY_CANCELLED = -1


def cancel_run(store: Store, run_id: uuid.UUID, reason: str, *, audit: Hook | None = None) -> int:
    """Cancel a running run: no step that has not started starts. Returns the steps cancelled.

    :data:`ALREADY_CANCELLED` when the run was cancelled before: nothing changed.
    ``audit``: writes the action's audit row, committed with the change.
    """
    now = _now()
    waiting = (PENDING, Status.QUEUED.value, Status.RETRYING.value)
    with store.begin_write() as conn:
        run = _lock_run(conn, run_id)
        if run is None:
            raise LookupError(f"no workflow run {run_id}")
        if run.status == Status.CANCELLED.value:
            if audit is not None:
                audit(conn, {"cancelled_steps": 0, "already_cancelled": True})
            return ALREADY_CANCELLED
        if run.status == Status.COMPLETED.value:
            raise NotAllowed(f"workflow run {run_id} has completed; there is nothing to cancel")
        rows = conn.execute(
            update(workflow_steps)
            .where(and_(workflow_steps.c.run_id == run_id, workflow_steps.c.status.in_(waiting)))
            .values(status=Status.CANCELLED.value, finished_at=now, updated_at=now)
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
                    workflow_steps.c.status == Status.RUNNING.value,
                )
            )
        ).scalar_one()
        conn.execute(
            update(workflow_runs)
            .where(workflow_runs.c.id == run_id)
            .values(status=Status.CANCELLED.value, active=running, finished_at=now, updated_at=now)
        )
        _end_run_process(conn, run_id, run, Status.CANCELLED.value, now, None)
        record_transitions(conn, [run_id], Status.CANCELLED.value, now, reason)
        if audit is not None:
            audit(conn, {"cancelled_steps": len(rows)})
    return len(rows)


# -- recovery: steps whose worker died -----------------------------------------------------------


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
                        workflow_steps.c.status.in_((Status.QUEUED.value, Status.RUNNING.value)),
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
                    workflow_steps.c.status == Status.RETRYING.value,
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
    now = _now()
    with store.begin_write() as conn:
        run = _lock_run(conn, run_id)
        if run is None or run.status != RUN_RUNNING:
            return NOTHING
        lost = conn.execute(
            select(processes.c.lost_count, processes.c.error_class).where(
                and_(processes.c.id == process_id, processes.c.status == Status.LOST.value)
            )
        ).first()
        row = _step_row(conn, run_id, step)
        if (
            lost is None
            or row is None
            or row.status not in (Status.QUEUED.value, Status.RUNNING.value)
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
                    status=Status.FAILED.value,
                    finished_at=now,
                    updated_at=now,
                    error_class="flow_tracker.Lost",
                    error_message=message,
                )
            )
            record_transitions(conn, [process_id], Status.FAILED.value, now, message)
            return _after_step(conn, run_id, run, now, [], active=-1, failed=+1)
        conn.execute(
            update(workflow_steps)
            .where(and_(workflow_steps.c.run_id == run_id, workflow_steps.c.name == step))
            .values(status=Status.QUEUED.value, queued_at=now, updated_at=now)
        )
        conn.execute(
            update(processes)
            .where(processes.c.id == process_id)
            .values(status=Status.QUEUED.value, queued_at=now, updated_at=now, finished_at=None)
        )
        record_transitions(conn, [process_id], "requeued", now, reason)
        again = Dispatch(run.queue, run.name, run_id, step, row.job_id, row.queue_name, 0.0, False)
        return _held(conn, Ended([again], None), hold)


# -- reading -----------------------------------------------------------------------------------


class StepRow(NamedTuple):
    """A step as a run's status reads it (not its parents and children: the DAG has them)."""

    name: str
    status: str
    attempts: int
    process_id: uuid.UUID | None
    result: Any
    error_class: str | None
    error_message: str | None
    next_attempt_at: datetime | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


# In the driver's own SQL: a run's page reads every step of the run, and SQLAlchemy's
# result processing (a type per column per row) was most of the time of a 2,000-step
# page. Not the parents and children lists: the run's DAG snapshot has them once, and
# a wide fan-in's join (or fan-out's root) would repeat thousands of names.
_STEPS_SQL = (
    "SELECT name, status, attempts, process_id, {result}, error_class, error_message,"
    " next_attempt_at, queued_at, started_at, finished_at"
    " FROM flow_tracker_workflow_steps WHERE run_id = {run}"
)


def _sqlite_moment(value: Any) -> datetime | None:
    return None if value is None else as_utc(value)


def _sqlite_json(value: Any) -> Any:
    # A JSON column has NUMERIC affinity in SQLite: a number comes back as a number.
    return json.loads(value) if isinstance(value, (str, bytes)) else value


# What a page shows of a value over its guard (see dialect.guarded_json).
PREVIEW_CHARS = 2_000


def _result_sql(dialect: str, results: bool, preview_over: int | None) -> str:
    if not results:
        return "NULL AS result"
    if preview_over is None:
        return "result"
    return f"{guarded_json(dialect, 'result', preview_over, PREVIEW_CHARS)} AS result"


def _read_steps(
    conn: Connection, run_id: uuid.UUID, results: bool, preview_over: int | None = None
) -> list[StepRow]:
    result = _result_sql(conn.dialect.name, results, preview_over)
    if conn.dialect.name != "sqlite":
        sql = _STEPS_SQL.format(result=result, run="%(run)s")
        cursor = conn.exec_driver_sql(sql, {"run": run_id})
        # psycopg returns uuids, parsed JSON and aware datetimes itself.
        return [StepRow._make(row) for row in cursor.fetchall()]
    cursor = conn.exec_driver_sql(_STEPS_SQL.format(result=result, run="?"), (run_id.hex,))
    moment = _sqlite_moment
    return [
        StepRow(
            name,
            status,
            attempts,
            None if process_id is None else uuid.UUID(process_id),
            _sqlite_json(result),
            error_class,
            error_message,
            moment(next_at),
            moment(queued),
            moment(started),
            moment(finished),
        )
        for (
            name,
            status,
            attempts,
            process_id,
            result,
            error_class,
            error_message,
            next_at,
            queued,
            started,
            finished,
        ) in cursor.fetchall()
    ]


@dataclass(frozen=True)
class DagShape:
    """A run's DAG snapshot, parsed once: it never changes after the run was created.

    Shared by every read of the run in this process: read it, never change it.
    """

    dag: dict[str, Any]
    order: list[str]
    """The steps in declaration order (a topological order)."""
    parents: dict[str, list[str]]


# Parsed DAGs of recently read runs. A 2,000-step DAG took ~8 ms to parse and ~6,000
# objects to hold, on every view of its page while the run was watched.
_SHAPES: OrderedDict[uuid.UUID, DagShape] = OrderedDict()
_SHAPES_KEPT = 64
_shapes_lock = threading.Lock()


def _dag_shape(conn: Connection, run_id: uuid.UUID) -> DagShape:
    with _shapes_lock:
        shape = _SHAPES.get(run_id)
        if shape is not None:
            _SHAPES.move_to_end(run_id)
            return shape
    dag = dict(
        conn.execute(select(workflow_runs.c.dag).where(workflow_runs.c.id == run_id)).scalar() or {}
    )
    declared = dag.get("steps", [])
    shape = DagShape(
        dag,
        [s["name"] for s in declared],
        {s["name"]: list(s.get("depends_on") or ()) for s in declared},
    )
    with _shapes_lock:
        _SHAPES[run_id] = shape
        while len(_SHAPES) > _SHAPES_KEPT:
            _SHAPES.popitem(last=False)
    return shape


def run_version(store: Store, run_id: uuid.UUID) -> tuple[Any, ...] | None:
    """A run's status, step counts and last change: what a finished run's outline is kept by.

    A finished run with no active step changes only when a retry or a resolve
    reopens it, which rewrites this row in the same transaction (a step's claim
    needs a running run; a step's end rewrites the counts). None: no such run.
    """
    r = workflow_runs.c
    with store.engine.connect() as conn:
        row = conn.execute(
            select(r.status, r.active, r.failed, r.updated_at).where(r.id == run_id)
        ).first()
    return None if row is None else tuple(row)


def read_run(
    store: Store, run_id: uuid.UUID, *, results: bool = True, preview_over: int | None = None
) -> tuple[Any, DagShape, list[StepRow], set[str]] | None:
    """A run's row (without its DAG), its DAG, its steps' rows, and its lost steps.

    Lost steps: active steps whose process the reaper marked lost.
    ``results=False`` leaves every step's result None (see :func:`read_results`).
    ``preview_over``: a context or result whose JSON text is longer than this comes
    back as a preview (see :func:`flow_tracker.store.dialect.guarded_json`).
    """
    with store.engine.connect() as conn:
        wanted: list[Any] = [c for c in workflow_runs.c if c.name not in ("dag", "context")]
        context: Any = workflow_runs.c.context
        if preview_over is not None:
            guarded = guarded_json(
                conn.dialect.name, "flow_tracker_workflow_runs.context", preview_over, PREVIEW_CHARS
            )
            context = literal_column(guarded, type_=workflow_runs.c.context.type)
        query = select(*wanted, context.label("context")).where(workflow_runs.c.id == run_id)
        run = conn.execute(query).first()
        if run is None:
            return None
        shape = _dag_shape(conn, run_id)
        steps = _read_steps(conn, run_id, results, preview_over)
        # Only active steps can have been lost: look up their processes alone (joining
        # every step of a large run to its process doubled the cost of reading it).
        active = {r.process_id: r.name for r in steps if r.status in ACTIVE and r.process_id}
        lost: set[str] = set()
        for offset in range(0, len(active), 1000):
            ids = list(active)[offset : offset + 1000]
            lost |= {
                active[pid]
                for pid in conn.execute(
                    select(processes.c.id).where(
                        and_(processes.c.id.in_(ids), processes.c.status == Status.LOST.value)
                    )
                ).scalars()
            }
    return run, shape, steps, lost


def read_results(
    store: Store, run_id: uuid.UUID, names: Sequence[str], *, preview_over: int | None = None
) -> dict[str, Any]:
    """The results of some steps of a run, by step name (previews over ``preview_over``)."""
    found: dict[str, Any] = {}
    with store.engine.connect() as conn:
        result: Any = workflow_steps.c.result
        if preview_over is not None:
            guarded = guarded_json(
                conn.dialect.name, "flow_tracker_workflow_steps.result", preview_over, PREVIEW_CHARS
            )
            result = literal_column(guarded, type_=workflow_steps.c.result.type)
        for offset in range(0, len(names), 500):
            rows = conn.execute(
                select(workflow_steps.c.name, result).where(
                    and_(
                        workflow_steps.c.run_id == run_id,
                        workflow_steps.c.name.in_(names[offset : offset + 500]),
                    )
                )
            )
            found.update((name, result) for name, result in rows)
    return found


def step_times(store: Store, run_id: uuid.UUID) -> tuple[dict[str, Any], list[Any]]:
    """A run's DAG and each step's start and end: what a critical path needs, nothing more."""
    with store.engine.connect() as conn:
        dag = conn.execute(select(workflow_runs.c.dag).where(workflow_runs.c.id == run_id)).scalar()
        rows = conn.execute(
            select(
                workflow_steps.c.name, workflow_steps.c.started_at, workflow_steps.c.finished_at
            ).where(workflow_steps.c.run_id == run_id)
        ).all()
    return dict(dag or {}), list(rows)


def run_status(store: Store, run_id: uuid.UUID) -> str | None:
    """Only the run's status (what :meth:`WorkflowRun.wait` polls)."""
    with store.engine.connect() as conn:
        return conn.execute(
            select(workflow_runs.c.status).where(workflow_runs.c.id == run_id)
        ).scalar()


@dataclass(frozen=True)
class RunRow:
    """A run as the list shows it."""

    id: uuid.UUID
    name: str
    queue: str
    status: str
    failed_step: str | None
    created_at: datetime
    finished_at: datetime | None
    steps_done: int
    steps_total: int
    version: str = "1"
    tags: dict[str, str] | None = None


def slowest_recent_run(store: Store, name: str, recent: int) -> uuid.UUID | None:
    """Of the last ``recent`` completed runs of ``name``: the slowest one's id."""
    latest = (
        select(workflow_runs.c.id, workflow_runs.c.created_at, workflow_runs.c.finished_at)
        .where(and_(workflow_runs.c.name == name, workflow_runs.c.status == Status.COMPLETED.value))
        .order_by(workflow_runs.c.created_at.desc(), workflow_runs.c.id.desc())
        .limit(recent)
    )
    with store.engine.connect() as conn:
        rows = [r for r in conn.execute(latest) if r.finished_at is not None]
    if not rows:
        return None
    return uuid.UUID(str(max(rows, key=lambda r: r.finished_at - r.created_at).id))


def list_runs(
    store: Store,
    *,
    name: str | None = None,
    status: str | None = None,
    limit: int = 50,
    before: tuple[datetime, uuid.UUID] | None = None,
    tags: Mapping[str, str] | None = None,
) -> list[RunRow]:
    """Runs newest first, with their step counts; keyset paging on (created_at, id).

    The page's runs first (by the time index), then the steps of those runs only:
    a list view never groups the whole steps table. ``tags``: only runs with
    every one of them; the first is walked in the tag index's (created_at) order,
    so a page of a tag that thousands of runs carry reads a page of index entries.
    """
    created, ident = workflow_runs.c.created_at, workflow_runs.c.id
    source: Any = workflow_runs
    wanted = sorted((tags or {}).items())
    if wanted:
        first = workflow_run_tags.alias("tag0")
        source = first.join(workflow_runs, workflow_runs.c.id == first.c.run_id)
        created, ident = first.c.created_at, first.c.run_id
    query = (
        select(
            workflow_runs.c.id,
            workflow_runs.c.name,
            workflow_runs.c.queue,
            workflow_runs.c.status,
            workflow_runs.c.failed_step,
            workflow_runs.c.created_at,
            workflow_runs.c.finished_at,
            workflow_runs.c.version,
            workflow_runs.c.tags,
        )
        .select_from(source)
        .order_by(created.desc(), ident.desc())
        .limit(limit)
    )
    for index, (key, value) in enumerate(wanted):
        if index == 0:
            query = query.where(and_(first.c.key == key, first.c.value == value))
            continue
        other = workflow_run_tags.alias(f"tag{index}")
        query = query.where(
            select(other.c.run_id)
            .where(
                and_(
                    other.c.run_id == workflow_runs.c.id,
                    other.c.key == key,
                    other.c.value == value,
                )
            )
            .exists()
        )
    if name:
        query = query.where(workflow_runs.c.name == name)
    if status:
        query = query.where(workflow_runs.c.status == status)
    if before is not None:
        moment, last = before
        query = query.where((created < moment) | and_(created == moment, ident < last))
    done = func.sum(case((workflow_steps.c.status.in_(DONE), 1), else_=0))
    with store.engine.connect() as conn:
        runs = conn.execute(query).all()
        counts: dict[Any, tuple[int, int]] = {}
        if runs:
            for row in conn.execute(
                select(workflow_steps.c.run_id, done, func.count())
                .where(workflow_steps.c.run_id.in_([r.id for r in runs]))
                .group_by(workflow_steps.c.run_id)
            ):
                counts[row[0]] = (int(row[1] or 0), int(row[2]))
    return [
        RunRow(
            r.id,
            r.name,
            r.queue,
            r.status,
            r.failed_step,
            r.created_at,
            r.finished_at,
            *counts.get(r.id, (0, 0)),
            r.version,
            r.tags if isinstance(r.tags, dict) else None,
        )
        for r in runs
    ]


def stalled_runs(store: Store, limit: int = 500) -> list[uuid.UUID]:
    """Running runs with no active step: their last step's worker died before ending them."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(workflow_runs.c.id)
            .where(and_(workflow_runs.c.status == RUN_RUNNING, workflow_runs.c.active <= 0))
            .limit(limit)
        ).all()
    return [uuid.UUID(str(r.id)) for r in rows]


class EndedRun(NamedTuple):
    """What a ``workflow.*`` event tells of a run that ended (see ``workflows/announce.py``)."""

    name: str
    queue: str
    status: str
    failed_step: str | None
    error_class: str | None
    error_message: str | None
    created_at: datetime | None
    finished_at: datetime | None


def ended_run(store: Store, run_id: uuid.UUID) -> EndedRun | None:
    """A run's name, status, ends and root-cause step with its error (None: no such run)."""
    r = workflow_runs.c
    cause = workflow_steps.alias("cause")
    with store.engine.connect() as conn:
        row = conn.execute(
            select(
                r.name,
                r.queue,
                r.status,
                r.failed_step,
                cause.c.error_class,
                cause.c.error_message,
                r.created_at,
                r.finished_at,
            )
            .select_from(
                workflow_runs.outerjoin(
                    cause, and_(cause.c.run_id == r.id, cause.c.name == r.failed_step)
                )
            )
            .where(r.id == run_id)
        ).first()
    if row is None:
        return None
    return EndedRun(
        row.name,
        row.queue,
        row.status,
        row.failed_step,
        row.error_class,
        row.error_message,
        None if row.created_at is None else as_utc(row.created_at),
        None if row.finished_at is None else as_utc(row.finished_at),
    )
