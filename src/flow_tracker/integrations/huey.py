"""Huey: every task (or the opted-in ones) tracked as a process.

Call :func:`install` with your Huey instance where it is created; that module is
imported by the code that enqueues and by ``huey_consumer`` alike::

    from huey import RedisHuey
    from flow_tracker.integrations import huey as ft_huey

    huey = RedisHuey("shop")
    ft_huey.install(huey)                    # or install(huey, track_all=False) and
                                             # @huey.task(flow_tracker=True) per task

Built on Huey's own hooks: the ``enqueued`` signal stores the job as queued
before the message reaches the storage, ``executing`` opens its process as
running, a post-execute hook ends it (``completed``; ``retrying`` when Huey
will run it again, on the same row with attempt + 1; ``failed``; ``cancelled``
for :class:`~huey.exceptions.CancelExecution` without a retry), and the
``canceled``, ``revoked`` and ``expired`` signals end the jobs Huey drops before
running them. Tasks are declared through Huey's own extension point, the
instance's ``task_wrapper_class``.

Where Huey has no hook, the instance (never Huey's classes) is patched, and each
patch says why: ``enqueue`` (a storage that refuses the message marks the job
failed), ``read_schedule`` (a task coming due is enqueued again by Huey's
scheduler: its row exists already) and, for tasks declared before
:func:`install`, the task's function inside its class.

``RetryTask`` and ``CancelExecution`` are control flow, not failures. Huey's
message carries no attempt number, so a task that will be retried leaves its
next attempt's number in Huey's own key-value store (beside its results), read
and removed as that attempt starts.

A task declared ``@huey.task(flow_tracker_exclusive=flow_tracker.exclusive(...))``
runs inside that critical section, and a skip returns None (Huey records a
success; the process says ``skipped`` and why). A bad option raises
:class:`~flow_tracker.errors.UsageError` from the decorator.

Workflows: :func:`install` registers the step task (``flow_tracker.workflow_step``)
on the instance. Huey has one queue per instance, so a step's ``queue_name`` is
the *name of the Huey instance* it goes to (default: the first instance
installed in the process); a name no installed instance has waits in the outbox
for a process that installed it.

Not carried: trace context (Huey's message has no headers), and a requeued job
runs alone (without its pipeline's ``then``/``error`` tasks).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import multiprocessing
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flow_tracker import job_systems, runtime
from flow_tracker.errors import UsageError
from flow_tracker.job_systems import JobSystem
from flow_tracker.jobs import (
    EXCLUSIVE_OPTION,
    finish_job,
    guarded_job_body,
    record_enqueued,
    record_publish_failed,
    start_job,
    warm_up,
)
from flow_tracker.nulls import NullTracker
from flow_tracker.status import Status
from flow_tracker.store.workflows import Dispatch
from flow_tracker.tracker import Tracker, outcome_of
from flow_tracker.workflows.engine import STEP_TASK_NAME, execute_step

try:
    import huey as huey_lib
    from huey import signals as huey_signals
    from huey.exceptions import CancelExecution, RetryTask
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "flow_tracker.integrations.huey needs Huey: pip install 'flow-tracker[huey]'"
    ) from exc

JOB_SYSTEM = "huey"
MIN_VERSION = (2, 5)
OPT_IN_OPTION = "flow_tracker"
# How often Huey delivers a step it could not take (the database away) before the
# reaper's recovery is left to send it again (as on the other queues).
STEP_DELIVERY_RETRIES = 10
# Queues and schedules longer than this are not read to find a job: all are taken as pending.
PROBE_LIMIT = 100_000

_KNOWN = "_flow_tracker_known"  # on a task object: its row exists (a retry, a task coming due)
_RECORDED = "_flow_tracker_recorded"  # on a task object: stored as queued by this enqueue
_PATCHED = "__flow_tracker__"
_ATTEMPT_KEY = "flow_tracker.attempt.{}"


class NotRun(Exception):
    """Why Huey dropped a task without running it (revoked, expired, cancelled before it ran)."""


@dataclass
class _Installed:
    huey: Any
    track_all: bool
    step_task: Any = None


_lock = threading.Lock()
_installed: dict[str, _Installed] = {}  # by Huey name, in the order installed
# (task id, thread) -> the running job's tracker and attempt. Signals and hooks of one
# execution run in the worker's thread; a retry may start in another thread.
_running: dict[tuple[str, int], tuple[Tracker | NullTracker, int]] = {}
_local = threading.local()  # .entered: the task's function was called (see _on_canceled)


def install(huey: Any, *, track_all: bool = True) -> None:
    """Track the tasks of ``huey``; calling it again changes nothing else.

    Args:
        huey: the :class:`huey.Huey` instance (``RedisHuey``...), in the enqueuing
            process and in the consumer alike.
        track_all: False tracks only tasks declared ``@huey.task(flow_tracker=True)``.

    Raises:
        UsageError: a task declared before this call has a bad
            ``flow_tracker_exclusive`` option (its jobs would fail without running).
    """
    job_systems.check_version("huey", huey_lib.__version__, MIN_VERSION)
    with _lock:
        known = _installed.get(huey.name)
        if known is not None and known.huey is huey:
            known.track_all = track_all
            return
        state = _Installed(huey, track_all)
        _installed[huey.name] = state
        _connect(state)
        errors = _prepare_declared(state)
        _declare_step_task(state)
        default_queue = next(iter(_installed))
    job_systems.register(
        JobSystem(
            name=JOB_SYSTEM,
            default_queue=default_queue,
            requeue=_requeue,
            probe=_pending,
            control_flow={RetryTask: Status.RETRYING, CancelExecution: Status.CANCELLED},
            send_step=_send_step,
        )
    )
    warm_up()
    if errors:  # declared before install(): the mistake is raised where install() is called
        raise errors[0]


def _is_tracked(state: _Installed, task: Any) -> bool:
    task_class = task if isinstance(task, type) else type(task)
    if task_class.__name__ == STEP_TASK_NAME:
        return False  # a workflow step: its own process records it
    return state.track_all or bool(getattr(task_class, OPT_IN_OPTION, False))


def _state_of(huey: Any) -> _Installed | None:
    state = _installed.get(huey.name)
    return state if state is not None and state.huey is huey else None


def _task_name(task: Any) -> str:
    cls = type(task)
    return f"{cls.__module__}.{cls.__name__}"  # the name Huey's registry knows it by


def _worker_name() -> str:
    thread = threading.current_thread().name
    return thread if thread != "MainThread" else multiprocessing.current_process().name


# -- wiring ----------------------------------------------------------------------------


def _connect(state: _Installed) -> None:
    huey = state.huey
    S = huey_signals
    receivers: list[tuple[Callable[..., None], str]] = [
        (_on_enqueued, S.SIGNAL_ENQUEUED),
        (_on_executing, S.SIGNAL_EXECUTING),
        (_on_canceled, S.SIGNAL_CANCELED),
        (_on_not_run("revoked before it ran"), S.SIGNAL_REVOKED),
        (_on_not_run("expired before it ran"), S.SIGNAL_EXPIRED),
    ]
    for receiver, signal in receivers:
        huey.signal(signal)(functools.partial(receiver, state))
    huey.post_execute(name="flow_tracker")(functools.partial(_post_execute, state))
    _wrap_task_wrapper_class(state)
    _wrap_enqueue(huey)
    _wrap_read_schedule(huey)


def _wrap_task_wrapper_class(state: _Installed) -> None:
    # Huey's own extension point (Huey.task_wrapper_class): each task declared from
    # now on gets its function wrapped as the job's body before Huey builds its class.
    base = state.huey.task_wrapper_class
    if getattr(base, _PATCHED, False):
        return

    def create_task(
        self: Any, func: Any, context: bool = False, name: str | None = None, **settings: Any
    ) -> Any:
        body = _body_for(state, func, str(name or getattr(func, "__name__", "?")), settings)
        return base.create_task(self, body, context, name, **settings)

    state.huey.task_wrapper_class = type(
        base.__name__, (base,), {"create_task": create_task, _PATCHED: True}
    )


def _body_for(state: _Installed, func: Any, name: str, settings: Mapping[str, Any]) -> Any:
    """``func`` as the job's body (see :func:`flow_tracker.jobs.job_body`).

    Raises:
        UsageError: its ``flow_tracker_exclusive`` option is bad.
    """
    option = settings.get(EXCLUSIVE_OPTION)
    is_step = name == STEP_TASK_NAME
    wanted = option or state.track_all or settings.get(OPT_IN_OPTION)
    if is_step or not wanted or inspect.iscoroutinefunction(func):
        return func  # Huey itself refuses a coroutine function
    body, error = guarded_job_body(func, option, f"task {name}")
    if error is not None:
        raise error
    return _entering(body)


def _entering(body: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(body)
    def entered(*args: Any, **kwargs: Any) -> Any:
        _local.entered = True
        return body(*args, **kwargs)

    return entered


def _prepare_declared(state: _Installed) -> list[UsageError]:
    """Wrap the functions of tasks declared before :func:`install`; never raises.

    Huey's task class calls the function it closes over: that closure's cell is
    the one place the function can be reached once the class exists. A class
    whose function is not found there (another Huey) and that asks for a critical
    section refuses to run: its code never runs without its lock.
    """
    errors = []
    for task_class in list(state.huey._registry._registry.values()):
        execute = task_class.__dict__.get("execute")
        cells = dict(
            zip(
                getattr(getattr(execute, "__code__", None), "co_freevars", ()),
                getattr(execute, "__closure__", None) or (),
                strict=False,
            )
        )
        cell = cells.get("func")
        func = cell.cell_contents if cell is not None else None
        option = getattr(task_class, EXCLUSIVE_OPTION, None)
        settings = {EXCLUSIVE_OPTION: option, OPT_IN_OPTION: getattr(task_class, OPT_IN_OPTION, 0)}
        try:
            if cell is None or not callable(func):
                if option:
                    raise UsageError(
                        f"task {task_class.__name__}: flow_tracker_exclusive needs the task"
                        " declared after flow_tracker.integrations.huey.install(huey)"
                    )
                continue
            cell.cell_contents = _body_for(state, func, task_class.__name__, settings)
        except UsageError as error:
            message = f"{error} (the job was not run: its critical section could not be built)"
            task_class.execute = _refusing(message)
            errors.append(error)
    return errors


def _refusing(message: str) -> Callable[[Any], Any]:
    def execute(self: Any) -> Any:
        raise UsageError(message)

    return execute


def _wrap_enqueue(huey: Any) -> None:
    # The enqueued signal comes before the storage is written to, and Huey has no
    # signal for a write that fails: the job recorded as queued is marked failed here.
    original = huey.enqueue
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def enqueue(task: Any) -> Any:
        try:
            return original(task)
        except Exception as exc:
            if getattr(task, _RECORDED, False):
                record_publish_failed(JOB_SYSTEM, str(task.id), exc)
            raise

    setattr(enqueue, _PATCHED, True)
    huey.enqueue = enqueue


def _wrap_read_schedule(huey: Any) -> None:
    # Huey's scheduler enqueues a task again when it comes due (a delayed task, a
    # retry with a delay), and the enqueued signal cannot tell that from a new job:
    # the tasks it reads from the schedule are marked, their rows exist already.
    original = huey.read_schedule
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def read_schedule(*args: Any, **kwargs: Any) -> Any:
        tasks = original(*args, **kwargs)
        for task in tasks:
            with contextlib.suppress(Exception):
                setattr(task, _KNOWN, True)
        return tasks

    setattr(read_schedule, _PATCHED, True)
    huey.read_schedule = read_schedule


# -- the job's life ----------------------------------------------------------------------


def _on_enqueued(state: _Installed, signal: str, task: Any, *_: Any, **__: Any) -> None:
    """Store a new job as queued before the storage has its message."""
    try:
        if getattr(task, _KNOWN, False) or not _is_tracked(state, task):
            return
        args, kwargs = list(task.args or ()), dict(task.kwargs or {})
        name = _task_name(task)
        retries = int(task.retries or 0)
        record_enqueued(
            job_system=JOB_SYSTEM,
            job_id=str(task.id),
            name=name,
            queue=state.huey.name,
            args=args,
            kwargs=kwargs,
            payload={
                "task": name,
                "args": args,
                "kwargs": kwargs,
                "queue": state.huey.name,
                "retries": retries,
                "retry_delay": task.retry_delay,
                "priority": task.priority,
                "timeout": getattr(task, "timeout", None),
            },
            max_attempts=retries + 1,
        )
        setattr(task, _RECORDED, True)
        setattr(task, _KNOWN, True)  # enqueued again (a group inside a group): once
    except Exception as exc:
        runtime.report_internal_error(exc, "recording a Huey enqueue")


def _attempt(huey: Any, task: Any) -> int:
    """The attempt of the run starting: the number a retrying run left, else 1."""
    try:
        stored = huey.get(_ATTEMPT_KEY.format(task.id))  # read and removed
    except Exception as exc:
        runtime.report_internal_error(exc, "reading a Huey task's attempt")
        return 1
    return stored if isinstance(stored, int) and stored > 1 else 1


def _start(state: _Installed, task: Any) -> tuple[Tracker | NullTracker, int] | None:
    if not _is_tracked(state, task):
        return None
    attempt = _attempt(state.huey, task)
    tracker = start_job(
        job_system=JOB_SYSTEM,
        job_id=str(task.id),
        name=_task_name(task),
        queue=state.huey.name,
        attempt=attempt,
        worker=_worker_name(),
    )
    return tracker, attempt


def _on_executing(state: _Installed, signal: str, task: Any, *_: Any, **__: Any) -> None:
    """Open the job's process as running; it is ``flow_tracker.current()`` in the task."""
    _local.entered = False
    try:
        started = _start(state, task)
        if started is not None:
            _running[(str(task.id), threading.get_ident())] = started
    except Exception as exc:
        runtime.report_internal_error(exc, "starting a Huey task")


