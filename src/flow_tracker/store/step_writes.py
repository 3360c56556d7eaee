"""The two writes every workflow step pays, in the driver's own SQL: its claim and its end.

They are the hand-off between two steps, so they are written for the database
directly (no SQLAlchemy compilation, a kept connection, see
:mod:`flow_tracker.store.connections`): on PostgreSQL each is **one statement**
whose ``WITH`` parts do every write atomically (one round trip); on SQLite each
is one short ``BEGIN IMMEDIATE`` transaction of a few statements (no round
trips to save there, only overhead). ``python -m benchmarks workflows``
measures what a step costs.

What they do is :mod:`flow_tracker.store.workflows`'s contract:

* **claim**: move the step from queued (or waiting to retry) to running, if its
  run is running; make its process row running with this worker's host and pid
  and a first heartbeat; return the run's context and the parents' results;
* **end**: store the attempt's outcome on the step (only if the step is still
  this attempt's) and on its process row, a retry's time as the database's
  clock plus the delay the worker asks for (the reaper reads it on that
  clock); for a completed or skipped step, count one parent fewer for each
  child and queue (with a process row) those that wait for none; count the
  run's active and failed steps. The run's row is locked first
  (``FOR UPDATE``), so ends of steps of one run are serialised and exactly one
  of them sees the count of active steps reach zero: that one ends the run
  (:func:`flow_tracker.store.workflows.finish_run`).

A write whose reply was lost (the connection cut after the server committed
it) is tried again and finds nothing to change: the step is no longer queued,
or no longer running that attempt. :func:`claim_found` and :func:`end_found`
then read whether the write that changed it was this worker's own, by the
moment it stored, so that the worker goes on as the lost reply would have told
it: it runs the step it took, sends the retry or the children its end made
ready. Without them, such a step stays running or waiting to retry with nothing
sent, for the reaper alone to find.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, select

from flow_tracker.status import Status
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import processes, workflow_runs, workflow_steps
from flow_tracker.store.types import as_utc
from flow_tracker.store.workflows.runs import error_columns


@dataclass(frozen=True)
class Taken:
    """A claimed step: its attempt, the run's context and its parents' results."""

    attempt: int
    context: Any
    parents: dict[str, Any]
    workflow: str
    queue_name: str
    module: str | None
    namespace: str = "default"
    """The run's namespace and version: the declaration whose functions run the step."""
    version: str = "1"


@dataclass(frozen=True)
class StepEnd:
    """What storing a step's end did."""

    stored: bool
    """False when the step was no longer this attempt's: nothing changed."""
    run_status: str | None
    workflow: str | None
    queue: str | None
    active: int
    failed: int
    ready: list[tuple[str, str, str]]
    """The children queued now: (step, job id, queue name)."""
    job_id: str | None = None
    queue_name: str | None = None
    stored_at: datetime | None = None
    """Set by :func:`end_found`: the moment the end was stored with (an earlier try's)."""


NOT_STORED = StepEnd(False, None, None, None, 0, 0, [])


def _json(value: Any) -> str | None:
    # Python None is SQL NULL, as json_type() stores it.
    return None if value is None else json.dumps(value)


# -- PostgreSQL: one statement each -------------------------------------------------------

_PG_CLAIM = """
WITH taken AS (
    UPDATE flow_tracker_workflow_steps s
    SET status = 'running', attempts = s.attempts + 1, started_at = %(now)s,
        next_attempt_at = NULL, updated_at = %(now)s
    FROM flow_tracker_workflow_runs r
    WHERE s.run_id = %(run)s AND s.name = %(step)s AND s.status IN ('queued', 'retrying')
      AND r.id = s.run_id AND r.status = 'running'
    RETURNING s.attempts, s.parents, s.queue_name, s.process_id,
              r.context, r.name AS workflow, r.module, r.namespace, r.version
), started AS (
    UPDATE flow_tracker_processes p
    SET status = 'running', started_at = %(now)s, heartbeat_at = %(now)s, updated_at = %(now)s,
        finished_at = NULL, duration_ms = NULL, error_class = NULL, error_message = NULL,
        error_traceback = NULL, attempt = taken.attempts, host = %(host)s, pid = %(pid)s,
        job_system = %(system)s
    FROM taken WHERE p.id = taken.process_id
)
SELECT taken.attempts, taken.queue_name, taken.context, taken.workflow, taken.module,
       taken.namespace, taken.version,
       (SELECT jsonb_object_agg(ps.name, ps.result)
        FROM jsonb_array_elements_text(taken.parents) AS parent(name)
        JOIN flow_tracker_workflow_steps ps
          ON ps.run_id = %(run)s AND ps.name = parent.name) AS parent_results
FROM taken
"""

