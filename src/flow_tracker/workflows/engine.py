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
  done and stands down;
* the reply to a claim or an end lost (the connection cut after the server
  committed it): the try again finds the step changed, reads back that the
  change was its own (:func:`~flow_tracker.store.step_writes.claim_found`,
  :func:`~flow_tracker.store.step_writes.end_found`) and goes on as the reply
  would have told it, instead of standing down.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any, NamedTuple

from flow_tracker import config, delivery, job_systems, runtime
from flow_tracker.delivery import NOTHING_SENT, Delivery, backoff
from flow_tracker.errors import (
    FlowTrackerError,
    Skipped,
    StepTimeout,
    UsageError,
)
from flow_tracker.jobs import finish_job, start_job
from flow_tracker.redaction import clean_text, redact_text
from flow_tracker.retry_after import STEP_BACKOFF_MAX, RetryAfter
from flow_tracker.status import RunState, Status
from flow_tracker.store import outbox, step_writes
from flow_tracker.store import workflows as stored
from flow_tracker.store.engine import Store, error_line, is_transient
from flow_tracker.store.workflows import CATEGORY, Dispatch, Ended
from flow_tracker.tracker import describe_error
from flow_tracker.workflows import announce, timeouts
from flow_tracker.workflows.database import unavailable, workflow_store
from flow_tracker.workflows.definition import (
    THREADS,
    StepSpec,
    Workflow,
    declared,
    declared_versions,
    find,
    find_version,
)
from flow_tracker.workflows.definitions import ensure_recorded, record_declared_soon
from flow_tracker.workflows.status import notify_ended

_log = logging.getLogger("flow_tracker.workflows")
STEP_JOB_NAMESPACE = uuid.UUID("5f0e3b8a-2c4d-5e6f-9a1b-7c8d9e0f1a2b")
STEP_TASK_NAME = "flow_tracker.workflow_step"
# How often a queue delivers a step it could not take (the database away) before the
# reaper's recovery is left to send it again; each queue module's step task uses it.
DELIVERY_RETRIES = 10
RETRY_AFTER_CLASS = "flow_tracker.RetryAfter"
# How long a worker keeps trying to store a step's end while the database is away.
END_RETRY_SECONDS = 30.0

Sender = Callable[[Dispatch], None]


class EndNotStored(FlowTrackerError):
    """A step's end the database did not store: refused, or away past the retry window."""


def register_sender(system: str, send: Sender) -> None:
    """Make ``send`` hand this queue system's steps to its broker (its :class:`JobSystem`).

    A queue module registers its sender with the rest of its record through
    :func:`flow_tracker.job_systems.register`; this changes only the sender (the
    in-process pool, a test standing in for a worker).
    """
    job_systems.update(system, send_step=send)


def _on_register(system: job_systems.JobSystem) -> None:
    """A queue installed here: this process is a live worker of it.

    It delivers the outbox's requests of that queue (see :mod:`flow_tracker.delivery`),
    and records the workflow definitions it declares, in the background (an install
    never waits for the database), so pages can start them.
    """
    if system.send_step is None and system.requeue is None:
        return
    if system.name == THREADS:
        return  # the pool says so itself, when it first runs a step (threads.send)
    delivery.serve()
    if system.send_step is not None:
        record_declared_soon()


job_systems.on_register(_on_register)


def sender_here(system: str, workflow: str) -> Sender | None:
    """How this process sends a step of ``workflow`` on ``system``; None when it cannot.

    The in-process pool runs only steps of workflows declared here: anywhere else
    (a dashboard, a CLI) the step would fail with "no step in this worker".
    """
    if system == "threads" and find(workflow) is None:
        return None
    return sender_for(system)


def cannot_send(system: str, workflow: str) -> bool:
    """True when this process cannot send ``workflow``'s steps: they go to the outbox."""
    return sender_here(system, workflow) is None


def sending_systems() -> set[str]:
    """The queue systems (not the in-process pool) whose steps this process sends."""
    return {
        system.name
        for system in job_systems.registered()
        if system.send_step is not None and system.name != "threads"
    }


# Set once this process's pool has run a step (threads.send): only then does it deliver
# the outbox's requests for its `threads` workflows. A process that merely declares one
# (a Celery worker, a web app) polls nothing for it, as before the pool registered itself.
_pool_live = False


def pool_started() -> None:
    """The in-process pool ran its first step here: it now serves its workflows' requests."""
    global _pool_live
    _pool_live = True


