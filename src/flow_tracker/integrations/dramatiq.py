"""Dramatiq: every message (or the opted-in actors') tracked as a process.

Call :func:`install` where the broker is set up, in the sending process and in
the workers alike::

    from flow_tracker.integrations import dramatiq as ft_dramatiq
    ft_dramatiq.install(broker)         # or install(broker, track_all=False) and
                                        # @dramatiq.actor(flow_tracker=True) per actor

A Dramatiq middleware does the work (``before_enqueue``,
``before_process_message``, ``after_process_message``, ``after_skip_message``).
It is placed before the ``Retries`` middleware, so that its ``after_*`` hooks,
which Dramatiq runs in reverse order, see whether Retries gave up on the
message. One wrapper is added: ``broker.enqueue`` has no hook for a failed
publish, so it is wrapped to mark the already recorded job as failed.

``dramatiq.Retry`` makes the process ``retrying`` (``failed`` once retries are
exhausted) and a skipped message ends ``skipped``.

Each tracked actor's function is wrapped as it is declared (see
:func:`flow_tracker.jobs.job_body`): an actor declared
``@dramatiq.actor(flow_tracker_exclusive=flow_tracker.exclusive(...))`` runs
inside that critical section, and a skip is no failure (nothing is retried).
A bad option raises :class:`~flow_tracker.errors.UsageError` from the
``@dramatiq.actor`` decorator (``broker.declare_actor`` is wrapped for that:
Dramatiq logs what its declare hooks raise and declares the actor anyway).
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from flow_tracker import job_systems, runtime
from flow_tracker.errors import UsageError
from flow_tracker.jobs import (
    EXCLUSIVE_OPTION,
    TRACE_HEADER,
    enqueued_together,
    finish_job,
    guarded_job_body,
    record_enqueued,
    record_publish_failed,
    recorded_ahead,
    start_job,
    trace_carrier,
    warm_up,
)
from flow_tracker.nulls import NullTracker
from flow_tracker.status import Status
from flow_tracker.store.workflows import Dispatch
from flow_tracker.tracker import Tracker, outcome_of
from flow_tracker.workflows import timeouts
from flow_tracker.workflows.engine import DELIVERY_RETRIES, STEP_TASK_NAME, execute_step

try:
    import dramatiq
    from dramatiq.middleware import Middleware, Retries
    from dramatiq.middleware.time_limit import TimeLimitExceeded
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "flow_tracker.integrations.dramatiq needs Dramatiq: pip install 'flow-tracker[dramatiq]'"
    ) from exc

# Options of one delivery, not of the job: a requeued message starts afresh.
_ATTEMPT_OPTIONS = frozenset({"retries", "traceback", "redis_message_id", "eta"})
JOB_SYSTEM = "dramatiq"
DEFAULT_QUEUE = "default"  # Dramatiq's own default queue, where steps go unless named
MIN_VERSION = (1, 16)
OPT_IN_OPTION = "flow_tracker"
DEFAULT_MAX_RETRIES = 20  # Dramatiq's own default in the Retries middleware


class FlowTrackerMiddleware(Middleware):
    """Records each message as a process: queued, running, retrying, completed, failed.

    Args:
        track_all: False tracks only actors declared with ``flow_tracker=True``.
    """

    def __init__(self, track_all: bool = True) -> None:
        self.track_all = track_all
        self._running: dict[str, Tracker | NullTracker] = {}
        self._lock = threading.Lock()

    @property
    def actor_options(self) -> set[str]:
        """The actor options this middleware understands.

        ``flow_tracker`` (opt in) and ``flow_tracker_exclusive`` (a critical section).
        """
        return {OPT_IN_OPTION, EXCLUSIVE_OPTION}

    def after_declare_actor(self, broker: Any, actor: Any) -> None:
        """Wrap a tracked actor's function (or one with a critical section).

        :func:`install` makes ``broker.declare_actor`` raise for a bad option
        first; here (Dramatiq logs what this hook raises) a bad option still
        fails closed: the actor's messages fail without running it.
        """
        self.prepare_actor(actor)

    def prepare_actor(self, actor: Any) -> UsageError | None:
        """Wrap the actor's function as :func:`after_declare_actor` says; never raises.

        Returns:
            The error of a bad ``flow_tracker_exclusive`` option, else None.
        """
        option = actor.options.get(EXCLUSIVE_OPTION)
        if actor.actor_name == STEP_TASK_NAME:
            return None
        if not (option or self.track_all or actor.options.get(OPT_IN_OPTION)):
            return None
        actor.fn, error = guarded_job_body(actor.fn, option, f"actor {actor.actor_name}")
        return error

    def _actor_options(self, broker: Any, actor_name: str) -> dict[str, Any]:
        try:
            return dict(broker.get_actor(actor_name).options)
        except Exception:  # an actor this process does not know (sent by name)
            return {}

    def _is_tracked(self, broker: Any, message: Any) -> bool:
        if message.actor_name == STEP_TASK_NAME:
            return False  # a workflow step: its own process records it
        return self.track_all or bool(
            self._actor_options(broker, message.actor_name).get(OPT_IN_OPTION)
        )

    def before_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        """Store the message's job as queued before the broker has it."""
        try:
            if message.options.get("retries") or not self._is_tracked(broker, message):
                return  # a retry re-enqueues the same job: its row exists already
            carrier = trace_carrier()
            if carrier:
                message.options[TRACE_HEADER] = carrier  # the worker continues the trace
            options = self._actor_options(broker, message.actor_name)
            max_retries = message.options.get(
                "max_retries", options.get("max_retries", DEFAULT_MAX_RETRIES)
            )
            record_enqueued(
                job_system=JOB_SYSTEM,
                job_id=message.message_id,
                name=message.actor_name,
                queue=message.queue_name,
                args=list(message.args),
                kwargs=dict(message.kwargs),
                payload={
                    "actor": message.actor_name,
                    "queue": message.queue_name,
                    "args": list(message.args),
                    "kwargs": dict(message.kwargs),
                    "options": {
                        k: v
                        for k, v in message.options.items()
                        if k not in ("traceback", TRACE_HEADER)
                    },
                },
                max_attempts=None if max_retries is None else int(max_retries) + 1,
            )
        except Exception as exc:
            runtime.report_internal_error(exc, "recording a Dramatiq enqueue")

    def before_process_message(self, broker: Any, message: Any) -> None:
        """Open the job's process as running and make it current in the worker thread."""
        try:
            if not self._is_tracked(broker, message):
                return
            tracker = start_job(
                job_system=JOB_SYSTEM,
                job_id=message.message_id,
                name=message.actor_name,
                queue=message.queue_name,
                attempt=int(message.options.get("retries", 0) or 0) + 1,
                worker=threading.current_thread().name,
                trace=message.options.get(TRACE_HEADER),
            )
            with self._lock:
                self._running[message.message_id] = tracker
        except Exception as exc:
            runtime.report_internal_error(exc, "starting a Dramatiq message")

    def _pop(self, message: Any) -> Tracker | NullTracker | None:
        with self._lock:
            return self._running.pop(message.message_id, None)

    def after_process_message(
        self,
        broker: Any,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """End the job's process: completed, retrying, or failed once Retries gave up."""
        tracker = self._pop(message)
        if tracker is None:
            return
        if exception is None:
            finish_job(tracker, Status.COMPLETED)
            return
        status = outcome_of(exception)[0]
        if status in (Status.FAILED, Status.RETRYING):
            status = Status.FAILED if getattr(message, "failed", False) else Status.RETRYING
        finish_job(tracker, status, exception)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        """A middleware skipped the message: the process ends skipped."""
        tracker = self._pop(message)
        if tracker is not None:
            finish_job(tracker, Status.SKIPPED)


def install(broker: Any, *, track_all: bool = True) -> FlowTrackerMiddleware:
    """Add flow-tracker's middleware to ``broker`` (once) and return it.

    Args:
        broker: the Dramatiq broker, in the sending and in the worker processes alike.
        track_all: False tracks only actors declared ``@dramatiq.actor(flow_tracker=True)``.
    """
    job_systems.check_version("Dramatiq", dramatiq.__version__, MIN_VERSION)
    for existing in broker.middleware:
        if isinstance(existing, FlowTrackerMiddleware):
            existing.track_all = track_all
            return existing
    middleware = FlowTrackerMiddleware(track_all)
    if any(isinstance(m, Retries) for m in broker.middleware):
        broker.add_middleware(middleware, before=Retries)
    else:
        broker.add_middleware(middleware)
    _wrap_enqueue(broker, middleware)
    _wrap_declare_actor(broker, middleware)
    _wrap_group_run()
    for actor in list(broker.actors.values()):  # declared before install()
        middleware.prepare_actor(actor)
    _declare_step_actor(broker)
    job_systems.register(
        job_systems.JobSystem(
            name=JOB_SYSTEM,
            default_queue=DEFAULT_QUEUE,
            requeue=functools.partial(_requeue, broker),
            control_flow={dramatiq.Retry: Status.RETRYING},
            send_step=functools.partial(_send_step, broker),
            # A worker consumes the queues declared on its broker: every queue steps use.
            declare_queue=broker.declare_queue,
            time_limits=(TimeLimitExceeded,),
        )
    )
    warm_up()
    return middleware


_group_wrapped = False


def _wrap_group_run() -> None:
    """Store the queued rows of a ``dramatiq.group`` in one write before it runs.

    ``group.run`` enqueues its messages one by one: each would pay its own round
    trip. Its plain messages are recorded together first (their ids are fixed),
    then the group runs and ``before_enqueue`` passes over them. Pipelines in a
    group are recorded as they are sent.
    """
    global _group_wrapped
    if _group_wrapped:
        return
    _group_wrapped = True
    original: Callable[..., Any] = dramatiq.group.run

    @functools.wraps(original)
    def run(self: Any, *, delay: int | None = None) -> Any:
        middleware = next(
            (m for m in self.broker.middleware if isinstance(m, FlowTrackerMiddleware)), None
        )
        messages = [c for c in self.children if isinstance(c, dramatiq.Message)]
        if middleware is None or len(messages) < 2:
            return original(self, delay=delay)
        with enqueued_together():
            for message in messages:
                middleware.before_enqueue(self.broker, message, delay)
        with recorded_ahead(JOB_SYSTEM, [m.message_id for m in messages]):
            return original(self, delay=delay)

    dramatiq.group.run = run  # type: ignore[method-assign]


def _requeue(broker: Any, payload: Mapping[str, Any], job_id: str) -> None:
    # The stored message again, under a new message id (flow_tracker.requeue).
    options = {
        k: v for k, v in dict(payload.get("options") or {}).items() if k not in _ATTEMPT_OPTIONS
    }
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=payload["queue"],
        actor_name=payload["actor"],
        args=tuple(payload.get("args") or ()),
        kwargs=dict(payload.get("kwargs") or {}),
        options=options,
        message_id=job_id,
    )
    broker.enqueue(message)


