"""How the recovery of jobs is stored: heartbeats, lost jobs, requeue claims, health counts.

:mod:`flow_tracker.recovery` and :mod:`flow_tracker.heartbeat` decide *what*
happens (find the silent jobs, ask the brokers, requeue); this module is the
only one that knows *how* it reads and writes ``flow_tracker_processes`` for
that. Each word the dashboard, the CLI and :func:`flow_tracker.health` share
has one definition here:

* **silent**: running, with no heartbeat for ``lost_after`` seconds (the reaper
  marks exactly these lost). A ``retrying`` job waits for its next attempt and
  sends no heartbeat, so it is never silent.
* **stale queued**: still queued ``stale_after`` seconds after it was enqueued.
* **not requeued**: no process names it in ``requeued_from_id``.

Every "now" is the database's clock (:func:`~flow_tracker.store.clock.database_now`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from flow_tracker.ids import new_id as new_row_id
from flow_tracker.status import Status
from flow_tracker.store.clock import database_now, now_sql
from flow_tracker.store.dialect import insert_for
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import flows, processes, state, transitions
from flow_tracker.store.types import as_utc

LOST_ERROR_CLASS = "flow_tracker.Lost"
REQUEUEABLE = (Status.LOST.value, Status.FAILED.value, Status.CANCELLED.value)
REQUEUED = "requeued"  # in the state history of the lost run; not a process status
HEARTBEAT_BATCH = 500

# What a process.lost event says about the process (see flow_tracker.recovery).
LOST_EVENT_COLUMNS = (
    processes.c.id,
    processes.c.name,
    processes.c.category,
    processes.c.job_system,
    processes.c.job_id,
    processes.c.queue,
    processes.c.attempt,
)


# -- the shared words ----------------------------------------------------------------


def silent(now: datetime, lost_after: float) -> ColumnElement[bool]:
    """Running, with no heartbeat for ``lost_after`` seconds: the one meaning of "silent"."""
    return and_(
        processes.c.status == Status.RUNNING.value,
        processes.c.heartbeat_at < now - timedelta(seconds=lost_after),
    )


def stale_queued(now: datetime, stale_after: float) -> ColumnElement[bool]:
    """Still queued ``stale_after`` seconds after it was enqueued."""
    return and_(
        processes.c.status == Status.QUEUED.value,
        processes.c.created_at < now - timedelta(seconds=stale_after),
    )


def not_requeued() -> ColumnElement[bool]:
    """No process was enqueued again from this one."""
    again = aliased(processes)
    return ~exists().where(again.c.requeued_from_id == processes.c.id)


def count(conn: Connection, condition: ColumnElement[bool]) -> int:
    """How many processes match ``condition``."""
    return int(conn.execute(select(func.count()).where(condition)).scalar_one())


# -- state history and small state rows ------------------------------------------------


def record_transitions(
    conn: Connection, process_ids: Sequence[uuid.UUID], status: str, now: datetime, reason: str
) -> None:
    """Add a state-history row per process (see ``store.schema.transitions``)."""
    if process_ids:
        conn.execute(
            insert(transitions),
            [
                {
                    "id": new_row_id(),
                    "process_id": pid,
                    "status": status,
                    "at": now,
                    "reason": reason,
                }
                for pid in process_ids
            ],
        )


def write_state(conn: Connection, key: str, value: str, now: datetime) -> None:
    """Set a row of ``flow_tracker_state`` (insert or replace)."""
    stmt = insert_for(conn.dialect.name)(state).values(key=key, value=value, updated_at=now)
    conn.execute(
        stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value, "updated_at": now})
    )


def state_written_at(conn: Connection, key: str) -> datetime | None:
    """When the state row ``key`` was last written, or None."""
    value = conn.execute(select(state.c.updated_at).where(state.c.key == key)).scalar()
    return None if value is None else as_utc(value)


# -- heartbeats -------------------------------------------------------------------------


def stamp_heartbeats(store: Store, process_ids: Sequence[int]) -> None:
    """Set ``heartbeat_at`` to the database's time on these running processes (by int id)."""
    if store.dialect == "postgresql":
        # On the write path's connection: a worker's heartbeats must not keep a second
        # connection to the server open (one per process, see store/connections.py).
        def stamp(conn: Any) -> None:
            for offset in range(0, len(process_ids), HEARTBEAT_BATCH):
                chunk = [uuid.UUID(int=i) for i in process_ids[offset : offset + HEARTBEAT_BATCH]]
                conn.execute(
                    "UPDATE flow_tracker_processes SET heartbeat_at = clock_timestamp()"
                    " WHERE id = ANY(%s) AND status = %s",
                    (chunk, Status.RUNNING.value),
                )

        store.write_connections.run(stamp)
        return
    now = now_sql(store.dialect)
    with store.begin_write() as conn:
        for offset in range(0, len(process_ids), HEARTBEAT_BATCH):
            chunk = [uuid.UUID(int=i) for i in process_ids[offset : offset + HEARTBEAT_BATCH]]
            conn.execute(
                update(processes)
                .where(and_(processes.c.id.in_(chunk), processes.c.status == Status.RUNNING.value))
                .values(heartbeat_at=now)
            )