def served_threads_workflows() -> set[str]:
    """The ``threads`` workflows whose steps this process's pool runs (declared here)."""
    if not _pool_live or job_systems.step_sender("threads") is None:
        return set()
    return {wf.name for wf in declared() if wf.queue == "threads"}


def sender_for(system: str) -> Sender | None:
    """How steps of ``system`` are sent in this interpreter, if its queue is installed here.

    The in-process pool (``threads``) registers itself when ``flow_tracker.workflows``
    is imported, so it is always there.
    """
    return job_systems.step_sender(system)


def step_job_id(run_id: uuid.UUID, step: str) -> str:
    """The job id of a step of a run: the same on every attempt, every retry and every worker."""
    return str(uuid.uuid5(STEP_JOB_NAMESPACE, f"{run_id}/{step}"))


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


# -- starting a run ---------------------------------------------------------------------


def warn_if_large(context: dict[str, Any], workflow: str, threshold: int) -> None:
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


def send(dispatches: Iterable[Dispatch]) -> Delivery:
    """Hand steps to their queues; what this process cannot send waits in the outbox.

    A step whose queue has no integration here, or whose broker refused it, is
    stored as an outbox request for a live worker of that queue (with the
    broker's error); one that cannot even be stored is found again by
    :func:`recover`. Returns what was sent and what waits.
    """
    delivery = NOTHING_SENT
    for dispatch in dispatches:
        sender = sender_here(dispatch.system, dispatch.workflow)
        error: str | None = None
        if sender is not None:
            try:
                sender(dispatch)
                delivery += Delivery(sent=1)
                continue
            except Exception as exc:
                error = error_line(exc)
                runtime.report_internal_error(
                    exc, f"sending step {dispatch.step} to {dispatch.system}"
                )
        delivery += Delivery(waiting=(dispatch.system,), error=error, waiting_count=1)
        try:
            store = runtime.store()
            store.ensure_schema()
            outbox.add_now(
                store,
                kind=outbox.STEP,
                job_system=dispatch.system,
                workflow=dispatch.workflow,
                target_id=dispatch.process_id(),
                payload=dispatch.to_payload(),
                error=error,
                due_in=dispatch.delay if error is None else max(dispatch.delay, backoff(1)),
            )
        except Exception as exc:  # the reaper finds the step (queued, no message) and sends it
            runtime.report_internal_error(exc, f"storing step {dispatch.step} in the outbox")
    return delivery


# -- running one step (in the worker) ------------------------------------------------------


def execute_step(
    system: str,
    workflow: str,
    run_id: str,
    step: str,
    job_id: str,
    *,
    claims_tried: list[datetime] | None = None,
) -> None:
    """Run one step of a run, as the queue's step task: take it, run it, store its end.

    Returns None whatever the step did: its outcome is in the database, and the
    queue's own retries must never run a step the workflow retries itself.

    ``claims_tried``: the moments of this worker's earlier tries to take the
    step, which failed with the database away; this try's is added to it. A try
    whose reply was lost may have taken the step: it is this worker's to run
    (see :func:`flow_tracker.store.step_writes.claim_found`).

    Raises:
        DatabaseUnavailableError: the step could not be taken (the queue may
            deliver it again; otherwise the reaper sends it again).
    """
    run = uuid.UUID(run_id)
    store = workflow_store()
    worker = {"host": socket.gethostname(), "pid": os.getpid(), "job_system": system}
    claimed_at = datetime.now(timezone.utc)
    tried = claims_tried if claims_tried is not None else []
    tried.append(claimed_at)
    try:
        claim = step_writes.claim(store, run, step, worker, claimed_at)
        if claim is None:
            # Not there to take: another delivery took it, or one of our own tries
            # did and its reply was lost (the write path tries a cut connection's
            # write once more at once; the pool tries again after an outage).
            found = step_writes.claim_found(store, run, step, worker, tried)
            if found is not None:
                claim, claimed_at = found
    except Exception as exc:  # the driver's own errors: the hot path bypasses SQLAlchemy
        if not is_transient(exc):
            raise
        raise unavailable(exc, f"taking step {step} of workflow run {run}") from exc
    if claim is None:
        return  # a second delivery, a cancelled run: nothing to do
    wf = _find(workflow, claim.module, claim.namespace, claim.version)
    spec = wf.steps.get(step) if wf is not None else None
    if spec is None:
        message = _not_here(workflow, step, claim.namespace, claim.version)
        _store_end(
            store,
            run,
            step,
            claim.attempt,
            Outcome(Status.FAILED.value, None, ("flow_tracker.UsageError", message)),
        )
        return
    _run_step(system, store, run, spec, claim, job_id, workflow, claimed_at)


