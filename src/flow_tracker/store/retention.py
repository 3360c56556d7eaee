"""Retention: deleting old processes with everything they wrote, and dropping old partitions.

:func:`cleanup` deletes in short batches (no lock held for long on a busy
database) and keeps its outcome in the audit log; on PostgreSQL's partitioned
tables it detaches and drops whole partitions older than the cutoff instead of
deleting their rows (see :mod:`flow_tracker.store.partitions`).
:func:`count_for_cleanup` says beforehand how many processes would go;
:func:`preview_cleanup` says it within a page's time on any size of database.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select

from flow_tracker.errors import UsageError
from flow_tracker.status import UNFINISHED_STATUSES, Status
from flow_tracker.store import audit
from flow_tracker.store.engine import Store, is_transient
from flow_tracker.store.schema import (
    flows,
    log_entries,
    processes,
    transitions,
    workflow_runs,
    workflow_steps,
)


def _cleanup_condition(
    days: float, statuses: Sequence[str] | None
) -> tuple[ColumnElement[bool], datetime]:
    cutoff = datetime.now(timezone.utc).timestamp() - days * 86_400
    cutoff_dt = datetime.fromtimestamp(cutoff, timezone.utc)
    if statuses:
        chosen: ColumnElement[bool] = processes.c.status.in_(list(statuses))
    else:
        # Unfinished processes are kept unless asked for: a long job is still running.
        chosen = processes.c.status.notin_([s.value for s in UNFINISHED_STATUSES])
    return and_(processes.c.created_at < cutoff_dt, chosen), cutoff_dt


def count_for_cleanup(store: Store, days: float, statuses: Sequence[str] | None = None) -> int:
    """How many processes :func:`cleanup` would delete.

    Counted from the indexes alone: everything older than the cutoff (the time
    index) minus the unfinished ones (the status index), not row by row.
    """
    return _preview(store, days, statuses, None).count


# A preview counts exactly up to this many processes (an index-only count of as many
# entries: ~10 ms); beyond, it says "more than" with the database's estimate.
PREVIEW_EXACT_UP_TO = 100_000


@dataclass(frozen=True)
class CleanupPreview:
    """How many processes a cleanup would delete, as a page can afford to count them."""

    count: int
    """The exact number, or (``exact`` False) a number there are more than."""
    exact: bool
    estimate: int | None = None
    """When not exact: the database's own estimate (PostgreSQL's planner), when it has one
    above ``count`` (statistics behind the data can guess fewer than were counted)."""

    def __post_init__(self) -> None:
        if self.estimate is not None and (self.exact or self.estimate <= self.count):
            object.__setattr__(self, "estimate", None)


def _capped_count(conn: Any, condition: ColumnElement[bool], cap: int | None) -> int:
    """How many processes meet ``condition``: all of them, or at most ``cap + 1``."""
    if cap is None:
        return int(conn.execute(select(func.count()).where(condition)).scalar_one())
    found = select(processes.c.id).where(condition).limit(cap + 1).subquery()
    return int(conn.execute(select(func.count()).select_from(found)).scalar_one())


def _estimate(conn: Any, store: Store, condition: ColumnElement[bool]) -> int | None:
    if store.dialect != "postgresql":
        return None
    statement = select(processes.c.id).where(condition)
    compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    plan = conn.exec_driver_sql(
        "EXPLAIN (FORMAT JSON) " + compiled.string, compiled.params
    ).scalar_one()
    return int(plan[0]["Plan"]["Plan Rows"])


def preview_cleanup(
    store: Store,
    days: float,
    statuses: Sequence[str] | None = None,
    *,
    exact_up_to: int | None = None,
) -> CleanupPreview:
    """What :func:`count_for_cleanup` says, counted only up to ``exact_up_to``.

    An exact count walks every index entry of what would go: at ten million
    processes that is half a second or more, too long for a page that only asks
    "how many?". Beyond ``exact_up_to`` the answer is "more than" that, with
    PostgreSQL's estimate of the total; the cleanup itself reports what it deleted.
    ``exact_up_to`` defaults to :data:`PREVIEW_EXACT_UP_TO`.
    """
    cap = PREVIEW_EXACT_UP_TO if exact_up_to is None else exact_up_to
    return _preview(store, days, statuses, cap)


def _preview(
    store: Store, days: float, statuses: Sequence[str] | None, cap: int | None
) -> CleanupPreview:
    """Count what a cleanup would delete, up to ``cap`` (None: all of it)."""
    condition, cutoff = _cleanup_condition(days, statuses)
    store.ensure_schema()
    with store.engine.connect() as conn:
        if statuses:
            found = _capped_count(conn, condition, cap)
            if cap is None or found <= cap:
                return CleanupPreview(found, exact=True)
            return CleanupPreview(cap, exact=False, estimate=_estimate(conn, store, condition))
        # Everything older (the time index) minus the unfinished (the status index).
        older = _capped_count(conn, processes.c.created_at < cutoff, cap)
        unfinished = [s.value for s in UNFINISHED_STATUSES]
        kept = _capped_count(
            conn,
            and_(processes.c.created_at < cutoff, processes.c.status.in_(unfinished)),
            cap,
        )
        if cap is None or older <= cap:
            return CleanupPreview(older - kept, exact=True)
        at_least = cap - kept  # older > cap: more than this many go
        if at_least <= 0:  # mostly unfinished, as far as counted: count what would go
            found = _capped_count(conn, condition, cap)
            if found <= cap:
                return CleanupPreview(found, exact=True)
            at_least = cap
        return CleanupPreview(at_least, exact=False, estimate=_estimate(conn, store, condition))


def cleanup(
    store: Store,
    days: float,
    statuses: Sequence[str] | None = None,
    batch_size: int = 1_000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete processes created more than ``days`` ago, with their flows, logs and history.

    A workflow run's process takes the run's row and its steps' rows with it.
    ``progress`` is told how many processes are deleted so far, after each batch.

    Deletes in batches of ``batch_size`` processes, one short transaction each, so
    that no lock is held for long on a busy database. Queued, running and retrying processes
    are kept unless ``statuses`` names them. On PostgreSQL's partitioned tables (and
    no ``statuses``), log entries and flows are kept by time instead: see below.

    The clean-up is kept in the audit log (``history:delete``, with how many
    processes went) once it has ended — it spans many transactions — or as
    failed, with how many went before it failed. The audit log itself is not
    cleaned up here: it has its own retention (``audit_retention_days``).
    """
    done = [0]

    def counted(deleted: int) -> None:
        done[0] = deleted
        if progress is not None:
            progress(deleted)

    asked: dict[str, Any] = {"days": days}
    if statuses:
        asked["statuses"] = list(statuses)
    try:
        deleted = _delete_old(store, days, statuses, batch_size, counted)
    except Exception as exc:
        detail = {**asked, "deleted": done[0], **audit.error_detail(exc)}
        audit.record(
            store, action="history:delete", target=None, outcome=audit.FAILED, detail=detail
        )
        raise
    audit.record(
        store,
        action="history:delete",
        target=None,
        outcome=audit.ALLOWED,
        detail={**asked, "deleted": deleted},
    )
    return deleted


