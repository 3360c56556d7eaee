"""Reading what was recorded: one process with its tree, lists with filters, statuses.

All functions take a :class:`~flow_tracker.store.engine.Store`; the public
wrappers in :mod:`flow_tracker.reading` pass the configured one.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, func, not_, or_, select, true
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from flow_tracker.errors import SearchTooBroadError, UsageError
from flow_tracker.ids import id_floor, parse_id
from flow_tracker.records import (
    ErrorInfo,
    FlowRecord,
    LogEntryRecord,
    Page,
    ProcessRecord,
    Transition,
)
from flow_tracker.status import Status
from flow_tracker.store.clock import database_now
from flow_tracker.store.engine import Store, budget_left

# Retention moved to its own module; these names stay importable from here for
# the callers that read them as ``queries.cleanup`` (the CLI, flow_tracker.reading).
from flow_tracker.store.retention import cleanup as cleanup
from flow_tracker.store.retention import count_for_cleanup as count_for_cleanup
from flow_tracker.store.schema import (
    flows,
    log_entries,
    processes,
    rollup_counts,
    transitions,
)
from flow_tracker.store.types import as_utc

MAX_PAGE = 500
MAX_LOGS_PER_PROCESS = 100_000
# A job retried or requeued without end still shows its first and its latest changes.
MAX_TRANSITIONS = 1_000


def _error(row: Row[Any]) -> ErrorInfo | None:
    if row.error_class is None and row.error_message is None:
        return None
    # List queries leave the (large) traceback out; get_process reads it.
    trace = row._mapping.get("error_traceback")
    return ErrorInfo(row.error_class or "Error", row.error_message or "", trace)


def process_from_row(row: Row[Any]) -> ProcessRecord:
    """Build a :class:`ProcessRecord` (without tree) from a processes row."""
    return ProcessRecord(
        id=row.id,
        name=row.name,
        category=row.category,
        status=Status(row.status),
        metadata=row.metadata or {},
        error=_error(row),
        created_at=row.created_at,
        queued_at=row.queued_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_ms=row.duration_ms,
        progress_current=row.progress_current or 0,
        progress_total=row.progress_total or 0,
        job_system=row.job_system,
        job_id=row.job_id,
        queue=row.queue,
        attempt=row.attempt,
        parent_process_id=row.parent_process_id,
        host=row.host,
        pid=row.pid,
        heartbeat_at=row.heartbeat_at,
        dropped_logs=row.dropped_logs or 0,
        job_args=row._mapping.get("job_args"),
        requeued_from_id=row._mapping.get("requeued_from_id"),
        lost_count=row._mapping.get("lost_count") or 0,
    )


_LIST_COLUMNS = [c for c in processes.c if c.name not in ("job_payload", "error_traceback")]


def get_process(
    store: Store,
    process_id: uuid.UUID | str,
    *,
    max_flows: int | None = None,
    max_logs: int = MAX_LOGS_PER_PROCESS,
) -> ProcessRecord | None:
    """One process with its flow tree and log entries (the first ``max_logs``), or None."""
    pid = parse_id(process_id)
    if pid is None:
        raise UsageError(f"{process_id!r} is not a process id (UUID)")
    store.ensure_schema()
    with store.engine.connect() as conn:
        row = conn.execute(select(processes).where(processes.c.id == pid)).first()
        if row is None:
            return None
        flow_query = (
            select(flows)
            .where(flows.c.process_id == pid, *_made_since(store, flows, row.created_at))
            .order_by(flows.c.position)
        )
        if max_flows is not None:
            flow_query = flow_query.limit(max_flows)
        flow_rows = conn.execute(flow_query).all()
        log_rows = conn.execute(
            select(log_entries)
            .where(
                log_entries.c.process_id == pid,
                *_made_since(store, log_entries, row.created_at),
            )
            .order_by(log_entries.c.position)
            .limit(max_logs)
        ).all()
        history_rows = conn.execute(
            select(transitions)
            .where(transitions.c.process_id == pid)
            .order_by(transitions.c.at, transitions.c.id)
            .limit(MAX_TRANSITIONS)
        ).all()
    record = process_from_row(row)
    record.history.extend(
        Transition(status=h.status, at=h.at, attempt=h.attempt, reason=h.reason)
        for h in history_rows
    )
    by_id: dict[uuid.UUID, FlowRecord] = {}
    for fr in flow_rows:
        by_id[fr.id] = FlowRecord(
            id=fr.id,
            process_id=fr.process_id,
            parent_id=fr.parent_id,
            name=fr.name,
            status=Status(fr.status),
            metadata=fr.metadata or {},
            error=_error(fr),
            started_at=fr.started_at,
            finished_at=fr.finished_at,
            duration_ms=fr.duration_ms,
            attempt=fr.attempt,
            position=fr.position,
            depth=fr.depth,
        )
    for node in by_id.values():
        parent = by_id.get(node.parent_id) if node.parent_id else None
        (parent.children if parent else record.flows).append(node)
    for lr in log_rows:
        entry = LogEntryRecord(
            id=lr.id,
            process_id=lr.process_id,
            flow_id=lr.flow_id,
            level=lr.level,
            message=lr.message,
            data=lr.data,
            created_at=lr.created_at,
            position=lr.position,
        )
        owner = by_id.get(lr.flow_id) if lr.flow_id else None
        (owner.logs if owner else record.logs).append(entry)
    return record


# How far a host's clock may lag the one that created a process: its flows and logs
# are looked for from that much before the process was created (ids are made by
# the writing host's clock).
CLOCK_SLACK = timedelta(days=1)


def _made_since(store: Store, table: Any, created_at: datetime) -> list[ColumnElement[bool]]:
    """On PostgreSQL, the rows of a process made no earlier than it (less the clock slack).

    The log-entry and flow tables are partitioned by their ids' time there: so
    bounded, reading one process's rows looks only at the partitions since it
    was created instead of probing every partition of the retention.
    """
    if store.dialect != "postgresql":
        return []
    return [table.c.id >= id_floor(as_utc(created_at) - CLOCK_SLACK)]


def count_children(
    store: Store, process_id: uuid.UUID, created_at: datetime | None = None
) -> tuple[int, int]:
    """How many flows and log entries a process has (to say when a page shows fewer).

    ``created_at``: the process's, when known (see :func:`_made_since`).
    """
    since_flows = [] if created_at is None else _made_since(store, flows, created_at)
    since_logs = [] if created_at is None else _made_since(store, log_entries, created_at)
    with store.engine.connect() as conn:
        n_flows = conn.execute(
            select(func.count()).where(flows.c.process_id == process_id, *since_flows)
        ).scalar_one()
        n_logs = conn.execute(
            select(func.count()).where(log_entries.c.process_id == process_id, *since_logs)
        ).scalar_one()
    return int(n_flows), int(n_logs)


def child_processes(store: Store, process_id: uuid.UUID, limit: int = 50) -> list[ProcessRecord]:
    """Processes enqueued from inside this one (oldest first)."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(*_LIST_COLUMNS)
            .where(processes.c.parent_process_id == process_id)
            .order_by(processes.c.created_at, processes.c.id)
            .limit(limit)
        ).all()
    return [process_from_row(r) for r in rows]


