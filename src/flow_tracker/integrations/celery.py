"""Celery: every task (or the opted-in ones) tracked as a process.

Call :func:`install` with your app where it is configured; that module is
imported by the code that sends tasks and by the worker alike::

    from flow_tracker.integrations import celery as ft_celery
    ft_celery.install(app)                    # or install(app, track_all=False) and
                                              # @app.task(flow_tracker=True) per task

Built on Celery's own signals (``task_prerun``, ``task_retry``,
``task_failure``, ``task_postrun``), which fire in prefork children, thread
pools and eager mode alike. On the sending side, the app's own
``app.amqp.send_task_message`` is wrapped: ``before_task_publish`` does not say
which app publishes (and every app's registry holds every shared task), and
Celery has no signal for a publish the broker refuses.

Celery's control-flow exceptions are not failures: ``Retry`` makes the process
``retrying`` (``failed`` once retries are exhausted), ``Ignore`` ``skipped``,
``Reject`` ``cancelled``.

A tracked task's ``run`` is wrapped when the app is finalized (before any
worker builds its tracer), see :func:`flow_tracker.jobs.job_body`:
a task declared ``@app.task(flow_tracker_exclusive=flow_tracker.exclusive(...))``
runs inside that critical section, and a skip returns None (Celery records a
success; the process says ``skipped`` and why). A bad option fails closed: the
task's jobs fail with the :class:`~flow_tracker.errors.UsageError` and never run
(Celery swallows what a finalize receiver raises, so it is logged instead, again
when the worker is ready).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import threading
from collections.abc import Mapping, Sequence
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
    import celery
    from celery import signals
    from celery.utils.serialization import UnpickleableExceptionWrapper
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "flow_tracker.integrations.celery needs Celery: pip install 'flow-tracker[celery]'"
    ) from exc

JOB_SYSTEM = "celery"
DEFAULT_QUEUE = "celery"  # Celery's own default queue, where steps go unless named
MIN_VERSION = (5, 3)
OPT_IN_OPTION = "flow_tracker"

_STATES = {
    "SUCCESS": Status.COMPLETED,
    "FAILURE": Status.FAILED,
    "RETRY": Status.RETRYING,
    "IGNORED": Status.SKIPPED,
    "REJECTED": Status.CANCELLED,
}

_lock = threading.Lock()
_apps: list[tuple[celery.Celery, bool]] = []  # installed apps and their track_all
_signals_connected = False
# (task id, thread) -> (tracker, error seen by task_failure/task_retry). The thread is
# part of the key: in a thread pool, the retry of a task can start in another thread
# before the attempt that asked for it has ended.
_running: dict[tuple[str, int], tuple[Tracker | NullTracker, BaseException | None]] = {}


def install(app: celery.Celery, *, track_all: bool = True) -> None:
    """Track the tasks of ``app``; calling it again changes nothing.

    Args:
        app: the Celery app, in the sending and in the worker process alike.
        track_all: False tracks only tasks declared ``@app.task(flow_tracker=True)``.

    Raises:
        UsageError: the app is already finalized and a task's ``flow_tracker_exclusive``
            option is bad. Tasks declared later are checked when the app is finalized
            (as a worker starts): a bad one is logged and its jobs fail without running.
    """
    job_systems.check_version("Celery", celery.__version__, MIN_VERSION)
    global _signals_connected
    with _lock:
        _apps[:] = [(a, t) for a, t in _apps if a is not app] + [(app, track_all)]
        if not _signals_connected:
            # weak=False: the receivers are module functions, kept for the process's life.
            signals.task_prerun.connect(_task_prerun, weak=False)
            signals.task_retry.connect(_task_retry, weak=False)
            signals.task_failure.connect(_task_failure, weak=False)
            signals.task_postrun.connect(_task_postrun, weak=False)
            signals.worker_ready.connect(_report_bad_tasks, weak=False)
            _signals_connected = True
        _wrap_send_task_message(app)
        _wrap_task_from_fun(app)
        _wrap_group_apply()
        # weak=False as above; the receiver checks which app is finalized.
        app.on_after_finalize.connect(_prepare_tasks, weak=False)
        errors = _prepare_tasks(app) if app.finalized else []
        from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded

        _declare_step_task(app)
        job_systems.register(
            job_systems.JobSystem(
                name=JOB_SYSTEM,
                default_queue=DEFAULT_QUEUE,
                requeue=_requeue,
                probe=_pending,
                control_flow={
                    Retry: Status.RETRYING,
                    Ignore: Status.SKIPPED,
                    Reject: Status.CANCELLED,
                },
                send_step=functools.partial(_send_step, app),
                time_limits=(SoftTimeLimitExceeded,),
            )
        )
    warm_up()
    if errors:  # declared before install(): the mistake is raised where install() is called
        raise errors[0]


# Queues longer than this are not read to find a job: every job is taken as pending.
PROBE_LIMIT = 100_000
_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: "<queue>\x06\x16<priority>"


def _app_for(payload: Mapping[str, Any] | None) -> celery.Celery:
    """The installed app that sent the job (by its main name), else the first installed."""
    name = (payload or {}).get("app")
    for app, _track_all in _apps:
        if app.main == name:
            return app
    return _apps[0][0]


def _pending(jobs: Sequence[tuple[str, str | None, Any]]) -> set[str]:
    """The jobs not proven dropped, asking each job's own app."""
    by_app: dict[int, tuple[celery.Celery, list[tuple[str, str | None]]]] = {}
    for job_id, queue, payload in jobs:
        app = _app_for(payload)
        by_app.setdefault(id(app), (app, []))[1].append((job_id, queue))
    pending: set[str] = set()
    for app, group in by_app.values():
        pending |= _pending_in(app, group)
    return pending


