"""The outbox: requests to publish, stored with the change they announce.

A workflow step to send or a lost job to enqueue again, asked for where the
queue's integration is not installed (the dashboard, the CLI, a script) or
refused by its broker, is a ``pending`` row here. A live worker of that queue
claims due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's ``BEGIN
IMMEDIATE`` serialises writers), which pushes their next try past a lease so
that no other worker takes them meanwhile, publishes them, and marks them
``sent`` with who delivered them. A failed publish leaves the row pending with
its error and a later next try. Every time here is the database's clock: the
writer and the deliverer are different hosts.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from flow_tracker.store.clock import database_now, now_sql
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import outbox
from flow_tracker.store.types import as_utc

STEP = "step"
REQUEUE = "requeue"
PENDING = "pending"
SENT = "sent"
DROPPED = "dropped"  # no longer needed (the job came back, another request sent it)
ERROR_LIMIT = 2_000
WHO_LIMIT = 255


def add(
    conn: Connection,
    *,
    kind: str,
    job_system: str,
    target_id: uuid.UUID,
    payload: Mapping[str, Any],
    workflow: str | None = None,
    error: str | None = None,
    due_in: float = 0.0,
) -> uuid.UUID:
    """Store a request in ``conn``'s transaction; the pending one already there if any.

    One pending request per target: a second retry, requeue or reaper pass
    asking for the same thing finds the first and adds nothing (it is one publish).
    """
    found = conn.execute(
        select(outbox.c.id)
        .where(
            and_(
                outbox.c.target_id == target_id,
                outbox.c.kind == kind,
                outbox.c.status == PENDING,
            )
        )
        .limit(1)
    ).scalar()
    if found is not None:
        return uuid.UUID(str(found))
    dialect = conn.dialect.name
    request = uuid.uuid4()
    conn.execute(
        insert(outbox).values(
            id=request,
            kind=kind,
            job_system=job_system,
            workflow=workflow,
            target_id=target_id,
            payload=dict(payload),
            status=PENDING,
            attempts=1 if error else 0,
            next_try_at=now_sql(dialect, due_in),
            last_error=None if error is None else error[:ERROR_LIMIT],
            created_at=now_sql(dialect),
        )
    )
    return request


def add_now(store: Store, **request: Any) -> uuid.UUID:
    """:func:`add` in a transaction of its own (a publish that failed after the change)."""
    with store.begin_write() as conn:
        return add(conn, **request)


@dataclass(frozen=True)
class Claimed:
    """A request a worker took to publish."""

    id: uuid.UUID
    kind: str
    job_system: str
    workflow: str | None
    target_id: uuid.UUID
    payload: dict[str, Any]
    attempts: int
    created_at: datetime


def _served(
    steps: Collection[str], requeues: Collection[str], workflows: Collection[str]
) -> ColumnElement[bool] | None:
    """The requests a process can publish: by queue, and by workflow for the in-process pool."""
    served: list[ColumnElement[bool]] = []
    if steps:
        served.append(and_(outbox.c.kind == STEP, outbox.c.job_system.in_(sorted(steps))))
    if workflows:
        served.append(
            and_(
                outbox.c.kind == STEP,
                outbox.c.job_system == "threads",
                outbox.c.workflow.in_(sorted(workflows)),
            )
        )
    if requeues:
        served.append(and_(outbox.c.kind == REQUEUE, outbox.c.job_system.in_(sorted(requeues))))
    return or_(*served) if served else None


def claim(
    store: Store,
    *,
    steps: Collection[str],
    requeues: Collection[str],
    workflows: Collection[str] = (),
    lease: float = 30.0,
    limit: int = 100,
) -> list[Claimed]:
    """Take due pending requests this process can publish, for ``lease`` seconds.

    First one indexed read, outside any write transaction (what a worker's poll
    costs when there is nothing to do); then, when something is due, the rows
    are locked and their next try moved past the lease in one transaction. Two
    workers polling at once take disjoint rows: PostgreSQL skips rows another
    transaction locked, SQLite runs the two transactions one after the other
    and the second finds the rows no longer due.
    """
    served = _served(steps, requeues, workflows)
    if served is None:
        return []
    dialect = store.dialect
    due = and_(outbox.c.status == PENDING, outbox.c.next_try_at <= now_sql(dialect), served)
    with store.engine.connect() as conn:
        if conn.execute(select(outbox.c.id).where(due).limit(1)).first() is None:
            return []
    with store.begin_write() as conn:
        chosen = select(outbox.c.id).where(due).order_by(outbox.c.next_try_at).limit(limit)
        if dialect == "postgresql":
            chosen = chosen.with_for_update(skip_locked=True)
        ids = list(conn.execute(chosen).scalars())
        if not ids:
            return []
        rows = conn.execute(
            update(outbox)
            .where(and_(outbox.c.id.in_(ids), outbox.c.status == PENDING))
            .values(next_try_at=now_sql(dialect, lease), attempts=outbox.c.attempts + 1)
            .returning(
                outbox.c.id,
                outbox.c.kind,
                outbox.c.job_system,
                outbox.c.workflow,
                outbox.c.target_id,
                outbox.c.payload,
                outbox.c.attempts,
                outbox.c.created_at,
            )
        ).all()
    return [
        Claimed(
            uuid.UUID(str(r.id)),
            r.kind,
            r.job_system,
            r.workflow,
            uuid.UUID(str(r.target_id)),
            dict(r.payload),
            int(r.attempts),
            as_utc(r.created_at),
        )
        for r in rows
    ]


def mark_sent(store: Store, request: uuid.UUID, by: str) -> bool:
    """Record that ``by`` published the request; False if it was no longer pending."""
    with store.begin_write() as conn:
        return mark_sent_in(conn, request, by)


def mark_sent_in(conn: Connection, request: uuid.UUID, by: str) -> bool:
    """:func:`mark_sent` in ``conn``'s transaction."""
    done = conn.execute(
        update(outbox)
        .where(and_(outbox.c.id == request, outbox.c.status == PENDING))
        .values(
            status=SENT, sent_at=now_sql(conn.dialect.name), sent_by=by[:WHO_LIMIT], last_error=None
        )
        .returning(outbox.c.id)
    ).first()
    return done is not None


