"""No job forgotten: the reaper, re-enqueueing and the health check.

* :func:`reap` marks running processes whose heartbeat (see
  :mod:`flow_tracker.heartbeat`) is older than ``lost_after`` as ``lost``, judged
  by the database's clock. It is one conditional UPDATE, so several reapers at
  once mark each process once.
* :func:`requeue` enqueues a lost or failed job again through its own
  integration, with the arguments stored when it was first enqueued. The new
  run is a new process linked to the old one (``requeued_from_id``); its job id
  is derived from the old process, so requeueing the same process twice (two
  operators, two reapers) enqueues it once. A job lost ``max_lost`` times is not
  enqueued again: it is a poison pill, and says so.
* :func:`health` answers "is any job forgotten?" for probes and dashboards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flow_tracker import config, runtime
from flow_tracker.delivery import NOTHING_SENT, Delivery, backoff, waiting_for, who
from flow_tracker.errors import UsageError
from flow_tracker.ids import process_id_for
from flow_tracker.job_systems import probes, requeuer_for
from flow_tracker.status import Status
from flow_tracker.store import audit, outbox
from flow_tracker.store import jobs as stored_jobs
from flow_tracker.store.engine import Store, error_line
from flow_tracker.subscribers import BUS

LAST_REAP_KEY = "reaper_last_run"
REQUEUE_ACTION = "jobs:requeue"  # the permission a requeue needs, as the audit log names it
LOST_ERROR_CLASS = stored_jobs.LOST_ERROR_CLASS
LOST_WINDOW = timedelta(hours=24)
REQUEUE_NAMESPACE = uuid.UUID("0b5d3c62-55a1-5f5e-8d0c-3f4a1e6c2b77")
REQUEUEABLE = stored_jobs.REQUEUEABLE


@dataclass(frozen=True)
class ReapResult:
    """What one run of the reaper did."""

    lost: list[uuid.UUID]
    """Processes marked lost by this run (none that another reaper got first)."""
    stale_queued: int
    """Jobs still queued after ``stale_after`` seconds (reported, not changed)."""
    checked_at: datetime
    """The database's time of the check."""
    workflow_steps: int = 0
    """Steps of workflow runs queued again (their worker was lost, or their retry's message)."""
    workflow_steps_waiting: int = 0
    """Of those, the steps this process could not send: they wait in the outbox."""
    waiting_for: tuple[str, ...] = ()
    """The queue systems whose workers those waiting steps wait for."""

    @property
    def workflow_steps_sent(self) -> int:
        """Steps of workflow runs whose message this call published."""
        return self.workflow_steps - self.workflow_steps_waiting


@dataclass(frozen=True)
class RequeueResult:
    """What :func:`requeue` did with one process."""

    process_id: uuid.UUID
    outcome: str
    """``requeued`` (sent), ``waiting`` (stored in the outbox for a worker of its queue:
    no integration here, or the broker refused it; the job stays lost until sent),
    ``already_requeued``, ``poison_pill``, ``not_found``, ``not_finished`` or ``not_a_job``."""
    new_process_id: uuid.UUID | None = None
    job_id: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when the job is (now or already) enqueued again: its message was sent."""
        return self.outcome in ("requeued", "already_requeued")

    @property
    def message(self) -> str:
        """For people: ``sent``, ``waiting for a worker of <queue>`` or ``refused because ...``."""
        if self.outcome == "requeued":
            return f"sent (as process {self.new_process_id})"
        if self.outcome == "already_requeued":
            return f"sent before (as process {self.new_process_id})"
        if self.outcome == "waiting":
            return self.reason
        because = self.reason or self.outcome.replace("_", " ")
        if self.outcome == "not_found":
            because = "no such process"
        return f"refused because {because}"


@dataclass(frozen=True)
class Health:
    """Whether any job is forgotten: healthy means no old unfinished job."""

    healthy: bool
    running: int
    silent: int
    """Running, but no heartbeat for ``lost_after``: the reaper will call them lost."""
    lost: int
    """Lost in the last 24 hours and not enqueued again."""
    stale_queued: int
    oldest_queued_age_s: float | None
    last_reap: datetime | None
    checked_at: datetime
    pending_deliveries: dict[str, int] = field(default_factory=dict)
    """Outbox requests not sent yet (steps, requeues), per queue system: each waits for a
    live worker of that queue (a lost job whose requeue waits is counted in ``lost`` too)."""
    oldest_pending_delivery_age_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready values."""
        values = asdict(self)
        for key in ("last_reap", "checked_at"):
            moment = values[key]
            values[key] = None if moment is None else moment.isoformat()
        return values


