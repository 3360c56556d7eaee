"""No job forgotten: the reaper, re-enqueueing and the health check.

* :func:`reap` marks running processes whose heartbeat (see
  :mod:`flow_tracker.heartbeat`) is older than ``lost_after`` as ``lost``, judged
  by the database's clock. It is one conditional UPDATE, so several reapers at
  once mark each process once.
* :func:`requeue` enqueues a lost or failed job again through its own
  integration, with the arguments stored when it was first enqueued. The new
  run is a new process linked to the old one (``requeued_from_id``); its job id
  is derived from the old process, so requeueing the same process twice (two
  operators, two reapers) enqueues it once. A job lost ``max_lost`` times is not
  enqueued again: it is a poison pill, and says so.
* :func:`health` answers "is any job forgotten?" for probes and dashboards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, exists, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import aliased

from flow_tracker import config, runtime
from flow_tracker.errors import UsageError
from flow_tracker.ids import new_id as new_row_id
from flow_tracker.integrations.registry import probes, requeuer_for
from flow_tracker.status import Status
from flow_tracker.store.clock import database_now
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import flows, processes, state, transitions
from flow_tracker.subscribers import BUS

LAST_REAP_KEY = "reaper_last_run"
LOST_ERROR_CLASS = "flow_tracker.Lost"
LOST_WINDOW = timedelta(hours=24)
REQUEUE_NAMESPACE = uuid.UUID("0b5d3c62-55a1-5f5e-8d0c-3f4a1e6c2b77")
REQUEUEABLE = (Status.LOST.value, Status.FAILED.value, Status.CANCELLED.value)


@dataclass(frozen=True)
class ReapResult:
    """What one run of the reaper did."""

    lost: list[uuid.UUID]
    """Processes marked lost by this run (none that another reaper got first)."""
    stale_queued: int
    """Jobs still queued after ``stale_after`` seconds (reported, not changed)."""
    checked_at: datetime
    """The database's time of the check."""


@dataclass(frozen=True)
class RequeueResult:
    """What :func:`requeue` did with one process."""

    process_id: uuid.UUID
    outcome: str
    """``requeued``, ``already_requeued``, ``poison_pill``, ``not_found``,
    ``not_finished``, ``not_a_job``, ``integration_not_installed`` or ``publish_failed``."""
    new_process_id: uuid.UUID | None = None
    job_id: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when the job is (now or already) enqueued again."""
        return self.outcome in ("requeued", "already_requeued")


@dataclass(frozen=True)
class Health:
    """Whether any job is forgotten: healthy means no old unfinished job."""

    healthy: bool
    running: int
    silent: int
    """Running, but no heartbeat for ``lost_after``: the reaper will call them lost."""
    lost: int
    """Lost in the last 24 hours and not enqueued again."""
    stale_queued: int
    oldest_queued_age_s: float | None
    last_reap: datetime | None
    checked_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready values."""
        values = asdict(self)
        for key in ("last_reap", "checked_at"):
            moment = values[key]
            values[key] = None if moment is None else moment.isoformat()
        return values


def _store(store: Store | None) -> Store:
    chosen = store or runtime.store()
    chosen.ensure_schema()
    return chosen


def _write_state(conn: Connection, dialect: str, key: str, value: str, now: datetime) -> None:
    upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = upsert(state).values(key=key, value=value, updated_at=now)
    conn.execute(
        stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value, "updated_at": now})
    )


_NO_HEARTBEAT = "no heartbeat for {:g} s: its worker died or hung"
_VANISHED = "taken from the queue by a worker that died before it could start it"


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


REQUEUED = "requeued"  # in the state history of the lost run; not a process status


