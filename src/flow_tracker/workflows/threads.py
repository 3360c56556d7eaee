"""The ``threads`` queue: steps run on an in-process pool (scripts, tests, SQLite).

Steps are submitted to a :class:`~concurrent.futures.ThreadPoolExecutor`; a
step waiting to retry waits on one timer thread (a heap of due times), not on a
pool thread. The pool's threads are joined as the interpreter exits, so a
script that starts a run and returns still sees it through; a retry still
waiting then is sent again by the reaper of a later process (see
:func:`flow_tracker.workflows.engine.recover`).

A step the pool cannot take because the database is away is tried again with
backoff (up to :data:`CLAIM_RETRY_SECONDS`), so that a process that runs
the pool and no reaper still finishes its runs after an outage. A try that did
take the step, though the outage cut its reply, is known by the moment it
stored (the pool keeps every try's): the next try runs the step it finds taken
by it instead of standing down.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from flow_tracker import delivery, job_systems, runtime
from flow_tracker.errors import DatabaseUnavailableError
from flow_tracker.store.workflows import Dispatch
from flow_tracker.workflows.definitions import record_declared_soon
from flow_tracker.workflows.engine import execute_step, pool_started

SYSTEM = "threads"
WORKERS = int(os.environ.get("FLOW_TRACKER_WORKFLOW_THREADS", "8"))
# How long the pool keeps trying to take a step while the database is away, and
# the pauses between tries (doubling from the first to the last).
CLAIM_RETRY_SECONDS = 900.0
CLAIM_PAUSES = (0.25, 15.0)


@dataclasses.dataclass
class _Outage:
    """A step the pool could not take with the database away, tried again after pauses."""

    first: float
    """When the first try failed (time.monotonic)."""
    pause: float
    """The last pause before a try; doubled each time."""
    tried: list[datetime] = dataclasses.field(default_factory=list)
    """The moment each try stored as its claim (see engine.execute_step)."""


class _Pool:
    """The pool and the timer of delayed steps, made on first use (and again after a fork)."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(
            max_workers=max(1, WORKERS), thread_name_prefix="flow-tracker-step"
        )
        self._due: list[tuple[float, int, Dispatch]] = []
        self._wake = threading.Condition()
        self._count = 0
        self._timer: threading.Thread | None = None
        self.outstanding = 0  # steps submitted or waiting to retry, not yet ended
        # Steps the database was away for, by (run, step): when the first try failed,
        # the last pause, and the moments every try stored (one may have taken the
        # step though its reply was lost: see engine.execute_step).
        self._claims: dict[tuple[object, str], _Outage] = {}
        self.idle = threading.Condition()

    def submit(self, dispatch: Dispatch) -> None:
        with self.idle:
            self.outstanding += 1
        if dispatch.delay > 0:
            self._later(dispatch)
            return
        deferred = getattr(_in_step, "deferred", None)
        if deferred is not None and not deferred:
            # Sent by a step running on this pool: its thread runs the first child
            # itself once the step has ended, instead of waking another thread (a
            # chain then runs on one thread, without a hand-off between threads).
            deferred.append(dispatch)
            return
        self._start(dispatch)

    def _start(self, dispatch: Dispatch) -> None:
        try:
            self.executor.submit(self._run, dispatch)
        except RuntimeError:  # the interpreter is shutting down
            self._done()
            raise

    def _run(self, dispatch: Dispatch) -> None:
        deferred: list[Dispatch] = []
        _in_step.deferred = deferred
        try:
            current: Dispatch | None = dispatch
            while current is not None:
                try:
                    tried = self._tried(current)
                    if not _run(current, tried):
                        self._claim_later(current, tried)
                finally:
                    self._done()
                current = deferred.pop() if deferred else None
        finally:
            _in_step.deferred = None

    def _tried(self, dispatch: Dispatch) -> list[datetime]:
        """The moments of the earlier tries to take this step (none, but in an outage)."""
        if not self._claims:
            return []
        with self._wake:
            outage = self._claims.get((dispatch.run_id, dispatch.step))
        return outage.tried if outage is not None else []

    def _claim_later(self, dispatch: Dispatch, tried: list[datetime]) -> None:
        """Try again to take a step the database was away for, after a pause that grows."""
        key = (dispatch.run_id, dispatch.step)
        now = time.monotonic()
        with self._wake:
            outage = self._claims.setdefault(key, _Outage(now, CLAIM_PAUSES[0] / 2, tried))
            outage.pause = min(outage.pause * 2, CLAIM_PAUSES[1])
            if now - outage.first > CLAIM_RETRY_SECONDS:
                self._claims.pop(key, None)
                runtime.report_internal_error(
                    DatabaseUnavailableError(f"no database for {CLAIM_RETRY_SECONDS:.0f} s"),
                    f"taking step {dispatch.step}: left to the reaper",
                )
                return
            pause = outage.pause
        self.submit(dataclasses.replace(dispatch, delay=pause))

    def claimed(self, dispatch: Dispatch) -> None:
        """Forget the outage record of a step taken (or found gone) at last."""
        if self._claims:
            with self._wake:
                self._claims.pop((dispatch.run_id, dispatch.step), None)

    def _done(self) -> None:
        with self.idle:
            self.outstanding -= 1
            self.idle.notify_all()

    def _later(self, dispatch: Dispatch) -> None:
        with self._wake:
            self._count += 1
            heapq.heappush(self._due, (time.monotonic() + dispatch.delay, self._count, dispatch))
            if self._timer is None:
                self._timer = threading.Thread(
                    target=self._tick, name="flow-tracker-step-timer", daemon=True
                )
                self._timer.start()
            self._wake.notify()

    def _tick(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    timeout = None if not self._due else self._due[0][0] - time.monotonic()
                    self._wake.wait(timeout)
                _at, _n, dispatch = heapq.heappop(self._due)
            try:
                self._start(dispatch)
            except RuntimeError:  # the interpreter is shutting down
                return


def _run(dispatch: Dispatch, tried: list[datetime]) -> bool:
    """Run one step; False when the database was away and the step must be tried again.

    ``tried``: the moments of the earlier tries to take it; this one's is added.
    """
    try:
        execute_step(SYSTEM, *dispatch.args(), claims_tried=tried)
    except DatabaseUnavailableError as exc:
        runtime.report_internal_error(exc, f"taking step {dispatch.step}: trying again")
        return False
    except Exception as exc:
        runtime.report_internal_error(exc, f"running step {dispatch.step} in a thread")
    pool = _pool
    if pool is not None:
        pool.claimed(dispatch)
    return True


_pool: _Pool | None = None
# In a pool thread running a step: the child it will run next (see _Pool.submit).
_in_step = threading.local()
_pool_lock = threading.Lock()


def _forget_after_fork() -> None:
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_after_fork)