@dataclass(frozen=True)
class ForgottenJob:
    """A job the health check counts: silent, lost and not requeued, or stale queued."""

    process_id: uuid.UUID
    name: str
    job_system: str | None
    job_id: str | None
    queue: str | None
    host: str | None
    since: datetime | None
    """Its last heartbeat (silent), when it was marked lost, or when it was queued (stale)."""
    delivery: str | None = None
    """``waiting for a worker of <queue>`` when a requeue of it waits in the outbox."""

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready values."""
        values = asdict(self)
        values["process_id"] = str(self.process_id)
        values["since"] = None if self.since is None else self.since.isoformat()
        return values


@dataclass(frozen=True)
class ForgottenJobs:
    """The jobs behind :class:`Health`'s counts, by kind (the first few of each)."""

    silent: list[ForgottenJob]
    lost: list[ForgottenJob]
    stale_queued: list[ForgottenJob]

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        """As JSON-ready values."""
        return {
            "silent": [job.to_dict() for job in self.silent],
            "lost": [job.to_dict() for job in self.lost],
            "stale_queued": [job.to_dict() for job in self.stale_queued],
        }


def _store(store: Store | None) -> Store:
    chosen = store or runtime.store()
    chosen.ensure_schema()
    return chosen


_NO_HEARTBEAT = "no heartbeat for {:g} s: its worker died or hung"
_VANISHED = "taken from the queue by a worker that died before it could start it"


def _publish_lost(rows: Sequence[Any], now: datetime, reason: str) -> None:
    """Tell this interpreter's subscribers (``process.lost``) once the marks are stored."""
    for row in rows:
        BUS.publish_event(
            {
                "event": "process.lost",
                "process_id": str(row.id),
                "name": row.name,
                "category": row.category,
                "job_system": row.job_system,
                "job_id": row.job_id,
                "queue": row.queue,
                "attempt": row.attempt,
                "status": Status.LOST.value,
                "time": now.timestamp(),
                "reason": reason,
            }
        )


def reap(*, lost_after: float | None = None, store: Store | None = None) -> ReapResult:
    """Mark running processes that stopped sending heartbeats as ``lost``.

    Args:
        lost_after: seconds without a heartbeat (default: the ``lost_after`` setting);
            at least three ``heartbeat_interval`` s.
        store: the database (default: the configured one).

    Returns:
        The processes this call marked lost, and how many queued jobs are stale.

    A reap is kept in the audit log (``jobs:reap``, with its counts) when someone
    asked for it (the dashboard, the CLI) or when it changed something: the
    scheduled reaper (a cron job, ``flow-tracker reap --every``, the library in
    a worker) that found nothing writes no row every few seconds.

    Raises:
        UsageError: ``lost_after`` is not above three heartbeat intervals: live jobs
            would be marked lost, and a requeue would run them twice.
    """
    chosen = _store(store)
    with audit.failures_recorded(
        chosen, action="jobs:reap", target=None, detail={"lost_after": lost_after}
    ):
        result = _reap(chosen, lost_after)
    if result.lost or result.workflow_steps or not audit.is_scheduled():
        # A reap spans several transactions (and brokers): its row comes after them.
        audit.record(
            chosen,
            action="jobs:reap",
            target=None,
            outcome=audit.ALLOWED,
            detail={
                "lost": len(result.lost),
                "workflow_steps": result.workflow_steps,
                "stale_queued": result.stale_queued,
                "lost_after": config.current().lost_after if lost_after is None else lost_after,
            },
        )
    return result