def _pending_in(app: celery.Celery, jobs: Sequence[tuple[str, str | None]]) -> set[str]:
    """Every task except those a dead worker dropped (Redis broker).

    Pending: in its queue, reserved by a worker (unacknowledged), or with a state
    in the result backend (it ran, while the tracking database was away). A task
    acknowledged by a worker that died before the task started is in none of
    these: the reaper marks it lost. Brokers other than Redis cannot be read
    without consuming, so there every task is taken as pending.
    """
    wanted = {job_id for job_id, _queue in jobs}
    if app.connection_for_read().transport.driver_type != "redis":
        return wanted
    found: set[str] = set()
    queues = {queue or app.conf.task_default_queue for _job_id, queue in jobs}
    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        for queue in queues:
            for key in [queue] + [f"{queue}{_PRIORITY_SEP}{p}" for p in range(1, 10)]:
                if client.llen(key) > PROBE_LIMIT:
                    return wanted
                found |= {_task_id(raw) for raw in client.lrange(key, 0, -1)}
        if client.hlen("unacked") > PROBE_LIMIT:
            return wanted
        for raw in client.hvals("unacked"):  # [message, exchange, routing key]
            with contextlib.suppress(ValueError, TypeError, IndexError):
                found.add(_task_id(json.dumps(json.loads(raw)[0])))
    for job_id in wanted - found:
        with contextlib.suppress(Exception):  # no result backend: nothing more to learn
            if app.AsyncResult(job_id).state != "PENDING":
                found.add(job_id)  # the backend knows it: it ran
    return wanted & found


def _task_id(raw: bytes | str) -> str:
    try:
        message = json.loads(raw)
    except ValueError:
        return ""
    headers = message.get("headers") or {}
    return str(headers.get("id") or (message.get("properties") or {}).get("correlation_id") or "")


def _requeue(payload: Mapping[str, Any], job_id: str) -> None:
    # Sent by name with the stored arguments and a new task id (flow_tracker.requeue),
    # through the app that sent it first.
    _app_for(payload).send_task(
        payload["task"],
        args=list(payload.get("args") or ()),
        kwargs=dict(payload.get("kwargs") or {}),
        queue=payload.get("queue") or None,
        task_id=job_id,
    )


def _is_tracked(task: Any) -> bool:
    if getattr(task, "name", None) == STEP_TASK_NAME:
        return False  # a workflow step: its own process records it
    app = getattr(task, "app", None)
    for installed, track_all in _apps:
        if installed is app:
            return track_all or bool(getattr(task, OPT_IN_OPTION, False))
    return False


