"""arq: every job (or the opted-in ones) tracked as a process, and workflow steps on arq.

Call :func:`install` with the worker's settings where they are defined, and
with the ``ArqRedis`` pool that enqueues in the processes that enqueue::

    # myapp/worker.py  ->  arq myapp.worker.WorkerSettings
    from flow_tracker.integrations import arq as ft_arq

    class WorkerSettings:
        functions = [charge, send_invoice]
        redis_settings = RedisSettings()

    ft_arq.install(WorkerSettings)        # or install(WorkerSettings, track_all=False)
                                          # and @ft_arq.tracked per function

    # where jobs are enqueued (a web app's startup, a script):
    redis = await create_pool(RedisSettings())
    ft_arq.install(pool=redis)

arq has hooks for a job's start and end that are told neither its function nor
its outcome, so the settings' own ``functions`` are what is wrapped: each
function is replaced by one that runs it as the current process
(``flow_tracker.current()`` works in the job's task), and the step function of
workflows (:data:`~flow_tracker.workflows.engine.STEP_TASK_NAME`) is added. The
pool's ``enqueue_job`` is wrapped on the pool given (and on the pool the worker
makes, through ``on_startup``): the job's row is stored as queued before the job
reaches Redis, and marked failed if Redis refuses it. Jobs deferred with
``_defer_by``/``_defer_until`` get their row when they start, as RQ's scheduled
jobs do: a job due tomorrow is not a stale queued one.

arq's ``Retry`` makes the process ``retrying`` (same row, attempt + 1), ``failed``
once ``max_tries`` is reached. A job interrupted by ``asyncio.CancelledError``
is ended as arq decides, once it has: run again later (a worker stopping:
``retrying``), or ended (a timeout: ``failed``; an abort: ``cancelled``). arq
tells that only to ``Worker.finish_job``, which is wrapped for it.

A function decorated ``@ft_arq.tracked(flow_tracker_exclusive=...)`` runs inside
that critical section (see :func:`flow_tracker.exclusive`); a skip ends the job
``skipped``, not failed, and is never retried.

The database writes a job's start and end wait for run on a thread, never on
the worker's event loop: the worker's other jobs go on meanwhile. Code that is
not a coroutine - :func:`flow_tracker.requeue`, a workflow's step sender, the
outbox's delivery thread - reaches Redis through arq's own pool on an event
loop of this module's (one thread per process, started when first needed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any, TypeVar

from flow_tracker import config, job_systems, runtime
from flow_tracker.delivery import backoff
from flow_tracker.errors import Skipped
from flow_tracker.jobs import (
    exclusive_option,
    finish_job,
    record_enqueued,
    record_publish_failed,
    skip_if_requeued,
    start_job,
    warm_up,
)
from flow_tracker.nulls import NullTracker
from flow_tracker.status import Status
from flow_tracker.store.workflows import Dispatch
from flow_tracker.tracker import CURRENT_NODE, Tracker, outcome_of
from flow_tracker.workflows.engine import DELIVERY_RETRIES, STEP_TASK_NAME, execute_step

try:
    import arq
    from arq.connections import ArqRedis, create_pool
    from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
    from arq.jobs import deserialize_result
    from arq.worker import Function, Retry, RetryJob, Worker, func
    from redis.asyncio import ConnectionPool
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "flow_tracker.integrations.arq needs arq: pip install 'flow-tracker[arq]'"
    ) from exc

JOB_SYSTEM = "arq"
DEFAULT_QUEUE = "arq:queue"  # arq's own default queue name
MIN_VERSION = (0, 25)
OPT_IN_ATTRIBUTE = "__flow_tracker__"
EXCLUSIVE_ATTRIBUTE = "__flow_tracker_exclusive__"
WRAPPED_ATTRIBUTE = "__flow_tracker_arq__"
# arq's own defaults, for settings that do not say (arq.worker.Worker's arguments).
ARQ_MAX_TRIES = 5
ARQ_MAX_JOBS = 10
# How long code that is not a coroutine waits for Redis (arq's pool retries its connect).
REDIS_TIMEOUT_S = 30.0

T = TypeVar("T")
F = TypeVar("F")

_lock = threading.Lock()
_track_all = True
_opted_in: set[str] = set()  # function names tracked when track_all is False
_max_tries: dict[str, int] = {}  # by function name, as the installed settings say
_link: _Link | None = None  # Redis for code that is not a coroutine
# Jobs their wrapper saw cancelled, by job id: ended once arq says how (finish_job).
_interrupted: dict[str, Tracker] = {}
_step_threads: concurrent.futures.ThreadPoolExecutor | None = None


def tracked(function: Any = None, *, flow_tracker_exclusive: object = None) -> Any:
    """Mark an arq job function as tracked (with ``install(..., track_all=False)``).

    Use as ``@ft_arq.tracked`` or ``@ft_arq.tracked(flow_tracker_exclusive=...)``
    on the coroutine function, or on an ``arq.worker.func(...)``. A function with
    ``flow_tracker_exclusive`` (:func:`flow_tracker.exclusive` or a dict of its
    arguments) runs inside that critical section.

    Raises:
        UsageError: the critical section cannot be built (checked here, where the
            function is declared, not when its first job runs).
    """

    def mark(target: F) -> F:
        coroutine: Any = target.coroutine if isinstance(target, Function) else target
        if flow_tracker_exclusive is not None:
            section = exclusive_option(flow_tracker_exclusive)
            if section is not None:
                section(coroutine)  # a key template naming no argument is refused now
            setattr(coroutine, EXCLUSIVE_ATTRIBUTE, flow_tracker_exclusive)
        setattr(coroutine, OPT_IN_ATTRIBUTE, True)
        name = target.name if isinstance(target, Function) else coroutine.__qualname__
        with _lock:
            _opted_in.add(name)
        return target

    return mark if function is None else mark(function)


def install(
    worker_settings: Any = None, *, pool: ArqRedis | None = None, track_all: bool = True
) -> None:
    """Track the arq jobs of this process; calling it again changes nothing else.

    Args:
        worker_settings: the worker's settings (a ``WorkerSettings`` class or a
            dict, as ``arq`` and ``arq.worker.create_worker`` take them), in the
            worker process: its functions are tracked, the workflow step function
            is added, and its Redis settings are used to requeue and send steps.
        pool: an ``ArqRedis`` whose ``enqueue_job`` records each job as queued
            before Redis has it; also used to requeue and send steps here.
        track_all: False tracks only the functions marked with :func:`tracked`.

    Raises:
        UsageError: a function's ``flow_tracker_exclusive`` option is bad; the
            worker must not start without its critical section.
    """
    global _track_all, _link
    job_systems.check_version("arq", arq.VERSION, MIN_VERSION)
    with _lock:
        _track_all = track_all
        if worker_settings is not None:
            _prepare_settings(worker_settings)
            _link = _Link.to(_link, worker_settings, _pool_from_settings)
            # Steps of a workflow that names no queue go where this worker listens.
            default_queue = str(_get(worker_settings, "queue_name", DEFAULT_QUEUE))
        elif pool is not None:
            default_queue = str(getattr(pool, "default_queue_name", None) or DEFAULT_QUEUE)
        else:
            default_queue = DEFAULT_QUEUE
        if pool is not None:
            _wrap_pool(pool)
            _link = _Link.to(_link, pool, _pool_like)
        _wrap_worker_finish()
        can_send = _link is not None
    job_systems.register(
        job_systems.JobSystem(
            name=JOB_SYSTEM,
            default_queue=default_queue,
            requeue=_requeue if can_send else None,
            probe=_probe if can_send else None,
            control_flow={Retry: Status.RETRYING},
            send_step=_send_step if can_send else None,
        )
    )
    if worker_settings is not None:
        warm_up()


# -- the worker's settings -----------------------------------------------------------------


def _get(settings: Any, key: str, default: Any = None) -> Any:
    # arq reads a settings class's own attributes only (its __dict__), not inherited ones.
    found = settings if isinstance(settings, Mapping) else vars(settings)
    value = found.get(key, default)
    return default if value is None else value


def _set(settings: Any, key: str, value: Any) -> None:
    if isinstance(settings, MutableMapping):
        settings[key] = value
    else:
        setattr(settings, key, value)


def _prepare_settings(settings: Any) -> None:
    """Wrap the settings' functions and cron jobs, add the step function, chain on_startup.

    Every function is checked before anything is changed: a bad critical section
    leaves the settings as they were and raises.
    """
    queue = str(_get(settings, "queue_name", DEFAULT_QUEUE))
    default_tries = int(_get(settings, "max_tries", ARQ_MAX_TRIES))
    retry_jobs = bool(_get(settings, "retry_jobs", True))
    functions = [func(entry) for entry in _get(settings, "functions", ())]
    wrapped = [_job_function(f, queue, default_tries, retry_jobs) for f in functions]
    crons = [
        dataclasses.replace(
            cron,
            coroutine=_job_body(
                cron.coroutine, cron.name, queue, cron.max_tries or default_tries, retry_jobs
            ),
        )
        for cron in _get(settings, "cron_jobs", ())
    ]
    if not any(f.name == STEP_TASK_NAME for f in wrapped):
        wrapped.append(
            func(
                _workflow_step,
                name=STEP_TASK_NAME,
                max_tries=DELIVERY_RETRIES + 1,
                keep_result=0,  # the step's result is in the database
            )
        )
    _set(settings, "functions", wrapped)
    if crons:
        _set(settings, "cron_jobs", crons)
    startup = _get(settings, "on_startup")
    if not getattr(startup, WRAPPED_ATTRIBUTE, False):
        _set(settings, "on_startup", _chained_startup(startup))
    global _step_threads
    if _step_threads is None:
        _step_threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=int(_get(settings, "max_jobs", ARQ_MAX_JOBS)),
            thread_name_prefix="flow-tracker-arq-step",
        )


def _job_function(function: Function, queue: str, default_tries: int, retry_jobs: bool) -> Any:
    if function.name == STEP_TASK_NAME or getattr(function.coroutine, WRAPPED_ATTRIBUTE, False):
        return function
    max_tries = function.max_tries if function.max_tries is not None else default_tries
    _max_tries[function.name] = max_tries
    if getattr(function.coroutine, OPT_IN_ATTRIBUTE, False):
        _opted_in.add(function.name)
    body = _job_body(function.coroutine, function.name, queue, max_tries, retry_jobs)
    return dataclasses.replace(function, coroutine=body)


def _chained_startup(startup: Any) -> Any:
    # The worker makes its own pool as it starts: jobs enqueued from inside jobs (and
    # by the user's own on_startup) are recorded like any other.
    async def on_startup(ctx: dict[str, Any]) -> None:
        pool = ctx.get("redis")
        if isinstance(pool, ArqRedis):
            _wrap_pool(pool)
        if startup is not None:
            await startup(ctx)

    setattr(on_startup, WRAPPED_ATTRIBUTE, True)
    return on_startup


async def _pool_from_settings(settings: Any) -> ArqRedis:
    return await create_pool(
        _get(settings, "redis_settings"),
        job_serializer=_get(settings, "job_serializer"),
        job_deserializer=_get(settings, "job_deserializer"),
        default_queue_name=str(_get(settings, "queue_name", DEFAULT_QUEUE)),
    )


async def _pool_like(pool: ArqRedis) -> ArqRedis:
    # A pool's connections belong to the event loop that made them: a twin for ours.
    source = pool.connection_pool
    twin = ConnectionPool(connection_class=source.connection_class, **source.connection_kwargs)
    return ArqRedis(
        twin,
        job_serializer=pool.job_serializer,
        job_deserializer=pool.job_deserializer,
        default_queue_name=pool.default_queue_name,
        expires_extra_ms=pool.expires_extra_ms,
    )


# -- running a job --------------------------------------------------------------------------


def _job_body(coroutine: Any, name: str, queue: str, max_tries: int, retry_jobs: bool) -> Any:
    """The function arq runs for ``coroutine``: tracked, inside its critical section."""
    if getattr(coroutine, WRAPPED_ATTRIBUTE, False):
        return coroutine
    section = exclusive_option(getattr(coroutine, EXCLUSIVE_ATTRIBUTE, None))
    guarded = section(coroutine) if section is not None else coroutine
    opted_in = bool(getattr(coroutine, OPT_IN_ATTRIBUTE, False))

    @functools.wraps(coroutine)
    async def job(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        tracker = await _start(ctx, name, queue) if (_track_all or opted_in) else None
        if tracker is None:
            return await guarded(ctx, *args, **kwargs)
        if skip_if_requeued(tracker):
            await _finish(tracker, Status.SKIPPED)
            return None
        try:
            result = await guarded(ctx, *args, **kwargs)
        except Skipped:  # exclusive(..., on_conflict="skip") as a block: not a failure
            await _finish(tracker, Status.SKIPPED)
            return None
        except asyncio.CancelledError:
            # A stopping worker (the job runs again), a timeout or an abort: only arq
            # knows which, and says so to Worker.finish_job (see _wrap_worker_finish).
            _interrupted[str(ctx.get("job_id"))] = tracker
            raise
        except BaseException as exc:
            attempt = int(ctx.get("job_try") or 1)
            if isinstance(exc, (Retry, RetryJob)):
                again = retry_jobs and attempt < max_tries
                status = Status.RETRYING if again else Status.FAILED
            else:  # arq runs a job again only when it asks to (Retry)
                status = outcome_of(exc)[0]
                status = Status.FAILED if status is Status.RETRYING else status
            await _finish(tracker, status, exc)
            raise
        await _finish(tracker, Status.COMPLETED)
        return result

    setattr(job, WRAPPED_ATTRIBUTE, True)
    return job


async def _start(ctx: Mapping[str, Any], name: str, queue: str) -> Tracker | None:
    """Open the job's process as running, off the event loop; make it current in this task."""
    try:
        start = functools.partial(
            start_job,
            job_system=JOB_SYSTEM,
            job_id=str(ctx["job_id"]),
            name=name,
            queue=queue,
            attempt=int(ctx.get("job_try") or 1),
        )
        tracker = await _off_the_loop(start)
    except Exception as exc:
        runtime.report_internal_error(exc, "starting an arq job")
        return None
    if not isinstance(tracker, Tracker):
        return None
    # start_job made it current in the thread's copy of this context; here is where it runs.
    CURRENT_NODE.set(tracker)
    return tracker