def _reap(chosen: Store, lost_after: float | None) -> ReapResult:
    settings = config.current()
    after = settings.lost_after if lost_after is None else float(lost_after)
    if not after > 0:
        raise UsageError(f"lost_after must be a positive number of seconds, not {lost_after!r}")
    config.check_lost_after(after, settings.heartbeat_interval, UsageError)
    reason = _NO_HEARTBEAT.format(after)
    now, marked = stored_jobs.mark_silent_lost(chosen, after, reason)
    _publish_lost(marked, now, reason)
    lost = [uuid.UUID(str(row.id)) for row in marked]
    # Asking brokers may take a while: never inside the transaction above.
    lost += _reap_vanished(chosen, now, now - timedelta(seconds=after))
    steps, delivery = _recover_workflow_steps(chosen, after)
    stale = stored_jobs.finish_reap(chosen, now, settings.stale_after, LAST_REAP_KEY)
    chosen.keep_partitions()  # hourly at most; the reaper loop is one of their keepers
    _keep_rollups(chosen, now)
    audit.keep_retention(chosen)  # hourly at most: the audit log's own retention
    return ReapResult(
        lost=lost,
        stale_queued=stale,
        checked_at=now,
        workflow_steps=steps,
        workflow_steps_waiting=min(steps, delivery.waiting_count),
        waiting_for=delivery.waiting,
    )


def _keep_rollups(store: Store, now: datetime) -> None:
    """Roll up the hours that closed since the last time (one read when there are none).

    The reaper runs where it can write: it keeps the dashboard's statistics current
    for a dashboard that cannot (one reading a replica) or that nobody opened.
    """
    from flow_tracker.store import rollups

    try:
        rollups.refresh(store, now)
    except Exception as exc:  # the next reap tries again
        runtime.report_internal_error(exc, "rolling up the dashboard's statistics")


def _recover_workflow_steps(store: Store, lost_after: float) -> tuple[int, Delivery]:
    """A lost step of a workflow run is the workflow's to send again: its run waits on it.

    Returns how many steps were queued again, and what became of their messages.
    """
    from flow_tracker.workflows.engine import recover_steps

    try:
        dispatches, delivery = recover_steps(store, lost_after)
    except Exception as exc:  # the steps are found again on the next reap
        runtime.report_internal_error(exc, "sending lost workflow steps again")
        return 0, NOTHING_SENT
    return len(dispatches), delivery


VANISHED_BATCH = 1000


def _reap_vanished(store: Store, now: datetime, cutoff: datetime) -> list[uuid.UUID]:
    """Queued rows whose job the broker no longer holds: taken by a worker that died.

    Only for queues whose integration can answer (a probe is registered in this
    process), and only rows queued before ``cutoff``: a job just taken by a
    living worker is marked running within milliseconds.
    """
    found: list[uuid.UUID] = []
    for job_system, pending in probes().items():
        rows = stored_jobs.queued_before(store, job_system, cutoff, VANISHED_BATCH)
        if not rows:
            continue
        try:
            still = pending([(str(row.job_id), row.queue, row.job_payload) for row in rows])
        except Exception as exc:  # the broker is away: ask again next time
            runtime.report_internal_error(exc, f"asking {job_system} which jobs are pending")
            continue
        gone = [row.id for row in rows if str(row.job_id) not in still]
        if not gone:
            continue
        marked = stored_jobs.mark_vanished_lost(store, gone, now, _VANISHED)
        _publish_lost(marked, now, _VANISHED)
        found += [uuid.UUID(str(row.id)) for row in marked]
    return found


