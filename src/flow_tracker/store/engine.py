"""Engines for the tracking database: URL checks, SQLite and PostgreSQL settings, schema set-up.

Dialect differences of the connection layer live here; those of bulk writes
live in :mod:`flow_tracker.store.bulk`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.pool import QueuePool, StaticPool

from flow_tracker.errors import ConfigurationError, DatabaseUnavailableError
from flow_tracker.store.histogram import duration_bucket

if TYPE_CHECKING:
    from flow_tracker.store.connections import WriteConnections

logger = logging.getLogger("flow_tracker")

SUPPORTED_BACKENDS = ("sqlite", "postgresql")
PARTITION_CHECK_EVERY_S = 3600.0  # how often a long-lived process checks partitions lie ahead
SQLITE_BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 5


def parse_url(database_url: str) -> URL:
    """Return ``database_url`` as a SQLAlchemy URL, or raise a clear :class:`ConfigurationError`.

    ``postgres://`` and ``postgresql://`` use psycopg 3 (``postgresql+psycopg``).
    """
    try:
        url = make_url(database_url.strip())
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(
            f"database_url {database_url!r} is not a database URL "
            "(expected e.g. sqlite:///flow_tracker.db or postgresql://user@host/db)"
        ) from exc
    backend = url.get_backend_name()
    if backend == "postgres":
        url = url.set(drivername="postgresql")
        backend = "postgresql"
    if backend not in SUPPORTED_BACKENDS:
        raise ConfigurationError(
            f"database_url uses {backend!r}; flow-tracker supports {', '.join(SUPPORTED_BACKENDS)}"
        )
    if backend == "postgresql":
        driver = url.get_driver_name()
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        elif driver != "psycopg":
            raise ConfigurationError(
                f"database_url uses driver {driver!r}; flow-tracker talks to PostgreSQL "
                "through psycopg 3 (postgresql+psycopg://...)"
            )
        if importlib.util.find_spec("psycopg") is None:
            raise ConfigurationError(
                "PostgreSQL needs psycopg 3: pip install 'flow-tracker[postgres]'"
            )
    elif url.database and url.database != ":memory:":
        folder = os.path.dirname(os.path.abspath(url.database))
        if not os.path.isdir(folder):
            raise ConfigurationError(
                f"database_url {database_url!r}: folder {folder!r} does not exist"
            )
    return url


def display_url(url: URL) -> str:
    """The URL with its password hidden, for messages."""
    return url.render_as_string(hide_password=True)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event (below) start transactions instead of the
    # sqlite3 module, so that writers can use BEGIN IMMEDIATE and wait their turn
    # (busy_timeout) instead of failing when two processes write at once.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    _enable_wal(cursor)
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()
    # SQLite has no ln() in every build: the dashboard's duration histograms need it.
    dbapi_connection.create_function("flow_tracker_bucket", 1, duration_bucket, deterministic=True)


def error_line(exc: BaseException) -> str:
    """The first line of a database error's own message (the driver's), for people.

    SQLAlchemy's message adds the statement and a link; the driver's first line
    says what went wrong ("connection refused", "database is locked").
    """
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def is_transient(exc: BaseException) -> bool:
    """True for errors that mean "the database is away or busy", worth retrying as they are.

    SQLAlchemy's errors and the drivers' own (the write path uses the driver directly).
    """
    if isinstance(exc, (OperationalError, InterfaceError, DisconnectionError)):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    if isinstance(exc, sqlite3.OperationalError):  # "database is locked", disk I/O
        return True
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(
        exc, (psycopg.OperationalError, psycopg.InterfaceError)
    )


def _enable_wal(cursor: Any) -> None:
    # Switching a new file to WAL needs a moment of exclusive access, and SQLite
    # answers "database is locked" at once (without its busy handler) when several
    # processes open the same new file together: retry until the busy timeout.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _sqlite_on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get("flow_tracker_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def is_read_only(exc: BaseException) -> bool:
    """A write refused by a read-only server: a hot standby, or a read-only default."""
    return (
        getattr(exc, "sqlstate", None) == "25006"
        or getattr(getattr(exc, "orig", None), "sqlstate", None) == "25006"
    )


def is_timeout(exc: BaseException) -> bool:
    """True when a statement was cancelled for running past its time budget.

    PostgreSQL's ``statement_timeout`` (SQLSTATE 57014, query_canceled) or the
    SQLite progress-handler deadline of :func:`build_engine` ("interrupted").
    """
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    if getattr(orig, "sqlstate", None) == "57014":
        return True
    return isinstance(orig, sqlite3.OperationalError) and "interrupted" in str(orig)


# -- a time budget over many statements ----------------------------------------------------

# The moment (time.monotonic) by which the current caller's database work must end.
# A context variable: each request of the dashboard has its own, and Starlette
# copies it into the worker thread that runs a handler.
_DEADLINE: ContextVar[float | None] = ContextVar("flow_tracker_deadline", default=None)


class TimeBudgetSpentError(Exception):
    """The caller's time budget (:func:`time_budget`) ran out before a statement could start."""

    def __init__(self) -> None:
        super().__init__("the time budget for the database ran out")