_PG_END = """
WITH run AS (
    SELECT id, status, name, queue FROM flow_tracker_workflow_runs
    WHERE id = %(run)s FOR UPDATE
), ended AS (
    UPDATE flow_tracker_workflow_steps s
    SET status = %(status)s, result = %(result)s::jsonb, error_class = %(error_class)s,
        error_message = %(error_message)s, updated_at = %(now)s,
        finished_at = CASE WHEN %(retrying)s THEN s.finished_at ELSE %(now)s::timestamptz END,
        next_attempt_at = CASE WHEN %(retrying)s
                          THEN clock_timestamp() + %(retry_in)s::float8 * interval '1 second'
                          ELSE NULL END
    FROM run
    WHERE s.run_id = run.id AND s.name = %(step)s AND s.status = 'running'
      AND s.attempts = %(attempt)s
    RETURNING s.children, s.process_id, s.started_at, s.job_id, s.queue_name
), process_end AS (
    UPDATE flow_tracker_processes p
    SET status = %(status)s, updated_at = %(now)s, error_class = %(error_class)s,
        error_message = %(error_message)s,
        finished_at = CASE WHEN %(retrying)s THEN p.finished_at ELSE %(now)s::timestamptz END,
        duration_ms = CASE WHEN %(retrying)s THEN p.duration_ms
                      ELSE EXTRACT(EPOCH FROM (%(now)s::timestamptz - ended.started_at)) * 1000.0
                      END
    FROM ended WHERE p.id = ended.process_id
), released AS (
    UPDATE flow_tracker_workflow_steps c
    SET waiting = c.waiting - 1,
        status = CASE WHEN c.waiting = 1 AND c.status = 'pending' THEN 'queued' ELSE c.status END,
        queued_at = CASE WHEN c.waiting = 1 AND c.status = 'pending' THEN %(now)s::timestamptz
                    ELSE c.queued_at END,
        updated_at = %(now)s
    FROM ended, run, jsonb_array_elements_text(ended.children) AS child(name)
    WHERE %(release)s AND run.status = 'running' AND c.run_id = run.id
      AND c.name = child.name
    RETURNING c.name, c.status, c.waiting, c.job_id, c.process_id, c.queue_name
), ready AS (
    SELECT * FROM released WHERE status = 'queued' AND waiting = 0
), queued AS (
    INSERT INTO flow_tracker_processes
        (id, name, category, status, created_at, queued_at, updated_at, job_system, job_id,
         queue, job_args, attempt, parent_process_id)
    SELECT ready.process_id, run.name || '.' || ready.name, 'workflows', 'queued', %(now)s,
           %(now)s, %(now)s, run.queue, ready.job_id, ready.queue_name,
           jsonb_build_object('workflow', run.name, 'run', run.id::text, 'step', ready.name),
           1, run.id
    FROM ready, run
    ON CONFLICT (id) DO NOTHING
), counted AS (
    UPDATE flow_tracker_workflow_runs r
    SET active = r.active + %(active)s + (SELECT count(*) FROM ready),
        failed = r.failed + %(failed)s, updated_at = %(now)s
    FROM ended WHERE r.id = %(run)s
    RETURNING r.active, r.failed, r.status, r.name, r.queue
)
SELECT counted.active, counted.failed, counted.status, counted.name, counted.queue,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(name, job_id, queue_name)), '[]'::jsonb)
        FROM ready) AS ready,
       (SELECT job_id FROM ended) AS job_id, (SELECT queue_name FROM ended) AS queue_name
FROM counted
"""


def _pg_claim(conn: Any, params: dict[str, Any]) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(_PG_CLAIM, params)
        return cursor.fetchone()


def _pg_end(conn: Any, params: dict[str, Any]) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(_PG_END, params)
        return cursor.fetchone()


# -- SQLite: one short transaction each ------------------------------------------------------


def _hex(value: uuid.UUID) -> str:
    return value.hex


