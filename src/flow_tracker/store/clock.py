"""The database's clock, for decisions several hosts must agree on.

Heartbeats, the reaper and lock leases compare times written by different
machines. Their own clocks may disagree by seconds or minutes, so every such
time is taken from the database server, in SQL. (SQLite's clock is the one of
the machine that holds the file, shared by every process that writes to it.)
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, literal_column, select, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from flow_tracker.store.types import UTCDateTime, as_utc


def now_sql(dialect: str, plus_seconds: float = 0.0) -> ColumnElement[datetime]:
    """The database's current time, plus ``plus_seconds``, as a SQL expression.

    The offset is inlined as a literal: it is always a float of ours, never user
    text, and statements of one shape stay one cached statement per offset.
    """
    seconds = float(plus_seconds)
    if dialect == "postgresql":
        # clock_timestamp(), not now(): now() stays at the start of the transaction.
        if not seconds:
            return func.clock_timestamp(type_=UTCDateTime)
        shifted = func.clock_timestamp() + literal_column(f"interval '{seconds:.6f} seconds'")
        return type_coerce(shifted, UTCDateTime)
    # SQLite stores naive UTC text in SQLAlchemy's format, with six fractional digits.
    modifier = f", '{seconds:+.6f} seconds'" if seconds else ""
    return literal_column(
        f"(strftime('%Y-%m-%d %H:%M:%f', 'now'{modifier}) || '000')", type_=UTCDateTime
    )


def database_now(conn: Connection) -> datetime:
    """The database server's current time, timezone-aware UTC.

    The one definition of "now" for decisions: ``clock_timestamp()`` on
    PostgreSQL, the wall clock, not ``now()``, which stays at the start of the
    transaction.
    """
    return as_utc(conn.execute(select(now_sql(conn.dialect.name))).scalar_one())