def _find(workflow: str, module: str | None, namespace: str, version: str) -> Workflow | None:
    """The declaration a run was started with, importing its module if it is not known here.

    A worker resolves a step by the run's (namespace, name, version), exactly: the
    functions of another version never run a step of this one. A deploy that
    changes a workflow's steps declares a new version beside the old one, until
    the old one's runs have ended.
    """
    found = find_version(namespace, workflow, version)
    if found is None and module and module != "__main__":
        try:
            importlib.import_module(module)
        except Exception as exc:
            _log.error("cannot import %s, which declares workflow %s: %s", module, workflow, exc)
            return None
        found = find_version(namespace, workflow, version)
    if found is None:
        record_declared_soon()
    else:
        ensure_recorded(found)
    return found


def _not_here(workflow: str, step: str, namespace: str, version: str) -> str:
    """Why a worker cannot run a step: the workflow, or the run's version of it, is not here."""
    others = sorted(
        wf.version
        for wf in declared_versions()
        if wf.name == workflow and wf.namespace == namespace and wf.version != version
    )
    if others:
        return (
            f"workflow {namespace}/{workflow} version {version!r} is not declared in this worker "
            f"(it declares {', '.join(repr(v) for v in others)}): keep the version a run was "
            "started with declared beside the new one until its runs have ended"
        )
    return (
        f"workflow {workflow!r} has no step {step!r} in this worker: import the module "
        "that declares it where the worker starts"
    )


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
    deadline = timeouts.pool_deadline(
        system, spec, functools.partial(_end_at_deadline, store, run, spec, claim.attempt)
    )
    try:
        outcome = _call(spec, claim)
    except (KeyboardInterrupt, SystemExit) as stop:
        # The worker is stopping under the step: it is not the step's failure. Its
        # tracker stops heartbeating, so the reaper finds it lost and sends it again
        # (as many times as max_lost allows), as if the worker had been killed.
        late = deadline.settle() if deadline is not None else None
        if late is not None:
            finish_job(tracker, late.status, late.error, wait=False, finished_at=late.ended_at)
        else:
            finish_job(tracker, Status.LOST, stop, wait=False)
        raise
    late = deadline.settle() if deadline is not None else None
    if late is not None:
        # The pool ended this attempt at its deadline (timed out): what the function
        # returned since is not stored (the database would refuse it), and its
        # tracker ends as the stored end says, never "completed".
        finish_job(tracker, late.status, late.error, wait=False, finished_at=late.ended_at)
        return
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
    bound = STEP_BACKOFF_MAX.set(spec.retry.backoff_max)  # retry_after() reads the bound
    try:
        value = spec.fn(claim.context, **{p: claim.parents.get(p) for p in spec.depends_on})
        if inspect.iscoroutine(value):
            value = asyncio.run(value)
    except Skipped:
        return Outcome(Status.SKIPPED.value)
    except (KeyboardInterrupt, SystemExit):
        raise
    except RetryAfter as asked:
        return _asked_retry(spec, claim, asked)
    except BaseException as raised:
        exc = timeouts.as_step_timeout(raised, spec)  # a queue's time limit: StepTimeout
        cls, message, _trace = describe_error(exc)
        error = (cls, redact_text(clean_text(message)))
        delay = spec.retry.decide(exc, claim.attempt)
        if delay is not None:
            return Outcome(Status.RETRYING.value, None, error, delay, exc)
        return Outcome(Status.FAILED.value, None, error, None, exc)
    finally:
        STEP_BACKOFF_MAX.reset(bound)
    try:
        limit = config.current().max_result_bytes
        result = as_json(value, f"the result of step {spec.name!r}", limit)
    except Exception as exc:  # UsageError, or anything else: the step fails, it never hangs
        cls, message, _trace = describe_error(exc)
        if isinstance(exc, UsageError):
            cls = "flow_tracker.UsageError"
        return Outcome(Status.FAILED.value, None, (cls, clean_text(message)), None, exc)
    return Outcome(Status.COMPLETED.value, result)


