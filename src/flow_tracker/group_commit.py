"""Group commit: the durable writes several threads make at once go in one transaction.

A worker running jobs on threads (Celery's thread pool, Dramatiq's worker
threads) stores each job's running row before its code runs and its final
state before the job is reported done. Its threads share one connection to
PostgreSQL (see :mod:`flow_tracker.store.connections`), so they would take
turns, one round trip each. Instead, a thread that finds another one writing
leaves its records with the group and waits; when the writer is done, one of
the waiting threads writes everything the group has gathered meanwhile in one
statement, and each thread returns once its own records are stored. Every
record is still stored before its thread goes on - the promise is unchanged -
but the database commits once per group instead of once per job, and a
thread waits for at most the write in progress and its own group's.

The group is taken as late as possible: once the writing thread holds the
connection (see :meth:`GroupCommit.submit`), so whatever arrived while it
waited for it goes in too.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence

from flow_tracker import events as ev

# A thread waits this long for the group ahead of it at most (a server that stopped
# answering); then its records go to the buffer instead, like any failed write.
GROUP_WAIT_S = 30.0


class Request:
    """One thread's records to store now, and what came of it."""

    __slots__ = ("copy", "copy_of", "done", "error", "events", "stored")

    def __init__(self, events: Sequence[ev.Change], copy_of: int | None) -> None:
        self.events = events
        self.copy_of = copy_of  # look for a process requeued from this one
        self.copy: uuid.UUID | None = None
        self.error: BaseException | None = None
        self.done = False
        self.stored = False  # False with no error: kept to store later (relayed)


class GroupCommit:
    """Gathers the requests of threads that write at once; one of them stores the group.

    Args:
        store_group: stores a group in one transaction, setting each request's
            outcome; ``take()`` gives the group once the connection is held.
    """

    def __init__(self, store_group: Callable[[Callable[[], list[Request]]], None]) -> None:
        self._store_group = store_group
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[Request] = []
        self._writing = False
        self.groups = 0  # groups stored, one transaction each (for the benchmarks and tests)
        self.requests = 0  # requests stored in them

    def submit(self, request: Request) -> None:
        """Return once ``request`` is stored (or failed: its ``error`` is set)."""
        cond = self._cond
        with cond:
            self._pending.append(request)
            deadline = None
            while self._writing and not request.done:
                if deadline is None:
                    deadline = time.monotonic() + GROUP_WAIT_S
                left = deadline - time.monotonic()
                if left <= 0 and request in self._pending:
                    self._pending.remove(request)  # never taken: give up on it
                    request.error = TimeoutError("the write ahead of this one did not finish")
                    request.done = True
                    return
                cond.wait(max(left, 0.05))
            if request.done:
                return
            self._writing = True
        taken: list[Request] = []

        def take() -> list[Request]:
            if not taken:
                with cond:
                    taken.extend(self._pending)
                    self._pending = []
            return taken

        try:
            self._store_group(take)
        except BaseException as exc:
            for each in take():
                if not each.done and each.error is None:
                    each.error = exc
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: this thread's, not a write's outcome
        finally:
            group = take()
            with cond:
                self._writing = False
                self.groups += 1
                self.requests += len(group)
                for each in group:
                    each.done = True
                cond.notify_all()