def _prepare_tasks(sender: celery.Celery, **_: Any) -> list[UsageError]:
    """Prepare every task of a finalized app (see :func:`_prepare_task`); never raises.

    Runs from Celery's ``on_after_finalize`` signal, which swallows what its
    receivers raise. Each task is handled on its own, so a bad one never leaves
    the tasks after it unwrapped. Returns the errors of bad options.
    """
    errors = [_prepare_task(task) for task in list(sender.tasks.values())]
    return [error for error in errors if error is not None]


def _prepare_task(task: Any) -> UsageError | None:
    """Wrap a tracked task's ``run`` (or one with a critical section); never raises.

    A task whose ``flow_tracker_exclusive`` option is bad gets a body that fails
    its jobs without running them; the error is logged and returned.
    """
    option = getattr(task, EXCLUSIVE_OPTION, None)
    try:
        if not (option or _is_tracked(task)):
            return None
        task.run, error = guarded_job_body(task.run, option, f"task {task.name}")
    except Exception as exc:  # a task object we cannot read or wrap
        runtime.report_internal_error(exc, f"preparing Celery task {getattr(task, 'name', '?')}")
        return None
    if error is not None:
        _BAD_TASKS[task.name] = str(error)
        _log.error("%s; its jobs will fail without running", error)
    return error


# Tasks whose critical section could not be built, by name: reported again when the
# worker is ready, where Celery's own log shows it.
_BAD_TASKS: dict[str, str] = {}
_log = logging.getLogger("flow_tracker.integrations.celery")


def _report_bad_tasks(**_: Any) -> None:
    for reason in _BAD_TASKS.values():
        _log.error("%s; its jobs will fail without running", reason)


def _wrap_task_from_fun(app: celery.Celery) -> None:
    # Celery announces tasks created while the app is finalized, not those made
    # later: a task declared after finalize (a late import, a test's app, eager
    # calls on an app never finalized) would run unwrapped - without its critical
    # section. Celery has no hook for a task's creation, so the app's own factory
    # is wrapped; what it returns is prepared like a task of a finalized app.
    original = app._task_from_fun
    if getattr(original, "__flow_tracker__", False):
        return

    @functools.wraps(original)
    def task_from_fun(*args: Any, **kwargs: Any) -> Any:
        task = original(*args, **kwargs)
        _prepare_task(task)
        return task

    task_from_fun.__flow_tracker__ = True  # type: ignore[attr-defined]
    app._task_from_fun = task_from_fun


def _wrap_send_task_message(app: celery.Celery) -> None:
    # Celery sends before_task_publish without saying which app publishes, and
    # every app's registry holds every shared task, so the app's own sender is
    # wrapped instead: it records the job before the message goes out, and marks
    # it failed when the broker refuses it (Celery has no signal for that).
    amqp = app.amqp
    original = amqp.send_task_message
    if getattr(original, "__flow_tracker__", False):
        return

    @functools.wraps(original)
    def send_task_message(producer: Any, name: str, message: Any, *args: Any, **kw: Any) -> Any:
        task_id = _record_publish(app, name, message, kw)
        try:
            return original(producer, name, message, *args, **kw)
        except Exception as exc:
            if task_id:
                record_publish_failed(JOB_SYSTEM, task_id, exc)
            raise

    send_task_message.__flow_tracker__ = True  # type: ignore[attr-defined]
    amqp.send_task_message = send_task_message


def _record_publish(app: Any, name: str, message: Any, options: dict[str, Any]) -> str | None:
    """Record a first publish of a tracked task; return its task id (None when untracked)."""
    try:
        headers, _properties, body, _sent = message
        task_id = headers.get("id")
        if not task_id or headers.get("retries", 0):
            return None  # a retry re-publishes the same job: its row exists already
        task = app.tasks.get(name)
        if task is None or not _is_tracked(task):
            return None
        carrier = trace_carrier()
        if carrier and isinstance(headers, dict):
            headers[TRACE_HEADER] = carrier  # the worker continues the sender's trace
        args, kwargs = _body_args(body)
        _record_task(app, task, str(task_id), name, options, args, kwargs)
        return str(task_id)
    except Exception as exc:
        runtime.report_internal_error(exc, "recording a Celery publish")
        return None


_group_wrapped = False


