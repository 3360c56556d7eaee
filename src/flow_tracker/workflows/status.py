"""What a workflow run looks like from outside: its status, its steps, and a handle to wait on."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flow_tracker import runtime
from flow_tracker.errors import NotFoundError, UsageError
from flow_tracker.status import RUN_FINISHED_STATES, STEP_DONE_STATES, StepState
from flow_tracker.store import workflows as stored
from flow_tracker.store.engine import Store
from flow_tracker.store.workflows import DagShape, run_status
from flow_tracker.workflows.database import workflow_store

# Plain strings (a run's status is read as one): the run states that end it.
RUN_FINISHED = frozenset(s.value for s in RUN_FINISHED_STATES)
DONE = frozenset(s.value for s in STEP_DONE_STATES)

# Runs waited on in this interpreter: woken at once when a run ends here (the thread
# pool's runs), instead of at the next poll of the database.
_waiting: dict[uuid.UUID, threading.Event] = {}
_waiting_lock = threading.Lock()


def notify_ended(run_id: uuid.UUID) -> None:
    """Wake whoever waits on ``run_id`` in this interpreter (it ended here)."""
    with _waiting_lock:
        event = _waiting.get(run_id)
    if event is not None:
        event.set()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def step_duration_ms(started_at: datetime | None, finished_at: datetime | None) -> float | None:
    """A step's duration, in ms: the one definition of it.

    The time its last attempt ran: from the moment a worker took it (the claim
    that made it running) to the moment its end was stored, both stamped by the
    worker in the transactions that store them. Earlier attempts, the wait in the
    queue and the wait for a retry are not in it; None until the step has ended.
    The run page, ``flow-tracker workflows show`` and the critical path use it;
    the analytics' percentiles read the step's process row, whose end statement
    stores this same duration.
    """
    if started_at is None or finished_at is None:
        return None
    # Rounded to the microsecond the stamps carry: a float such as
    # 238.25199999999998 says no more and reads badly in the JSON API.
    return round((finished_at - started_at).total_seconds() * 1000.0, 3)


@dataclass(frozen=True, slots=True)
class StepStatus:
    """One step of a run, as stored."""

    name: str
    status: str
    """``pending``, ``queued``, ``running``, ``retrying``, ``completed``, ``failed``,
    ``lost``, ``cancelled``, ``skipped`` or ``resolved``."""
    attempts: int
    result: Any
    error: str | None
    """``ErrorClass: message`` of the last failed attempt."""
    process_id: uuid.UUID | None
    """The step's process (its flows, logs and history); None until it is first queued."""
    depends_on: list[str]
    blocked_by: str | None = None
    """For a pending step: the failed step upstream that keeps it from running."""
    next_attempt_at: datetime | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def duration_ms(self) -> float | None:
        """How long its last attempt ran, once it ended (see :func:`step_duration_ms`)."""
        return step_duration_ms(self.started_at, self.finished_at)

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready values."""
        return {
            "name": self.name,
            "status": self.status,
            "attempts": self.attempts,
            "result": self.result,
            "error": self.error,
            "process_id": None if self.process_id is None else str(self.process_id),
            "depends_on": list(self.depends_on),
            "blocked_by": self.blocked_by,
            "next_attempt_at": _iso(self.next_attempt_at),
            "queued_at": _iso(self.queued_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True)
class WorkflowStatus:
    """A run: its status, its steps (in declaration order) and what it was started with."""

    id: uuid.UUID
    name: str
    queue: str
    status: str
    """``running``, ``completed``, ``failed`` or ``cancelled``."""
    steps: dict[str, StepStatus]
    context: Any
    failed_step: str | None
    """The root cause of a failed run: the step that failed first."""
    created_at: datetime
    finished_at: datetime | None
    namespace: str = "default"
    version: str = "1"
    """The namespace and version of the definition the run was started with."""
    tags: dict[str, str] = field(default_factory=dict)
    """The labels it was started with (``tags=`` of :func:`flow_tracker.start_workflow`)."""
    dag: dict[str, Any] = field(repr=False, default_factory=dict)
    """The DAG the run was started with. Shared by every read of the run in this
    process (it never changes), as are the steps' ``depends_on`` lists: read them only."""

    @property
    def finished(self) -> bool:
        """True once the run completed, failed or was cancelled."""
        return self.status in RUN_FINISHED

    def to_dict(self, steps: Iterable[str] | None = None) -> dict[str, Any]:
        """As JSON-ready values (only ``steps`` when given, in the run's order)."""
        chosen = self.steps.values()
        if steps is not None:
            wanted = set(steps)
            chosen = [s for s in self.steps.values() if s.name in wanted]  # type: ignore[assignment]
        return {
            "id": str(self.id),
            "name": self.name,
            "namespace": self.namespace,
            "version": self.version,
            "tags": dict(self.tags),
            "queue": self.queue,
            "status": self.status,
            "failed_step": self.failed_step,
            "context": self.context,
            "created_at": _iso(self.created_at),
            "finished_at": _iso(self.finished_at),
            "steps": [step.to_dict() for step in chosen],
        }


