"""Write one batch of events in one transaction, as few statements as possible.

The batch is first coalesced: a flow that starts and ends in the same batch
becomes one inserted row, a process's updates merge into its insert, and only
what is left becomes UPDATE statements.

Everything is written with the database driver directly, as plain SQL text
cached by statement shape: SQLAlchemy's execution path costs more per job than
the statements themselves. Flows and log entries, the bulk of the rows, go in
with ``COPY`` on PostgreSQL and with ``executemany`` on SQLite (both measured
1.5-3x faster than SQLAlchemy's insert path). A small batch - the usual one of
a job's start or end: its process row and its history row - is sent to
PostgreSQL as one statement, its writes as ``WITH`` parts: atomic, in a single
round trip (measured: 0.33 ms against 0.65 ms for the same rows as statements
in a transaction, and ~1.3 ms through SQLAlchemy's pool and execution path).
That one statement goes through libpq itself, prepared once per connection
(see :func:`_exec_one`): a job's running row and final state are what a worker
waits for, and psycopg's cursor around them was a third of their CPU (measured).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Table, Uuid, insert

from flow_tracker import events as ev
from flow_tracker.ids import new_id_int, to_hex
from flow_tracker.redaction import Redactor, may_hold_secret
from flow_tracker.store.engine import Store
from flow_tracker.store.jobs import REQUEUEABLE
from flow_tracker.store.schema import flows, log_entries, processes, transitions
from flow_tracker.store.types import UTCDateTime

FLOW_COLUMNS = (
    "id",
    "process_id",
    "parent_id",
    "name",
    "status",
    "metadata",
    "error_class",
    "error_message",
    "error_traceback",
    "started_at",
    "finished_at",
    "duration_ms",
    "attempt",
    "position",
    "depth",
)
# Slots of a flow row being built (FLOW_COLUMNS order), written by name on a flow's end.
_F_STATUS = FLOW_COLUMNS.index("status")
_F_METADATA = FLOW_COLUMNS.index("metadata")
_F_ERROR = FLOW_COLUMNS.index("error_class")  # then error_message, error_traceback
_F_FINISHED = FLOW_COLUMNS.index("finished_at")
_F_DURATION = FLOW_COLUMNS.index("duration_ms")
LOG_COLUMNS = ("id", "process_id", "flow_id", "level", "message", "data", "created_at", "position")
TRANSITION_COLUMNS = ("id", "process_id", "status", "at", "attempt", "reason")
REASON_LIMIT = 1_000
# Rows of one table from which PostgreSQL gets them by COPY; fewer go in the
# statement (measured: 20 log rows 0.57 ms pipelined vs 0.75 ms by COPY; 50 rows
# 1.26 vs 0.98 ms).
_COPY_FROM = 32
# Updates of as many rows go in the one statement as a part each (several threads'
# job ends stored together); more go in a transaction by executemany.
_UPDATES_AS_PARTS = 8
NAME_LIMIT = 255
TRACEBACK_LIMIT = 65_536

# Process columns an upsert must NOT overwrite when the row already exists (a
# queued job's row, written before enqueue, then started by a worker).
_UPSERT_KEEP = frozenset({"id", "created_at", "queued_at", "parent_process_id", "job_payload"})
# What a "queued" row (written at enqueue) may add to a row that exists already:
# the worker can get there first when the enqueuing side had to buffer its row,
# and a late queued row must never turn a running or finished job back to queued.
_ENQUEUE_FACTS = frozenset(
    {"queued_at", "job_args", "job_payload", "parent_process_id", "max_attempts"}
)
_TIME_COLUMNS = frozenset(
    {"created_at", "queued_at", "started_at", "finished_at", "updated_at", "heartbeat_at"}
)
_JSON_COLUMNS = frozenset({"metadata", "job_args", "job_payload"})
_TEXT_LIMITS = {
    "name": NAME_LIMIT,
    "error_class": NAME_LIMIT,
    "error_message": 16_384,
    "error_traceback": TRACEBACK_LIMIT,
    "job_id": NAME_LIMIT,
    "queue": NAME_LIMIT,
    "host": NAME_LIMIT,
    "worker": NAME_LIMIT,
}


class TimeText:
    """Formats ``time.time()`` floats as SQL timestamp text, caching the per-second part."""

    def __init__(self, zone_suffix: str) -> None:
        self._suffix = zone_suffix
        self._second = -1
        self._prefix = ""

    def __call__(self, t: float | None) -> str | None:
        """``t`` as timestamp text, or None."""
        if t is None:
            return None
        second = int(t)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        micro = int((t - second) * 1_000_000)
        return f"{self._prefix}.{micro:06d}{self._suffix}"


class BatchWriter:
    """Stores batches of events for one database dialect.

    Args:
        dialect: ``"sqlite"`` or ``"postgresql"``.
        redactor: scrubs metadata, data and messages before they are stored.
        max_message_length: log messages are cut at this length.
    """

    def __init__(self, dialect: str, redactor: Redactor, max_message_length: int) -> None:
        self.dialect = dialect
        self.redactor = redactor
        self.max_message_length = max_message_length
        self._time_text = TimeText("+00" if dialect == "postgresql" else "")
        self._placeholder = "%s" if dialect == "postgresql" else "?"
        # SQL text by statement shape: a few shapes recur forever.
        self._sql: dict[tuple[Any, ...], Any] = {}

    def adopt_statements(self, other: BatchWriter) -> None:
        """Start with a copy of the statements ``other`` has built (same dialect)."""
        if other.dialect == self.dialect:
            self._sql = dict(other._sql)

    def plan(self, batch: Iterable[ev.Change]) -> _Plan:
        """Coalesce ``batch`` into the rows to write (see the module's docs)."""
        proc_inserts: dict[int, dict[str, Any]] = {}
        proc_updates: dict[int, dict[str, Any]] = {}
        flow_rows: dict[int, list[Any]] = {}
        flow_updates: dict[int, dict[str, Any]] = {}
        log_rows: list[tuple[Any, ...]] = []
        transition_rows: list[tuple[Any, ...]] = []
        scrub_json = self.redactor.to_json
        text = self.redactor.text
        ts = self._time_text
        msg_limit = self.max_message_length
        # Process ids, flow ids and flow names repeat across a batch: convert each once.
        hexes: dict[int, str] = {}
        names: dict[str, str] = {}

        def hex_of(value: int) -> str:
            found = hexes.get(value)
            if found is None:
                found = hexes[value] = to_hex(value)
            return found

        for event in batch:
            kind = event[0]
            if kind == ev.LOG:
                _, log_id, process_id, flow_id, level, message, data, created, position = event
                log_rows.append(
                    (
                        to_hex(log_id),
                        hex_of(process_id),
                        None if flow_id is None else hex_of(flow_id),
                        level,
                        message if _is_clean(message, msg_limit) else text(message, msg_limit),
                        None if data is None else scrub_json(data),
                        ts(created),
                        position,
                    )
                )
            elif kind == ev.FLOW_START:
                _, flow_id, process_id, parent_id, name, meta, started, position, depth, attempt = (
                    event
                )
                clean_name = names.get(name)
                if clean_name is None:
                    clean_name = names[name] = text(name, NAME_LIMIT)
                flow_rows[flow_id] = [
                    hex_of(flow_id),
                    hex_of(process_id),
                    None if parent_id is None else hex_of(parent_id),
                    clean_name,
                    "running",
                    scrub_json(meta),
                    None,
                    None,
                    None,
                    ts(started),
                    None,
                    None,
                    attempt,
                    position,
                    depth,
                ]
            elif kind == ev.FLOW_END:
                _, flow_id, status, finished, duration, error, meta = event
                row = flow_rows.get(flow_id)
                if row is not None:
                    row[_F_STATUS] = status
                    if meta is not None:
                        row[_F_METADATA] = scrub_json(meta)
                    if error is not None:
                        row[_F_ERROR : _F_ERROR + 3] = self._error_texts(error)
                    row[_F_FINISHED] = ts(finished)
                    row[_F_DURATION] = duration
                else:
                    fields = flow_updates.setdefault(flow_id, {})
                    fields.update(status=status, finished_at=finished, duration_ms=duration)
                    if meta is not None:
                        fields["metadata"] = meta
                    if error is not None:
                        fields["error"] = error
            elif kind == ev.FLOW_UPDATE:
                _, flow_id, meta = event
                row = flow_rows.get(flow_id)
                if row is not None:
                    row[_F_METADATA] = scrub_json(meta)
                else:
                    flow_updates.setdefault(flow_id, {})["metadata"] = meta
            elif kind == ev.PROCESS_START:
                _, process_id, row_values = event
                proc_updates.pop(process_id, None)
                proc_inserts[process_id] = dict(row_values)
                transition_rows.append(self._transition(hex_of(process_id), row_values))
            elif kind == ev.PROCESS_UPDATE:
                _, process_id, fields = event
                if "status" in fields:
                    transition_rows.append(self._transition(hex_of(process_id), fields))
                    if ev.TRANSITION_REASON in fields:
                        fields = {k: v for k, v in fields.items() if k != ev.TRANSITION_REASON}
                target = proc_inserts.get(process_id)
                if target is None:
                    target = proc_updates.setdefault(process_id, {})
                # The end of an earlier attempt of a job can come after a later attempt
                # started (a retry picked up by another thread): it changes nothing then.
                ended = fields.get(ev.ENDED_ATTEMPT)
                newest = target.get("attempt", target.get(ev.ENDED_ATTEMPT))
                if ended is not None and newest is not None and ended < newest:
                    continue
                target.update(fields)

        return _Plan(proc_inserts, proc_updates, flow_rows, flow_updates, log_rows, transition_rows)

    def store(
        self,
        conn: Any,
        batch: Iterable[ev.Change],
        *,
        copies_of: Sequence[int] = (),
        commit: bool = True,
    ) -> tuple[int, Copies]:
        """Store ``batch`` in one transaction on the driver connection ``conn``.

        Returns the rows written and, for each process id in ``copies_of`` that
        has one, the id of a process requeued from it, looked for once the
        batch's writes are committed (see
        :func:`flow_tracker.jobs.skip_if_requeued`). ``commit=False``
        rolls the writes back (a warm-up).

        PostgreSQL gets a small batch - a job's queued, running or final row with
        its history row, its end with a few flows and logs, or those of a few
        jobs that several threads wrote at once - as one statement (the writes as
        ``WITH`` parts of it: atomic, one round trip); a copy is looked for only
        when that statement says the job may have one. Bulk rows go by ``COPY``.
        """
        return self.execute(conn, self.prepare(batch, copies_of=copies_of, commit=commit))

    def prepare(
        self, batch: Iterable[ev.Change], *, copies_of: Sequence[int] = (), commit: bool = True
    ) -> Prepared:
        """The statements that store ``batch``: plain data, for :meth:`execute` here or elsewhere.

        An RQ work-horse prepares its batches and hands them to the worker that
        forked it, which executes them on its own connection (see
        :mod:`flow_tracker.relay`).
        """
        plan = self.plan(batch)
        steps = self._steps(plan)
        copy_keys = tuple(to_hex(process_id) for process_id in copies_of)
        single = None
        if self.dialect == "postgresql":
            single = self._one_statement(steps, copy_keys)  # built even for a warm-up
        return Prepared(plan.rows, steps, single, copy_keys, commit)

    def execute(self, conn: Any, prepared: Prepared) -> tuple[int, Copies]:
        """Run ``prepared`` on the driver connection ``conn``; the rows and the copies found."""
        if self.dialect == "postgresql":
            found = self._store_postgresql(conn, prepared)
        else:
            found = self._store_sqlite(conn, prepared)
        return prepared.rows, {
            _as_uuid(key).int: _as_uuid(copy) for key, copy in found if copy is not None
        }

    # -- statements -----------------------------------------------------------

    def _steps(self, plan: _Plan) -> list[_Step]:
        steps: list[_Step] = []
        if plan.proc_inserts:
            groups: dict[tuple[tuple[str, ...], bool], list[tuple[Any, ...]]] = {}
            for process_id, fields in plan.proc_inserts.items():
                values = self._process_values(process_id, fields)
                values.pop(ev.ENDED_ATTEMPT, None)  # the start of that same attempt
                columns = tuple(sorted(values))
                key = (columns, values.get("status") == "queued")
                groups.setdefault(key, []).append(tuple(values[c] for c in columns))
            for (columns, queued), rows in groups.items():
                steps.append(self._upsert(columns, queued, rows))
        if plan.proc_updates:
            steps.extend(self._updates(processes, plan.proc_updates, self._process_values))
        self._insert(steps, flows, FLOW_COLUMNS, list(plan.flow_rows.values()))
        if plan.flow_updates:
            steps.extend(self._updates(flows, plan.flow_updates, self._flow_values))
        self._insert(steps, log_entries, LOG_COLUMNS, plan.log_rows)
        self._insert(steps, transitions, TRANSITION_COLUMNS, plan.transition_rows)
        return steps

    def _insert(
        self, steps: list[_Step], table: Table, columns: tuple[str, ...], rows: list[Any]
    ) -> None:
        if not rows:
            return
        if self.dialect == "postgresql" and len(rows) >= _COPY_FROM:
            # Many rows: COPY. A few (a job's start or end): COPY's set-up round
            # trips cost more than the rows, and COPY cannot join a statement.
            steps.append(_Copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN", rows))
            return
        key = ("insert", table.name, columns)
        found = self._sql.get(key)
        if found is None:
            found = self._sql[key] = (
                f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ",
                self._row_marks(table, columns),
                "",
            )
        steps.append(_Rows(found[0], found[1], found[2], rows))

    def _upsert(self, columns: tuple[str, ...], queued: bool, rows: list[Any]) -> _Rows:
        key = ("upsert", columns, queued)
        found = self._sql.get(key)
        if found is None:
            overwrite = [
                c for c in columns if (c in _ENQUEUE_FACTS if queued else c not in _UPSERT_KEEP)
            ]
            if overwrite:
                action = "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in overwrite)
            else:
                action = "DO NOTHING"
            found = self._sql[key] = (
                f"INSERT INTO {processes.name} ({', '.join(columns)}) VALUES ",
                self._row_marks(processes, columns),
                f" ON CONFLICT (id) {action}",
            )
        return _Rows(found[0], found[1], found[2], rows)

    def _updates(
        self,
        table: Table,
        updates: dict[int, dict[str, Any]],
        convert: Callable[[int, dict[str, Any]], dict[str, Any]],
    ) -> list[_Update]:
        # Rows changing the same columns go in one executemany.
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for row_id, fields in updates.items():
            values = convert(row_id, fields)
            row_key = values.pop("id")
            ended = values.pop(ev.ENDED_ATTEMPT, None)
            columns = tuple(sorted(values))
            if ended is not None:
                columns += (ev.ENDED_ATTEMPT,)
                values[ev.ENDED_ATTEMPT] = ended
            groups.setdefault(columns, []).append((*(values[c] for c in columns), row_key))
        return [_Update(self._update_sql(table, columns), rows) for columns, rows in groups.items()]

    def _update_sql(self, table: Table, columns: tuple[str, ...]) -> str:
        key = ("update", table.name, columns)
        sql = self._sql.get(key)
        if sql is None:
            # Parameters: the new values in ``columns`` order (the attempt that
            # ended last, when given), then the row's id.
            changed = [c for c in columns if c != ev.ENDED_ATTEMPT]
            sets = ", ".join(f"{c} = {self._mark(table, c)}" for c in changed)
            where = f"id = {self._mark(table, 'id')}"
            if ev.ENDED_ATTEMPT in columns:  # not over a row a later attempt has started
                where = f"attempt <= {self._placeholder} AND {where}"
            sql = self._sql[key] = f"UPDATE {table.name} SET {sets} WHERE {where}"
        return sql

    def _row_marks(self, table: Table, columns: tuple[str, ...]) -> str:
        return "(" + ", ".join(self._mark(table, c) for c in columns) + ")"

    def _mark(self, table: Table, column: str) -> str:
        """The parameter placeholder for ``column`` (cast to its type on PostgreSQL)."""
        if self.dialect != "postgresql":
            return "?"
        kind = table.c[column].type
        if isinstance(kind, UTCDateTime):
            return "%s::timestamptz"
        if isinstance(kind, Uuid):
            return "%s::uuid"
        if isinstance(kind, JSON):
            return "%s::jsonb"
        return "%s"

    def _one_statement(
        self, steps: list[_Step], copy_keys: tuple[str, ...]
    ) -> tuple[str, list[Any]] | None:
        """The steps as one PostgreSQL statement, or None when they cannot be one.

        Each write becomes a ``WITH`` part but the last (PostgreSQL runs them
        all, atomically). They see the tables as they were before the
        statement, which is all they need: a batch names each row once (see
        :meth:`plan`).

        With ``copy_keys`` the statement answers with the status each of those
        process rows had before this write, read with ``FOR UPDATE``: should a
        requeue of the job hold the row, that waits for it and reads what it left
        (see :meth:`_store_postgresql`).
        """
        parts: list[str] = []
        params: list[Any] = list(copy_keys)
        for step in steps:
            if isinstance(step, _Rows):
                parts.append(step.head + ", ".join([step.marks] * len(step.rows)) + step.tail)
                for row in step.rows:
                    params.extend(row)
            elif isinstance(step, _Update) and len(step.rows) <= _UPDATES_AS_PARTS:
                # Several threads' job ends: a part per row (a row appears once per batch).
                for row in step.rows:
                    parts.append(step.sql)
                    params.extend(row)
            else:
                return None
        if not parts:
            return None
        key = ("with", len(copy_keys), *parts)
        sql = self._sql.get(key)
        if sql is None:
            if copy_keys:
                ctes = [f"w{n} AS ({part})" for n, part in enumerate(parts)]
                # One placeholder per key: with "id = ANY(array)" the statement's cost
                # grew with the table (measured); plain equality does not.
                marks = ", ".join(["%s::uuid"] * len(copy_keys))
                previous = (
                    f"SELECT id, status FROM {processes.name} WHERE id IN ({marks}) FOR UPDATE"
                )
                sql = (
                    f"WITH previous AS ({previous}), {', '.join(ctes)}"
                    " SELECT id, status FROM previous"
                )
            elif len(parts) == 1:
                sql = parts[0]
            else:
                ctes = [f"w{n} AS ({part})" for n, part in enumerate(parts[:-1])]
                sql = f"WITH {', '.join(ctes)} {parts[-1]}"
            # PostgreSQL's own numbered placeholders: the statement goes to libpq as
            # it is (see _exec_one); psycopg's parsing of a statement this long for
            # %s cost ~0.7 ms for 250 parameters (measured).
            pieces = sql.split("%s")
            sql = pieces[0] + "".join(f"${n}{rest}" for n, rest in enumerate(pieces[1:], 1))
            self._sql[key] = sql
        return sql, params

    def _store_postgresql(self, conn: Any, prepared: Prepared) -> list[tuple[Any, Any]]:
        """Store; for each copy key that has one, (key, copy id)."""
        steps, copy_keys, single = prepared.steps, prepared.copy_keys, prepared.single
        if single is not None and prepared.commit:
            previous = _exec_one(conn, *single)
            # flow_tracker.requeue sends a copy only of a job whose row is lost,
            # failed or cancelled, and holds that row while it does: any other
            # status (or no row) means there is no copy, without looking.
            return [
                (key, _first(conn.execute(_FIND_COPY_PG, (key,)).fetchone()))
                for key, status in previous
                if status in REQUEUEABLE
            ]
        with conn.cursor() as cursor:
            cursor.execute("BEGIN")
            for step in steps:
                if isinstance(step, _Copy):
                    with cursor.copy(step.sql) as copy:
                        for row in step.rows:
                            copy.write_row(row)
                else:
                    cursor.executemany(step.statement(), step.rows)
            found = [
                (key, _first(cursor.execute(_FIND_COPY_PG, (key,)).fetchone())) for key in copy_keys
            ]
            cursor.execute("COMMIT" if prepared.commit else "ROLLBACK")
            return found

    def _store_sqlite(self, conn: Any, prepared: Prepared) -> list[tuple[Any, Any]]:
        # BEGIN IMMEDIATE: take the write lock first (see Store.begin_write).
        conn.execute("BEGIN IMMEDIATE")
        for step in prepared.steps:
            conn.executemany(step.statement(), step.rows)  # type: ignore[union-attr]
        found = [
            (key, _first(conn.execute(_FIND_COPY_SQLITE, (key,)).fetchone()))
            for key in prepared.copy_keys
        ]
        conn.execute("COMMIT" if prepared.commit else "ROLLBACK")
        return found

    # -- values ---------------------------------------------------------------

    def _transition(self, process_hex: str, fields: Mapping[str, Any]) -> tuple[Any, ...]:
        """A state-history row from a process's start or status change."""
        status = fields["status"]
        at = (
            fields.get("finished_at")
            or fields.get("started_at")
            or fields.get("queued_at")
            or fields.get("updated_at")
            or fields.get("created_at")
            or time.time()
        )
        reason = fields.get(ev.TRANSITION_REASON)
        error = fields.get("error")
        if reason is None and error is not None:
            reason = f"{error[0]}: {error[1]}"
        return (
            to_hex(new_id_int()),
            process_hex,
            status,
            self._time(at),
            fields.get("attempt", fields.get(ev.ENDED_ATTEMPT)),
            None if reason is None else self.redactor.text(reason, REASON_LIMIT),
        )

    def _time(self, value: float | datetime | None) -> str | None:
        if isinstance(value, datetime):
            value = value.timestamp()
        return self._time_text(value)

    def _error_texts(self, error: ev.ErrorTuple) -> tuple[str, str, str | None]:
        cls, message, trace = error
        text = self.redactor.text
        return (
            text(cls, NAME_LIMIT),
            text(message, _TEXT_LIMITS["error_message"]),
            None if trace is None else text(trace, TRACEBACK_LIMIT),
        )

    def _process_values(self, process_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        """A process's fields as the driver takes them: ids, times and JSON as text."""
        values: dict[str, Any] = {}
        for key, value in fields.items():
            if key == "error":
                if value is None:
                    values["error_class"] = values["error_message"] = None
                    values["error_traceback"] = None
                else:
                    cls, message, trace = self._error_texts(value)
                    values.update(error_class=cls, error_message=message, error_traceback=trace)
            elif key in _TIME_COLUMNS:
                values[key] = self._time(value)
            elif key == "job_payload":
                # Kept as given for re-enqueue (record_enqueued checked it is JSON).
                values[key] = None if value is None else json.dumps(value)
            elif key in _JSON_COLUMNS:
                values[key] = self.redactor.to_json(value)
            elif key in _TEXT_LIMITS and value is not None:
                values[key] = self.redactor.text(value, _TEXT_LIMITS[key])
            elif key in ("parent_process_id", "requeued_from_id"):
                values[key] = _id_text(value)
            else:
                values[key] = value  # numbers, status, category; ENDED_ATTEMPT
        values["id"] = to_hex(process_id)
        return values

    def _flow_values(self, flow_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {"id": to_hex(flow_id)}
        for key, value in fields.items():
            if key == "error":
                cls, message, trace = self._error_texts(value)
                values.update(error_class=cls, error_message=message, error_traceback=trace)
            elif key == "finished_at":
                values[key] = self._time(value)
            elif key == "metadata":
                values[key] = self.redactor.to_json(value)
            else:
                values[key] = value
        return values


@dataclasses.dataclass(slots=True)
class _Plan:
    """A batch coalesced into rows: what :meth:`BatchWriter.store` writes."""

    proc_inserts: dict[int, dict[str, Any]]
    proc_updates: dict[int, dict[str, Any]]
    flow_rows: dict[int, list[Any]]
    flow_updates: dict[int, dict[str, Any]]
    log_rows: list[tuple[Any, ...]]
    transition_rows: list[tuple[Any, ...]]

    @property
    def rows(self) -> int:
        """How many rows the batch writes."""
        return (
            len(self.transition_rows)
            + len(self.proc_inserts)
            + len(self.proc_updates)
            + len(self.flow_rows)
            + len(self.flow_updates)
            + len(self.log_rows)
        )


@dataclasses.dataclass(slots=True)
class Prepared:
    """A batch as statements and plain values (text, numbers, None): picklable."""

    rows: int  # rows the batch writes
    steps: list[_Step]
    single: tuple[str, list[Any]] | None  # PostgreSQL: the whole batch as one statement
    copy_keys: tuple[str, ...]  # look for processes requeued from these
    commit: bool


@dataclasses.dataclass(slots=True)
class _Rows:
    """Rows to insert (or upsert): ``head`` + one ``marks`` group per row + ``tail``."""

    head: str
    marks: str
    tail: str
    rows: list[Any]

    def statement(self) -> str:
        """The one-row statement, for ``executemany``."""
        return self.head + self.marks + self.tail


@dataclasses.dataclass(slots=True)
class _Update:
    """One UPDATE statement and the parameters of each row it changes."""

    sql: str
    rows: list[Any]

    def statement(self) -> str:
        """The statement, for ``executemany``."""
        return self.sql


@dataclasses.dataclass(slots=True)
class _Copy:
    """Rows for PostgreSQL's ``COPY ... FROM STDIN``."""

    sql: str
    rows: list[Any]


_Step = _Rows | _Update | _Copy
Copies = dict[int, uuid.UUID]  # process id (int) -> the id of a process requeued from it
_FIND_COPY_PG = f"SELECT id FROM {processes.name} WHERE requeued_from_id = %s::uuid LIMIT 1"
_FIND_COPY_SQLITE = f"SELECT id FROM {processes.name} WHERE requeued_from_id = ? LIMIT 1"


# Statements prepared on one connection at most (each costs the server a little
# memory for as long as the connection lives); past that they run unprepared.
_PREPARED_PER_CONNECTION = 200
_STATEMENT_NUMBERS = itertools.count()


def _exec_one(conn: Any, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run one statement on psycopg connection ``conn`` through libpq itself; its rows, as text.

    A job's running row and final state are one statement each, and the
    statement is all they wait for: psycopg's cursor machinery around it cost
    a third of the worker's own CPU for a tracked job (measured). The statement is
    prepared once per connection (parsing and planning it each time cost the
    server more than running it), its parameters sent as text for the server to
    read as the types it inferred. libpq's blocking call runs without the
    interpreter lock, as the cursor's wait does.
    """
    import psycopg
    from psycopg import pq

    encoding = conn.info.encoding  # the connection's, as psycopg would encode
    values = [
        None
        if value is None
        else (b"t" if value else b"f")
        if isinstance(value, bool)
        else str(value).encode(encoding)
        for value in params
    ]
    try:
        result = _run_prepared(conn, sql, values, encoding)
    except psycopg.errors.InvalidSqlStatementName:
        # The server forgot them (a pooler's DISCARD ALL between two uses): once more.
        conn._flow_tracker_prepared = {}
        result = _run_prepared(conn, sql, values, encoding)
    if result.status == pq.ExecStatus.TUPLES_OK:
        return [
            tuple(
                None if (cell := result.get_value(row, col)) is None else cell.decode(encoding)
                for col in range(result.nfields)
            )
            for row in range(result.ntuples)
        ]
    return []


def _run_prepared(conn: Any, sql: str, values: list[bytes | None], encoding: str) -> Any:
    pgconn = conn.pgconn
    names: dict[str, bytes] | None = getattr(conn, "_flow_tracker_prepared", None)
    if names is None:
        names = {}
        conn._flow_tracker_prepared = names
    name = names.get(sql)
    if name is None and len(names) < _PREPARED_PER_CONNECTION:
        name = f"flow_tracker_{next(_STATEMENT_NUMBERS)}".encode()  # never reused
        _check(conn, pgconn.prepare(name, sql.encode(encoding)))
        names[sql] = name
    if name is None:
        result = pgconn.exec_params(sql.encode(encoding), values)
    else:
        result = pgconn.exec_prepared(name, values)
    _check(conn, result)
    return result


def _check(conn: Any, result: Any) -> None:
    """Raise psycopg's own error for a failed libpq result (a connection error if it broke)."""
    import psycopg
    from psycopg import pq

    if result.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        return
    pgconn = conn.pgconn
    if pgconn.status != pq.ConnStatus.OK:  # the server went away: retried on a new one
        raise psycopg.OperationalError(pgconn.error_message.decode(errors="replace"))
    raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)


def _first(row: Any) -> Any:
    return None if row is None else row[0]


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _id_text(value: Any) -> Any:
    if isinstance(value, int):
        return to_hex(value)
    if isinstance(value, uuid.UUID):
        return value.hex
    return value


def _is_clean(message: object, limit: int) -> bool:
    # Most messages are short ASCII strings with nothing secret-looking in them:
    # skip the scrubbing work for those.
    return (
        type(message) is str
        and len(message) <= limit
        and message.isascii()
        and "\x00" not in message
        and not may_hold_secret(message)
    )


def insert_rows(
    store: Store,
    process_rows: Sequence[Mapping[str, Any]],
    flow_rows: Sequence[Mapping[str, Any]] = (),
    log_rows: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Insert complete rows as given, in one transaction (the demo's past week of runs).

    Not for recording: rows go in as they are, with no redaction or batching.
    """
    store.ensure_schema()
    with store.begin_write() as conn:
        for table, rows in ((processes, process_rows), (flows, flow_rows), (log_entries, log_rows)):
            if rows:
                conn.execute(insert(table), list(rows))