def find_process_row(store: Store, id_or_job_id: uuid.UUID | str) -> Row[Any] | None:
    """The process with this id, else the newest one with this job id."""
    store.ensure_schema()
    pid = parse_id(id_or_job_id)
    with store.engine.connect() as conn:
        if pid is not None:
            row = conn.execute(select(*_LIST_COLUMNS).where(processes.c.id == pid)).first()
            if row is not None:
                return row
        return conn.execute(
            select(*_LIST_COLUMNS)
            .where(processes.c.job_id == str(id_or_job_id))
            .order_by(processes.c.created_at.desc())
            .limit(1)
        ).first()


def _encode_cursor(created_at: datetime, process_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{process_id.hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, hex_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|")
        # In UTC and within years 1-9999, or the database cannot compare it.
        return as_utc(datetime.fromisoformat(stamp)), uuid.UUID(hex_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise UsageError(f"invalid cursor {cursor[:100]!r}") from None


def _as_list(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(getattr(v, "value", v)) for v in value]


def _metadata_filter(
    store: Store, metadata: Mapping[str, Any], source: Any = processes
) -> list[ColumnElement[bool]]:
    if store.dialect == "postgresql":
        # jsonb @> uses the GIN (jsonb_path_ops) index.
        column = source.c.metadata.cast(postgresql.JSONB)
        return [column.contains(dict(metadata))]
    conditions: list[ColumnElement[bool]] = []
    for key, value in metadata.items():
        path = '$."' + str(key).replace('"', '""') + '"'
        extracted = func.json_extract(source.c.metadata, path)
        if isinstance(value, bool):
            conditions.append(extracted == (1 if value else 0))
        elif value is None:
            conditions.append(extracted.is_(None))
        elif isinstance(value, (int, float, str)):
            conditions.append(extracted == value)
        else:
            raise UsageError("metadata filters take str, number, bool or None values on SQLite")
    return conditions


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def max_time(*moments: datetime | None) -> datetime | None:
    """The latest of the given times (None when none is given)."""
    present = [as_utc(m) for m in moments if m is not None]
    return max(present) if present else None


def _message_matches(store: Store, search: str) -> ColumnElement[bool]:
    """Log messages that contain ``search``, ignoring case."""
    message: ColumnElement[str] = log_entries.c.message
    if store.dialect == "postgresql" and search.isascii():
        # An ASCII term only needs ASCII case folding: lower() in the "C" collation
        # and a plain substring search are several times cheaper than ILIKE in the
        # database's locale, and the message scan is what a search costs.
        return func.strpos(func.lower(message.collate("C")), search.lower()) > 0
    return message.ilike(_like_pattern(search), escape="\\")


def _id_time(value: uuid.UUID) -> datetime:
    """The millisecond a UUIDv7 was made in."""
    return datetime.fromtimestamp((value.int >> 80) / 1000, timezone.utc)


_RECENT_STRETCHES = (timedelta(minutes=15), timedelta(hours=1), timedelta(hours=4))


_WALK_OVER = 5_000  # matching processes past which the list is walked instead
_WALK_CHUNK = 2_000


# What a search leaves of a request's time budget for answering that it was too broad.
SEARCH_RESERVE = 0.2


class _Budget:
    """The time a search may take over all its statements, not each (the store's timeout).

    :meth:`check` raises once the budget is spent, and gives the next statement
    only what is left of it: ``SET LOCAL statement_timeout`` on PostgreSQL, a
    cap on the deadline of :func:`~flow_tracker.store.engine.build_engine` on SQLite.
    """

    def __init__(self, conn: Connection, seconds: float | None) -> None:
        self.conn = conn
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        if self.deadline is None:
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SearchTooBroadError()
        if self.conn.dialect.name == "postgresql":
            self.conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(left * 1000))}")
        else:
            self.conn.connection.info["flow_tracker_cap"] = self.deadline

    def close(self) -> None:
        """Lift the SQLite cap: the connection goes back to the pool."""
        self.conn.connection.info.pop("flow_tracker_cap", None)


def _list_in_chunks(
    conn: Connection,
    conditions: list[ColumnElement[bool]],
    order: tuple[Any, ...],
    newest: bool,
    size: int,
    budget: _Budget,
) -> Iterator[list[Row[Any]]]:
    """The process list in its order, ``size`` rows at a time (keyset pages); ends when read."""
    after: list[ColumnElement[bool]] = []
    while True:
        budget.check()
        chunk = list(
            conn.execute(
                select(*_LIST_COLUMNS)
                .where(and_(true(), *conditions, *after))
                .order_by(*order)
                .limit(size)
            ).all()
        )
        yield chunk
        if len(chunk) < size:
            return
        last = chunk[-1]
        after = [_keyset_after(last.created_at, last.id, newest)]


def _walk(
    conn: Connection,
    conditions: list[ColumnElement[bool]],
    order: tuple[Any, ...],
    newest: bool,
    ids: set[Any],
    wanted: int,
    budget: _Budget,
) -> list[Row[Any]]:
    """The first ``wanted`` processes of the list (in its order) whose id is in ``ids``."""
    kept: list[Row[Any]] = []
    for chunk in _list_in_chunks(conn, conditions, order, newest, _WALK_CHUNK, budget):
        kept += [row for row in chunk if row.id in ids]
        if len(kept) >= wanted:
            break
    return kept[:wanted]


def _keyset_after(stamp: datetime, last_id: Any, newest: bool) -> ColumnElement[bool]:
    """The rows after (created_at, id) in the list's order."""
    if newest:
        return or_(
            processes.c.created_at < stamp,
            and_(processes.c.created_at == stamp, processes.c.id < last_id),
        )
    return or_(
        processes.c.created_at > stamp,
        and_(processes.c.created_at == stamp, processes.c.id > last_id),
    )


_PROBE_CHUNKS = 1
_PROBE_CHUNK = 200


def _probe(
    conn: Connection,
    conditions: list[ColumnElement[bool]],
    order: tuple[Any, ...],
    newest: bool,
    matches: ColumnElement[bool],
    floor: datetime,
    search: str,
    wanted: int,
    budget: _Budget,
) -> list[Row[Any]] | None:
    """The page, when the first processes of the list already hold it; else None.

    A common term matches most processes: the first few hundred of the list, in
    its order, each checked through the log index by process id, fill the page in
    milliseconds. Complete for what it read, so a page found here is exact. A rare
    term finds too little here, and the search goes on with the full scan.
    """
    kept: list[Row[Any]] = []
    term = search.lower()  # a name matches as ILIKE '%term%' does
    chunks = _list_in_chunks(conn, conditions, order, newest, _PROBE_CHUNK, budget)
    for chunk in itertools.islice(chunks, _PROBE_CHUNKS):
        hits: set[Any] = set()
        if chunk:
            hits = set(
                conn.execute(
                    select(log_entries.c.process_id)
                    .where(
                        log_entries.c.process_id.in_([row.id for row in chunk]),
                        log_entries.c.id >= id_floor(floor),
                        matches,
                    )
                    .distinct()
                ).scalars()
            )
        kept += [row for row in chunk if row.id in hits or term in str(row.name).lower()]
        if len(kept) >= wanted:
            return kept[:wanted]
        if len(chunk) < _PROBE_CHUNK:
            return kept  # the whole list was read: this is the answer
    return None


def _search(
    conn: Connection,
    store: Store,
    conditions: list[ColumnElement[bool]],
    search: str,
    logs_since: datetime | None,
    wanted: int,
    newest: bool,
) -> list[Row[Any]]:
    """The first ``wanted`` processes matching ``conditions`` whose name or logs hold ``search``.

    One plan shape for both orders: the ids of the matching processes first (by
    name, then from the log messages of the window), then their rows, paged. A
    single query (``name ILIKE … OR id IN (SELECT … FROM log_entries …)``) lets
    PostgreSQL plan the log scan as a SubPlan run per process: minutes at a
    million rows. Newest first, the log messages of the last 15 minutes are read
    first: a process is created before it writes a log entry, so once ``wanted``
    matches were created within those minutes, no older log can change the page,
    and a common term costs a few milliseconds. Otherwise the last hour, the last
    four hours and then the rest of the window are read, each only while an older
    log can still change the page; oldest first, the window is read in one scan.
    Long scans run in parallel on PostgreSQL.
    """
    order = (
        (processes.c.created_at.desc(), processes.c.id.desc())
        if newest
        else (processes.c.created_at.asc(), processes.c.id.asc())
    )
    seconds = store.statement_timeout
    left = budget_left()
    if left is not None:
        # Inside a request's budget, stop early enough to say "too broad" within it.
        seconds = left - SEARCH_RESERVE if seconds is None else min(seconds, left - SEARCH_RESERVE)
    budget = _Budget(conn, seconds)
    try:
        return _search_within(
            conn, store, conditions, search, logs_since, wanted, order, newest, budget
        )
    finally:
        budget.close()


def _search_within(
    conn: Connection,
    store: Store,
    conditions: list[ColumnElement[bool]],
    search: str,
    logs_since: datetime | None,
    wanted: int,
    order: tuple[Any, ...],
    newest: bool,
    budget: _Budget,
) -> list[Row[Any]]:
    """:func:`_search`, its statements under ``budget``."""
    budget.check()
    named = conn.execute(
        select(*_LIST_COLUMNS)
        .where(
            and_(true(), *conditions, processes.c.name.ilike(_like_pattern(search), escape="\\"))
        )
        .order_by(*order)
        .limit(wanted)
    ).all()
    found: dict[Any, Row[Any]] = {row.id: row for row in named}
    if logs_since is None:
        first_log = select(log_entries.c.id).order_by(log_entries.c.id).limit(1)
        oldest = conn.execute(first_log).scalar()  # PostgreSQL has no min(uuid)
        if oldest is None:
            return list(named)
        logs_since = _id_time(oldest if isinstance(oldest, uuid.UUID) else uuid.UUID(str(oldest)))
    floor = as_utc(logs_since)
    matches = _message_matches(store, search)
    probed = _probe(conn, conditions, order, newest, matches, floor, search, wanted, budget)
    if probed is not None:
        return probed
    # Newest first: the last minutes (open-ended: clocks differ), then stretches
    # four times longer each, then the rest; each one only while an older log can
    # still change the page (a dense term stops after the stretch that filled it).
    stretches: list[tuple[datetime, datetime | None]] = [(floor, None)]
    if newest:
        now = datetime.now(timezone.utc)
        bounds = [max(now - back, floor) for back in _RECENT_STRETCHES]
        stretches = [(bounds[0], None)]
        stretches += [(lower, upper) for upper, lower in itertools.pairwise([*bounds, floor])]
    for lower, upper in stretches:
        if upper is not None:
            if upper <= floor:
                break
            if sum(1 for row in found.values() if as_utc(row.created_at) >= upper) >= wanted:
                break  # every process matched by an older log was created before ``upper``
        if (upper is not None or not newest) and store.dialect == "postgresql":
            # One long scan of messages: let PostgreSQL share it among parallel
            # workers, which its default costs keep for bigger tables.
            conn.exec_driver_sql("SET LOCAL parallel_setup_cost = 10")
            conn.exec_driver_sql("SET LOCAL parallel_tuple_cost = 0.001")
        logs = select(log_entries.c.process_id).where(matches, log_entries.c.id >= id_floor(lower))
        if upper is not None:
            logs = logs.where(log_entries.c.id < id_floor(upper))
        # The process ids first, then their rows: joined in one query, the planner
        # guesses that most messages match and probes the logs of every process.
        budget.check()
        fresh = {pid for pid in conn.execute(logs.distinct()).scalars() if pid not in found}
        if len(fresh) > _WALK_OVER:
            # A common term: walk the list in its order and keep the matches, which
            # the first pages of processes already hold, instead of fetching them all.
            for row in _walk(conn, conditions, order, newest, fresh, wanted, budget):
                found[row.id] = row
            continue
        ordered = list(fresh)
        for offset in range(0, len(ordered), 1_000):
            budget.check()
            batch = ordered[offset : offset + 1_000]
            first = (
                select(*_LIST_COLUMNS)
                .where(and_(true(), *conditions, processes.c.id.in_(batch)))
                .order_by(*order)
                .limit(wanted)  # any other match has ``wanted`` before it: not on the page
            )
            for row in conn.execute(first):
                found[row.id] = row
    ranked = sorted(found.values(), key=lambda r: (as_utc(r.created_at), r.id), reverse=newest)
    return ranked[:wanted]


# Rows of the list looked at first, in its order, when it is filtered by metadata.
METADATA_WINDOW = 20_000


def _list_with_metadata(
    conn: Connection,
    store: Store,
    conditions: list[ColumnElement[bool]],
    metadata: Mapping[str, Any],
    ordering: tuple[Any, ...],
    newest: bool,
    wanted: int,
) -> list[Row[Any]]:
    """The first ``wanted`` rows of the list that hold ``metadata``.

    How many processes hold a value is a guess to PostgreSQL (its statistics
    describe whole documents, not one key's value): a value 200,000 of 10 M
    processes share, guessed rare, was read whole through the GIN index and
    sorted, 2.4 s for a page. So the first :data:`METADATA_WINDOW` rows of the
    list are looked at in its order (the subquery's LIMIT keeps the filter out
    of it): a common value fills the page there in milliseconds. Only a value
    rare among them is looked for in the rest by the index, where it is rare.
    """

    def matches_among_first(bound: list[ColumnElement[bool]], rows: int) -> list[Row[Any]]:
        # The LIMIT keeps the metadata filter out of the subquery: it walks the list.
        window = (
            select(*_LIST_COLUMNS)
            .where(and_(true(), *conditions, *bound))
            .order_by(*ordering)
            .limit(rows)
            .subquery("first_rows")
        )
        inner_order = (
            (window.c.created_at.desc(), window.c.id.desc())
            if newest
            else (window.c.created_at.asc(), window.c.id.asc())
        )
        return list(
            conn.execute(
                select(*[window.c[c.name] for c in _LIST_COLUMNS])
                .where(and_(true(), *_metadata_filter(store, metadata, window)))
                .order_by(*inner_order)
                .limit(wanted)
            ).all()
        )

    head = matches_among_first([], METADATA_WINDOW)
    if len(head) >= wanted:
        return head  # one statement: one snapshot
    edge = conn.execute(
        select(processes.c.created_at, processes.c.id)
        .where(and_(true(), *conditions))
        .order_by(*ordering)
        .offset(METADATA_WINDOW - 1)
        .limit(1)
    ).first()
    if edge is None:  # the window was the whole list
        return head
    # Both parts from the same edge, so that rows stored or changed between these
    # statements (each its own snapshot on PostgreSQL) are neither repeated nor
    # skipped: the rows up to the edge (room for as many again stored meanwhile),
    # then the index for the rest.
    stamp = as_utc(edge.created_at)
    beyond = _keyset_after(stamp, edge.id, newest)
    head = matches_among_first([not_(beyond)], 2 * METADATA_WINDOW)
    if len(head) >= wanted:
        return head
    rest = conn.execute(
        select(*_LIST_COLUMNS)
        .where(and_(true(), *conditions, *_metadata_filter(store, metadata), beyond))
        .order_by(*ordering)
        .limit(wanted - len(head))
    ).all()
    return head + list(rest)


def list_processes(
    store: Store,
    *,
    status: str | Iterable[str] | None = None,
    category: str | Iterable[str] | None = None,
    name: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    metadata: Mapping[str, Any] | None = None,
    search: str | None = None,
    job_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    order: str = "newest",
    search_logs_since: datetime | None = None,
) -> Page:
    """Processes newest first (or oldest first), filtered; ``Page.next_cursor`` continues.

    Args:
        store: the database to read.
        status: one status or several.
        category: one category or several.
        name: the exact process name.
        since: created at or after this time.
        until: created before this time.
        metadata: every key must have this value (JSON containment on PostgreSQL).
        search: text contained in the name or in any log message (case-insensitive).
        job_id: the queue's job id.
        limit: page size, 1 to 500.
        cursor: ``next_cursor`` of the previous page.
        order: "newest" (default) or "oldest" first.
        search_logs_since: search only log messages written since then (default:
            ``since``); bounds the scan when the list itself has no time filter.
    """
    if order not in ("newest", "oldest"):
        raise UsageError(f"order must be 'newest' or 'oldest', not {order!r}")
    limit = max(1, min(int(limit), MAX_PAGE))
    conditions: list[ColumnElement[bool]] = []
    statuses = _as_list(status)
    if statuses:
        for s in statuses:
            Status(s)  # raise early on a typo
        conditions.append(processes.c.status.in_(statuses))
    categories = _as_list(category)
    if categories:
        conditions.append(processes.c.category.in_(categories))
    if name:
        conditions.append(processes.c.name == name)
    if job_id:
        conditions.append(processes.c.job_id == job_id)
    if since is not None:
        conditions.append(processes.c.created_at >= as_utc(since))
    if until is not None:
        conditions.append(processes.c.created_at < as_utc(until))
    if metadata and search:
        # Without a search it is applied below, after a look at the first rows of
        # the list (see _list_with_metadata).
        conditions.extend(_metadata_filter(store, metadata))
    logs_since = max_time(since, search_logs_since)
    newest = order == "newest"
    if cursor:
        stamp, last_id = _decode_cursor(cursor)
        conditions.append(_keyset_after(stamp, last_id, newest))
    ordering = (
        (processes.c.created_at.desc(), processes.c.id.desc())
        if newest
        else (processes.c.created_at.asc(), processes.c.id.asc())
    )
    store.ensure_schema()
    with store.engine.connect() as conn:
        if search:
            rows = _search(conn, store, conditions, search, logs_since, limit + 1, newest)
        elif metadata:
            rows = _list_with_metadata(
                conn, store, conditions, metadata, ordering, newest, limit + 1
            )
        else:
            query = select(*_LIST_COLUMNS).where(and_(true(), *conditions)).order_by(*ordering)
            rows = list(conn.execute(query.limit(limit + 1)).all())
    items = [process_from_row(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = _encode_cursor(last.created_at, last.id)
    return Page(items=items, next_cursor=next_cursor)


def count_by_status(conn: Connection, statuses: Iterable[Status]) -> dict[str, int]:
    """How many processes there are in each of ``statuses`` (those with none are left out)."""
    rows = conn.execute(
        select(processes.c.status, func.count())
        .where(processes.c.status.in_([s.value for s in statuses]))
        .group_by(processes.c.status)
    ).all()
    return {str(status): int(count) for status, count in rows}


def running_and_queued(store: Store) -> list[tuple[str, str, str | None, int, datetime | None]]:
    """Running and queued processes by status, category and queue: how many, the oldest queued.

    One grouped read over the unfinished rows (the Prometheus gauges).
    """
    store.ensure_schema()
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(
                processes.c.status,
                processes.c.category,
                processes.c.queue,
                func.count(),
                func.min(processes.c.queued_at),
            )
            .where(processes.c.status.in_((Status.RUNNING.value, Status.QUEUED.value)))
            .group_by(processes.c.status, processes.c.category, processes.c.queue)
        ).all()
    return [
        (str(status), str(category), queue, int(n), None if oldest is None else as_utc(oldest))
        for status, category, queue, n, oldest in rows
    ]


def categories_seen(store: Store, since: datetime) -> list[str]:
    """Process categories finished since ``since``, from the day rollups (a few thousand rows)."""
    c = rollup_counts.c
    with store.engine.connect() as conn:
        names = conn.execute(
            select(c.category)
            .where(c.grain == "d", c.bucket_start >= since, c.kind == "p")
            .distinct()
        ).scalars()
        return sorted({str(n) for n in names if n})


def database_time(store: Store) -> datetime:
    """The database server's current time (UTC): :func:`clock.database_now` on a connection."""
    with store.engine.connect() as conn:
        return database_now(conn)