def _post_execute(
    state: _Installed, task: Any, value: Any, exception: BaseException | None
) -> None:
    """End the job's process once Huey has decided whether it runs again."""
    entry = _running.pop((str(task.id), threading.get_ident()), None)
    if entry is None:
        return
    tracker, attempt = entry
    if exception is None:
        finish_job(tracker, Status.COMPLETED)
        return
    if task.retries:  # Huey's own test: a retry follows (RetryTask counted it already)
        status = Status.RETRYING
        setattr(task, _KNOWN, True)  # enqueued again by Huey: its row exists
        try:
            state.huey.put(_ATTEMPT_KEY.format(task.id), attempt + 1)
        except Exception as exc:
            runtime.report_internal_error(exc, "storing a Huey task's next attempt")
    elif isinstance(exception, CancelExecution):
        status = Status.CANCELLED
    else:
        status = outcome_of(exception)[0]
        if status is Status.RETRYING:  # a RetryTask with no retry to come
            status = Status.FAILED
    finish_job(tracker, status, exception)


def _on_canceled(state: _Installed, signal: str, task: Any, *_: Any, **__: Any) -> None:
    """A pre-execute hook cancelled the task: it never ran and Huey drops it.

    A ``CancelExecution`` raised by the task itself sends this signal too, then
    the post-execute hook ends the job; the task's function marks that it was entered.
    """
    if getattr(_local, "entered", False):
        return
    entry = _running.pop((str(task.id), threading.get_ident()), None)
    if entry is not None:
        finish_job(entry[0], Status.CANCELLED, NotRun("cancelled by a pre-execute hook"))