async def _finish(
    tracker: Tracker | NullTracker, status: Status, error: BaseException | None = None
) -> None:
    """End the job's process; wait until it is stored, off the event loop."""
    finish_job(tracker, status, error, wait=False)
    timeout = config.current().completion_timeout
    writer = runtime.sink()
    if timeout > 0 and writer.healthy:
        try:
            await asyncio.shield(_off_the_loop(functools.partial(writer.flush, timeout)))
        except asyncio.CancelledError:
            # The job has ended and its outcome is decided: a worker stopping, or the
            # job's timeout, during this wait must not turn a done job into one arq
            # runs again. The wait goes on in its thread.
            pass
        except Exception as exc:
            runtime.report_internal_error(exc, "storing the end of an arq job")


async def _off_the_loop(call: Callable[[], T]) -> T:
    context = contextvars.copy_context()  # the job's current process, seen by the call
    return await asyncio.get_running_loop().run_in_executor(None, context.run, call)


_worker_wrapped = False


def _wrap_worker_finish() -> None:
    # arq decides what a cancelled job becomes (run again, timed out, aborted) in
    # Worker.run_job and tells only finish_job; no hook hears it. The wrapper ends the
    # process of a job its function saw cancelled, then lets arq go on.
    global _worker_wrapped
    if _worker_wrapped:
        return
    _worker_wrapped = True
    original = Worker.finish_job

    @functools.wraps(original)
    async def finish_job(self: Worker, job_id: str, finish: bool, *args: Any, **kw: Any) -> None:
        tracker = _interrupted.pop(job_id, None)
        if tracker is not None:
            status, error = _interrupted_end(self, finish, args[0] if args else None)
            await _finish(tracker, status, error)
        await original(self, job_id, finish, *args, **kw)

    Worker.finish_job = finish_job  # type: ignore[method-assign]


