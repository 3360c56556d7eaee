"""A step's ``timeout=``: each queue's own time limit, and the pool's deadline for ``threads``.

Past its timeout an attempt fails with :class:`~flow_tracker.StepTimeout` and
the step retries per its policy, like any failure. Who stops it:

* Celery: the task's ``soft_time_limit`` raises inside the step (stored as
  StepTimeout); a hard ``time_limit`` a little later kills the worker's child if
  the step swallowed that, and the reaper then finds the step lost;
* RQ: ``job_timeout`` at enqueue (whole seconds): the work-horse raises
  ``JobTimeoutException`` inside the step;
* Dramatiq: the message's ``time_limit`` option (milliseconds): its TimeLimit
  middleware raises ``TimeLimitExceeded`` inside the step;
* ``threads``: a Python thread cannot be stopped, so at the deadline the pool
  stores the attempt's end as timed out (and sends its retry); the function's
  late return changes nothing. The database would refuse it anyway: an end is
  stored only while the step runs that same attempt.

Each queue's own error is stored as StepTimeout, so pages show a timed-out step
the same on every queue.
"""

from __future__ import annotations

import math
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flow_tracker import runtime
from flow_tracker.errors import StepTimeout
from flow_tracker.status import Status
from flow_tracker.store import workflows as stored
from flow_tracker.store.workflows import Dispatch
from flow_tracker.workflows.definition import StepSpec, find

if TYPE_CHECKING:
    from flow_tracker.store.engine import Store

# The queues' own time-limit errors, by name: importing a queue to compare
# classes would make every queue a dependency of every other.
QUEUE_TIME_LIMITS = frozenset(
    {
        "billiard.exceptions.SoftTimeLimitExceeded",  # celery.exceptions re-exports it
        "rq.timeouts.JobTimeoutException",
        "dramatiq.middleware.time_limit.TimeLimitExceeded",
    }
)
# Celery's hard limit kills the worker's child: it comes this much after the soft
# one, so that a step stopped in time can still store its end.
HARD_LIMIT_MARGIN = (10.0, 0.1)  # at least 10 s, else 10 % of the timeout
STEP_TIMEOUT_CLASS = "flow_tracker.StepTimeout"


def is_queue_time_limit(exc: BaseException) -> bool:
    """True when ``exc`` is a queue's own time-limit error (or a subclass of one)."""
    return any(
        f"{cls.__module__}.{cls.__qualname__}" in QUEUE_TIME_LIMITS for cls in type(exc).__mro__
    )


def as_step_timeout(exc: BaseException, spec: StepSpec) -> BaseException:
    """``exc`` as the step's end stores it: a queue's time-limit error becomes StepTimeout."""
    if isinstance(exc, StepTimeout) or not is_queue_time_limit(exc):
        return exc
    timeout = StepTimeout(spec.timeout).with_traceback(exc.__traceback__)
    timeout.__cause__ = exc
    return timeout


# -- sending: each queue's own limit -------------------------------------------------------


def limit_for(dispatch: Dispatch) -> float | None:
    """The timeout of the step ``dispatch`` sends, in seconds; None when it has none.

    Read from the workflow declared in this process, else from the run's stored
    DAG (an outbox delivered by a worker that does not import the workflow).

    Raises:
        Exception: the stored DAG could not be read; the send fails and is
            tried again (a step never goes out without its limit).
    """
    declared = find(dispatch.workflow)
    if declared is not None and dispatch.step in declared.steps:
        return declared.steps[dispatch.step].timeout
    dag, _times = stored.step_times(runtime.store(), dispatch.run_id)
    for step in dag.get("steps", []):
        if isinstance(step, dict) and step.get("name") == dispatch.step:
            value = step.get("timeout")
            return float(value) if isinstance(value, (int, float)) and value > 0 else None
    return None


def celery_options(dispatch: Dispatch) -> dict[str, Any]:
    """``send_task`` options: the soft time limit, and a hard one a little after it."""
    seconds = limit_for(dispatch)
    if seconds is None:
        return {}
    floor, fraction = HARD_LIMIT_MARGIN
    return {"soft_time_limit": seconds, "time_limit": seconds + max(floor, seconds * fraction)}


def rq_options(dispatch: Dispatch) -> dict[str, Any]:
    """``enqueue`` options: ``job_timeout``, in whole seconds (RQ's alarm counts no less)."""
    seconds = limit_for(dispatch)
    return {} if seconds is None else {"job_timeout": max(1, math.ceil(seconds))}


def dramatiq_options(dispatch: Dispatch) -> dict[str, Any]:
    """Message options: ``time_limit``, in milliseconds."""
    seconds = limit_for(dispatch)
    return {} if seconds is None else {"time_limit": max(1, math.ceil(seconds * 1000))}


# -- the in-process pool's deadline --------------------------------------------------------


@dataclass(frozen=True)
class TimedOut:
    """An attempt the pool ended at its deadline: how its tracker must end too."""

    status: Status
    error: BaseException
    ended_at: float | None


class Deadline:
    """The deadline of one attempt running on the pool; see :func:`pool_deadline`."""

    def __init__(
        self, store: Store, run: uuid.UUID, spec: StepSpec, attempt: int, seconds: float
    ) -> None:
        self._store, self._run, self._spec, self._attempt = store, run, spec, attempt
        self._seconds = seconds
        self._lock = threading.Lock()
        self._fired = False
        self._settled = False
        self._stored = threading.Event()
        self._timed_out: TimedOut | None = None
        # One timer thread per attempt with a timeout, sleeping until its deadline.
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.name = f"flow-tracker-step-deadline-{spec.name}"
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._settled:
                return  # the function returned first: its own end is stored
            self._fired = True
        try:
            self._timed_out = self._end()
        except Exception as exc:  # tracking never breaks the pool
            runtime.report_internal_error(exc, "storing a step's timeout")
            self._timed_out = TimedOut(Status.LOST, StepTimeout(self._seconds), None)
        finally:
            self._stored.set()

    def _end(self) -> TimedOut:
        # The engine's own path for an attempt's end: retries, children, the run's end.
        from flow_tracker.workflows.engine import EndNotStored, _store_end, send, timed_out

        outcome = timed_out(self._spec, self._attempt)
        ended, status, exc, ended_at = _store_end(
            self._store, self._run, self._spec.name, self._attempt, outcome
        )
        if ended is None:  # the database was away: the reaper finds the step lost
            return TimedOut(Status.LOST, EndNotStored("its end could not be stored"), None)
        send(ended.dispatches)
        return TimedOut(Status(status), exc or StepTimeout(self._seconds), ended_at)

    def settle(self) -> TimedOut | None:
        """Called once the step's function has returned (or raised): who ends the attempt.

        None: it returned in time, and its own end is stored as usual. Else the
        pool ended the attempt at its deadline (waited for here, so the tracker's
        end follows the stored one), and the late return must store nothing.
        """
        with self._lock:
            self._settled = True
            fired = self._fired
        self._timer.cancel()
        if not fired:
            return None
        self._stored.wait()
        return self._timed_out


def pool_deadline(
    system: str, store: Store, run: uuid.UUID, spec: StepSpec, attempt: int
) -> Deadline | None:
    """The deadline of this attempt when the pool enforces it (``threads``, a timeout)."""
    if system != "threads" or spec.timeout is None:
        return None
    return Deadline(store, run, spec, attempt, spec.timeout)
