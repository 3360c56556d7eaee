"""Runs built by hand, row by row, for the comparison tests: exact durations, statuses, logs.

A run is written straight into the tables (as the background writer would have
stored it), so that a test states each difference it checks instead of timing
real code.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import insert

from flow_tracker.ids import new_id
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import flows, log_entries, processes, transitions

T0 = (datetime.now(timezone.utc) - timedelta(days=1)).replace(microsecond=0)
SHIFT = 40  # each attempt's flows and logs are numbered from (attempt - 1) << 40 on


@dataclass
class F:
    """A flow to store: its name, duration, status, children and error."""

    name: str
    ms: float | None = 10.0
    status: str = "completed"
    children: list[F] = field(default_factory=list)
    error: tuple[str, str] | None = None
    attempt: int | None = None  # default: the run's attempt
    id: uuid.UUID = field(default_factory=new_id)


@dataclass
class L:
    """A log line to store; ``flow``: the flow it was written in (None: the process)."""

    message: str
    level: str = "info"
    flow: F | None = None


def build(
    store: Store,
    name: str = "nightly",
    *,
    status: str = "completed",
    start: datetime = T0,
    duration_ms: float | None = 1_000.0,
    flows_: list[F] | None = None,
    logs: list[L] | None = None,
    metadata: dict[str, Any] | None = None,
    attempt: int = 1,
    error: tuple[str, str] | None = None,
    queued_at: datetime | None = None,
    first_start: datetime | None = None,
    category: str = "jobs",
) -> uuid.UUID:
    """Store one run with its flows and logs; return its process id."""
    pid = new_id()
    finished = None if duration_ms is None else start + timedelta(milliseconds=duration_ms)
    positions = itertools.count((attempt - 1) << SHIFT)
    flow_rows: list[dict[str, Any]] = []

    # Depth first, in order, without recursion: a test nests flows past Python's limit.
    stack: list[tuple[F, F | None, int]] = [(f, None, 0) for f in reversed(flows_ or [])]
    while stack:
        item, parent, depth = stack.pop()
        flow_rows.append(
            {
                "id": item.id,
                "process_id": pid,
                "parent_id": None if parent is None else parent.id,
                "name": item.name,
                "status": item.status,
                "started_at": start,
                "finished_at": None if item.ms is None else start,
                "duration_ms": item.ms,
                "attempt": item.attempt or attempt,
                "position": next(positions),
                "depth": depth,
                "error_class": None if item.error is None else item.error[0],
                "error_message": None if item.error is None else item.error[1],
            }
        )
        stack.extend((child, item, depth + 1) for child in reversed(item.children))
    log_rows = [
        {
            "id": new_id(),
            "process_id": pid,
            "flow_id": None if line.flow is None else line.flow.id,
            "level": line.level,
            "message": line.message,
            "created_at": start,
            "position": next(positions),
        }
        for line in logs or []
    ]
    with store.engine.begin() as conn:
        conn.execute(
            insert(processes).values(
                id=pid,
                name=name,
                category=category,
                status=status,
                metadata=metadata or {},
                error_class=None if error is None else error[0],
                error_message=None if error is None else error[1],
                created_at=queued_at or start,
                queued_at=queued_at,
                started_at=start,
                finished_at=finished,
                updated_at=finished or start,
                duration_ms=duration_ms,
                attempt=attempt,
            )
        )
        if flow_rows:
            conn.execute(insert(flows), flow_rows)
        if log_rows:
            conn.execute(insert(log_entries), log_rows)
        if first_start is not None:
            conn.execute(
                insert(transitions).values(
                    id=new_id(), process_id=pid, status="running", at=first_start, attempt=1
                )
            )
    return pid


def at(hours: float) -> datetime:
    """``T0`` plus ``hours``."""
    return T0 + timedelta(hours=hours)
