"""Time partitions of the big tables on PostgreSQL: made ahead of time, dropped whole.

The log-entry and flow tables are partitioned with PostgreSQL's own declarative
partitioning (no extension: it runs on every managed PostgreSQL) by range of
their id. Ids are UUIDv7, whose first 48 bits are the millisecond they were
made (:mod:`flow_tracker.ids`), so a range of ids is a range of time: the
partition of 2026-11-30 holds the ids from ``id_floor(2026-11-30 00:00)`` to
``id_floor(2026-12-01 00:00)``. Keyed by id, a partitioned table keeps its
primary key on ``id`` alone (PostgreSQL wants the partition key in every unique
index), the writer's ``ON CONFLICT (id)`` upserts work unchanged, and a look-up
by id or a search bounded in time (the dashboard's ``id >= id_floor(since)``)
reads only the partitions it needs.

* **Made ahead**: :func:`keep_ahead` attaches the partitions of the next
  :data:`AHEAD` (sized by the ``partition_hours`` setting, a day by default). It
  runs when a process first uses the database, then every hour in each
  background writer and in the reaper: no cron job. A partition is created
  empty and then attached, which locks the table only against other DDL, never
  against the writers.
* **A default partition** takes any row no range covers (an id made by a host
  whose clock is days off), so no batch of the writer is ever refused; a
  partition attached later takes its rows out of it first.
* **Retention** (:func:`detach_before`, :func:`drop_tables`, :func:`delete_before`):
  partitions entirely older than the cut-off are detached, a moment's work
  whatever their size, then dropped (removing their files takes longer, but
  locks nothing anyone else uses); rows are deleted only in the one partition
  that straddles the cut-off (and in the default one). Detaching takes a brief
  exclusive lock on the table, bounded by :data:`LOCK_TIMEOUT_MS`: if a long
  query holds the table, the partition is left for the next clean-up instead of
  making the writers queue behind it.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from flow_tracker.ids import id_floor
from flow_tracker.store.types import as_utc

logger = logging.getLogger("flow_tracker")

TABLES = ("flow_tracker_log_entries", "flow_tracker_flows")
AHEAD = timedelta(days=2)
LOCK_TIMEOUT_MS = 2000
_LOCK_KEY = 0x666C7074  # serialises processes making partitions at the same moment
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_BOUND = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")


@dataclass(frozen=True)
class Partition:
    """One partition of a partitioned table."""

    name: str
    start: datetime | None
    """The first moment whose ids it holds; None: from the first id there can be."""
    end: datetime | None
    """The moment whose ids it holds no more; None for the default partition."""
    rows: int = 0
    """PostgreSQL's estimate of its rows (``pg_class.reltuples``), 0 when unknown."""

    @property
    def default(self) -> bool:
        """True for the partition that takes the rows no range covers."""
        return self.end is None and self.start is None


def id_time(value: uuid.UUID) -> datetime:
    """The millisecond a UUIDv7 was made."""
    return _EPOCH + timedelta(milliseconds=value.int >> 80)


def boundary(moment: datetime, hours: int) -> datetime:
    """The start of the partition of ``hours`` that holds ``moment`` (whole hours from 1970 UTC)."""
    step = hours * 3600
    seconds = int((as_utc(moment) - _EPOCH).total_seconds()) // step * step
    return _EPOCH + timedelta(seconds=seconds)


def is_partitioned(conn: Any, table: str) -> bool:
    """True when ``table`` (in the current schema) is a partitioned table."""
    row = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = %s AND n.nspname = current_schema()",
        (table,),
    ).fetchone()
    return row is not None and row[0] == "p"


def partitions(conn: Any, table: str) -> list[Partition]:
    """The partitions of ``table``, oldest first, the default one last."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent"
        " JOIN pg_namespace n ON n.oid = p.relnamespace"
        " WHERE p.relname = %s AND n.nspname = current_schema()",
        (table,),
    ).fetchall()
    found = []
    for name, bound, estimate in rows:
        rows_estimate = max(int(estimate or 0), 0)
        match = _BOUND.match(bound or "")
        if match is None:  # DEFAULT
            found.append(Partition(name, None, None, rows_estimate))
            continue
        start, end = (_bound_time(text) for text in match.groups())
        found.append(Partition(name, start, end, rows_estimate))
    found.sort(key=lambda p: (p.default, p.end or _EPOCH))
    return found


def _bound_time(text: str) -> datetime | None:
    if text.upper() == "MINVALUE":
        return None
    if text.upper() == "MAXVALUE":
        return datetime.max.replace(tzinfo=timezone.utc)
    return id_time(uuid.UUID(text.strip("'")))


def _ident(name: str) -> str:
    # Names are made here from table names and dates: quoting keeps them exact.
    return '"' + name.replace('"', '""') + '"'


def _literal(value: uuid.UUID) -> str:
    return f"'{value}'::uuid"


def partition_name(table: str, start: datetime) -> str:
    """The name of ``table``'s partition that starts at ``start``."""
    return f"{table}_p{start:%Y%m%d%H%M}"