def send(dispatch: Dispatch) -> None:
    """Run the step on this interpreter's pool (after its delay)."""
    global _pool
    pool = _pool
    if pool is None:
        with _pool_lock:
            started = _pool is None
            pool = _pool = _pool or _Pool()
        if started:
            # Running steps here makes this process a live worker of the pool: it
            # delivers the outbox's requests for the workflows it declares, and
            # records their definitions so pages can start them.
            pool_started()
            delivery.serve()
            record_declared_soon()
    pool.submit(dispatch)


def wait_idle(timeout: float | None = None) -> bool:
    """Wait until this interpreter's pool has no step to run (retries waiting included).

    Returns False if steps were still outstanding after ``timeout`` seconds.
    """
    pool = _pool
    if pool is None:
        return True
    with pool.idle:
        return pool.idle.wait_for(lambda: pool.outstanding <= 0, timeout)


def describe() -> str:
    """What this interpreter's pool still has to do, in words (for a run that does not end).

    The steps outstanding, those waiting on the timer (in how many seconds) and
    those the database was away for (how many tries to take each so far).
    """
    pool = _pool
    if pool is None:
        return "the pool has not started"
    now = time.monotonic()
    with pool._wake:
        due = [f"{d.step} in {at - now:.1f} s" for at, _n, d in sorted(pool._due)]
        away = [f"{step} ({len(o.tried)} tries)" for (_run, step), o in pool._claims.items()]
        timer = pool._timer is not None and pool._timer.is_alive()
    return (
        f"{pool.outstanding} steps outstanding; waiting on the timer"
        f" ({'running' if timer else 'not running'}): {', '.join(due) or 'none'};"
        f" the database away for: {', '.join(away) or 'none'}"
    )


def install() -> None:
    """Register the in-process pool as the ``threads`` queue (done as this module is imported)."""
    job_systems.register(job_systems.JobSystem(name=SYSTEM, default_queue=SYSTEM, send_step=send))


install()