def _interrupted_end(
    worker: Worker, finish: bool, result_data: Any
) -> tuple[Status, BaseException]:
    """How a job interrupted by a cancellation ends, as arq decided."""
    if not finish:
        return Status.RETRYING, asyncio.CancelledError("the worker stopped; arq runs the job again")
    try:
        outcome = deserialize_result(result_data, deserializer=worker.job_deserializer)
        error = outcome.result
    except Exception:  # no result kept (keep_result=0), or one that cannot be read
        error = None
    if isinstance(error, asyncio.CancelledError):
        return Status.CANCELLED, error  # aborted (Job.abort)
    if isinstance(error, BaseException):
        return Status.FAILED, error  # its timeout
    return Status.FAILED, asyncio.CancelledError("arq ended the job: its timeout or an abort")


# -- enqueueing -----------------------------------------------------------------------------


def _is_tracked(function: str) -> bool:
    if function == STEP_TASK_NAME:
        return False  # a workflow step: its own process records it
    return _track_all or function in _opted_in


_DEFERRED = ("_defer_by", "_defer_until")


def _wrap_pool(pool: ArqRedis) -> None:
    original = pool.enqueue_job
    if getattr(original, WRAPPED_ATTRIBUTE, False):
        return

    @functools.wraps(original)
    async def enqueue_job(function: str, *args: Any, **kwargs: Any) -> Any:
        if not _is_tracked(function) or any(kwargs.get(k) for k in _DEFERRED):
            return await original(function, *args, **kwargs)
        job_id = kwargs.get("_job_id") or uuid.uuid4().hex  # arq's own form of job id
        queue = kwargs.get("_queue_name") or pool.default_queue_name
        call_kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        try:
            record = functools.partial(
                record_enqueued,
                job_system=JOB_SYSTEM,
                job_id=job_id,
                name=function,
                queue=queue,
                args=list(args),
                kwargs=call_kwargs,
                payload={
                    "function": function,
                    "args": list(args),
                    "kwargs": call_kwargs,
                    "queue": queue,
                },
                max_attempts=_max_tries.get(function),
            )
            recorded = await _off_the_loop(record) is not None
        except Exception as exc:
            runtime.report_internal_error(exc, "recording an arq enqueue")
            recorded = False
        try:
            return await original(function, *args, **{**kwargs, "_job_id": job_id})
        except Exception as exc:
            if recorded:
                record_publish_failed(JOB_SYSTEM, job_id, exc)
            raise

    setattr(enqueue_job, WRAPPED_ATTRIBUTE, True)
    pool.enqueue_job = enqueue_job  # type: ignore[method-assign]


