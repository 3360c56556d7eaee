"""Running workflows: starting a run, running one step in a worker, handing steps to queues.

Every step is an ordinary job of its queue. The message carries only names
(workflow, run, step, job id); the worker takes the step in the database
(:func:`~flow_tracker.store.step_writes.claim`), runs the step's function as
a tracked process, and stores its end in one transaction that also queues the
children it made ready. Only then are those children's messages sent.

The order is what makes a crash at any point recoverable:

* killed before the end is stored: the step's process stops sending
  heartbeats, the reaper marks it lost, and :func:`recover` queues it again;
* killed after the end is stored but before the children's messages went out:
  their process rows stay queued and their broker holds no message, so the
  reaper finds them (as any vanished job) and :func:`recover` sends them again;
* a message delivered twice: the second delivery finds the step running or
  done and stands down.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from flow_tracker import config, runtime
from flow_tracker.errors import DatabaseUnavailableError, FlowTrackerError, Skipped, UsageError
from flow_tracker.ids import new_id, process_id_for
from flow_tracker.redaction import clean_text, redact_text
from flow_tracker.status import Status
from flow_tracker.store import step_writes
from flow_tracker.store import workflows as stored
from flow_tracker.store.engine import Store, error_line, is_transient
from flow_tracker.store.workflows import CATEGORY, Dispatch, Ended
from flow_tracker.tracker import describe_error
from flow_tracker.workflows.definition import StepSpec, Workflow, find
from flow_tracker.workflows.status import notify_ended

_log = logging.getLogger("flow_tracker.workflows")
STEP_JOB_NAMESPACE = uuid.UUID("5f0e3b8a-2c4d-5e6f-9a1b-7c8d9e0f1a2b")
STEP_TASK_NAME = "flow_tracker.workflow_step"
# How long a worker keeps trying to store a step's end while the database is away.
END_RETRY_SECONDS = 30.0

Sender = Callable[[Dispatch], None]


class EndNotStored(FlowTrackerError):
    """A step's end the database did not store: refused, or away past the retry window."""


_SENDERS: dict[str, Sender] = {}


def register_sender(system: str, send: Sender) -> None:
    """Make ``send`` hand this queue system's steps to its broker (the integration's install)."""
    _SENDERS[system] = send


def sender_for(system: str) -> Sender | None:
    """How steps of ``system`` are sent in this interpreter, if its integration is installed."""
    if system == "threads" and system not in _SENDERS:
        from flow_tracker.workflows import threads

        threads.install()
    return _SENDERS.get(system)


def step_job_id(run_id: uuid.UUID, step: str) -> str:
    """The job id of a step of a run: the same on every attempt, every retry and every worker."""
    return str(uuid.uuid5(STEP_JOB_NAMESPACE, f"{run_id}/{step}"))


def _store() -> Store:
    """The configured store, its schema made; a clear error when it cannot be used.

    Raises:
        UsageError: tracking is disabled (workflows need the database).
        DatabaseUnavailableError: the database cannot be reached.
    """
    settings = config.current()
    if not settings.enabled:
        raise UsageError("flow-tracker is disabled (enabled=False): workflows need its database")
    store = runtime.store()
    try:
        store.ensure_schema()
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise _unavailable(exc, "workflows") from exc
    return store


_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def as_json(value: Any, what: str, limit: int | None = None) -> Any:
    r"""``value`` as it will be stored and read back (tuples become lists...).

    NUL characters, which PostgreSQL cannot keep in JSON, become U+FFFD; lone
    surrogates (``os.listdir`` of a name that is not UTF-8, ``surrogateescape``
    decoding), which it cannot keep either, become the visible text ``\udXXX``,
    as :func:`flow_tracker.redaction.clean_text` writes them in every other record.

    Args:
        value: the value to store.
        what: how to name it in an error ("the context of a nightly run").
        limit: the most bytes its JSON (UTF-8) may take; None for no limit.

    Raises:
        UsageError: ``value`` is not JSON (an object, NaN, a non-string key...),
            is nested too deeply to encode, or is larger than ``limit``.
    """
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply to store as JSON") from None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} must be JSON: {exc}") from None
    if limit is not None and len(text) * 4 > limit:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise UsageError(
                f"{what} takes {size:,} bytes as JSON, more than the limit of {limit:,}: "
                "pass ids, not data"
            )
    if "\\u0000" in text:
        text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
    if not text.isascii() and _LONE_SURROGATE.search(text):
        text = _LONE_SURROGATE.sub(lambda m: f"\\\\u{ord(m.group()):04x}", text)
    try:
        return json.loads(text)
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply to store as JSON") from None