def _delete_old(
    store: Store,
    days: float,
    statuses: Sequence[str] | None,
    batch_size: int,
    progress: Callable[[int], None],
) -> int:
    """:func:`cleanup`'s deletes (its audit row left to it)."""
    if days < 0:
        raise UsageError("days must be zero or more")
    for s in statuses or ():
        Status(s)
    condition, cutoff = _cleanup_condition(days, statuses)
    store.ensure_schema()
    # Partitioned tables (PostgreSQL): whole partitions older than the cutoff are
    # detached and dropped, and the straddling one's older rows deleted. Rows there
    # are kept by time, not by process: the flows and logs that a deleted process
    # wrote after the cutoff (it ran that long) are no longer shown, and go with
    # their own partition later. (Looking for them process by process probed every
    # newer partition's index for each process: most of a clean-up's time.) A
    # clean-up of some statuses only keeps deleting row by row.
    with _old_partitions_dropped(store, cutoff, by_time=not statuses) as by_time:
        if by_time:
            # Without their flows and logs, a batch of processes is light: fewer
            # round trips, each lock still held for a moment only.
            batch_size *= 10
        deleted = 0
        while True:
            with store.begin_write() as conn:
                ids = list(
                    conn.execute(
                        select(processes.c.id).where(condition).limit(batch_size)
                    ).scalars()
                )
                if not ids:
                    return deleted
                if log_entries.name not in by_time:
                    conn.execute(log_entries.delete().where(log_entries.c.process_id.in_(ids)))
                if flows.name not in by_time:
                    conn.execute(flows.delete().where(flows.c.process_id.in_(ids)))
                conn.execute(transitions.delete().where(transitions.c.process_id.in_(ids)))
                # A workflow run's process goes with the run and its steps' state.
                conn.execute(workflow_steps.delete().where(workflow_steps.c.run_id.in_(ids)))
                conn.execute(workflow_runs.delete().where(workflow_runs.c.id.in_(ids)))
                conn.execute(processes.delete().where(processes.c.id.in_(ids)))
                deleted += len(ids)
            progress(deleted)


@contextlib.contextmanager
def _old_partitions_dropped(store: Store, cutoff: datetime, *, by_time: bool) -> Iterator[set[str]]:
    """Detach the partitions older than ``cutoff``, delete the straddling rows.

    The detached tables are dropped beside the block (removing their files is
    slow, and locks nothing the block needs). Yields the tables whose rows are
    kept by time: none on SQLite, on an unpartitioned database, or unless ``by_time``.
    """
    if not by_time or store.dialect != "postgresql":
        yield set()
        return
    from flow_tracker.store import partitions

    with _driver_errors_as_outages():
        with store.engine.connect() as conn:
            driver = conn.connection.driver_connection
            detached = partitions.detach_before(driver, cutoff)
            partitions.delete_before(driver, cutoff)
    names = [name for d in detached for name in d.detached]
    failed: list[BaseException] = []

    def drop() -> None:
        try:
            with _driver_errors_as_outages(), store.engine.connect() as conn:
                partitions.drop_tables(conn.connection.driver_connection, names)
        except BaseException as exc:  # raised in the caller's thread below
            failed.append(exc)

    dropper = threading.Thread(target=drop, name="flow-tracker-drop-partitions", daemon=True)
    dropper.start()
    try:
        yield {d.table for d in detached}
    finally:
        dropper.join()
    if failed:  # the detached tables are found and dropped by the next clean-up
        raise failed[0]


@contextlib.contextmanager
def _driver_errors_as_outages() -> Iterator[None]:
    """The driver's own connection errors, reported like SQLAlchemy's (a 503 on a page)."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    try:
        yield
    except DBAPIError:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise OperationalError("maintaining partitions", None, exc) from exc
        raise