def mark_failed(store: Store, request: uuid.UUID, error: str, retry_in: float) -> None:
    """Keep the request pending with ``error``; try it again in ``retry_in`` seconds."""
    with store.begin_write() as conn:
        mark_failed_in(conn, request, error, retry_in)


def mark_failed_in(conn: Connection, request: uuid.UUID, error: str, retry_in: float) -> None:
    """:func:`mark_failed` in ``conn``'s transaction."""
    conn.execute(
        update(outbox)
        .where(and_(outbox.c.id == request, outbox.c.status == PENDING))
        .values(next_try_at=now_sql(conn.dialect.name, retry_in), last_error=error[:ERROR_LIMIT])
    )


def target_sent(store: Store, kind: str, target_id: uuid.UUID) -> bool:
    """Whether a request of ``kind`` for ``target_id`` was published already."""
    with store.engine.connect() as conn:
        found = conn.execute(
            select(outbox.c.id)
            .where(
                and_(
                    outbox.c.target_id == target_id, outbox.c.kind == kind, outbox.c.status == SENT
                )
            )
            .limit(1)
        ).first()
    return found is not None


def mark_dropped(store: Store, request: uuid.UUID, why: str) -> None:
    """Close a pending request that no longer needs publishing, saying why."""
    with store.begin_write() as conn:
        conn.execute(
            update(outbox)
            .where(and_(outbox.c.id == request, outbox.c.status == PENDING))
            .values(status=DROPPED, last_error=why[:ERROR_LIMIT], sent_at=now_sql(store.dialect))
        )


@dataclass(frozen=True)
class Pending:
    """A request not delivered yet, as pages and the CLI show it."""

    id: uuid.UUID
    kind: str
    job_system: str
    target_id: uuid.UUID
    attempts: int
    last_error: str | None
    created_at: datetime


def pending_for(store: Store, targets: Sequence[uuid.UUID]) -> dict[uuid.UUID, Pending]:
    """The pending requests of these targets (step or job processes), by target."""
    if not targets:
        return {}
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(
                outbox.c.id,
                outbox.c.kind,
                outbox.c.job_system,
                outbox.c.target_id,
                outbox.c.attempts,
                outbox.c.last_error,
                outbox.c.created_at,
            ).where(and_(outbox.c.target_id.in_(list(targets)), outbox.c.status == PENDING))
        ).all()
    found: dict[uuid.UUID, Pending] = {}
    for r in rows:
        target = uuid.UUID(str(r.target_id))
        found[target] = Pending(
            uuid.UUID(str(r.id)),
            r.kind,
            r.job_system,
            target,
            int(r.attempts),
            r.last_error,
            as_utc(r.created_at),
        )
    return found


@dataclass(frozen=True)
class PendingCount:
    """Pending requests of one queue system: how many, and the age of the oldest."""

    job_system: str
    count: int
    oldest_age_s: float


def pending_counts(store: Store) -> list[PendingCount]:
    """Pending requests per queue system (the partial index of pending rows answers it)."""
    with store.engine.connect() as conn:
        now = database_now(conn)
        rows = conn.execute(
            select(outbox.c.job_system, func.count(), func.min(outbox.c.created_at))
            .where(outbox.c.status == PENDING)
            .group_by(outbox.c.job_system)
            .order_by(outbox.c.job_system)
        ).all()
    return [
        PendingCount(str(system), int(count), max(0.0, (now - as_utc(oldest)).total_seconds()))
        for system, count, oldest in rows
    ]


def read(store: Store, request: uuid.UUID) -> Any | None:
    """The whole row of a request, or None."""
    with store.engine.connect() as conn:
        return conn.execute(select(outbox).where(outbox.c.id == request)).first()