def _wrap_group_apply() -> None:
    """Store the queued rows of a Celery ``group`` in one write before it publishes.

    ``group.apply_async`` publishes its tasks one by one, and each would pay its
    own round trip. For a group given as a list, its prepared signatures (ids
    fixed, as they will be sent) are recorded together first, routed as Celery
    routes them; then the group publishes and :func:`_record_publish` passes
    over them. Chains, chords and groups inside are recorded as they are sent.
    """
    global _group_wrapped
    if _group_wrapped:
        return
    _group_wrapped = True
    from celery.canvas import Signature, group

    original = group._apply_tasks

    @functools.wraps(original)
    def _apply_tasks(
        self: Any, tasks: Any, producer: Any = None, app: Any = None, p: Any = None, **options: Any
    ) -> Any:
        the_app = app or self.app
        if not isinstance(self.tasks, (list, tuple)) or not any(a is the_app for a, _ in _apps):
            yield from original(self, tasks, producer, app, p, **options)
            return
        tasks = list(tasks)  # the group's own list: prepared (frozen), not yet sent
        leaves = [sig for sig, _res, _gid in tasks if type(sig) is Signature]
        ids = []
        with enqueued_together():
            for sig in leaves:
                task_id = _record_signature(the_app, sig, options)
                if task_id is not None:
                    ids.append(task_id)
        with recorded_ahead(JOB_SYSTEM, ids):
            yield from original(self, iter(tasks), producer, app, p, **options)

    group._apply_tasks = _apply_tasks


def _record_signature(app: Any, sig: Any, call: Mapping[str, Any]) -> str | None:
    """Record a group member as queued, as _record_publish would; return its task id.

    ``call``: what the group passes to each member's ``apply_async`` (partial
    arguments, and options that override the member's own, as Celery merges them).
    """
    try:
        task_id = sig.options.get("task_id")
        task = app.tasks.get(sig.task)
        if not task_id or task is None or not _is_tracked(task):
            return None
        args = [*(call.get("args") or ()), *sig.args]
        kwargs = {**sig.kwargs, **(call.get("kwargs") or {})}
        options = {
            **sig.options,
            **{k: v for k, v in call.items() if k not in ("args", "kwargs")},
        }
        routed = app.amqp.router.route(options, sig.task, args, kwargs)
        _record_task(app, task, str(task_id), sig.task, routed, args, kwargs)
        return str(task_id)
    except Exception as exc:
        runtime.report_internal_error(exc, "recording a Celery group member")
        return None


def _record_task(
    app: Any,
    task: Any,
    task_id: str,
    name: str,
    routed: Mapping[str, Any],
    args: list[Any],
    kwargs: dict[str, Any],
) -> None:
    """Record a task as queued; ``routed``: its options once Celery has routed it."""
    queue = routed.get("queue")
    queue_name = getattr(queue, "name", queue) or routed.get("routing_key")
    record_enqueued(
        job_system=JOB_SYSTEM,
        job_id=task_id,
        name=name,
        queue=queue_name,
        args=args,
        kwargs=kwargs,
        payload={
            "task": name,
            "args": args,
            "kwargs": kwargs,
            "queue": queue_name,
            "app": app.main,
        },
        max_attempts=_max_attempts(task),
    )


def _body_args(body: Any) -> tuple[list[Any], dict[str, Any]]:
    # Message protocol 2: (args, kwargs, embed); protocol 1: a dict.
    if isinstance(body, (tuple, list)) and len(body) >= 2:
        return list(body[0] or ()), dict(body[1] or {})
    if isinstance(body, dict):
        return list(body.get("args") or ()), dict(body.get("kwargs") or {})
    return [], {}


def _max_attempts(task: Any) -> int | None:
    max_retries = getattr(task, "max_retries", None)
    return None if max_retries is None else int(max_retries) + 1


def _task_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    try:
        if not task_id or task is None or not _is_tracked(task):
            return
        request = task.request
        delivery = getattr(request, "delivery_info", None) or {}
        tracker = start_job(
            job_system=JOB_SYSTEM,
            job_id=task_id,
            name=task.name,
            queue=delivery.get("routing_key") or delivery.get("queue"),
            attempt=int(getattr(request, "retries", 0) or 0) + 1,
            worker=getattr(request, "hostname", None),
            trace=getattr(request, TRACE_HEADER, None),
        )
        _running[(task_id, threading.get_ident())] = (tracker, None)
    except Exception as exc:
        runtime.report_internal_error(exc, "starting a Celery task")