def _on_not_run(reason: str) -> Callable[..., None]:
    def receiver(state: _Installed, signal: str, task: Any, *_: Any, **__: Any) -> None:
        # Revoked or expired when a worker took it: Huey drops it without running it.
        try:
            started = _start(state, task)
            if started is not None:
                finish_job(started[0], Status.CANCELLED, NotRun(reason))
        except Exception as exc:
            runtime.report_internal_error(exc, "recording a Huey task that did not run")

    return receiver


# -- recovery ----------------------------------------------------------------------------


def _requeue(payload: Mapping[str, Any], job_id: str) -> None:
    # The stored call again under a new task id (flow_tracker.requeue), through the
    # Huey instance that first had it; the task is found by the name Huey's registry
    # gives it, as the consumer finds it when it reads a message.
    state = _installed.get(str(payload.get("queue")))
    if state is None:
        raise RuntimeError(f"no Huey instance named {payload.get('queue')!r} is installed here")
    huey = state.huey
    task_class = huey._registry.string_to_task(payload["task"])
    options = {k: payload[k] for k in ("retries", "retry_delay", "priority") if k in payload}
    if payload.get("timeout") is not None:
        options["timeout"] = payload["timeout"]
    task = task_class(
        tuple(payload.get("args") or ()), dict(payload.get("kwargs") or {}), id=job_id, **options
    )
    huey.enqueue(task)