def _text(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_shift(seconds: float | None) -> str | None:
    """A ``strftime`` modifier moving SQLite's 'now' by ``seconds`` (as store.clock writes it)."""
    return None if seconds is None else f"{float(seconds):+.6f} seconds"


def _loads(text: Any) -> Any:
    # A JSON column has NUMERIC affinity in SQLite: a number comes back as a number.
    return json.loads(text) if isinstance(text, (str, bytes)) else text


def _sqlite_claim(conn: Any, p: dict[str, Any]) -> Any:
    now = _text(p["now"])
    conn.execute("BEGIN IMMEDIATE")
    try:
        run = conn.execute(
            "SELECT status, context, name, module, namespace, version"
            " FROM flow_tracker_workflow_runs WHERE id = ?",
            (_hex(p["run"]),),
        ).fetchone()
        if run is None or run[0] != Status.RUNNING.value:
            conn.execute("COMMIT")
            return None
        taken = conn.execute(
            "UPDATE flow_tracker_workflow_steps SET status = 'running', attempts = attempts + 1,"
            " started_at = ?, next_attempt_at = NULL, updated_at = ?"
            " WHERE run_id = ? AND name = ? AND status IN ('queued', 'retrying')"
            " RETURNING attempts, parents, queue_name, process_id",
            (now, now, _hex(p["run"]), p["step"]),
        ).fetchone()
        if taken is None:
            conn.execute("COMMIT")
            return None
        conn.execute(
            "UPDATE flow_tracker_processes SET status = 'running', started_at = ?,"
            " heartbeat_at = ?, updated_at = ?, finished_at = NULL, duration_ms = NULL,"
            " error_class = NULL, error_message = NULL, error_traceback = NULL, attempt = ?,"
            " host = ?, pid = ?, job_system = ? WHERE id = ?",
            (now, now, now, taken[0], p["host"], p["pid"], p["system"], taken[3]),
        )
        results = dict(
            conn.execute(
                "SELECT name, result FROM flow_tracker_workflow_steps WHERE run_id = ?"
                " AND name IN (SELECT value FROM json_each(?))",
                (_hex(p["run"]), taken[1]),
            ).fetchall()
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    parents = {name: _loads(value) for name, value in results.items()}
    return (taken[0], taken[2], _loads(run[1]), run[2], run[3], run[4], run[5], parents)


def _sqlite_end(conn: Any, p: dict[str, Any]) -> Any:
    now = _text(p["now"])
    run_hex = _hex(p["run"])
    conn.execute("BEGIN IMMEDIATE")
    try:
        run = conn.execute(
            "SELECT status, name, queue FROM flow_tracker_workflow_runs WHERE id = ?", (run_hex,)
        ).fetchone()
        if run is None:
            conn.execute("COMMIT")
            return None
        retrying = p["retrying"]
        ended = conn.execute(
            "UPDATE flow_tracker_workflow_steps SET status = ?, result = ?, error_class = ?,"
            " error_message = ?, updated_at = ?,"
            " finished_at = CASE WHEN ? THEN finished_at ELSE ? END,"
            " next_attempt_at = CASE WHEN ? THEN strftime('%Y-%m-%d %H:%M:%f', 'now', ?) || '000'"
            " ELSE NULL END"
            " WHERE run_id = ? AND name = ? AND status = 'running' AND attempts = ?"
            " RETURNING children, process_id, started_at, job_id, queue_name",
            (
                p["status"],
                p["result"],
                p["error_class"],
                p["error_message"],
                now,
                retrying,
                now,
                retrying,
                _sqlite_shift(p["retry_in"]),
                run_hex,
                p["step"],
                p["attempt"],
            ),
        ).fetchone()
        if ended is None:
            conn.execute("COMMIT")
            return None
        duration = None
        if not retrying and ended[2] is not None:
            duration = (p["now"] - as_utc(ended[2])).total_seconds() * 1000.0
        conn.execute(
            "UPDATE flow_tracker_processes SET status = ?, updated_at = ?, error_class = ?,"
            " error_message = ?, finished_at = CASE WHEN ? THEN finished_at ELSE ? END,"
            " duration_ms = CASE WHEN ? THEN duration_ms ELSE ? END WHERE id = ?",
            (
                p["status"],
                now,
                p["error_class"],
                p["error_message"],
                retrying,
                now,
                retrying,
                duration,
                ended[1],
            ),
        )
        ready: list[Any] = []
        if p["release"] and run[0] == Status.RUNNING.value:
            released = conn.execute(
                "UPDATE flow_tracker_workflow_steps SET waiting = waiting - 1,"
                " status = CASE WHEN waiting = 1 AND status = 'pending' THEN 'queued'"
                " ELSE status END,"
                " queued_at = CASE WHEN waiting = 1 AND status = 'pending' THEN ?"
                " ELSE queued_at END, updated_at = ?"
                " WHERE run_id = ? AND name IN (SELECT value FROM json_each(?))"
                " RETURNING name, status, waiting, job_id, process_id, queue_name",
                (now, now, run_hex, ended[0]),
            ).fetchall()
            ready = [r for r in released if r[1] == Status.QUEUED.value and r[2] == 0]
        if ready:
            conn.executemany(
                "INSERT INTO flow_tracker_processes (id, name, category, status, created_at,"
                " queued_at, updated_at, job_system, job_id, queue, job_args, attempt,"
                " parent_process_id) VALUES (?, ?, 'workflows', 'queued', ?, ?, ?, ?, ?, ?, ?,"
                " 1, ?) ON CONFLICT (id) DO NOTHING",
                [
                    (
                        r[4],
                        f"{run[1]}.{r[0]}",
                        now,
                        now,
                        now,
                        run[2],
                        r[3],
                        r[5],
                        json.dumps({"workflow": run[1], "run": str(p["run"]), "step": r[0]}),
                        run_hex,
                    )
                    for r in ready
                ],
            )
        counted = conn.execute(
            "UPDATE flow_tracker_workflow_runs SET active = active + ?, failed = failed + ?,"
            " updated_at = ? WHERE id = ? RETURNING active, failed, status, name, queue",
            (p["active"] + len(ready), p["failed"], now, run_hex),
        ).fetchone()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return (
        *counted,
        [[r[0], r[3], r[5]] for r in ready],
        ended[3],
        ended[4],
    )


# -- the two writes --------------------------------------------------------------------------


def claim(
    store: Store, run_id: uuid.UUID, step: str, worker: Mapping[str, Any], now: datetime
) -> Taken | None:
    """Take a step for this worker (see the module's docstring); None if it is not there."""
    params = {
        "run": run_id,
        "step": step,
        "now": now,
        "host": worker.get("host"),
        "pid": worker.get("pid"),
        "system": worker.get("job_system"),
    }
    if store.dialect == "postgresql":
        row = store.write_connections.run(lambda conn: _pg_claim(conn, params), take_turns=False)
    else:
        row = store.write_connections.run(
            lambda conn: _sqlite_claim(conn, params), take_turns=False
        )
    if row is None:
        return None
    attempts, queue_name, context, workflow, module, namespace, version, parents = row
    return Taken(
        int(attempts),
        context,
        dict(parents or {}),
        workflow,
        queue_name,
        module,
        namespace,
        version,
    )


def end(
    store: Store,
    run_id: uuid.UUID,
    step: str,
    attempt: int,
    status: str,
    *,
    now: datetime,
    result: Any = None,
    error: tuple[str, str] | None = None,
    retry_in: float | None = None,
) -> StepEnd:
    """Store one attempt's end (see the module's docstring).

    ``now`` is the worker's moment of the end (what :func:`end_found` knows the
    write by); a retrying step's next attempt is at the database's clock plus
    ``retry_in`` seconds, as the reaper reads it (:mod:`flow_tracker.store.clock`).
    """
    retrying = status == Status.RETRYING.value
    error_class, error_message = error_columns(error)
    params = {
        "run": run_id,
        "step": step,
        "attempt": attempt,
        "status": status,
        "now": now,
        "result": _json(result),
        "error_class": error_class,
        "error_message": error_message,
        "retrying": retrying,
        "retry_in": None if retry_in is None else float(retry_in),
        "release": status in (Status.COMPLETED.value, Status.SKIPPED.value),
        "active": 0 if retrying else -1,
        "failed": 1 if status == Status.FAILED.value else 0,
    }
    if store.dialect == "postgresql":
        row = store.write_connections.run(lambda conn: _pg_end(conn, params), take_turns=False)
    else:
        row = store.write_connections.run(lambda conn: _sqlite_end(conn, params), take_turns=False)
    if row is None:
        return NOT_STORED
    active, failed, run_status, workflow, queue, ready, job_id, queue_name = row
    if isinstance(ready, str):
        ready = json.loads(ready)
    return StepEnd(
        True,
        run_status,
        workflow,
        queue,
        int(active),
        int(failed),
        [(r[0], r[1], r[2]) for r in ready or ()],
        job_id,
        queue_name,
    )


# -- after a lost reply: was the write that changed the step this worker's own? -------------


def claim_found(
    store: Store,
    run_id: uuid.UUID,
    step: str,
    worker: Mapping[str, Any],
    tried: Sequence[datetime],
) -> tuple[Taken, datetime] | None:
    """The claim one of this worker's tries stored though its reply was lost, and its moment.

    Called when a claim finds the step not there to take. A claim of ours is
    known by what it stored: the step running since one of the moments ``tried``
    (to the microsecond), its process on this worker's host and pid. None when
    the step was taken by another delivery, or is not running.
    """
    if not tried:
        return None
    moments = {as_utc(moment) for moment in tried}
    steps, runs = workflow_steps.c, workflow_runs.c
    with store.engine.connect() as conn:
        row = conn.execute(
            select(
                steps.status,
                steps.attempts,
                steps.started_at,
                steps.parents,
                steps.queue_name,
                runs.context,
                runs.name,
                runs.module,
                runs.namespace,
                runs.version,
                processes.c.host,
                processes.c.pid,
                processes.c.job_system,
            )
            .join(workflow_runs, runs.id == steps.run_id)
            .join(processes, processes.c.id == steps.process_id)
            .where(and_(steps.run_id == run_id, steps.name == step))
        ).first()
        if (
            row is None
            or row.status != Status.RUNNING.value
            or row.started_at is None
            or row.started_at not in moments
            or (row.host, row.pid, row.job_system)
            != (worker.get("host"), worker.get("pid"), worker.get("job_system"))
        ):
            return None
        parents = list(row.parents or ())
        results = dict(
            conn.execute(
                select(steps.name, steps.result).where(
                    and_(steps.run_id == run_id, steps.name.in_(parents))
                )
            ).all()
        )
    taken = Taken(
        int(row.attempts),
        row.context,
        results,
        row.name,
        row.queue_name,
        row.module,
        row.namespace,
        row.version,
    )
    return taken, row.started_at


def end_found(
    store: Store,
    run_id: uuid.UUID,
    step: str,
    attempt: int,
    tried: Sequence[tuple[datetime, str]],
) -> StepEnd:
    """What an end one of this worker's tries stored would have replied, though its reply was lost.

    Called when an end finds the step no longer running this attempt. An end of
    ours is known by what it stored: this attempt, with the status and the
    moment (to the microsecond) of one of the ``(now, status)`` pairs ``tried``.
    The children it made ready are those it queued at that moment and still
    queued (nobody else sends them); the run's counts are read as they are now.
    NOT_STORED when the attempt was ended by someone else (the pool's deadline)
    or the step has moved on since.
    """
    if not tried:
        return NOT_STORED
    steps, runs = workflow_steps.c, workflow_runs.c
    with store.engine.connect() as conn:
        row = conn.execute(
            select(
                steps.status,
                steps.attempts,
                steps.updated_at,
                steps.children,
                steps.job_id,
                steps.queue_name,
                runs.status.label("run_status"),
                runs.name.label("workflow"),
                runs.queue,
                runs.active,
                runs.failed,
            )
            .join(workflow_runs, runs.id == steps.run_id)
            .where(and_(steps.run_id == run_id, steps.name == step))
        ).first()
        if row is None or int(row.attempts) != attempt:
            return NOT_STORED
        moment = next(
            (
                as_utc(now)
                for now, status in tried
                if status == row.status and as_utc(now) == row.updated_at
            ),
            None,
        )
        if moment is None:
            return NOT_STORED
        children = list(row.children or ())
        ready: list[tuple[str, str, str]] = []
        if children and row.status in (Status.COMPLETED.value, Status.SKIPPED.value):
            ready = [
                (r.name, r.job_id, r.queue_name)
                for r in conn.execute(
                    select(steps.name, steps.job_id, steps.queue_name).where(
                        and_(
                            steps.run_id == run_id,
                            steps.name.in_(children),
                            steps.status == Status.QUEUED.value,
                            steps.waiting == 0,
                            steps.queued_at == moment,
                        )
                    )
                ).all()
            ]
    return StepEnd(
        True,
        row.run_status,
        row.workflow,
        row.queue,
        int(row.active),
        int(row.failed),
        ready,
        row.job_id,
        row.queue_name,
        moment,
    )