def _wrap_enqueue(broker: Any, middleware: FlowTrackerMiddleware) -> None:
    original = broker.enqueue

    @functools.wraps(original)
    def enqueue(message: Any, *, delay: int | None = None) -> Any:
        try:
            return original(message, delay=delay)
        except Exception as exc:
            if not message.options.get("retries") and middleware._is_tracked(broker, message):
                record_publish_failed(JOB_SYSTEM, message.message_id, exc)
            raise

    broker.enqueue = enqueue


def _wrap_declare_actor(broker: Any, middleware: FlowTrackerMiddleware) -> None:
    # Dramatiq logs what a middleware's declare hook raises and declares the actor
    # anyway. A bad critical section must be the programmer's error where the actor
    # is declared, so the check runs here, before Dramatiq's machinery.
    original = broker.declare_actor

    @functools.wraps(original)
    def declare_actor(actor: Any) -> None:
        error = middleware.prepare_actor(actor)
        if error is not None:
            raise error
        original(actor)

    broker.declare_actor = declare_actor


# -- workflow steps ------------------------------------------------------------------------
#
# One actor runs any step (``flow_tracker.workflow_step``); it is not tracked as a job
# of its own (the step's process is its record). A retry's backoff is the broker's
# delay queue (``enqueue(message, delay=...)``); no worker waits meanwhile.


