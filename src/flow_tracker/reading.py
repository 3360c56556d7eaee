"""Public reading functions: processes, statuses, cleanup, against the configured database.

Each one first waits briefly for this interpreter's own buffered events to be
stored, so that a process reads back what it has just recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from flow_tracker import config, runtime
from flow_tracker.records import Page, ProcessRecord
from flow_tracker.status import BatchStatus, JobStatus
from flow_tracker.store import queries

READ_FLUSH_TIMEOUT_S = 2.0


def _store_after_flush() -> Any:
    runtime.flush(READ_FLUSH_TIMEOUT_S)
    return runtime.store()


def get_process(process_id: uuid.UUID | str) -> ProcessRecord | None:
    """The process with this id, its flow tree and logs; None when there is none."""
    return queries.get_process(_store_after_flush(), process_id)


def list_processes(
    *,
    status: str | Iterable[str] | None = None,
    category: str | Iterable[str] | None = None,
    name: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    metadata: Mapping[str, Any] | None = None,
    search: str | None = None,
    job_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    order: str = "newest",
) -> Page:
    """Processes newest first, with filters.

    See :func:`flow_tracker.store.queries.list_processes` for the filters.
    """
    return queries.list_processes(
        _store_after_flush(),
        status=status,
        category=category,
        name=name,
        since=since,
        until=until,
        metadata=metadata,
        search=search,
        job_id=job_id,
        limit=limit,
        cursor=cursor,
        order=order,
    )


def get_status(process_or_job_id: uuid.UUID | str) -> JobStatus | None:
    """The status of a process by its id, or of a job by the queue's job id; None if unknown."""
    row = queries.find_process_row(_store_after_flush(), process_or_job_id)
    return None if row is None else JobStatus(queries.process_from_row(row))


def batch_status(ids: Iterable[uuid.UUID | str]) -> BatchStatus:
    """The combined status of several processes or jobs (unknown ids count as queued)."""
    store = _store_after_flush()
    members: dict[str, JobStatus] = {}
    missing: list[str] = []
    for item in ids:
        key = str(item)
        row = queries.find_process_row(store, item)
        if row is None:
            missing.append(key)
        else:
            members[key] = JobStatus(queries.process_from_row(row))
    return BatchStatus(members, missing)


def cleanup(
    days: float | None = None,
    *,
    statuses: Sequence[str] | None = None,
    dry_run: bool = False,
) -> int:
    """Delete processes older than ``days`` (default: ``retention_days``) with their flows and logs.

    Queued, running and retrying processes are kept unless ``statuses`` names them.
    On PostgreSQL (whose log-entry and flow tables are partitioned by time), log
    entries and flows are kept by time: those older than the cut-off go with their
    partitions (a process still running loses its oldest ones), and those a deleted
    process wrote after the cut-off are no longer shown and go with their own
    partition later. With ``statuses``, the rows of the processes deleted go.

    Returns:
        How many processes were deleted (or, with ``dry_run``, would be).
    """
    store = _store_after_flush()
    age = config.current().retention_days if days is None else days
    if dry_run:
        return queries.count_for_cleanup(store, age, statuses)
    return queries.cleanup(store, age, statuses)