def _pending(jobs: Sequence[tuple[str, str | None, Any]]) -> set[str]:
    """Every job except those Huey's storage proves were taken by a worker that died.

    Pending: in its instance's queue or schedule, or with a result stored (it ran
    while the tracking database was away). A task a worker took off the queue and
    died with is in none of these. Jobs of an instance not installed here, or of a
    queue too long to read, are all taken as pending.
    """
    by_huey: dict[str, set[str]] = {}
    for job_id, queue, _payload in jobs:
        by_huey.setdefault(queue or "", set()).add(job_id)
    pending: set[str] = set()
    for name, wanted in by_huey.items():
        state = _installed.get(name)
        if state is None:
            pending |= wanted
            continue
        pending |= _pending_in(state.huey, wanted)
    return pending


def _pending_in(huey: Any, wanted: set[str]) -> set[str]:
    storage = huey.storage
    if storage.queue_size() + storage.schedule_size() > PROBE_LIMIT:
        return wanted
    found: set[str] = set()
    for raw in [*storage.enqueued_items(), *storage.scheduled_items()]:
        with contextlib.suppress(Exception):  # a message this process cannot read
            found.add(str(huey.serializer.deserialize(raw).id))
    for job_id in wanted - found:
        if storage.has_data_for_key(job_id):
            found.add(job_id)
    return wanted & found