def _declare_step_actor(broker: Any) -> None:
    """Declare the step actor on ``broker`` (once)."""
    if STEP_TASK_NAME in broker.actors:
        return

    def workflow_step(workflow: str, run_id: str, step: str, job_id: str) -> None:
        execute_step(JOB_SYSTEM, workflow, run_id, step, job_id)

    declare = dramatiq.actor(actor_name=STEP_TASK_NAME, broker=broker, max_retries=DELIVERY_RETRIES)
    declare(workflow_step)


def _send_step(broker: Any, dispatch: Dispatch) -> None:
    message: Any = dramatiq.Message(
        queue_name=dispatch.queue_name,
        actor_name=STEP_TASK_NAME,
        args=tuple(dispatch.args()),
        kwargs={},
        options=time_limit_options(dispatch),
        message_id=dispatch.message_id(),
        message_timestamp=int(time.time() * 1000),
    )
    delay = int(dispatch.delay * 1000)
    broker.enqueue(message, delay=delay if delay > 0 else None)


def time_limit_options(dispatch: Dispatch) -> dict[str, Any]:
    """The step's timeout as message options: ``time_limit``, in milliseconds.

    Dramatiq's TimeLimit middleware raises ``TimeLimitExceeded`` inside the step.
    """
    seconds = timeouts.limit_for(dispatch)
    return {} if seconds is None else {"time_limit": max(1, math.ceil(seconds * 1000))}