def requeue_job_id(process_id: uuid.UUID) -> str:
    """The job id the re-enqueued run of ``process_id`` gets (the same on every try)."""
    return str(uuid.uuid5(REQUEUE_NAMESPACE, str(process_id)))


def requeue(ids: Iterable[uuid.UUID | str], *, store: Store | None = None) -> list[RequeueResult]:
    """Enqueue lost or failed jobs again through their own integration.

    Where the integration is installed in this interpreter (for the CLI:
    ``flow-tracker requeue --import myapp.celery_app``) the job is published
    at once; elsewhere, or when its broker refuses it, the request waits in the
    outbox for a live worker of that queue (outcome ``waiting``) and the job
    stays lost until it is sent.

    Args:
        ids: process ids (or their text).
        store: the database (default: the configured one).

    Each process has its row in the audit log (``jobs:requeue``: its id, the job
    id, what became of it; never the job's arguments): stored with the outbox
    request when it waits for a worker, after the publish when sent from here,
    as failed when nothing was done (and why).

    Returns:
        One result per id, in order; never raises for a single bad id.
    """
    chosen = _store(store)
    results = []
    for raw in ids:
        with audit.failures_recorded(chosen, action=REQUEUE_ACTION, target=str(raw)):
            try:
                process_id = raw if isinstance(raw, uuid.UUID) else uuid.UUID(str(raw))
            except ValueError:
                raise UsageError(f"{raw!r} is not a process id") from None
            result = _requeue_one(chosen, process_id)
        if result.outcome != "waiting":  # a waiting request's row was stored with it
            audit.record(
                chosen,
                action=REQUEUE_ACTION,
                target=str(process_id),
                outcome=audit.ALLOWED if result.outcome == "requeued" else audit.FAILED,
                detail=_requeue_detail(result),
            )
        results.append(result)
    return results


def _requeue_detail(result: RequeueResult, job_system: str | None = None) -> dict[str, Any]:
    """A requeue's audit detail: ids and what became of it, never the job's arguments."""
    detail: dict[str, Any] = {"result": result.outcome}
    if job_system:
        detail["job_system"] = job_system
    if result.job_id:
        detail["job_id"] = result.job_id
    if result.new_process_id:
        detail["new_process_id"] = str(result.new_process_id)
    if result.reason:
        detail["reason"] = result.reason
    return detail


def _requeue_one(store: Store, process_id: uuid.UUID) -> RequeueResult:
    row = stored_jobs.read_process(store, process_id)
    refused = _refusal(row, process_id)
    if refused is not None or row is None:
        return refused or RequeueResult(process_id, "not_found")
    send = requeuer_for(row.job_system)
    job_id = requeue_job_id(process_id)
    new_id = process_id_for(row.job_system, job_id)
    if stored_jobs.read_process(store, new_id) is not None and process_id not in outbox.pending_for(
        store, [process_id]
    ):
        # Its copy exists and no request waits: it was sent (a failed publish deletes
        # the copy in the transaction that stores its request), here or by a worker.
        return RequeueResult(process_id, "already_requeued", new_id, job_id)
    if send is None:
        # No integration here: the request waits in the outbox for a worker of that
        # queue; the job stays lost (health counts it) until one has sent it.
        waiting = _waiting(process_id, row.job_system, job_id)
        with store.begin_write() as conn:
            outbox.add(
                conn,
                kind=outbox.REQUEUE,
                job_system=row.job_system,
                target_id=process_id,
                payload={"job_id": job_id},
            )
            audit.write(
                conn,
                action=REQUEUE_ACTION,
                target=str(process_id),
                outcome=audit.ALLOWED,
                detail=_requeue_detail(waiting, row.job_system),
            )
        return waiting
    return _publish_requeue(store, row, send, job_id, None)


