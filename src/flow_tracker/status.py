"""Statuses of processes and flows, and the read-side view of a job's status.

:class:`JobStatus` is activejob-status's status object in Python: readable by
process id or by the queue's job id from any process, with progress as a
fraction and the process metadata behind ``status["key"]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flow_tracker.records import ProcessRecord


class Status(str, Enum):
    """The life-cycle states of a process.

    Flows use running, completed and failed, and end skipped, cancelled or lost
    with their process.
    """

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    LOST = "lost"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value

    @property
    def is_finished(self) -> bool:
        """True for the states a process does not leave on its own."""
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset(
    {Status.COMPLETED, Status.FAILED, Status.LOST, Status.CANCELLED, Status.SKIPPED}
)
UNFINISHED_STATUSES = frozenset({Status.QUEUED, Status.RUNNING, Status.RETRYING})


class RunState(str, Enum):
    """The states of a workflow run, as stored on its row and on its process.

    The one place they are spelled; the driver SQL of
    :mod:`flow_tracker.store.step_writes` writes the same words as literals.
    """

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class StepState(str, Enum):
    """The states of a workflow step: a process's own, plus ``pending`` and ``resolved``.

    A step is ``pending`` while it waits for its parents and ``resolved`` when a
    failed step was settled by hand. ``lost`` is never stored on a step's row: a
    status read shows it for an active step whose process the reaper marked lost.
    The driver SQL of :mod:`flow_tracker.store.step_writes` writes the same words
    as literals.
    """

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    LOST = "lost"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    RESOLVED = "resolved"

    def __str__(self) -> str:
        return self.value


RUN_FINISHED_STATES = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED})
#: Steps that hold their run open: queued, running, or waiting to retry.
STEP_ACTIVE_STATES = frozenset({StepState.QUEUED, StepState.RUNNING, StepState.RETRYING})
#: Steps whose children may go on: completed, skipped, or resolved by hand.
STEP_DONE_STATES = frozenset({StepState.COMPLETED, StepState.SKIPPED, StepState.RESOLVED})


class JobStatus:
    """The status of one tracked process or job, as last stored.

    Attributes:
        status: the :class:`Status`.
        current: progress done so far.
        total: progress to do (0 when unknown).
        record: the full :class:`~flow_tracker.records.ProcessRecord`.
    """

    __slots__ = ("current", "record", "status", "total")

    def __init__(self, record: ProcessRecord) -> None:
        self.record = record
        self.status = record.status
        self.current = record.progress_current
        self.total = record.progress_total

    @property
    def process_id(self) -> Any:
        """The process's UUID."""
        return self.record.id

    @property
    def job_id(self) -> str | None:
        """The queue's own job id, when the process is a queued job."""
        return self.record.job_id

    @property
    def progress(self) -> float:
        """Progress as a fraction from 0 to 1: 0 when the total is unknown.

        A completed process is at 1.0 whatever ``current`` and ``total`` say (a job
        may finish without counting its last items); those two keep the raw counts.
        """
        if self.status is Status.COMPLETED:
            return 1.0
        if self.total <= 0:
            return 0.0
        return max(0.0, min(1.0, self.current / self.total))

    @property
    def is_queued(self) -> bool:
        """True while the job waits in its queue."""
        return self.status is Status.QUEUED

    @property
    def is_running(self) -> bool:
        """True while the job runs (or waits for its next attempt)."""
        return self.status in (Status.RUNNING, Status.RETRYING)

    @property
    def is_completed(self) -> bool:
        """True once the job has completed."""
        return self.status is Status.COMPLETED

    @property
    def is_failed(self) -> bool:
        """True once the job has failed (or was lost)."""
        return self.status in (Status.FAILED, Status.LOST)

    def __getitem__(self, key: str) -> Any:
        return self.record.metadata[key]

    def get(self, key: str, default: Any = None) -> Any:
        """Return a metadata value, or ``default``."""
        return self.record.metadata.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """Return the status as plain JSON-ready values."""
        r = self.record
        return {
            "process_id": str(r.id),
            "name": r.name,
            "category": r.category,
            "status": self.status.value,
            "progress": self.progress,
            "current": self.current,
            "total": self.total,
            "job_id": r.job_id,
            "queue": r.queue,
            "attempt": r.attempt,
            "metadata": r.metadata,
            # The traceback is left out: a status is read often (a progress
            # endpoint); flow_tracker.get_process() has it.
            "error": {"type": r.error.type, "message": r.error.message} if r.error else None,
            "created_at": _iso(r.created_at),
            "started_at": _iso(r.started_at),
            "finished_at": _iso(r.finished_at),
            "duration_ms": r.duration_ms,
        }

    def to_json(self) -> str:
        """Return :meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def __repr__(self) -> str:
        return f"<JobStatus {self.record.name} {self.status.value} {self.progress:.0%}>"


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def combine_statuses(statuses: Iterable[Status]) -> Status:
    """The status of a batch of jobs.

    Queued if all are queued, failed if any failed, completed if all completed,
    else running.
    """
    items = list(statuses)
    if not items or all(s is Status.QUEUED for s in items):
        return Status.QUEUED
    if any(s in (Status.FAILED, Status.LOST) for s in items):
        return Status.FAILED
    if all(s in (Status.COMPLETED, Status.SKIPPED) for s in items):
        return Status.COMPLETED
    return Status.RUNNING


class BatchStatus:
    """The combined status of several jobs (activejob-status's batches).

    Ids that are not (yet) recorded count as queued.
    """

    __slots__ = ("members", "missing", "status")

    def __init__(self, members: Mapping[str, JobStatus], missing: list[str]) -> None:
        self.members = dict(members)
        self.missing = list(missing)
        statuses = [m.status for m in self.members.values()]
        statuses += [Status.QUEUED] * len(self.missing)
        self.status = combine_statuses(statuses)

    @property
    def progress(self) -> float:
        """Mean progress of the members, each as a fraction (missing ones count as 0)."""
        count = len(self.members) + len(self.missing)
        if count == 0:
            return 0.0
        return sum(m.progress for m in self.members.values()) / count

    @property
    def is_queued(self) -> bool:
        """True while every job waits in its queue."""
        return self.status is Status.QUEUED

    @property
    def is_running(self) -> bool:
        """True while some job runs and none failed."""
        return self.status is Status.RUNNING

    @property
    def is_completed(self) -> bool:
        """True once every job completed."""
        return self.status is Status.COMPLETED

    @property
    def is_failed(self) -> bool:
        """True once any job failed."""
        return self.status is Status.FAILED

    def to_dict(self) -> dict[str, Any]:
        """Return the batch status and each member's as plain values."""
        return {
            "status": self.status.value,
            "progress": self.progress,
            "members": {key: m.to_dict() for key, m in self.members.items()},
            "missing": self.missing,
        }

    def __repr__(self) -> str:
        return f"<BatchStatus {self.status.value} of {len(self.members) + len(self.missing)}>"