# -- code that is not a coroutine: requeue, probe, workflow steps ---------------------------


class _Link:
    """arq's own pool on an event loop of this module's, for callers that are not coroutines.

    The requeue, the reaper's probe and a workflow's step sender are called from
    plain threads (the outbox's delivery thread, the threads that run steps) and
    from code on an event loop that must not be waited on from itself. Each call
    runs on one loop thread of ours, with a pool made there, and is waited for.
    """

    def __init__(self, source: Any, connect: Callable[[Any], Awaitable[ArqRedis]]) -> None:
        self.source = source  # the settings or the pool it connects like
        self._connect = connect
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._pool: asyncio.Task[ArqRedis] | None = None

    @classmethod
    def to(
        cls, current: _Link | None, source: Any, connect: Callable[[Any], Awaitable[ArqRedis]]
    ) -> _Link:
        """The link for ``source``: ``current`` when it is that one already, else a new one."""
        if current is not None and current.source is source:
            return current
        if current is not None:
            current.close()
        return cls(source, connect)

    def close(self) -> None:
        """Stop our loop's thread (its pool's connections go with it)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None and self._pid == os.getpid():
            loop.call_soon_threadsafe(loop.stop)

    def call(self, use: Callable[[ArqRedis], Awaitable[T]]) -> T:
        """Run ``use(pool)`` on our loop and return what it returns (or raise what it raises)."""
        future = asyncio.run_coroutine_threadsafe(self._use(use), self._running_loop())
        try:
            return future.result(REDIS_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"Redis did not answer arq within {REDIS_TIMEOUT_S:g} s") from None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # none yet, or a forked child
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="flow-tracker-arq", daemon=True
                ).start()
                self._loop, self._pid, self._pool = loop, os.getpid(), None
            return self._loop

    async def _use(self, use: Callable[[ArqRedis], Awaitable[T]]) -> T:
        if self._pool is None:
            self._pool = asyncio.ensure_future(self._connect(self.source))
        try:
            pool = await self._pool
        except BaseException:
            self._pool = None  # connect again next time
            raise
        return await use(pool)


def _require_link(doing: str) -> _Link:
    link = _link
    if link is None:
        raise RuntimeError(
            f"arq needs Redis to {doing}: flow_tracker.integrations.arq.install("
            "WorkerSettings) or install(pool=ArqRedis)"
        )
    return link


def _requeue(payload: Mapping[str, Any], job_id: str) -> None:
    # The stored call again, under the new job id (flow_tracker.requeue). Enqueued
    # through an unwrapped pool: the recovery stored the copy's row already.
    args = list(payload.get("args") or ())
    kwargs = dict(payload.get("kwargs") or {})
    _require_link("requeue jobs").call(
        lambda redis: redis.enqueue_job(
            str(payload["function"]),
            *args,
            _job_id=job_id,
            _queue_name=payload.get("queue") or DEFAULT_QUEUE,
            **kwargs,
        )
    )  # None when a job with this id is there already: sent before


def _probe(jobs: Sequence[tuple[str, str | None, Mapping[str, Any] | None]]) -> set[str]:
    """The jobs Redis still holds: in a queue, taken by a worker, or ended with a result.

    arq keeps a job in its queue until a worker ends it, and a worker that dies
    leaves it there (another runs it once its in-progress mark expires): a queued
    row whose job Redis holds in none of these forms was lost with Redis's data.
    """
    if not jobs:
        return set()

    async def held(redis: ArqRedis) -> list[Any]:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id, queue, _payload in jobs:
                pipe.exists(
                    job_key_prefix + job_id,
                    in_progress_key_prefix + job_id,
                    result_key_prefix + job_id,
                )
                pipe.zscore(queue or DEFAULT_QUEUE, job_id)
            return list(await pipe.execute())

    replies = _require_link("ask which jobs Redis holds").call(held)
    return {
        job_id
        for i, (job_id, _queue, _payload) in enumerate(jobs)
        if replies[2 * i] or replies[2 * i + 1] is not None
    }


def _send_step(dispatch: Dispatch) -> None:
    args = dispatch.args()
    delay = dispatch.delay if dispatch.delay > 0 else None
    _require_link("send workflow steps").call(
        lambda redis: redis.enqueue_job(
            STEP_TASK_NAME,
            *args,
            _job_id=dispatch.message_id(),
            _queue_name=dispatch.queue_name,
            _defer_by=delay,
        )
    )  # None when that message is there already: sent before


async def _workflow_step(
    ctx: Mapping[str, Any], workflow: str, run_id: str, step: str, job_id: str
) -> None:
    """The arq job that runs one workflow step, on a thread (steps are plain functions)."""
    run = functools.partial(execute_step, JOB_SYSTEM, workflow, run_id, step, job_id)
    context = contextvars.copy_context()
    try:
        await asyncio.get_running_loop().run_in_executor(_step_threads, context.run, run)
    except Exception as exc:  # the database away: delivered again, with backoff
        attempt = int(ctx.get("job_try") or 1)
        if attempt > DELIVERY_RETRIES:
            raise
        raise Retry(defer=backoff(attempt)) from exc


__all__ = ["DEFAULT_QUEUE", "JOB_SYSTEM", "install", "tracked"]