def _unavailable(exc: BaseException, doing: str) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(f"{doing}: the database is unavailable: {error_line(exc)}")


# -- starting a run ---------------------------------------------------------------------


def start_run(wf: Workflow, context: Mapping[str, Any] | None) -> Any:
    """Store a run of ``wf`` and send its first steps (see :meth:`Workflow.run`)."""
    from flow_tracker.workflows.status import WorkflowRun

    if not wf.steps:
        raise UsageError(f"workflow {wf.name!r} has no steps")
    if context is None:
        context = {}
    if not isinstance(context, Mapping):
        raise UsageError(f"a run's context is a dict, not {type(context).__name__}")
    settings = config.current()
    stored_context = as_json(
        dict(context), f"the context of a {wf.name} run", settings.max_context_bytes
    )
    _warn_if_large(stored_context, wf.name, settings.context_warning_bytes)
    if sender_for(wf.queue) is None:
        raise UsageError(
            f"workflow {wf.name!r} runs on {wf.queue}: call "
            f"flow_tracker.integrations.{wf.queue}.install(...) in this process first"
        )
    store = _store()
    run_id = new_id()
    steps = []
    for spec in wf.steps.values():
        job_id = step_job_id(run_id, spec.name)
        steps.append(
            {
                "name": spec.name,
                "parents": list(spec.depends_on),
                "children": list(spec.children),
                "job_id": job_id,
                "process_id": process_id_for(wf.queue, job_id),
                "queue_name": spec.queue_name,
            }
        )
    try:
        roots = stored.create_run(
            store,
            run_id=run_id,
            name=wf.name,
            queue=wf.queue,
            module=wf.module,
            dag=wf.snapshot(),
            context=stored_context,
            steps=steps,
        )
    except (DBAPIError, SQLAlchemyError) as exc:
        if not is_transient(exc):
            raise
        raise _unavailable(exc, f"starting a {wf.name} run") from exc
    send(roots)
    return WorkflowRun(run_id, wf.name)


def _warn_if_large(context: dict[str, Any], workflow: str, threshold: int) -> None:
    """Warn about a context above ``threshold`` bytes: every step and page reads it whole."""
    size = len(json.dumps(context, ensure_ascii=False).encode("utf-8"))
    if size > threshold:
        _log.warning(
            "the context of a %s run takes %s bytes: every step and every page of the run "
            "reads it whole; pass ids, not data (warned above context_warning_bytes=%s)",
            workflow,
            f"{size:,}",
            f"{threshold:,}",
        )


def send(dispatches: Iterable[Dispatch]) -> None:
    """Hand steps to their queues; a step that cannot be sent is found again by :func:`recover`."""
    for dispatch in dispatches:
        sender = sender_for(dispatch.system)
        if sender is None:
            _log.error(
                "step %s of workflow run %s stays queued: the %s integration is not installed "
                "in this process",
                dispatch.step,
                dispatch.run_id,
                dispatch.system,
            )
            continue
        try:
            sender(dispatch)
        except Exception as exc:
            runtime.report_internal_error(exc, f"sending step {dispatch.step} to {dispatch.system}")


# -- running one step (in the worker) ------------------------------------------------------


def execute_step(system: str, workflow: str, run_id: str, step: str, job_id: str) -> None:
    """Run one step of a run, as the queue's step task: take it, run it, store its end.

    Returns None whatever the step did: its outcome is in the database, and the
    queue's own retries must never run a step the workflow retries itself.

    Raises:
        DatabaseUnavailableError: the step could not be taken (the queue may
            deliver it again; otherwise the reaper sends it again).
    """
    run = uuid.UUID(run_id)
    store = _store()
    worker = {"host": socket.gethostname(), "pid": os.getpid(), "job_system": system}
    claimed_at = datetime.now(timezone.utc)
    try:
        claim = step_writes.claim(store, run, step, worker, claimed_at)
    except Exception as exc:  # the driver's own errors: the hot path bypasses SQLAlchemy
        if not is_transient(exc):
            raise
        raise _unavailable(exc, f"taking step {step} of workflow run {run}") from exc
    if claim is None:
        return  # a second delivery, a cancelled run: nothing to do
    wf = _find(workflow, claim.module)
    spec = wf.steps.get(step) if wf is not None else None
    if spec is None:
        message = (
            f"workflow {workflow!r} has no step {step!r} in this worker: import the module "
            "that declares it where the worker starts"
        )
        _store_end(
            store,
            run,
            step,
            claim.attempt,
            Outcome(Status.FAILED.value, None, ("flow_tracker.UsageError", message)),
        )
        return
    _run_step(system, store, run, spec, claim, job_id, workflow, claimed_at)


