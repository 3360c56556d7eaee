"""A step's ``timeout=``: each queue's own time limit, else the worker's own deadline.

Past its timeout an attempt fails with :class:`~flow_tracker.StepTimeout` and
the step retries per its policy, like any failure. Who stops it:

* a queue: its module's step sender turns :func:`limit_for` into the queue's
  own option (Celery's soft and hard time limits, RQ's ``job_timeout``,
  Dramatiq's ``time_limit``), and the error the queue raises inside the step
  is named by its JobSystem's ``time_limits``;
* ``threads`` and every queue without a limit of its own (whose JobSystem
  names no ``time_limits``: arq, Huey): a Python thread cannot be stopped, so
  at the deadline the worker stores the attempt's end as timed out (and sends
  its retry); the function's
  late return changes nothing. The database would refuse it anyway: an end is
  stored only while the step runs that same attempt.

Each queue's own error is stored as StepTimeout, so pages show a timed-out step
the same on every queue.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flow_tracker import job_systems, runtime
from flow_tracker.errors import StepTimeout
from flow_tracker.status import Status
from flow_tracker.store import workflows as stored
from flow_tracker.store.workflows import Dispatch
from flow_tracker.workflows.definition import THREADS, StepSpec, find

if TYPE_CHECKING:
    pass

STEP_TIMEOUT_CLASS = "flow_tracker.StepTimeout"


def is_queue_time_limit(exc: BaseException) -> bool:
    """True when ``exc`` is a queue's own time-limit error (its JobSystem's ``time_limits``)."""
    return any(isinstance(exc, system.time_limits) for system in job_systems.registered())


def as_step_timeout(exc: BaseException, spec: StepSpec) -> BaseException:
    """``exc`` as the step's end stores it: a queue's time-limit error becomes StepTimeout."""
    if isinstance(exc, StepTimeout) or not is_queue_time_limit(exc):
        return exc
    timeout = StepTimeout(spec.timeout).with_traceback(exc.__traceback__)
    timeout.__cause__ = exc
    return timeout


# -- sending: each queue module turns the limit into its own option -----------------------


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


# -- the in-process pool's deadline --------------------------------------------------------


@dataclass(frozen=True)
class TimedOut:
    """An attempt the pool ended at its deadline: how its tracker must end too."""

    status: Status
    error: BaseException
    ended_at: float | None


class Deadline:
    """The deadline of one attempt running on the pool; see :func:`pool_deadline`."""

    def __init__(self, spec: StepSpec, seconds: float, end: Callable[[], TimedOut]) -> None:
        self._end = end
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


def pool_deadline(system: str, spec: StepSpec, end: Callable[[], TimedOut]) -> Deadline | None:
    """The deadline of this attempt, where no queue limit stops the step (``threads``, arq, Huey).

    At the deadline ``end()`` stores the attempt's end as timed out: the engine's
    own path for an end (retries, children, the run's end), handed in so that
    this module stays below the engine.
    """
    if spec.timeout is None:
        return None
    record = job_systems.get(system)
    if system != THREADS and (record is None or record.time_limits):
        # The queue stops the step itself (its JobSystem names the error), or it is
        # not installed here and its own limit (sent with the step) does.
        return None
    return Deadline(spec, spec.timeout, end)