@contextlib.contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Bound all the database work of the block, not each statement, to ``seconds`` from now.

    Applies to the stores built with a ``statement_timeout`` (the dashboard's): a
    wait for a pooled connection ends when the budget does (the pool then raises
    ``sqlalchemy.exc.TimeoutError``), each statement may run only for what is left
    of it, and one that would start after it ran out raises
    :class:`TimeBudgetSpentError`. A budget inside another never outlasts it;
    ``None`` lifts any budget for the block.
    """
    outer = _DEADLINE.get()
    deadline = None if seconds is None else time.monotonic() + seconds
    if deadline is not None and outer is not None:
        deadline = min(deadline, outer)
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def budget_left() -> float | None:
    """Seconds left of the current :func:`time_budget` (0 or less once spent), or None."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


class BudgetedQueuePool(QueuePool):
    """A ``QueuePool`` whose wait for a free connection ends with the caller's time budget.

    Without one, a request waits up to the pool's full timeout (30 s) behind
    requests that hold every connection, then runs its queries on top.
    """

    _full_timeout: float

    @property
    def _timeout(self) -> float:
        # QueuePool reads its timeout at each wait: the budget's rest, when shorter.
        left = budget_left()
        if left is None:
            return self._full_timeout
        return max(0.0, min(self._full_timeout, left))

    @_timeout.setter
    def _timeout(self, value: float) -> None:
        self._full_timeout = value

    def recreate(self) -> QueuePool:
        """The same pool, empty: with the full timeout, even when recreated within a budget."""
        with time_budget(None):
            return super().recreate()


def _budget_ms(full_ms: int) -> int | None:
    """Milliseconds the next statement may run within the budget, or None: no budget set.

    Raises:
        TimeBudgetSpentError: the budget has run out.
    """
    left = budget_left()
    if left is None:
        return None
    if left <= 0:
        raise TimeBudgetSpentError()
    return min(full_ms, max(1, int(left * 1000)))


def _pg_budget(engine: Engine, seconds: float) -> None:
    """Give each statement of ``engine`` run within a time budget only what is left of it.

    ``SET LOCAL`` ends with the transaction, so nothing is left to undo when the
    connection goes back to the pool. It costs a round trip, so it is sent only
    once a tenth of the budget is spent: until then the connection's own
    ``statement_timeout`` (the whole budget) is within that tenth of the deadline.
    """
    full_ms = max(1, int(seconds * 1000))
    slack_ms = full_ms // 10

    @event.listens_for(engine, "before_cursor_execute")
    def cap(conn: Connection, cursor: Any, *_: Any) -> None:
        allowed = _budget_ms(full_ms)
        if allowed is not None and allowed < full_ms - slack_ms:
            # The lock timeout keeps to half of it, as on a fresh connection (see
            # pg_connect_args): a lock waited on is still told apart from a slow query.
            # On a cursor of its own: the statement's may be a server-side one.
            cursor.connection.execute(
                "SELECT set_config('statement_timeout', %s, true), "
                "set_config('lock_timeout', %s, true)",
                (str(allowed), str(max(1, allowed // 2))),
            )


# SQLite VM instructions between two looks at the clock: ~1 ms of work.
_SQLITE_PROGRESS_STEPS = 10_000


def _sqlite_deadline(engine: Engine, seconds: float) -> None:
    """Interrupt any statement of ``engine`` running past ``seconds`` (SQLite has no timeout).

    Each statement sets its connection's deadline as it starts; a progress handler
    SQLite calls every few thousand instructions aborts the statement once passed.
    Within a :func:`time_budget`, the deadline is also the budget's, and so is the
    wait for another writer's lock (``busy_timeout``), which no progress handler sees.
    """

    @event.listens_for(engine, "connect")
    def arm(dbapi_connection: Any, record: Any) -> None:
        deadline = record.info.setdefault("flow_tracker_deadline", [math.inf])
        dbapi_connection.set_progress_handler(
            lambda: 1 if time.monotonic() > deadline[0] else 0, _SQLITE_PROGRESS_STEPS
        )

    @event.listens_for(engine, "before_cursor_execute")
    def start(conn: Connection, cursor: Any, *_: Any) -> None:
        info = conn.connection.info
        deadline = info.get("flow_tracker_deadline")
        if deadline is None:
            return
        busy_ms = _budget_ms(SQLITE_BUSY_TIMEOUT_MS)
        if busy_ms is not None or "flow_tracker_busy_ms" in info:
            # A local setting (no I/O): set at each statement of a budget, and put
            # back at the first statement after one.
            wanted = SQLITE_BUSY_TIMEOUT_MS if busy_ms is None else busy_ms
            cursor.connection.execute(f"PRAGMA busy_timeout = {wanted}")
            if busy_ms is None:
                info.pop("flow_tracker_busy_ms", None)
            else:
                info["flow_tracker_busy_ms"] = busy_ms
        # A caller with a budget over several statements caps each one's deadline.
        deadline[0] = min(
            time.monotonic() + seconds,
            info.get("flow_tracker_cap", math.inf),
            _DEADLINE.get() or math.inf,
        )


def build_engine(
    url: URL,
    *,
    pg_synchronous_commit: bool = False,
    reader: bool = False,
    statement_timeout: float | None = None,
) -> Engine:
    """Create the engine for ``url`` with the settings flow-tracker relies on.

    ``reader`` engines (the dashboard's) never let psycopg prepare statements: after
    five runs of one query PostgreSQL may switch to a generic plan, and for the
    dashboard's filters (metadata containment, rare statuses) that plan is the slow one.
    ``statement_timeout`` (seconds) cancels any statement that runs longer: a
    request can then never keep the database busy for minutes. Such an engine
    also keeps to the caller's :func:`time_budget` over all its statements and
    its waits for a pooled connection.
    """
    budgeted = statement_timeout is not None
    if url.get_backend_name() == "sqlite":
        kwargs: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        }
        if not url.database or url.database == ":memory:":
            # One shared connection, or each thread would see its own empty database.
            kwargs["poolclass"] = StaticPool
        elif budgeted:
            kwargs["poolclass"] = BudgetedQueuePool  # SQLAlchemy's sizes for a SQLite file
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        if statement_timeout is not None:
            _sqlite_deadline(engine, statement_timeout)
        return engine
    connect_args = pg_connect_args(
        pg_synchronous_commit=pg_synchronous_commit,
        reader=reader,
        statement_timeout=statement_timeout,
    )
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        connect_args=connect_args,
        poolclass=BudgetedQueuePool if budgeted else QueuePool,
    )
    if statement_timeout is not None:
        _pg_budget(engine, statement_timeout)
    return engine


def pg_connect_args(
    *, pg_synchronous_commit: bool, reader: bool, statement_timeout: float | None
) -> dict[str, Any]:
    """The driver's connection arguments for flow-tracker's PostgreSQL connections."""
    connect_args: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": "flow-tracker",
    }
    options = []
    if reader:
        connect_args["prepare_threshold"] = None
        # The dashboard's queries are short; JIT compiling one costs ~100 ms by itself.
        options.append("-c jit=off")
    if statement_timeout is not None:
        timeout_ms = max(1, int(statement_timeout * 1000))
        options.append(f"-c statement_timeout={timeout_ms}")
        # A read waits for a lock only behind a migration, a TRUNCATE or a VACUUM FULL
        # (ACCESS EXCLUSIVE), an action behind another writer: past half the budget
        # it is refused as such (55P03, "lock timeout"), which says "busy, come
        # back", not "your search is too broad" as a cancelled statement would.
        options.append(f"-c lock_timeout={max(1, timeout_ms // 2)}")
    if not pg_synchronous_commit:
        # Only flow-tracker's own connections: see Settings.pg_synchronous_commit.
        options.append("-c synchronous_commit=off")
    if options:
        connect_args["options"] = " ".join(options)
    return connect_args


class Store:
    """One database: its engine, created lazily, and the schema check done once.

    A forked child must not use the parent's connections: :meth:`after_fork`
    forgets them without closing them (they still belong to the parent).
    """

    def __init__(
        self,
        database_url: str,
        *,
        auto_migrate: bool = True,
        pg_synchronous_commit: bool = False,
        reader: bool = False,
        statement_timeout: float | None = None,
    ) -> None:
        self.url = parse_url(database_url)
        self.dialect = self.url.get_backend_name()
        self.auto_migrate = auto_migrate
        self.pg_synchronous_commit = pg_synchronous_commit
        self.reader = reader
        self.statement_timeout = statement_timeout
        self._engine: Engine | None = None
        self._schema_ready = False
        self._lock = threading.Lock()
        self._write_connections: WriteConnections | None = None
        self._partitions_due = 0.0

    @property
    def engine(self) -> Engine:
        """The engine, created on first use."""
        engine = self._engine
        if engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = build_engine(
                        self.url,
                        pg_synchronous_commit=self.pg_synchronous_commit,
                        reader=self.reader,
                        statement_timeout=self.statement_timeout,
                    )
                engine = self._engine
        return engine

    @property
    def write_connections(self) -> WriteConnections:
        """The write path's driver connections (see :mod:`flow_tracker.store.connections`)."""
        found = self._write_connections
        if found is None:
            from flow_tracker.store.connections import WriteConnections

            with self._lock:
                if self._write_connections is None:
                    self._write_connections = WriteConnections(self)
                found = self._write_connections
        return found

    def pg_connect_args(self) -> dict[str, Any]:
        """The driver's connection arguments for this store (see :func:`pg_connect_args`)."""
        return pg_connect_args(
            pg_synchronous_commit=self.pg_synchronous_commit,
            reader=self.reader,
            statement_timeout=self.statement_timeout,
        )

    def ensure_schema(self) -> None:
        """Create or upgrade the tables once, when ``auto_migrate`` is on.

        Also makes sure the partitions of the next days exist (PostgreSQL).
        """
        if self._schema_ready:
            return
        if self.auto_migrate:
            from flow_tracker.store.migrate import HEAD_REVISION, driver_revision, upgrade

            # Read on the write path's own connection: a worker that only writes keeps
            # one connection to the server, not that one and an idle one in the pool.
            if self.write_connections.run(driver_revision) != HEAD_REVISION:
                # Whoever asked first (a page, within its budget) waits for the
                # whole upgrade: cut short, it would start over at every request.
                with time_budget(None):
                    upgrade(self.engine)
        self._schema_ready = True
        self.keep_partitions(force=True)

    def keep_partitions(self, *, force: bool = False) -> list[str]:
        """On PostgreSQL, attach the partitions of the next days if they are missing.

        At most once an hour unless ``force``d: every long-lived writer and the
        reaper call it (see :mod:`flow_tracker.store.partitions`). Never raises: a
        read-only server (a replica) or one that is away is left for the next time.

        Returns:
            The partitions attached now.
        """
        if self.dialect != "postgresql":
            return []
        now = time.monotonic()
        with self._lock:
            if not force and now < self._partitions_due:
                return []
            self._partitions_due = now + PARTITION_CHECK_EVERY_S
        from flow_tracker import config
        from flow_tracker.store import partitions

        hours = config.current().partition_hours

        def work(conn: Any) -> list[str]:
            moment = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            return partitions.keep_ahead(conn, hours, moment)

        try:
            return self.write_connections.run(work)
        except Exception as exc:
            level = logging.DEBUG if is_read_only(exc) else logging.WARNING
            logger.log(level, "flow-tracker: partitions not checked: %s", error_line(exc))
            return []

    @contextlib.contextmanager
    def begin_write(self) -> Iterator[Connection]:
        """A connection in a write transaction, committed when the block ends.

        On SQLite the transaction takes the write lock as it begins (``BEGIN
        IMMEDIATE``): a transaction that reads first and writes later could
        otherwise deadlock with another writer doing the same (both hold a read
        lock, neither can upgrade) and fail at once instead of waiting its turn.
        """
        with (
            self.engine.connect().execution_options(flow_tracker_begin="IMMEDIATE") as conn,
            conn.begin(),
        ):
            yield conn

    def check_connection(self) -> None:
        """Connect once; raise :class:`DatabaseUnavailableError` with the reason if that fails."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except (OperationalError, DBAPIError) as exc:
            reason = error_line(exc)
            raise DatabaseUnavailableError(
                f"cannot reach the tracking database {display_url(self.url)}: {reason}"
            ) from None

    def after_fork(self) -> None:
        """Drop the parent's pooled connections in a forked child, without closing them."""
        if self._write_connections is not None:
            self._write_connections.forget()
        if self._engine is not None:
            self._engine.dispose(close=False)

    def dispose(self) -> None:
        """Close every pooled connection."""
        if self._write_connections is not None:
            self._write_connections.close()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