def _find(workflow: str, module: str | None) -> Workflow | None:
    """The workflow by name, importing the module that declared it if it is not known here."""
    found = find(workflow)
    if found is None and module and module != "__main__":
        try:
            importlib.import_module(module)
        except Exception as exc:
            _log.error("cannot import %s, which declares workflow %s: %s", module, workflow, exc)
            return None
        found = find(workflow)
    return found


def _run_step(
    system: str,
    store: Store,
    run: uuid.UUID,
    spec: StepSpec,
    claim: step_writes.Taken,
    job_id: str,
    workflow: str,
    claimed_at: datetime,
) -> None:
    from flow_tracker.integrations.jobs import finish_job, start_job

    # The claim stored the step's process as running, and the end is stored with
    # the step's: the tracker need not wait for the database at either end, and
    # its rows say the same start and end (one duration for the step, everywhere).
    tracker = start_job(
        job_system=system,
        job_id=job_id,
        name=f"{workflow}.{spec.name}",
        queue=claim.queue_name,
        attempt=claim.attempt,
        category=CATEGORY,
        durable=False,
        started_at=claimed_at.timestamp(),
    )
    try:
        outcome = _call(spec, claim)
    except (KeyboardInterrupt, SystemExit) as stop:
        # The worker is stopping under the step: it is not the step's failure. Its
        # tracker stops heartbeating, so the reaper finds it lost and sends it again
        # (as many times as max_lost allows), as if the worker had been killed.
        finish_job(tracker, Status.LOST, stop, wait=False)
        raise
    ended, status, exc, ended_at = _store_end(store, run, spec.name, claim.attempt, outcome)
    if ended is None:
        # The end could not be stored: the step is recovered as a lost one once the
        # database is back (its tracker says so), and runs again (up to max_lost).
        finish_job(tracker, Status.LOST, EndNotStored("its end could not be stored"), wait=False)
        return
    if status == Status.RETRYING.value:
        # The next attempt may start in another worker at once: this attempt's
        # records are stored first, so that they cannot land after the next one's.
        finish_job(tracker, Status.RETRYING, exc, finished_at=ended_at)
        send(ended.dispatches)
        return
    send(ended.dispatches)
    finish_job(tracker, Status(status), exc, wait=False, finished_at=ended_at)


class Outcome(NamedTuple):
    """How an attempt of a step ended, as its end is stored."""

    status: str
    result: Any = None
    error: tuple[str, str] | None = None
    retry_in: float | None = None
    exc: BaseException | None = None


def _call(spec: StepSpec, claim: step_writes.Taken) -> Outcome:
    """Call the step's function and say how the attempt ended.

    Whatever the function raises ends the attempt (failed, or retrying per the
    step's rules) - an ``Exception`` or any other ``BaseException`` a queue uses
    to stop a job (Dramatiq's time limit, ``asyncio.CancelledError``) - except
    ``KeyboardInterrupt`` and ``SystemExit``, which stop the worker, not the step.
    A result that cannot be stored (not JSON, too deep, too large) fails it.
    An ``async def`` step runs to its end on an event loop of its own (a worker's
    thread runs none).
    """
    try:
        value = spec.fn(claim.context, **{p: claim.parents.get(p) for p in spec.depends_on})
        if inspect.iscoroutine(value):
            value = asyncio.run(value)
    except Skipped:
        return Outcome(Status.SKIPPED.value)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        cls, message, _trace = describe_error(exc)
        error = (cls, redact_text(clean_text(message)))
        if isinstance(exc, spec.retry_on) and claim.attempt <= spec.retries:
            return Outcome(
                Status.RETRYING.value, None, error, spec.delay_before(claim.attempt), exc
            )
        return Outcome(Status.FAILED.value, None, error, None, exc)
    try:
        limit = config.current().max_result_bytes
        result = as_json(value, f"the result of step {spec.name!r}", limit)
    except Exception as exc:  # UsageError, or anything else: the step fails, it never hangs
        cls, message, _trace = describe_error(exc)
        if isinstance(exc, UsageError):
            cls = "flow_tracker.UsageError"
        return Outcome(Status.FAILED.value, None, (cls, clean_text(message)), None, exc)
    return Outcome(Status.COMPLETED.value, result)