def _refusal(row: Any, process_id: uuid.UUID) -> RequeueResult | None:
    """Why ``row`` is not enqueued again, or None when it may be."""
    if row is None:
        return RequeueResult(process_id, "not_found")
    if row.status not in REQUEUEABLE:
        return RequeueResult(process_id, "not_finished", reason=f"it is {row.status}")
    if not row.job_system or not row.job_id:
        return RequeueResult(process_id, "not_a_job", reason="not enqueued through a job queue")
    if row.job_payload is None:
        return RequeueResult(process_id, "not_a_job", reason="its arguments were not kept")
    limit = config.current().max_lost
    if row.lost_count >= limit:
        return RequeueResult(
            process_id,
            "poison_pill",
            reason=f"lost {row.lost_count} times (max_lost={limit}); not enqueued again",
        )
    return None


def _waiting(
    process_id: uuid.UUID, job_system: str, job_id: str, error: str | None = None
) -> RequeueResult:
    reason = waiting_for(job_system)
    if error:
        reason += f" (publishing here failed: {error})"
    return RequeueResult(process_id, "waiting", None, job_id, reason)


def _publish_requeue(
    store: Store, row: Any, send: Any, job_id: str, request: outbox.Claimed | None
) -> RequeueResult:
    """Claim the copy, publish it, and record the outcome; undo the claim if nothing was sent.

    The copy's row is stored before its message goes out (a worker that starts
    it finds it), but a copy whose publish failed is deleted again, so that the
    lost job never reads "requeued" while nothing was sent: the request waits in
    the outbox instead, with the broker's error, and is tried again with backoff.
    """
    process_id = uuid.UUID(str(row.id))
    new_id = process_id_for(row.job_system, job_id)
    claimed = stored_jobs.claim_requeue(store, row, new_id, job_id)
    if claimed == "came_back":
        if request is not None:
            outbox.mark_dropped(store, request.id, "the job started again before it was sent")
        return RequeueResult(
            process_id, "not_finished", reason="it started again (its broker redelivered it)"
        )
    if claimed == "taken":
        if request is None:
            return RequeueResult(process_id, "already_requeued", new_id, job_id)
        # A copy exists: sent by another request, or claimed by this one before a
        # crash cut its publish short (then it is sent now).
        if outbox.target_sent(store, outbox.REQUEUE, process_id):
            outbox.mark_dropped(store, request.id, "enqueued again by another request")
            return RequeueResult(process_id, "already_requeued", new_id, job_id)
    try:
        send(row.job_payload, job_id)
    except Exception as exc:
        error = error_line(exc)
        runtime.report_internal_error(exc, f"requeueing {row.job_system} job {row.job_id}")
        attempts = 1 if request is None else request.attempts
        waiting = _waiting(process_id, row.job_system, job_id, error)
        with store.begin_write() as conn:
            stored_jobs.unclaim_requeue(conn, process_id, new_id)
            if request is None:
                outbox.add(
                    conn,
                    kind=outbox.REQUEUE,
                    job_system=row.job_system,
                    target_id=process_id,
                    payload={"job_id": job_id},
                    error=error,
                    due_in=backoff(attempts),
                )
                # Asked here (not a worker delivering the outbox): the request is the action.
                audit.write(
                    conn,
                    action=REQUEUE_ACTION,
                    target=str(process_id),
                    outcome=audit.ALLOWED,
                    detail=_requeue_detail(waiting, row.job_system),
                )
            else:
                outbox.mark_failed_in(conn, request.id, error, backoff(attempts))
        return waiting
    if request is not None:
        outbox.mark_sent(store, request.id, who())
    BUS.publish_event(
        {
            "event": "process.requeued",
            "process_id": str(process_id),
            "name": row.name,
            "category": row.category,
            "job_system": row.job_system,
            "status": row.status,
            "time": time.time(),
            "new_process_id": str(new_id),
            "job_id": job_id,
        }
    )
    return RequeueResult(process_id, "requeued", new_id, job_id)


