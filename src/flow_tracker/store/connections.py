"""Driver connections for the write path: kept between uses, checked only when they fail.

A job's durable rows (queued, running, ended) and the background writer's
batches are written with the database driver directly, one round trip each on
PostgreSQL (see :mod:`flow_tracker.store.bulk`). Taking a connection from
SQLAlchemy's pool for that would cost a ping round trip per use
(``pool_pre_ping``) and the pool's own bookkeeping, as much as the write itself.
Here a connection is kept after use and taken back by the next writer, last in
first out; one that fails is rolled back or dropped, and a kept one that turns
out dead (a server restart while it sat idle) is replaced once, at once.

PostgreSQL connections are the driver's own, in autocommit mode: the write path
sends ``BEGIN`` and ``COMMIT`` itself (or one statement, atomic by itself). A
process holds one at a time (:data:`CONNECTIONS_PER_PROCESS`): its threads take
turns.
SQLite connections come from the engine's pool and go back to it after each use
(no ping to save there; and an in-memory database has one shared connection
that must never be closed).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from flow_tracker.store.engine import is_transient

if TYPE_CHECKING:
    from flow_tracker.store.engine import Store

T = TypeVar("T")
KEEP_AT_MOST = 8  # idle connections kept; more are closed (a burst of threads went by)
CONNECTIONS_PER_PROCESS = 1  # PostgreSQL connections the write path holds at once
TURN_WAIT_S = 30.0


class _Held:
    """A driver connection in use, and the pool's handle of it on SQLite."""

    __slots__ = ("driver", "pooled")

    def __init__(self, driver: Any, pooled: Any = None) -> None:
        self.driver = driver
        self.pooled = pooled


class WriteConnections:
    """The write path's driver connections for one store.

    Args:
        store: the database they connect to.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._idle: list[_Held] = []
        self._inherited: list[_Held] = []  # a forked child's share of its parent's
        self._lock = threading.Lock()
        self._slots = self._new_slots()

    def _new_slots(self) -> threading.BoundedSemaphore | None:
        # PostgreSQL: one connection per process, whatever its threads: a fleet of
        # hundreds of worker processes then needs hundreds of server connections, not
        # thousands. Threads that write at once take turns, and what they queued
        # meanwhile goes in the next batch.
        if self.store.dialect != "postgresql":
            return None
        return threading.BoundedSemaphore(CONNECTIONS_PER_PROCESS)

    def run(self, work: Callable[[Any], T], *, take_turns: bool = True) -> T:
        """``work(driver_connection)`` on a kept connection, or a new one.

        A kept connection that fails with a connection error is replaced and
        ``work`` tried once more on a new one (its server closed it while it sat
        idle). Any other failure is raised after the connection is rolled back.
        ``take_turns=False`` does not wait for the process's one connection: a
        workflow step's claim and end (the hand-off between two steps) never queue
        behind another thread's batch; a process running steps on several threads
        may then hold one more connection per thread.
        """
        slots = self._slots if take_turns else None
        # A turn is waited for at most this long: a write stuck that long (a server
        # that stopped answering) must not stop every other thread's.
        slot = slots.acquire(timeout=TURN_WAIT_S) if slots is not None else False
        try:
            held, reused = self._take()
            try:
                result = work(held.driver)
            except Exception as exc:
                alive = self._recover(held)
                if alive or not reused or not is_transient(exc):
                    raise
                held, _ = self._take(fresh=True)
                try:
                    result = work(held.driver)
                except Exception:
                    self._recover(held)
                    raise
            self._give_back(held)
            return result
        finally:
            if slot and slots is not None:
                slots.release()

    def forget(self) -> None:
        """In a forked child: set the parent's connections aside, never used or closed.

        They are kept referenced: the driver leaves a connection made in another
        process open when it is collected, but warns about it.
        """
        self._inherited.extend(self._idle)
        self._idle = []
        self._lock = threading.Lock()
        self._slots = self._new_slots()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for held in idle:
            self._drop(held)

    # -- internals ----------------------------------------------------------------

    def _take(self, fresh: bool = False) -> tuple[_Held, bool]:
        if not fresh:
            with self._lock:
                if self._idle:
                    return self._idle.pop(), True
        return self._connect(), False

    def _give_back(self, held: _Held) -> None:
        if held.pooled is not None:
            # SQLite: back to the engine's pool, which has no ping to save and is
            # shared with the reads; keeping it here could starve them.
            self._drop(held)
            return
        with self._lock:
            if len(self._idle) < KEEP_AT_MOST:
                self._idle.append(held)
                return
        self._drop(held)

    def _connect(self) -> _Held:
        store = self.store
        if store.dialect != "postgresql":
            pooled = store.engine.raw_connection()
            return _Held(pooled.driver_connection, pooled)
        import psycopg

        engine = store.engine
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        params = {**cparams, **store.pg_connect_args(), "autocommit": True}
        return _Held(psycopg.connect(*cargs, **params))

    def _recover(self, held: _Held) -> bool:
        """After a failed write: roll back and keep the connection; False when it was dropped."""
        driver = held.driver
        try:
            if held.pooled is not None:  # SQLite
                if driver.in_transaction:
                    driver.execute("ROLLBACK")
            else:
                from psycopg.pq import TransactionStatus

                status = driver.info.transaction_status
                if status == TransactionStatus.UNKNOWN or driver.closed:
                    raise ConnectionError("connection lost")
                if status != TransactionStatus.IDLE:
                    driver.execute("ROLLBACK")
        except (Exception, sqlite3.Error):
            self._drop(held)
            return False
        self._give_back(held)
        return True

    @staticmethod
    def _drop(held: _Held) -> None:
        with contextlib.suppress(Exception):
            if held.pooled is not None:
                held.pooled.close()  # back to the pool (SQLite's cannot break like a socket)
            else:
                held.driver.close()