def _store_end(
    store: Store, run: uuid.UUID, step: str, attempt: int, outcome: Outcome
) -> tuple[Ended | None, str, BaseException | None, float]:
    """Store the step's end, trying again while the database is away (for a while).

    An end the database refuses for what it holds (a value PostgreSQL cannot
    store, a constraint) is not tried again as it is: the step fails with the
    database's error instead, once. Trying it again would fail the same way, and
    giving it up as lost would run the step again and again.

    Returns what to send next (the children it made ready, or its own retry) or
    None when the end could not be stored; the status and exception stored, and
    the time stored as its end (epoch seconds).
    """
    deadline = time.monotonic() + END_RETRY_SECONDS
    pause = 0.05
    refused = False
    while True:
        now = datetime.now(timezone.utc)
        retry_at = None if outcome.retry_in is None else now + timedelta(seconds=outcome.retry_in)
        try:
            done = step_writes.end(
                store,
                run,
                step,
                attempt,
                outcome.status,
                now=now,
                result=outcome.result,
                error=outcome.error,
                retry_at=retry_at,
            )
            break
        except Exception as exc:
            if is_transient(exc):
                if time.monotonic() + pause > deadline:
                    runtime.report_internal_error(exc, f"storing the end of step {step}")
                    return None, outcome.status, outcome.exc, now.timestamp()
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            runtime.report_internal_error(exc, f"storing the end of step {step}")
            if refused:
                return None, outcome.status, outcome.exc, now.timestamp()
            refused = True
            message = f"the database refused to store this step's end: {error_line(exc)}"
            outcome = Outcome(
                Status.FAILED.value,
                None,
                (describe_error(exc)[0], clean_text(message)),
                None,
                EndNotStored(message),
            )
    try:
        ended = _next(store, run, step, outcome.status, done, outcome.retry_in)
    except Exception as exc:  # stored: whatever follows is the reaper's to finish
        runtime.report_internal_error(exc, f"after the end of step {step}")
        ended = stored.NOTHING
    return ended, outcome.status, outcome.exc, now.timestamp()


def _next(
    store: Store,
    run: uuid.UUID,
    step: str,
    status: str,
    done: step_writes.StepEnd,
    retry_in: float | None,
) -> Ended:
    """The steps to send after an end; the run's own end when it had no active step left."""
    if not done.stored or done.workflow is None or done.queue is None:
        return stored.NOTHING
    if status == Status.RETRYING.value:
        if done.run_status != Status.RUNNING.value:
            return stored.NOTHING
        again = Dispatch(
            done.queue,
            done.workflow,
            run,
            step,
            done.job_id or step_job_id(run, step),
            done.queue_name or "",
            retry_in or 0.0,
            False,
        )
        return Ended([again], None)
    ended = None
    if done.run_status == Status.RUNNING.value and done.active <= 0:
        try:
            ended = stored.finish_run(store, run)
        except Exception as exc:  # the reaper ends it (a run with no active step left)
            runtime.report_internal_error(exc, f"ending workflow run {run}")
    if ended is not None:
        notify_ended(run)
    ready = [Dispatch(done.queue, done.workflow, run, *r) for r in done.ready]
    return Ended(ready, ended)


# -- recovery (called by the reaper) ---------------------------------------------------------


def recover(store: Store, lost_after: float) -> list[Dispatch]:
    """Send again the steps whose worker died or whose message was lost; return them.

    A step whose process the reaper marked lost is queued again on its own row,
    up to ``max_lost`` times (then it fails: a poison pill). A step waiting to
    retry ``lost_after`` seconds past its time lost its delayed message: it is
    sent again (a duplicate finds it taken and stands down).
    """
    settings = config.current()
    sent: list[Dispatch] = []
    for row in stored.lost_steps(store):
        ended = stored.requeue_lost_step(
            store,
            uuid.UUID(str(row.run_id)),
            row.name,
            uuid.UUID(str(row.process_id)),
            settings.max_lost,
            "its worker was lost; the workflow enqueued the step again",
        )
        send(ended.dispatches)
        sent += ended.dispatches
    overdue = stored.overdue_retries(store, lost_after)
    send(overdue)
    for run_id in stored.stalled_runs(store):
        stored.finish_run(store, run_id)
    return sent + overdue
