"""Storing a new workflow run: once per idempotency key, with its skipped steps and tags.

One transaction stores the run, its process, every step, the roots' process
rows, its tags and its history line, and (where this process cannot send) the
roots' outbox requests: a start that fails leaves nothing behind.

A repeated idempotency key is decided by the database: the unique index on
(namespace, name, idempotency_key) lets one insert through, whatever the number
of threads or processes racing; every other start finds that run (a look-up
first, the unique violation when two start at the same instant) and returns it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, insert, select
from sqlalchemy.exc import IntegrityError

from flow_tracker.status import StepState
from flow_tracker.store.audit import Hook
from flow_tracker.store.engine import Store
from flow_tracker.store.jobs import record_transitions
from flow_tracker.store.schema import (
    processes,
    workflow_run_tags,
    workflow_runs,
    workflow_steps,
)
from flow_tracker.store.workflows import runs
from flow_tracker.store.workflows.dispatch import Dispatch, hold_in


@dataclass(frozen=True)
class NewRun:
    """What a start asks to store (see :func:`create`)."""

    run_id: uuid.UUID
    namespace: str
    name: str
    version: str
    queue: str
    module: str | None
    dag: Mapping[str, Any]
    context: Any
    steps: Sequence[Mapping[str, Any]]
    """Per step ``name``, ``parents``, ``children``, ``job_id``, ``process_id``, ``queue_name``."""
    skip: frozenset[str] = frozenset()
    tags: Mapping[str, str] | None = None
    idempotency_key: str | None = None
    history: str = ""
    """The line kept in the run's history: who started it, from where, why."""


@dataclass(frozen=True)
class Created:
    """What :func:`create` did."""

    run_id: uuid.UUID
    created: bool
    """False: the idempotency key had started this run before; nothing was stored."""
    dispatches: list[Dispatch]
    """The first steps to send (none for an existing run)."""
    held: bool
    """The first steps were stored in the outbox with the run."""
    run_status: str | None = None
    """``completed`` when every step was skipped: the run ended as it started."""


def existing(store: Store, namespace: str, name: str, key: str) -> uuid.UUID | None:
    """The run a workflow's idempotency key started, if any."""
    r = workflow_runs.c
    with store.engine.connect() as conn:
        found = conn.execute(
            select(r.id).where(
                and_(r.namespace == namespace, r.name == name, r.idempotency_key == key)
            )
        ).scalar()
    return None if found is None else uuid.UUID(str(found))


def create(store: Store, new: NewRun, *, hold: bool, audit: Hook | None = None) -> Created:
    """Store the run (or find the one its idempotency key started); see the module's docstring.

    ``hold``: store the first steps' messages in the outbox, for a worker to send.
    ``audit``: writes the start's audit row with the new run (not called for a run
    its idempotency key had started: nothing is stored then).
    """
    key = new.idempotency_key
    if key is not None:
        found = existing(store, new.namespace, new.name, key)
        if found is not None:
            return Created(found, False, [], False)
    try:
        return _insert(store, new, hold, audit)
    except IntegrityError:
        # Another start of the same key committed first: its run is the one.
        found = None if key is None else existing(store, new.namespace, new.name, key)
        if found is None:
            raise
        return Created(found, False, [], False)


def _insert(store: Store, new: NewRun, hold: bool, audit: Hook | None) -> Created:
    now = datetime.now(timezone.utc)
    skipped = new.skip
    # A skipped step counts as resolved (result None): its children wait for the others.
    waiting = {
        s["name"]: sum(1 for p in s["parents"] if p not in skipped)
        for s in new.steps
        if s["name"] not in skipped
    }
    roots = [s for s in new.steps if s["name"] in waiting and waiting[s["name"]] == 0]
    with store.begin_write() as conn:
        # The run's row first: a repeated key fails here, before anything else is written.
        conn.execute(
            insert(workflow_runs).values(
                id=new.run_id,
                name=new.name,
                queue=new.queue,
                module=new.module,
                namespace=new.namespace,
                version=new.version,
                idempotency_key=new.idempotency_key,
                tags=dict(new.tags) if new.tags else None,
                status=runs.RUN_RUNNING,
                dag=dict(new.dag),
                context=new.context,
                active=len(roots),
                failed=0,
                created_at=now,
                updated_at=now,
            )
        )
        conn.execute(
            insert(processes).values(
                id=new.run_id,
                name=new.name,
                category=runs.CATEGORY,
                status=runs.RUN_RUNNING,
                created_at=now,
                started_at=now,
                updated_at=now,
                job_system=new.queue,
                metadata={"workflow": new.name, "steps": len(new.steps)},
            )
        )
        conn.execute(insert(workflow_steps), [_step_row(new, s, waiting, now) for s in new.steps])
        runs.insert_step_processes(conn, new.run_id, new.name, new.queue, roots, now)
        if new.tags:
            conn.execute(
                insert(workflow_run_tags),
                [
                    {"run_id": new.run_id, "key": k, "value": v, "created_at": now}
                    for k, v in new.tags.items()
                ],
            )
        record_transitions(conn, [new.run_id], runs.RUN_RUNNING, now, new.history)
        dispatches = [runs.dispatch_of(new.queue, new.name, new.run_id, s) for s in roots]
        ended = None
        if not roots:  # every step skipped: nothing to run, the run is done
            ended = runs.end_run(conn, new.run_id, runs.lock_run(conn, new.run_id), now)
        elif hold:
            hold_in(conn, dispatches)
        if audit is not None:
            audit(conn, {"created": True})
    return Created(new.run_id, True, dispatches, hold and bool(dispatches), ended)


def _step_row(
    new: NewRun, step: Mapping[str, Any], waiting: Mapping[str, int], now: datetime
) -> dict[str, Any]:
    name = step["name"]
    row: dict[str, Any] = {
        "run_id": new.run_id,
        "name": name,
        "parents": list(step["parents"]),
        "children": list(step["children"]),
        "attempts": 0,
        "process_id": step["process_id"],
        "job_id": step["job_id"],
        "queue_name": step["queue_name"],
        "queued_at": None,
        "finished_at": None,
        "updated_at": now,
    }
    if name in new.skip:
        row.update(status=runs.RESOLVED, waiting=0, finished_at=now)
    elif waiting[name] == 0:
        row.update(status=StepState.QUEUED.value, waiting=0, queued_at=now)
    else:
        row.update(status=runs.PENDING, waiting=waiting[name])
    return row


def started_as(store: Store, run_id: uuid.UUID) -> Any | None:
    """A run's namespace, name, version, tags and idempotency key (None: no such run)."""
    r = workflow_runs.c
    with store.engine.connect() as conn:
        return conn.execute(
            select(r.namespace, r.name, r.version, r.tags, r.idempotency_key).where(r.id == run_id)
        ).first()