# -- marking lost ---------------------------------------------------------------------


def _lost_values(now: datetime, reason: str) -> dict[str, Any]:
    """What a process marked lost gets: the status, one more loss, the time and the reason."""
    return {
        "status": Status.LOST.value,
        "lost_count": processes.c.lost_count + 1,
        "finished_at": now,
        "updated_at": now,
        "error_class": LOST_ERROR_CLASS,
        "error_message": reason,
        "error_traceback": None,
    }


def mark_silent_lost(store: Store, lost_after: float, reason: str) -> tuple[datetime, list[Any]]:
    """Mark every silent process lost, with its running flows; return the time and the rows.

    One UPDATE: a second reaper running at once waits for these rows, then finds
    them no longer running, so each process is marked once.
    """
    with store.begin_write() as conn:
        now = database_now(conn)
        marked = list(
            conn.execute(
                update(processes)
                .where(silent(now, lost_after))
                .values(_lost_values(now, reason))
                .returning(*LOST_EVENT_COLUMNS)
            ).all()
        )
        lost = [uuid.UUID(str(row.id)) for row in marked]
        record_transitions(conn, lost, Status.LOST.value, now, reason)
        for offset in range(0, len(lost), HEARTBEAT_BATCH):
            conn.execute(
                update(flows)
                .where(
                    and_(
                        flows.c.process_id.in_(lost[offset : offset + HEARTBEAT_BATCH]),
                        flows.c.status == Status.RUNNING.value,
                    )
                )
                .values(status=Status.LOST.value)
            )
    return now, marked


def queued_before(store: Store, job_system: str, cutoff: datetime, limit: int) -> list[Any]:
    """Jobs of ``job_system`` still queued that were enqueued before ``cutoff``, oldest first."""
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                select(
                    processes.c.id, processes.c.job_id, processes.c.queue, processes.c.job_payload
                )
                .where(
                    and_(
                        processes.c.status == Status.QUEUED.value,
                        processes.c.job_system == job_system,
                        processes.c.created_at < cutoff,
                    )
                )
                .order_by(processes.c.created_at)
                .limit(limit)
            ).all()
        )


def mark_vanished_lost(
    store: Store, process_ids: Sequence[uuid.UUID], now: datetime, reason: str
) -> list[Any]:
    """Mark these jobs lost if they are still queued (a worker may have started one since)."""
    with store.begin_write() as conn:
        marked = list(
            conn.execute(
                update(processes)
                .where(
                    and_(
                        processes.c.id.in_(process_ids),
                        processes.c.status == Status.QUEUED.value,
                    )
                )
                .values(_lost_values(now, reason))
                .returning(*LOST_EVENT_COLUMNS)
            ).all()
        )
        record_transitions(
            conn, [uuid.UUID(str(row.id)) for row in marked], Status.LOST.value, now, reason
        )
    return marked


def finish_reap(store: Store, now: datetime, stale_after: float, key: str) -> int:
    """Note the reaper's run under ``key``; return how many jobs are stale queued."""
    with store.begin_write() as conn:
        stale = count(conn, stale_queued(now, stale_after))
        write_state(conn, key, now.isoformat(), now)
    return stale


# -- requeue ----------------------------------------------------------------------------


def read_process(store: Store, process_id: uuid.UUID) -> Any | None:
    """The whole process row, or None."""
    with store.engine.connect() as conn:
        return conn.execute(select(processes).where(processes.c.id == process_id)).first()