def deliver_requeue(store: Store, request: outbox.Claimed) -> bool:
    """Publish a requeue the outbox holds (a worker's delivery thread); True once sent.

    Raises:
        RuntimeError: this process cannot enqueue that system's jobs after all.
    """
    row = stored_jobs.read_process(store, request.target_id)
    refused = _refusal(row, request.target_id)
    if refused is not None or row is None:
        why = "no such process" if refused is None else refused.reason or refused.outcome
        outbox.mark_dropped(store, request.id, why)
        return False
    send = requeuer_for(row.job_system)
    if send is None:
        raise RuntimeError(f"this process no longer requeues {row.job_system} jobs")
    job_id = str(request.payload.get("job_id") or requeue_job_id(request.target_id))
    return _publish_requeue(store, row, send, job_id, request).outcome == "requeued"


def requeue_candidates(
    status: Status, *, store: Store | None = None, limit: int = 1000
) -> list[uuid.UUID]:
    """Lost or failed job processes not enqueued again yet, oldest first."""
    if status not in (Status.LOST, Status.FAILED):
        raise UsageError("requeue candidates are lost or failed processes")
    return stored_jobs.requeue_candidates(_store(store), status, limit)


def health(*, store: Store | None = None) -> Health:
    """Lost, silent and stale jobs now; healthy when there is none.

    ``lost`` counts processes lost in the last 24 hours that were not enqueued
    again (a poison pill stays counted until it is a day old).
    """
    settings = config.current()
    counts = stored_jobs.health_counts(
        _store(store),
        lost_after=settings.lost_after,
        stale_after=settings.stale_after,
        lost_window=LOST_WINDOW,
        reap_key=LAST_REAP_KEY,
    )
    now, oldest = counts.now, counts.oldest_queued
    pending = outbox.pending_counts(_store(store))
    return Health(
        healthy=not (counts.silent or counts.lost_not_requeued or counts.stale_queued),
        running=counts.running,
        silent=counts.silent,
        lost=counts.lost_not_requeued,
        stale_queued=counts.stale_queued,
        oldest_queued_age_s=None if oldest is None else max(0.0, (now - oldest).total_seconds()),
        last_reap=counts.last_reap,
        checked_at=now,
        pending_deliveries={p.job_system: p.count for p in pending},
        oldest_pending_delivery_age_s=max((p.oldest_age_s for p in pending), default=None),
    )


def forgotten_jobs(*, limit: int = 20, store: Store | None = None) -> ForgottenJobs:
    """Which jobs :func:`health` counts: up to ``limit`` of each kind, oldest first.

    The same definitions as :func:`health` (silent: no heartbeat for ``lost_after``;
    lost in the last 24 hours and not enqueued again; queued past ``stale_after``).
    """
    settings = config.current()
    found = stored_jobs.forgotten(
        _store(store),
        lost_after=settings.lost_after,
        stale_after=settings.stale_after,
        lost_window=LOST_WINDOW,
        limit=limit,
    )
    since_column = {"silent": "heartbeat_at", "lost": "finished_at", "stale_queued": "created_at"}
    waiting = outbox.pending_for(_store(store), [uuid.UUID(str(row.id)) for row in found["lost"]])

    def jobs(kind: str) -> list[ForgottenJob]:
        return [
            ForgottenJob(
                process_id=uuid.UUID(str(row.id)),
                name=row.name,
                job_system=row.job_system,
                job_id=row.job_id,
                queue=row.queue,
                host=row.host,
                since=getattr(row, since_column[kind]),
                delivery=(
                    waiting_for(waiting[pid].job_system)
                    if (pid := uuid.UUID(str(row.id))) in waiting
                    else None
                ),
            )
            for row in found[kind]
        ]

    return ForgottenJobs(
        silent=jobs("silent"), lost=jobs("lost"), stale_queued=jobs("stale_queued")
    )


__all__ = [
    "ForgottenJob",
    "ForgottenJobs",
    "Health",
    "ReapResult",
    "RequeueResult",
    "forgotten_jobs",
    "health",
    "reap",
    "requeue",
    "requeue_candidates",
]
