"""Reading runs and steps: a run's status, its results, the list of runs, an ended run."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, case, func, literal_column, select
from sqlalchemy.engine import Connection

from flow_tracker.status import RunState, Status
from flow_tracker.store.dialect import guarded_json
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import processes, workflow_run_tags, workflow_runs, workflow_steps
from flow_tracker.store.types import as_utc
from flow_tracker.store.workflows.runs import ACTIVE, DONE
from flow_tracker.store.workflows.shapes import DagShape, dag_shape


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
        shape = dag_shape(conn, run_id)
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
        .where(
            and_(workflow_runs.c.name == name, workflow_runs.c.status == RunState.COMPLETED.value)
        )
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