@contextmanager
def _transaction(conn: Any) -> Iterator[None]:
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
        yield


def attach_range(conn: Any, table: str, name: str, start: datetime, end: datetime) -> None:
    """Attach an empty partition of ``table`` for [start, end), moving in any default rows.

    The partition is made beside the table and then attached: that locks the
    table only against other DDL (``CREATE TABLE … PARTITION OF`` would lock out
    the writers), and the default partition only while its rows are checked.
    """
    low, high = _literal(id_floor(start)), _literal(id_floor(end))
    conn.execute(
        f"CREATE TABLE {_ident(name)}"
        f" (LIKE {_ident(table)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    default = next((p for p in partitions(conn, table) if p.default), None)
    if default is not None:
        moved = (
            f"WITH moved AS (DELETE FROM {_ident(default.name)}"
            f" WHERE id >= {low} AND id < {high} RETURNING *)"
            f" INSERT INTO {_ident(name)} SELECT * FROM moved"
        )
        conn.execute(moved)
    conn.execute(
        f"ALTER TABLE {_ident(table)} ATTACH PARTITION {_ident(name)}"
        f" FOR VALUES FROM ({low}) TO ({high})"
    )


def keep_ahead(conn: Any, hours: int, now: datetime) -> list[str]:
    """Attach the partitions that cover up to ``now`` + :data:`AHEAD`; return their names.

    ``conn`` is a driver connection; each table is done in a transaction of its
    own. Tables that are not partitioned (SQLite, or before the migration) are
    left alone. A lock that cannot be had at once leaves the rest to the next call.
    """
    made: list[str] = []
    horizon = as_utc(now) + AHEAD
    for table in TABLES:
        try:
            with _transaction(conn):
                if not is_partitioned(conn, table):
                    continue
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                ranges = [p for p in partitions(conn, table) if not p.default]
                last = max((p.end for p in ranges if p.end is not None), default=None)
                start = last or boundary(now, hours)
                while start < horizon:
                    end = boundary(start, hours) + timedelta(hours=hours)
                    name = partition_name(table, start)
                    attach_range(conn, table, name, start, end)
                    made.append(name)
                    start = end
        except Exception as exc:
            if not _is_lock_timeout(exc):
                raise
            logger.info("flow-tracker: partitions of %s left for later: %s", table, exc)
    return made


def _is_lock_timeout(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) == "55P03"


@dataclass(frozen=True)
class Detached:
    """What :func:`detach_before` did to one table."""

    table: str
    detached: list[str]
    """Partitions taken out of the table: their rows are gone from it at once; the
    tables themselves are dropped by :func:`drop_tables`."""
    left: list[str]
    """Partitions old enough to go that a lock kept: the next clean-up takes them."""


def detach_before(conn: Any, cutoff: datetime) -> list[Detached]:
    """Take every partition entirely older than ``cutoff`` out of its table.

    Each in a transaction of its own, under :data:`LOCK_TIMEOUT_MS`; a detached
    table left by an earlier clean-up that failed to drop it is listed again.
    ``conn`` is a driver connection; tables that are not partitioned are skipped.
    """
    cutoff = as_utc(cutoff)
    done: list[Detached] = []
    for table in TABLES:
        with conn.transaction():
            if not is_partitioned(conn, table):
                continue
            found = partitions(conn, table)
            detached = _orphans(conn, table)
        left: list[str] = []
        for part in found:
            if part.default or part.end is None or part.end > cutoff:
                continue
            try:
                with _transaction(conn):
                    conn.execute(
                        f"ALTER TABLE {_ident(table)} DETACH PARTITION {_ident(part.name)}"
                    )
                detached.append(part.name)
            except Exception as exc:
                if not _is_lock_timeout(exc):
                    raise
                left.append(part.name)
        done.append(Detached(table, detached, left))
    return done


def _orphans(conn: Any, table: str) -> list[str]:
    """Partitions of ``table`` detached earlier and not dropped (their names say whose)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND NOT c.relispartition"
        " AND c.relname ~ %s",
        (f"^{re.escape(table)}_(p|before_)[0-9]{{12}}$",),
    ).fetchall()
    return [name for (name,) in rows]


def drop_tables(conn: Any, names: list[str]) -> None:
    """Drop detached partitions (removing their files is most of a clean-up's time)."""
    if names:
        conn.execute("DROP TABLE IF EXISTS " + ", ".join(_ident(n) for n in names))


def delete_before(conn: Any, cutoff: datetime) -> int:
    """Delete the rows older than ``cutoff`` where partitions straddle it or take any id.

    That is the one partition whose range holds ``cutoff``, and the default one:
    the rest were detached whole. Returns how many rows were deleted.
    """
    cutoff = as_utc(cutoff)
    below = _literal(id_floor(cutoff))
    deleted = 0
    for table in TABLES:
        with conn.transaction():
            if not is_partitioned(conn, table):
                continue
            found = partitions(conn, table)
        for part in found:
            straddles = part.end is not None and (part.start or _EPOCH) < cutoff < part.end
            if part.default or straddles:
                with conn.transaction():
                    cursor = conn.execute(f"DELETE FROM {_ident(part.name)} WHERE id < {below}")
                    deleted += max(cursor.rowcount, 0)
    return deleted


def partition_table(conn: Any, table: str, hours: int, now: datetime) -> str | None:
    """Turn a plain ``table`` into a partitioned one without copying its rows.

    The table becomes the first partition (ids up to the end of the current
    period; a row past that, from a clock far ahead, goes to the default
    partition), so converting costs one scan that checks its ids, not a copy:
    the rows stay where they are, its indexes are taken over as they are, and
    it is dropped whole once it is entirely older than the retention. Runs in
    the caller's transaction (the migration's). Returns the first partition's
    name, or None when ``table`` was partitioned already.
    """
    if is_partitioned(conn, table):
        return None
    end = boundary(now, hours) + timedelta(hours=hours)
    legacy = f"{table}_before_{end:%Y%m%d%H%M}"
    indexes = _indexes(conn, table)
    conn.execute(f"ALTER TABLE {_ident(table)} RENAME TO {_ident(legacy)}")
    conn.execute(f"ALTER INDEX {_ident(table + '_pkey')} RENAME TO {_ident(legacy + '_pkey')}")
    for name, _definition in indexes:
        conn.execute(f"ALTER INDEX {_ident(name)} RENAME TO {_ident(name + '_old')}")
    conn.execute(
        f"CREATE TABLE {_ident(table)} (LIKE {_ident(legacy)}"
        " INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (id)"
    )
    conn.execute(
        f"ALTER TABLE {_ident(table)} ADD CONSTRAINT {_ident(table + '_pkey')} PRIMARY KEY (id)"
    )
    for _name, definition in indexes:
        # The same index on the partitioned table: PostgreSQL adopts the old table's
        # one when it is attached, instead of building it again.
        conn.execute(definition)
    default = f"{table}_default"
    conn.execute(f"CREATE TABLE {_ident(default)} PARTITION OF {_ident(table)} DEFAULT")
    high = _literal(id_floor(end))
    conn.execute(
        f"WITH moved AS (DELETE FROM {_ident(legacy)} WHERE id >= {high} RETURNING *)"
        f" INSERT INTO {_ident(default)} SELECT * FROM moved"
    )
    conn.execute(
        f"ALTER TABLE {_ident(table)} ATTACH PARTITION {_ident(legacy)}"
        f" FOR VALUES FROM (MINVALUE) TO ({high})"
    )
    return legacy


def _indexes(conn: Any, table: str) -> list[tuple[str, str]]:
    """The name and ``CREATE INDEX`` statement of each index of ``table`` but its key."""
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes"
        " WHERE tablename = %s AND schemaname = current_schema() AND indexname <> %s",
        (table, f"{table}_pkey"),
    ).fetchall()
    return [(str(name), str(definition)) for name, definition in rows]


def unpartition_table(conn: Any, table: str) -> None:
    """Turn a partitioned ``table`` back into a plain one (a copy of every row)."""
    if not is_partitioned(conn, table):
        return
    plain = f"{table}_plain"
    indexes = _indexes(conn, table)
    conn.execute(
        f"CREATE TABLE {_ident(plain)} (LIKE {_ident(table)}"
        " INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    conn.execute(f"INSERT INTO {_ident(plain)} SELECT * FROM {_ident(table)}")
    conn.execute(f"DROP TABLE {_ident(table)} CASCADE")
    conn.execute(f"ALTER TABLE {_ident(plain)} RENAME TO {_ident(table)}")
    conn.execute(
        f"ALTER TABLE {_ident(table)} ADD CONSTRAINT {_ident(table + '_pkey')} PRIMARY KEY (id)"
    )
    for _name, definition in indexes:
        conn.execute(definition.replace(" ON ONLY ", " ON "))