def explain(run: WorkflowStatus, step: StepStatus) -> str:
    """Why a step is where it is, in a few words (pages and the CLI)."""
    if step.status == StepState.PENDING.value:
        if step.blocked_by:
            return f"blocked: upstream {step.blocked_by} failed"
        waiting = [
            p for p in step.depends_on if run.steps.get(p) and run.steps[p].status not in DONE
        ]
        return f"waiting for {', '.join(waiting or step.depends_on)}"
    if step.status == StepState.RETRYING.value:
        retries = next(
            (s.get("retries", 0) for s in run.dag.get("steps", []) if s.get("name") == step.name), 0
        )
        when = f" at {step.next_attempt_at:%H:%M:%S}" if step.next_attempt_at else ""
        return f"{_timed_out(step)}retry {step.attempts} of {retries}{when}"
    if step.status == StepState.QUEUED.value:
        return "queued: waiting for a worker"
    if step.status == StepState.RUNNING.value:
        return f"running, attempt {step.attempts}"
    if step.status == StepState.LOST.value:
        return "its worker was lost: the reaper will send it again"
    if step.status == StepState.CANCELLED.value:
        return "cancelled before it started"
    if step.status == StepState.RESOLVED.value:
        return "resolved by hand"
    if step.status == StepState.FAILED.value:
        why = "the root cause" if run.failed_step == step.name else "failed"
        return f"{_timed_out(step)}{why}"
    return ""


def _timed_out(step: StepStatus) -> str:
    """A hint for a step whose last attempt ran past its timeout (StepTimeout)."""
    return "timed out; " if (step.error or "").startswith("flow_tracker.StepTimeout:") else ""