def _record_transitions(
    conn: Connection, process_ids: list[uuid.UUID], status: str, now: datetime, reason: str
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


_LOST_EVENT_COLUMNS = (
    processes.c.id,
    processes.c.name,
    processes.c.category,
    processes.c.job_system,
    processes.c.job_id,
    processes.c.queue,
    processes.c.attempt,
)


def _publish_lost(rows: Sequence[Any], now: datetime, reason: str) -> None:
    """Tell this interpreter's subscribers (``process.lost``) once the marks are stored."""
    for row in rows:
        BUS.publish_event(
            {
                "event": "process.lost",
                "process_id": str(row.id),
                "name": row.name,
                "category": row.category,
                "job_system": row.job_system,
                "job_id": row.job_id,
                "queue": row.queue,
                "attempt": row.attempt,
                "status": Status.LOST.value,
                "time": now.timestamp(),
                "reason": reason,
            }
        )


def reap(*, lost_after: float | None = None, store: Store | None = None) -> ReapResult:
    """Mark running processes that stopped sending heartbeats as ``lost``.

    Args:
        lost_after: seconds without a heartbeat (default: the ``lost_after`` setting).
        store: the database (default: the configured one).

    Returns:
        The processes this call marked lost, and how many queued jobs are stale.
    """
    settings = config.current()
    after = settings.lost_after if lost_after is None else float(lost_after)
    if not after > 0:
        raise UsageError(f"lost_after must be a positive number of seconds, not {lost_after!r}")
    chosen = _store(store)
    with (
        chosen.engine.connect().execution_options(flow_tracker_begin="IMMEDIATE") as conn,
        conn.begin(),
    ):
        now = database_now(conn)
        cutoff = now - timedelta(seconds=after)
        # One statement: a second reaper running at once waits for these rows, then
        # finds them no longer running, so each process is marked once.
        marked = conn.execute(
            update(processes)
            .where(
                and_(
                    processes.c.status == Status.RUNNING.value,
                    processes.c.heartbeat_at < cutoff,
                )
            )
            .values(_lost_values(now, _NO_HEARTBEAT.format(after)))
            .returning(*_LOST_EVENT_COLUMNS)
        ).all()
        lost = [uuid.UUID(str(row.id)) for row in marked]
        _record_transitions(conn, lost, Status.LOST.value, now, _NO_HEARTBEAT.format(after))
        for offset in range(0, len(lost), 500):
            conn.execute(
                update(flows)
                .where(
                    and_(
                        flows.c.process_id.in_(lost[offset : offset + 500]),
                        flows.c.status == Status.RUNNING.value,
                    )
                )
                .values(status=Status.LOST.value)
            )
    _publish_lost(marked, now, _NO_HEARTBEAT.format(after))
    # Asking brokers may take a while: never inside the transaction above.
    lost += _reap_vanished(chosen, now, cutoff)
    with (
        chosen.engine.connect().execution_options(flow_tracker_begin="IMMEDIATE") as conn,
        conn.begin(),
    ):
        stale = _stale_queued(conn, now, settings.stale_after)
        _write_state(conn, chosen.dialect, LAST_REAP_KEY, now.isoformat(), now)
    return ReapResult(lost=lost, stale_queued=stale, checked_at=now)


VANISHED_BATCH = 1000


def _reap_vanished(store: Store, now: datetime, cutoff: datetime) -> list[uuid.UUID]:
    """Queued rows whose job the broker no longer holds: taken by a worker that died.

    Only for queues whose integration can answer (a probe is registered in this
    process), and only rows queued before ``cutoff``: a job just taken by a
    living worker is marked running within milliseconds.
    """
    found: list[uuid.UUID] = []
    for job_system, pending in probes().items():
        with store.engine.connect() as conn:
            rows = conn.execute(
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
                .limit(VANISHED_BATCH)
            ).all()
        if not rows:
            continue
        try:
            still = pending([(str(row.job_id), row.queue, row.job_payload) for row in rows])
        except Exception as exc:  # the broker is away: ask again next time
            runtime.report_internal_error(exc, f"asking {job_system} which jobs are pending")
            continue
        gone = [row.id for row in rows if str(row.job_id) not in still]
        if not gone:
            continue
        with (
            store.engine.connect().execution_options(flow_tracker_begin="IMMEDIATE") as conn,
            conn.begin(),
        ):
            marked = conn.execute(
                update(processes)
                .where(and_(processes.c.id.in_(gone), processes.c.status == Status.QUEUED.value))
                .values(_lost_values(now, _VANISHED))
                .returning(*_LOST_EVENT_COLUMNS)
            ).all()
            vanished = [uuid.UUID(str(row.id)) for row in marked]
            _record_transitions(conn, vanished, Status.LOST.value, now, _VANISHED)
        _publish_lost(marked, now, _VANISHED)
        found += vanished
    return found


def _stale_queued(conn: Connection, now: datetime, stale_after: float) -> int:
    return int(
        conn.execute(
            select(func.count()).where(
                and_(
                    processes.c.status == Status.QUEUED.value,
                    processes.c.created_at < now - timedelta(seconds=stale_after),
                )
            )
        ).scalar_one()
    )


def reap_forever(
    every: float, *, lost_after: float | None = None, store: Store | None = None
) -> None:  # pragma: no cover - a loop for the CLI, its single run is tested
    """Run :func:`reap` every ``every`` seconds until interrupted, waiting out database outages."""
    while True:
        try:
            reap(lost_after=lost_after, store=store)
        except Exception as exc:
            runtime.report_internal_error(exc, "reaping")
        time.sleep(every)


def requeue_job_id(process_id: uuid.UUID) -> str:
    """The job id the re-enqueued run of ``process_id`` gets (the same on every try)."""
    return str(uuid.uuid5(REQUEUE_NAMESPACE, str(process_id)))


def requeue(ids: Iterable[uuid.UUID | str], *, store: Store | None = None) -> list[RequeueResult]:
    """Enqueue lost or failed jobs again through their own integration.

    The integration must be installed in this interpreter (for the CLI:
    ``flow-tracker requeue --import myapp.celery_app``), since it owns the
    connection to the broker.

    Args:
        ids: process ids (or their text).
        store: the database (default: the configured one).

    Returns:
        One result per id, in order; never raises for a single bad id.
    """
    chosen = _store(store)
    results = []
    for raw in ids:
        try:
            process_id = raw if isinstance(raw, uuid.UUID) else uuid.UUID(str(raw))
        except ValueError:
            raise UsageError(f"{raw!r} is not a process id") from None
        results.append(_requeue_one(chosen, process_id))
    return results


def _requeue_one(store: Store, process_id: uuid.UUID) -> RequeueResult:
    from flow_tracker.integrations.jobs import process_id_for, record_publish_failed

    with store.engine.connect() as conn:
        row = conn.execute(select(processes).where(processes.c.id == process_id)).first()
    if row is None:
        return RequeueResult(process_id, "not_found")
    if row.status not in REQUEUEABLE:
        return RequeueResult(process_id, "not_finished", reason=f"it is {row.status}")
    if not row.job_system or not row.job_id:
        return RequeueResult(process_id, "not_a_job", reason="not enqueued through a job queue")
    if row.job_payload is None:
        return RequeueResult(process_id, "not_a_job", reason="its arguments were not kept")
    limit = config.current().max_lost
    if row.lost_count >= limit:
        return RequeueResult(
            process_id,
            "poison_pill",
            reason=f"lost {row.lost_count} times (max_lost={limit}); not enqueued again",
        )
    send = requeuer_for(row.job_system)
    if send is None:
        return RequeueResult(
            process_id,
            "integration_not_installed",
            reason=f"install flow_tracker.integrations.{row.job_system} in this process first",
        )
    job_id = requeue_job_id(process_id)
    new_id = process_id_for(row.job_system, job_id)
    claimed = _claim(store, row, new_id, job_id)
    if claimed == "came_back":
        return RequeueResult(
            process_id, "not_finished", reason="it started again (its broker redelivered it)"
        )
    if claimed == "taken":
        return RequeueResult(process_id, "already_requeued", new_id, job_id)
    try:
        send(row.job_payload, job_id)
    except Exception as exc:
        record_publish_failed(row.job_system, job_id, exc)
        runtime.flush()
        return RequeueResult(process_id, "publish_failed", new_id, job_id, f"{exc}")
    BUS.publish_event(
        {
            "event": "process.requeued",
            "process_id": str(process_id),
            "name": row.name,
            "category": row.category,
            "job_system": row.job_system,
            "status": row.status,
            "time": time.time(),
            "new_process_id": str(new_id),
            "job_id": job_id,
        }
    )
    return RequeueResult(process_id, "requeued", new_id, job_id)


def _claim(store: Store, row: Any, new_id: uuid.UUID, job_id: str) -> str:
    """Store the new run's queued row: ``"claimed"``, ``"taken"`` or ``"came_back"``.

    ``taken``: another requeue stored it first. ``came_back``: the old row is no
    longer lost or failed, since the job's broker redelivered it and a worker
    started it. The old row is touched first, which locks it until commit: a
    redelivered start waits, then finds the copy and stands down
    (:func:`flow_tracker.integrations.jobs.skip_if_requeued`), so exactly one runs.
    """
    upsert = postgresql.insert if store.dialect == "postgresql" else sqlite.insert
    with (
        store.engine.connect().execution_options(flow_tracker_begin="IMMEDIATE") as conn,
        conn.begin(),
    ):
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
            upsert(processes)
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
        _record_transitions(conn, [row.id], REQUEUED, now, f"as process {new_id}")
        _record_transitions(conn, [new_id], Status.QUEUED.value, now, f"requeued from {row.id}")
        return "claimed"


def requeue_candidates(
    status: Status, *, store: Store | None = None, limit: int = 1000
) -> list[uuid.UUID]:
    """Lost or failed job processes not enqueued again yet, oldest first."""
    if status not in (Status.LOST, Status.FAILED):
        raise UsageError("requeue candidates are lost or failed processes")
    chosen = _store(store)
    again = aliased(processes)
    with chosen.engine.connect() as conn:
        rows = conn.execute(
            select(processes.c.id)
            .where(
                and_(
                    processes.c.status == status.value,
                    processes.c.job_system.is_not(None),
                    ~exists().where(again.c.requeued_from_id == processes.c.id),
                )
            )
            .order_by(processes.c.created_at)
            .limit(limit)
        ).scalars()
        return [uuid.UUID(str(value)) for value in rows]


def health(*, store: Store | None = None) -> Health:
    """Lost, silent and stale jobs now; healthy when there is none.

    ``lost`` counts processes lost in the last 24 hours that were not enqueued
    again (a poison pill stays counted until it is a day old).
    """
    settings = config.current()
    chosen = _store(store)
    again = aliased(processes)
    with chosen.engine.connect() as conn:
        now = database_now(conn)
        running = conn.execute(
            select(func.count()).where(processes.c.status == Status.RUNNING.value)
        ).scalar_one()
        silent = conn.execute(
            select(func.count()).where(
                and_(
                    processes.c.status == Status.RUNNING.value,
                    processes.c.heartbeat_at < now - timedelta(seconds=settings.lost_after),
                )
            )
        ).scalar_one()
        lost = conn.execute(
            select(func.count()).where(
                and_(
                    processes.c.status == Status.LOST.value,
                    processes.c.finished_at >= now - LOST_WINDOW,
                    ~exists().where(again.c.requeued_from_id == processes.c.id),
                )
            )
        ).scalar_one()
        stale = _stale_queued(conn, now, settings.stale_after)
        oldest = conn.execute(
            select(func.min(processes.c.created_at)).where(
                processes.c.status == Status.QUEUED.value
            )
        ).scalar()
        last = conn.execute(select(state.c.updated_at).where(state.c.key == LAST_REAP_KEY)).scalar()
    oldest_age = None if oldest is None else max(0.0, (now - _aware(oldest)).total_seconds())
    return Health(
        healthy=not (silent or lost or stale),
        running=int(running),
        silent=int(silent),
        lost=int(lost),
        stale_queued=stale,
        oldest_queued_age_s=oldest_age,
        last_reap=None if last is None else _aware(last),
        checked_at=now,
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


__all__ = [
    "Health",
    "ReapResult",
    "RequeueResult",
    "health",
    "reap",
    "requeue",
    "requeue_candidates",
]