# -- workflows -----------------------------------------------------------------------------


def _declare_step_task(state: _Installed) -> None:
    """Declare the task that runs any workflow step on ``state.huey`` (once)."""
    registry = state.huey._registry
    for task_class in registry._registry.values():
        if task_class.__name__ == STEP_TASK_NAME:
            state.step_task = task_class
            return

    def workflow_step(workflow: str, run_id: str, step: str, job_id: str) -> None:
        execute_step(JOB_SYSTEM, workflow, run_id, step, job_id)

    declare = state.huey.task(
        name=STEP_TASK_NAME,
        retries=STEP_DELIVERY_RETRIES,
        retry_delay=1,
        retry_backoff=2,  # ignored by a Huey without retry_backoff: then 1 s each time
    )
    state.step_task = declare(workflow_step).task_class


def _send_step(dispatch: Dispatch) -> None:
    # One queue per Huey instance: a step's queue_name names the instance it goes to.
    state = _installed.get(dispatch.queue_name)
    if state is None:
        raise RuntimeError(
            f"no Huey instance named {dispatch.queue_name!r} is installed here"
            f" (installed: {', '.join(_installed) or 'none'})"
        )
    eta = None
    if dispatch.delay > 0:
        from huey.utils import normalize_time

        eta = normalize_time(None, dispatch.delay, state.huey.utc)
    task = state.step_task(tuple(dispatch.args()), {}, id=dispatch.message_id(), eta=eta)
    state.huey.enqueue(task)
