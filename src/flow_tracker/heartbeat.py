"""Heartbeats of the running processes of this interpreter, and renewal of their locks.

One daemon thread per interpreter, never one per job: every ``heartbeat_interval``
it stamps ``heartbeat_at`` of all processes still running here with the
database's time in one UPDATE, and renews the lease of every lock held here
(:mod:`flow_tracker.locks`) well before it runs out. The reaper
(:func:`flow_tracker.reap`) calls a running process whose stamp is older than
``lost_after`` lost: its worker died, or hangs.

Registering costs the job's thread a dict assignment. A forked child (Celery
prefork, an RQ work-horse) starts with an empty registry and its own thread.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from typing import Protocol

from flow_tracker import config, runtime
from flow_tracker.store import jobs as stored_jobs


class Renewable(Protocol):
    """A held lock whose lease the heartbeat extends (see :class:`flow_tracker.locks.Lease`)."""

    ttl: float

    def renew(self) -> None:
        """Extend the lease in the database; mark the lock lost when it was taken over."""


class Heartbeat:
    """The registry of what runs and what is held here, and the thread that keeps both alive."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._processes: dict[int, None] = {}
        self._leases: dict[int, Renewable] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # Held for a whole beat: clear() waits for one in flight, so no stamp it had
        # already collected lands after clear() returned (a worker "dies" in the tests).
        self._beat_lock = threading.Lock()
        self.beats = 0

    def _check_fork(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's thread is not here
            self._reset()

    # -- job's thread ---------------------------------------------------------

    def add_process(self, process_id: int) -> None:
        """Keep stamping ``process_id`` until :meth:`remove_process`."""
        if self._pid != os.getpid():
            self._reset()
        self._processes[process_id] = None
        if self._thread is None:
            self._start()

    def remove_process(self, process_id: int) -> None:
        """Stop stamping ``process_id`` (it has ended)."""
        self._processes.pop(process_id, None)

    def add_lease(self, lease: Renewable) -> None:
        """Renew ``lease`` until :meth:`remove_lease`; wake the thread if it must beat sooner."""
        self._check_fork()
        self._leases[id(lease)] = lease
        if self._thread is None:
            self._start()
        self._wake.set()

    def remove_lease(self, lease: Renewable) -> None:
        """Stop renewing ``lease`` (released)."""
        self._leases.pop(id(lease), None)

    def clear(self) -> None:
        """Forget every process and lease of this interpreter (the thread idles).

        Waits for a beat in flight: once this returns, nothing it forgot is stamped.
        """
        with self._beat_lock:
            self._processes.clear()
            self._leases.clear()

    def running_here(self) -> list[uuid.UUID]:
        """The processes this interpreter is stamping."""
        self._check_fork()
        return [uuid.UUID(int=i) for i in list(self._processes)]

    # -- thread ---------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(
                    target=self._run, name="flow-tracker-heartbeat", daemon=True
                )
                self._thread = thread
                thread.start()

    def _period(self) -> float:
        period = config.current().heartbeat_interval
        for lease in list(self._leases.values()):
            period = min(period, lease.ttl / 3)
        return max(period, 0.05)

    def _run(self) -> None:
        me = threading.current_thread()
        while self._thread is me:
            self._wake.wait(self._period())
            self._wake.clear()
            if self._thread is not me:
                return  # replaced after a fork or a reset
            self.beat()

    def beat(self) -> None:
        """Stamp every running process and renew every lease now; never raises."""
        self._check_fork()
        with self._beat_lock:
            ids = list(self._processes)
            try:
                if ids:
                    _stamp(ids)
            except Exception as exc:
                runtime.report_internal_error(exc, "sending heartbeats")
            for lease in list(self._leases.values()):
                try:
                    lease.renew()
                except Exception as exc:
                    runtime.report_internal_error(exc, "renewing a lock")
            self.beats += 1


def _stamp(ids: list[int]) -> None:
    store = runtime.store()
    store.ensure_schema()
    stored_jobs.stamp_heartbeats(store, ids)


HEARTBEAT = Heartbeat()
add_process: Callable[[int], None] = HEARTBEAT.add_process
remove_process: Callable[[int], None] = HEARTBEAT.remove_process
