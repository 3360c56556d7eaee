"""The reads behind :func:`flow_tracker.compare`: two runs, their flows and their logs.

What differs is decided in :mod:`flow_tracker.comparison`; this module only
fetches, and fetches little: the columns a comparison looks at (no metadata of
flows, no log data), the flows of one attempt, and log lines a chunk at a time
so that the first difference near the top costs one small read.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, cast, func, literal_column, select, tuple_

from flow_tracker.records import ProcessRecord
from flow_tracker.status import Status
from flow_tracker.store.engine import Store
from flow_tracker.store.queries import _made_since, process_from_row
from flow_tracker.store.schema import flows, log_entries, processes, transitions
from flow_tracker.store.types import as_utc
from flow_tracker.store.workflows import CATEGORY as WORKFLOW_CATEGORY

# Kept in step with flow_tracker.tracker.ATTEMPT_POSITION_SHIFT (a test checks):
# each attempt of a job numbers its flows and logs from (attempt - 1) << 40 on.
ATTEMPT_POSITION_SHIFT = 40

_RUN_COLUMNS = [
    c for c in processes.c if c.name not in ("job_payload", "job_args", "error_traceback")
]
# Ids as text: a comparison only matches them with each other, and building a
# uuid.UUID for each of 10,000 ids (and hashing it in Python) was a third of its time.
_FLOW_COLUMNS = (
    cast(flows.c.id, String),
    cast(flows.c.parent_id, String),
    flows.c.name,
    flows.c.status,
    flows.c.duration_ms,
    flows.c.error_class,
    flows.c.error_message,
)
# A log line's flow is read for the few lines a comparison shows (log_flows), not
# for each of the thousands it looks through.
_LOG_COLUMNS = (log_entries.c.position, log_entries.c.level, log_entries.c.message)


def read_run(store: Store, process_id: uuid.UUID) -> ProcessRecord | None:
    """The process with this id, without its tree (None when there is none)."""
    store.ensure_schema()
    with store.engine.connect() as conn:
        row = conn.execute(select(*_RUN_COLUMNS).where(processes.c.id == process_id)).first()
    return None if row is None else process_from_row(row)


def last_completed_before(store: Store, run: ProcessRecord) -> ProcessRecord | None:
    """The last ``completed`` run of ``run``'s name that started before it, or None."""
    with store.engine.connect() as conn:
        row = conn.execute(baseline_query(run)).first()
    return None if row is None else process_from_row(row)


def baseline_query(run: ProcessRecord) -> Select[Any]:
    """The query of :func:`last_completed_before`.

    "Before" is by start time, ties broken by id (ids are time-ordered), so that
    two runs started in the same microsecond still have one order. A workflow
    run looks only at workflow runs (a step's process has a dotted name of its
    own, but a plain process may share the workflow's name).

    One probe of ``ix_flow_tracker_processes_completed_name_started``, a partial
    index of completed processes by (name, started_at, id): however many runs of
    the name failed since the last good one, none of them is read. The status is
    written into the SQL as a literal: the planners of both databases use a
    partial index only for a condition they can see holds, and a bound
    parameter's value is not seen when a plan is made ahead.
    """
    moment = run.started_at or run.created_at
    query = (
        select(*_RUN_COLUMNS)
        .where(
            processes.c.name == run.name,
            processes.c.status == literal_column(f"'{Status.COMPLETED.value}'"),
            tuple_(processes.c.started_at, processes.c.id) < tuple_(moment, run.id),
        )
        .order_by(processes.c.started_at.desc(), processes.c.id.desc())
        .limit(1)
    )
    if is_workflow_run(run):
        query = query.where(
            processes.c.category == WORKFLOW_CATEGORY, processes.c.parent_process_id.is_(None)
        )
    return query


def is_workflow_run(run: ProcessRecord) -> bool:
    """True for the process of a workflow run (not one of its steps' processes)."""
    return run.category == WORKFLOW_CATEGORY and run.parent_process_id is None


def first_start(store: Store, process_id: uuid.UUID) -> datetime | None:
    """When the process first ran (its first ``running`` change), None if never recorded."""
    with store.engine.connect() as conn:
        value = conn.execute(
            select(func.min(transitions.c.at)).where(
                transitions.c.process_id == process_id,
                transitions.c.status == Status.RUNNING.value,
            )
        ).scalar()
    # min() bypasses the column's type: SQLite gives its stored text.
    return None if value is None else as_utc(value)


def attempt_flows(store: Store, run: ProcessRecord, limit: int) -> list[Any]:
    """The flows of ``run``'s latest attempt in the order they started (at most ``limit``).

    Rows of ``(id, parent_id, name, status, duration_ms, error_class,
    error_message)``, ids as text. A retried job keeps every attempt's flows;
    what the run did in the end is its latest attempt's.
    """
    query = (
        select(*_FLOW_COLUMNS)
        .where(
            flows.c.process_id == run.id,
            flows.c.attempt == run.attempt,
            *_made_since(store, flows, run.created_at),
        )
        .order_by(flows.c.position)
        .limit(limit)
    )
    with store.engine.connect() as conn:
        return list(conn.execute(query).all())


def attempt_logs(
    store: Store, run: ProcessRecord, *, first: int = 500, most: int = 10_000
) -> Iterator[Any]:
    """The log lines of ``run``'s latest attempt in the order written, read lazily.

    Rows of ``(position, level, message)``.

    Chunks grow from ``first`` rows to ``most``: a difference near the top costs
    one small read, two long identical logs a few large ones.
    """
    low = (max(run.attempt, 1) - 1) << ATTEMPT_POSITION_SHIFT
    high = max(run.attempt, 1) << ATTEMPT_POSITION_SHIFT
    since = _made_since(store, log_entries, run.created_at)
    after = low - 1
    size = first
    while True:
        query = (
            select(*_LOG_COLUMNS)
            .where(
                log_entries.c.process_id == run.id,
                log_entries.c.position > after,
                log_entries.c.position < high,
                *since,
            )
            .order_by(log_entries.c.position)
            .limit(size)
        )
        with store.engine.connect() as conn:
            chunk = list(conn.execute(query).all())
        yield from chunk
        if len(chunk) < size:
            return
        after = chunk[-1].position
        size = min(size * 4, most)


def log_flows(store: Store, run: ProcessRecord, positions: list[int]) -> dict[int, str]:
    """The flow (its id as text) of each of ``run``'s log lines at ``positions`` that has one."""
    if not positions:
        return {}
    query = select(log_entries.c.position, cast(log_entries.c.flow_id, String)).where(
        log_entries.c.process_id == run.id,
        log_entries.c.position.in_(positions),
        log_entries.c.flow_id.is_not(None),
        *_made_since(store, log_entries, run.created_at),
    )
    with store.engine.connect() as conn:
        return {int(position): flow for position, flow in conn.execute(query)}