def timed_out(spec: StepSpec, attempt: int) -> Outcome:
    """The end of an attempt that ran past the step's timeout: a failure like any other.

    It retries per the step's policy: :class:`StepTimeout` is an ``Exception``
    and a ``TimeoutError``, so the default ``retry_on`` counts it.
    """
    exc = StepTimeout(spec.timeout)
    error = (timeouts.STEP_TIMEOUT_CLASS, str(exc))
    delay = spec.retry.decide(exc, attempt)
    if delay is not None:
        return Outcome(Status.RETRYING.value, None, error, delay, exc)
    return Outcome(Status.FAILED.value, None, error, None, exc)


def _asked_retry(spec: StepSpec, claim: step_writes.Taken, asked: RetryAfter) -> Outcome:
    """The end of an attempt that raised :class:`RetryAfter`: a retry of the step's policy.

    It needs retries left but not ``retry_on`` (the step asked for it by name);
    its delay is bounded by ``backoff_max``, without jitter (a server said when).
    """
    reason = redact_text(clean_text(asked.reason))
    delay = spec.retry.decide(asked, claim.attempt)
    if delay is None:
        message = f"{reason}, but no retries are left (retries={spec.retry.retries})"
        return Outcome(Status.FAILED.value, None, (RETRY_AFTER_CLASS, message), None, asked)
    return Outcome(Status.RETRYING.value, None, (RETRY_AFTER_CLASS, reason), delay, asked)


def _end_at_deadline(
    store: Store, run: uuid.UUID, spec: StepSpec, attempt: int
) -> timeouts.TimedOut:
    """The pool's deadline passed: store the attempt's end as timed out, and go on from it."""
    outcome = timed_out(spec, attempt)
    ended, status, exc, ended_at = _store_end(store, run, spec.name, attempt, outcome)
    if ended is None:  # the database was away: the reaper finds the step lost
        return timeouts.TimedOut(Status.LOST, EndNotStored("its end could not be stored"), None)
    send(ended.dispatches)
    return timeouts.TimedOut(Status(status), exc or StepTimeout(spec.timeout or 0.0), ended_at)


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
    tried: list[tuple[datetime, str]] = []
    while True:
        now = datetime.now(timezone.utc)
        tried.append((now, outcome.status))
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
                retry_in=outcome.retry_in,  # the database adds it to its own clock
            )
            if not done.stored:
                # The attempt was ended by someone else (the pool's deadline), or by
                # one of our own tries whose reply was lost: then its retry or the
                # children it made ready are ours to send, as its reply would have said.
                done = step_writes.end_found(store, run, step, attempt, tried)
                now = done.stored_at or now
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
    if outcome.status == Status.RETRYING.value and ended.dispatches:
        announce.step_retrying(
            run,
            done.workflow,
            step,
            attempt=attempt,
            delay=outcome.retry_in,
            error=outcome.error,
        )
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
        if done.run_status != RunState.RUNNING.value:
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
    if done.run_status == RunState.RUNNING.value and done.active <= 0:
        try:
            ended = stored.finish_run(store, run)
        except Exception as exc:  # the reaper ends it (a run with no active step left)
            runtime.report_internal_error(exc, f"ending workflow run {run}")
    if ended is not None:
        # Announced first: whoever wakes from run.wait() finds the event handed over.
        announce.run_ended(store, run, ended)
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
    return recover_steps(store, lost_after)[0]


def recover_steps(store: Store, lost_after: float) -> tuple[list[Dispatch], Delivery]:
    """:func:`recover`, and what became of the steps' messages: sent, or waiting.

    A step this process cannot send (its queue's integration is not here, or its
    ``threads`` workflow is declared elsewhere) waits in the outbox for a worker
    that can: the reaper's report says so rather than "sent".
    """
    settings = config.current()
    sent: list[Dispatch] = []
    delivery = NOTHING_SENT
    for row in stored.lost_steps(store):
        ended = stored.requeue_lost_step(
            store,
            uuid.UUID(str(row.run_id)),
            row.name,
            uuid.UUID(str(row.process_id)),
            settings.max_lost,
            "its worker was lost; the workflow enqueued the step again",
            cannot_send,
        )
        announce.run_ended(store, uuid.UUID(str(row.run_id)), ended.run_status)
        if ended.held:
            for dispatch in ended.dispatches:
                delivery += Delivery(waiting=(dispatch.system,), waiting_count=1)
        else:
            delivery += send(ended.dispatches)
        sent += ended.dispatches
    overdue = stored.overdue_retries(store, lost_after)
    delivery += send(overdue)
    for run_id in stored.stalled_runs(store):
        announce.run_ended(store, run_id, stored.finish_run(store, run_id))
    return sent + overdue, delivery