def claim_requeue(store: Store, row: Any, new_id: uuid.UUID, job_id: str) -> str:
    """Store the new run's queued row: ``"claimed"``, ``"taken"`` or ``"came_back"``.

    ``taken``: another requeue stored it first. ``came_back``: the old row is no
    longer lost or failed, since the job's broker redelivered it and a worker
    started it. The old row is touched first, which locks it until commit: a
    redelivered start waits, then finds the copy and stands down
    (:func:`flow_tracker.jobs.skip_if_requeued`), so exactly one runs.
    """
    with store.begin_write() as conn:
        now = database_now(conn)
        still_finished = conn.execute(
            update(processes)
            .where(processes.c.id == row.id, processes.c.status.in_(REQUEUEABLE))
            .values(updated_at=now)
            .returning(processes.c.id)
        ).scalar()
        if still_finished is None:
            return "came_back"
        stmt = (
            insert_for(store.dialect)(processes)
            .values(
                id=new_id,
                name=row.name,
                category=row.category,
                status=Status.QUEUED.value,
                metadata=row.metadata,
                created_at=now,
                queued_at=now,
                updated_at=now,
                job_system=row.job_system,
                job_id=job_id,
                queue=row.queue,
                job_args=row.job_args,
                job_payload=row.job_payload,
                attempt=1,
                max_attempts=row.max_attempts,
                parent_process_id=row.parent_process_id,
                requeued_from_id=row.id,
                lost_count=row.lost_count,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(processes.c.id)
        )
        if conn.execute(stmt).scalar() is None:
            return "taken"
        record_transitions(conn, [row.id], REQUEUED, now, f"as process {new_id}")
        record_transitions(conn, [new_id], Status.QUEUED.value, now, f"requeued from {row.id}")
        return "claimed"


def unclaim_requeue(conn: Connection, old_id: uuid.UUID, new_id: uuid.UUID) -> bool:
    """Undo :func:`claim_requeue` whose message was not sent: the old job is lost again.

    The copy is deleted only while still queued (no worker started it: nothing
    was sent), with its history and the old row's "requeued as" line, so the
    old job reads as lost and not enqueued again (health counts it, a requeue
    finds it). Returns False when a worker started the copy after all.
    """
    gone = conn.execute(
        delete(processes)
        .where(and_(processes.c.id == new_id, processes.c.status == Status.QUEUED.value))
        .returning(processes.c.id)
    ).first()
    if gone is None:
        return False
    conn.execute(delete(transitions).where(transitions.c.process_id == new_id))
    conn.execute(
        delete(transitions).where(
            and_(
                transitions.c.process_id == old_id,
                transitions.c.status == REQUEUED,
                transitions.c.reason == f"as process {new_id}",
            )
        )
    )
    return True


def requeue_candidates(store: Store, status: Status, limit: int) -> list[uuid.UUID]:
    """Job processes of ``status`` (lost or failed) not enqueued again yet, oldest first."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(processes.c.id)
            .where(
                and_(
                    processes.c.status == status.value,
                    processes.c.job_system.is_not(None),
                    not_requeued(),
                )
            )
            .order_by(processes.c.created_at)
            .limit(limit)
        ).scalars()
        return [uuid.UUID(str(value)) for value in rows]


def lost_not_requeued(store: Store, limit: int) -> list[Any]:
    """The newest lost processes that were not enqueued again (whole rows)."""
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                select(processes)
                .where(and_(processes.c.status == Status.LOST.value, not_requeued()))
                .order_by(processes.c.created_at.desc())
                .limit(limit)
            ).all()
        )


# -- health -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthCounts:
    """The numbers :func:`flow_tracker.health` judges by, read in one go."""

    now: datetime
    running: int
    silent: int
    lost_not_requeued: int
    stale_queued: int
    oldest_queued: datetime | None
    last_reap: datetime | None


def health_counts(
    store: Store, *, lost_after: float, stale_after: float, lost_window: timedelta, reap_key: str
) -> HealthCounts:
    """Running, silent, recently lost and not requeued, and stale queued processes now."""
    with store.engine.connect() as conn:
        now = database_now(conn)
        oldest = conn.execute(
            select(func.min(processes.c.created_at)).where(
                processes.c.status == Status.QUEUED.value
            )
        ).scalar()
        return HealthCounts(
            now=now,
            running=count(conn, processes.c.status == Status.RUNNING.value),
            silent=count(conn, silent(now, lost_after)),
            lost_not_requeued=count(conn, _lost_recently(now, lost_window)),
            stale_queued=count(conn, stale_queued(now, stale_after)),
            oldest_queued=None if oldest is None else as_utc(oldest),
            last_reap=state_written_at(conn, reap_key),
        )


def _lost_recently(now: datetime, lost_window: timedelta) -> ColumnElement[bool]:
    """Lost within ``lost_window`` and not enqueued again: what health counts as lost."""
    return and_(
        processes.c.status == Status.LOST.value,
        processes.c.finished_at >= now - lost_window,
        not_requeued(),
    )


def forgotten(
    store: Store, *, lost_after: float, stale_after: float, lost_window: timedelta, limit: int
) -> dict[str, list[Any]]:
    """The silent, lost and stale queued jobs :func:`health_counts` counts, ``limit`` of each.

    Oldest first, as they would be handled: the job silent longest, the one lost
    first, the one queued longest.
    """
    columns = (
        processes.c.id,
        processes.c.name,
        processes.c.job_system,
        processes.c.job_id,
        processes.c.queue,
        processes.c.host,
        processes.c.heartbeat_at,
        processes.c.finished_at,
        processes.c.created_at,
    )
    with store.engine.connect() as conn:
        now = database_now(conn)
        kinds = {
            "silent": (silent(now, lost_after), processes.c.heartbeat_at),
            "lost": (_lost_recently(now, lost_window), processes.c.finished_at),
            "stale_queued": (stale_queued(now, stale_after), processes.c.created_at),
        }
        return {
            kind: list(
                conn.execute(select(*columns).where(condition).order_by(order).limit(limit)).all()
            )
            for kind, (condition, order) in kinds.items()
        }