def _remember_error(task_id: str | None, error: BaseException | None) -> None:
    key = (task_id or "", threading.get_ident())
    if task_id and key in _running and error is not None:
        _running[key] = (_running[key][0], _unwrapped(error))


def _unwrapped(error: BaseException) -> BaseException:
    """The task's own exception where Celery hands over its pickling stand-in.

    An exception that cannot be pickled reaches ``task_failure`` (and the result
    backend) as ``UnpickleableExceptionWrapper``; the class filters and the lists
    must show the task's class and message. The signal is sent while Celery handles
    the original, so it is still the exception being handled; failing that, the
    wrapper's record of the class (module, name, message) is rebuilt.
    """
    if not isinstance(error, UnpickleableExceptionWrapper):
        return error
    wrapper: Any = error  # Celery's class is untyped: what it is narrowed to is Any
    original: BaseException = wrapper
    handled = sys.exc_info()[1]
    if handled is not None and type(handled).__name__ == wrapper.exc_cls_name:
        return handled
    try:
        rebuilt = wrapper.restore()
    except Exception:  # a class that cannot be rebuilt from its name and arguments
        return original
    if not isinstance(rebuilt, BaseException):
        return original
    rebuilt.__traceback__ = original.__traceback__
    return rebuilt


def _task_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    task_id = getattr(request, "id", None)
    _remember_error(task_id, reason if isinstance(reason, BaseException) else None)


def _task_failure(
    task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    _remember_error(task_id, exception)


def _task_postrun(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    entry = _running.pop((task_id, threading.get_ident()), None) if task_id else None
    if entry is None:
        return
    tracker, error = entry
    status = _STATES.get(state or "")
    if status is None:
        # Eager mode with propagation re-raises before task_failure and sends
        # task_postrun with no state, from a ``finally`` the error is passing through.
        passing = error or sys.exc_info()[1]
        status = outcome_of(passing)[0]
        error = passing
    finish_job(tracker, status, error if status in (Status.FAILED, Status.RETRYING) else None)


# -- workflow steps ------------------------------------------------------------------------
#
# One task runs any step (``flow_tracker.workflow_step``); it is not tracked as a job
# of its own (the step's process is its record). A retry's backoff is Celery's
# ``countdown``: the worker holds the message until due, and no worker waits.

_step_apps: list[Any] = []


def _declare_step_task(app: Any) -> None:
    """Declare the step task on ``app`` (once)."""
    if any(known is app for known in _step_apps):
        return
    _step_apps.append(app)

    @app.task(  # type: ignore[untyped-decorator]
        name=STEP_TASK_NAME,
        shared=False,
        autoretry_for=(Exception,),
        retry_backoff=True,
        max_retries=DELIVERY_RETRIES,
    )
    def workflow_step(workflow: str, run_id: str, step: str, job_id: str) -> None:
        execute_step(JOB_SYSTEM, workflow, run_id, step, job_id)


def _send_step(app: Any, dispatch: Dispatch) -> None:
    app.send_task(
        STEP_TASK_NAME,
        args=dispatch.args(),
        queue=dispatch.queue_name,
        task_id=dispatch.message_id(),
        countdown=dispatch.delay if dispatch.delay > 0 else None,
        **time_limit_options(dispatch),
    )


# Celery's hard limit kills the worker's child: it comes this much after the soft
# one, so that a step stopped in time can still store its end.
HARD_LIMIT_MARGIN = (10.0, 0.1)  # at least 10 s, else 10 % of the timeout


def time_limit_options(dispatch: Dispatch) -> dict[str, Any]:
    """The step's timeout as ``send_task`` options: a soft limit, a hard one after it.

    The soft limit raises inside the step (stored as StepTimeout); the hard one
    kills the worker's child if the step swallowed that, and the reaper then
    finds the step lost.
    """
    seconds = timeouts.limit_for(dispatch)
    if seconds is None:
        return {}
    floor, fraction = HARD_LIMIT_MARGIN
    return {"soft_time_limit": seconds, "time_limit": seconds + max(floor, seconds * fraction)}