def build_status(
    run: Any, shape: DagShape, rows: list[Any], lost: set[str] | None = None
) -> WorkflowStatus:
    """A :class:`WorkflowStatus` from the stored run, its DAG and its step rows.

    ``lost``: active steps whose process the reaper marked lost (shown as lost
    until they are queued again).
    """
    lost = lost or set()
    parents = shape.parents
    by_name = {row.name: row for row in rows}
    statuses = {row.name: str(row.status) for row in rows}
    for name in lost & statuses.keys():
        statuses[name] = StepState.LOST.value
    retrying = StepState.RETRYING.value
    steps: dict[str, StepStatus] = {}
    order = shape.order
    known = set(order)
    for name in order + sorted(n for n in by_name if n not in known):
        row = by_name.get(name)
        if row is None:
            continue
        status = statuses[name]
        process_id = row.process_id
        steps[name] = StepStatus(
            name,
            status,
            int(row.attempts or 0),
            row.result,
            f"{row.error_class}: {row.error_message}" if row.error_class else None,
            None if process_id is None or row.queued_at is None else _uuid(process_id),
            parents.get(name, []),
            _blocked_by(name, parents, statuses) if status == StepState.PENDING.value else None,
            row.next_attempt_at if status == retrying else None,
            row.queued_at,
            row.started_at,
            row.finished_at,
        )
    return WorkflowStatus(
        id=uuid.UUID(str(run.id)),
        name=run.name,
        queue=run.queue,
        status=run.status,
        steps=steps,
        context=run.context,
        failed_step=run.failed_step,
        created_at=run.created_at,
        finished_at=run.finished_at,
        namespace=getattr(run, "namespace", None) or "default",
        version=getattr(run, "version", None) or "1",
        tags=dict(getattr(run, "tags", None) or {}),
        dag=shape.dag,
    )


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _blocked_by(name: str, parents: dict[str, list[str]], statuses: dict[str, str]) -> str | None:
    """The nearest failed step upstream of ``name`` (breadth first), if any."""
    seen: set[str] = set()
    frontier = list(parents.get(name, ()))
    while frontier:
        following: list[str] = []
        for parent in frontier:
            if parent in seen:
                continue
            seen.add(parent)
            if statuses.get(parent) in (StepState.FAILED.value, StepState.LOST.value):
                return parent
            if statuses.get(parent) not in DONE:
                following += parents.get(parent, ())
        frontier = following
    return None


def as_run_id(run_id: uuid.UUID | str) -> uuid.UUID:
    """``run_id`` as a UUID; a clear error when it is not one."""
    if isinstance(run_id, uuid.UUID):
        return run_id
    try:
        return uuid.UUID(str(run_id))
    except ValueError:
        raise UsageError(f"{run_id!r} is not a workflow run id") from None


def get_workflow(
    run_id: uuid.UUID | str, *, store: Store | None = None, preview_over: int | None = None
) -> WorkflowStatus:
    """The run and each of its steps, as stored now.

    Args:
        run_id: the run's id (its process id).
        store: the database to read (default: the configured one; the dashboard's own).
        preview_over: read a context or result whose JSON is longer than this many
            characters as a preview (``{"_truncated": true, "original_size": ...,
            "preview": ...}``), as the dashboard does; None (default) reads them whole.

    Raises:
        NotFoundError: no run has this id.
    """
    return read_status(run_id, store, results=True, preview_over=preview_over)


def read_status(
    run_id: uuid.UUID | str,
    store: Store | None,
    *,
    results: bool,
    preview_over: int | None = None,
) -> WorkflowStatus:
    """The run as stored (``results``: with its steps' results); NotFoundError if none."""
    found = stored.read_run(
        store or workflow_store(), as_run_id(run_id), results=results, preview_over=preview_over
    )
    if found is None:
        raise NotFoundError(f"no workflow run {run_id}")
    return build_status(*found)


class WorkflowRun:
    """A started run: its id, and :meth:`wait` for its end."""

    def __init__(self, run_id: uuid.UUID, name: str) -> None:
        self.id = run_id
        self.name = name

    def __repr__(self) -> str:
        return f"<WorkflowRun {self.name} {self.id}>"

    def status(self) -> WorkflowStatus:
        """The run as stored now."""
        return get_workflow(self.id)

    def wait(self, timeout: float | None = None) -> WorkflowStatus:
        """Wait until the run has completed, failed or been cancelled; return its status.

        A failed run counts as finished here, although :func:`retry_step` or
        :func:`resolve_step` may reopen it.

        Raises:
            TimeoutError: still running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        store = runtime.store()
        with _waiting_lock:
            ended = _waiting.setdefault(self.id, threading.Event())
        try:
            while True:
                status = run_status(store, self.id)
                if status in RUN_FINISHED:
                    return get_workflow(self.id)
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"workflow run {self.id} ({self.name}) is still {status} "
                        f"after {timeout:g} s"
                    )
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ended.wait(pause if left is None else min(pause, left))
                ended.clear()
                pause = min(pause * 1.5, 0.25)
        finally:
            with _waiting_lock:
                _waiting.pop(self.id, None)
