"""Read-side records: what :func:`flow_tracker.get_process` and friends return.

Plain frozen dataclasses, built from database rows by :mod:`flow_tracker.store.queries`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flow_tracker.status import Status


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    """An exception as stored: its class, message and formatted traceback."""

    type: str
    message: str
    traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the error as plain values."""
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


@dataclasses.dataclass(frozen=True)
class LogEntryRecord:
    """One stored log entry."""

    id: uuid.UUID
    process_id: uuid.UUID
    flow_id: uuid.UUID | None
    level: str
    message: str
    data: Any
    created_at: datetime
    position: int

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as JSON-ready values."""
        return {
            "id": str(self.id),
            "flow_id": str(self.flow_id) if self.flow_id else None,
            "level": self.level,
            "message": self.message,
            "data": self.data,
            "created_at": self.created_at.isoformat(),
            "position": self.position,
        }


@dataclasses.dataclass(frozen=True)
class FlowRecord:
    """One stored flow, with its child flows and its own log entries in order."""

    id: uuid.UUID
    process_id: uuid.UUID
    parent_id: uuid.UUID | None
    name: str
    status: Status
    metadata: dict[str, Any]
    error: ErrorInfo | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None
    attempt: int
    position: int
    depth: int
    children: list[FlowRecord] = dataclasses.field(default_factory=list)
    logs: list[LogEntryRecord] = dataclasses.field(default_factory=list)

    def walk(self) -> Iterator[FlowRecord]:
        """Yield this flow and every flow below it, depth first, in order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        """Return the flow and its subtree as JSON-ready values."""
        return {
            "id": str(self.id),
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "name": self.name,
            "status": self.status.value,
            "metadata": self.metadata,
            "error": self.error.to_dict() if self.error else None,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_ms": self.duration_ms,
            "attempt": self.attempt,
            "position": self.position,
            "children": [c.to_dict() for c in self.children],
            "logs": [entry.to_dict() for entry in self.logs],
        }


@dataclasses.dataclass(frozen=True)
class Transition:
    """One status change of a process: ``queued``, ``running``, ``retrying``, ``lost``...

    ``requeued`` marks the moment a lost or failed run was enqueued again (its
    ``reason`` names the new process); it is never a process's own status.
    """

    status: str
    at: datetime
    attempt: int | None
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return the change as JSON-ready values."""
        return {
            "status": self.status,
            "at": self.at.isoformat(),
            "attempt": self.attempt,
            "reason": self.reason,
        }


@dataclasses.dataclass(frozen=True)
class ProcessRecord:
    """One stored process. ``flows`` and ``logs`` are filled by :func:`get_process` only.

    ``flows`` holds the top-level flows (each with its subtree); ``logs`` holds the
    entries written on the process itself, outside any flow.
    """

    id: uuid.UUID
    name: str
    category: str
    status: Status
    metadata: dict[str, Any]
    error: ErrorInfo | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    progress_current: float
    progress_total: float
    job_system: str | None
    job_id: str | None
    queue: str | None
    attempt: int
    parent_process_id: uuid.UUID | None
    host: str | None
    pid: int | None
    heartbeat_at: datetime | None
    dropped_logs: int
    job_args: Any = None
    requeued_from_id: uuid.UUID | None = None
    """The lost or failed process this run re-enqueued (:func:`flow_tracker.requeue`)."""
    lost_count: int = 0
    """How many times this job (and the runs it was requeued from) was lost."""
    flows: list[FlowRecord] = dataclasses.field(default_factory=list)
    logs: list[LogEntryRecord] = dataclasses.field(default_factory=list)
    history: list[Transition] = dataclasses.field(default_factory=list)
    """Every status change, oldest first (filled by :func:`get_process` only)."""

    @property
    def queue_wait_ms(self) -> float | None:
        """How long the job waited in its queue before its first attempt started, in ms.

        ``started_at`` is the latest attempt's start: for a retried job, ``started_at
        - queued_at`` would also count the earlier attempts' runs. The first start is
        in the state history (filled by ``get_process``).
        """
        first = next((t.at for t in self.history if t.status == Status.RUNNING.value), None)
        return queue_wait_ms(self, first)

    def all_flows(self) -> Iterator[FlowRecord]:
        """Yield every flow of the process, depth first, in order."""
        for flow in self.flows:
            yield from flow.walk()

    def all_logs(self) -> list[LogEntryRecord]:
        """Every log entry of the process, flows included, in the order written."""
        entries = list(self.logs)
        for flow in self.all_flows():
            entries.extend(flow.logs)
        return sorted(entries, key=lambda e: e.position)

    def to_dict(self, *, include_tree: bool = True) -> dict[str, Any]:
        """Return the process as JSON-ready values (with its flows and logs by default)."""
        out: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "category": self.category,
            "status": self.status.value,
            "metadata": self.metadata,
            "error": self.error.to_dict() if self.error else None,
            "created_at": self.created_at.isoformat(),
            "queued_at": _iso(self.queued_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration_ms": self.duration_ms,
            "progress": {"current": self.progress_current, "total": self.progress_total},
            "job_system": self.job_system,
            "job_id": self.job_id,
            "queue": self.queue,
            "attempt": self.attempt,
            "parent_process_id": str(self.parent_process_id) if self.parent_process_id else None,
            "host": self.host,
            "pid": self.pid,
            "heartbeat_at": _iso(self.heartbeat_at),
            "dropped_logs": self.dropped_logs,
            "job_args": self.job_args,
            "requeued_from_id": str(self.requeued_from_id) if self.requeued_from_id else None,
            "lost_count": self.lost_count,
        }
        if include_tree:
            out["flows"] = [f.to_dict() for f in self.flows]
            out["logs"] = [entry.to_dict() for entry in self.logs]
            out["history"] = [change.to_dict() for change in self.history]
        return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclasses.dataclass(frozen=True)
class Page:
    """One page of :func:`flow_tracker.list_processes`; pass ``next_cursor`` for the next."""

    items: list[ProcessRecord]
    next_cursor: str | None

    def __iter__(self) -> Iterator[ProcessRecord]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def queue_wait_ms(process: ProcessRecord, first_start: datetime | None) -> float | None:
    """How long ``process`` waited in its queue before its first attempt started, in ms.

    ``first_start`` is when its first attempt started (from its state history);
    without one, a first attempt's ``started_at`` is that time. None when the
    process was never queued, or the start of its first attempt is unknown.
    """
    if process.queued_at is None:
        return None
    first = first_start
    if first is None and process.attempt <= 1:
        first = process.started_at
    if first is None:
        return None
    return max(0.0, (first - process.queued_at).total_seconds() * 1000.0)
