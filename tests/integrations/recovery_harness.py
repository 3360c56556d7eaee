"""Kill real workers mid-job, reap, requeue, until every job is done: shared by the queues."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import flow_tracker
from flow_tracker import Status
from flow_tracker.records import ProcessRecord
from flow_tracker.recovery import requeue_candidates
from tests.integrations.workers import worker_process

LOST_AFTER = 3.0
HEARTBEAT = 0.5
REAP_EVERY = 0.5
JOBS = 300
JOB_SECONDS = 0.05
KILLS = 3
RECOVERY_ENV = {
    "FLOW_TRACKER_HEARTBEAT_INTERVAL": str(HEARTBEAT),
    "FLOW_TRACKER_LOST_AFTER": str(LOST_AFTER),
}


@dataclass
class Queue:
    """How to run one queue's workers and enqueue its jobs."""

    job_system: str
    enqueue: Callable[[int], str]
    """Enqueue job ``i`` (sleeping JOB_SECONDS); return its job id."""
    worker_args: Sequence[str]
    """A worker that keeps running (until killed)."""
    drain_args: Sequence[str]
    """The worker that finishes the jobs left after the kills."""
    env: dict[str, str]
    burst: bool
    """The drain worker stops by itself once its queue is empty (RQ's --burst)."""
    redelivers: bool = False
    """The broker itself brings a dead worker's jobs back (Dramatiq): no requeue."""


def _running(job_ids: set[str]) -> dict[uuid.UUID, int]:
    """The running processes of these jobs, with the pid of the process running each."""
    page = flow_tracker.list_processes(status="running", limit=500)
    return {p.id: p.pid or 0 for p in page if p.job_id in job_ids}


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (from /proc), children before grandchildren."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # The command name, in parentheses, may hold spaces: split after it.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_for_lost(killed: set[uuid.UUID], killed_at: float) -> float:
    """Reap every REAP_EVERY s until the killed processes are lost; the seconds it took.

    The promise checked is the reaper's, not the machine's speed: every reap that
    starts once ``lost_after`` (and a heartbeat's slack) has passed since the kill
    finds all of them lost. How long the reaps and the sleeps between them take on
    a busy machine is not asserted.
    """
    due = killed_at + LOST_AFTER + HEARTBEAT + 0.5
    deadline = time.monotonic() + 60
    left = set(killed)
    while left:
        started = time.monotonic()
        left -= set(flow_tracker.reap().lost)
        for process_id in list(left):
            record = flow_tracker.get_process(process_id)
            if record is not None and record.status is not Status.RUNNING:
                left.discard(process_id)  # its end was being stored as the kill came
        if left and started >= due:
            rows = [flow_tracker.get_process(p) for p in left]
            raise AssertionError(
                f"a reap {started - killed_at:.1f} s after the kill (lost_after {LOST_AFTER} s) "
                f"did not find these killed jobs lost: {rows}"
            )
        if time.monotonic() > deadline:
            rows = [flow_tracker.get_process(p) for p in left]
            raise AssertionError(f"killed jobs never reaped: {rows}")
        if left:
            time.sleep(REAP_EVERY)
    return time.monotonic() - killed_at


def _chain_end(process_id: uuid.UUID, requeued: dict[uuid.UUID, uuid.UUID]) -> uuid.UUID:
    while process_id in requeued:
        process_id = requeued[process_id]
    return process_id


FINAL = {Status.COMPLETED, Status.FAILED, Status.LOST, Status.CANCELLED, Status.SKIPPED}


def _chain_ends(
    jobs: dict[str, int],
) -> tuple[dict[str, Status], dict[uuid.UUID, uuid.UUID], dict[uuid.UUID, ProcessRecord]]:
    """The status at the end of each job's chain of requeues; the links; every process."""
    processes = _all_processes()
    requeued = {p.requeued_from_id: p.id for p in processes if p.requeued_from_id}
    by_id = {p.id: p for p in processes}
    by_job = {p.job_id: p.id for p in processes if p.job_id}
    statuses = {}
    for job_id in jobs:
        assert job_id in by_job, f"job {job_id} has no row"
        statuses[job_id] = by_id[_chain_end(by_job[job_id], requeued)].status
    return statuses, requeued, by_id


def _all_processes() -> list[ProcessRecord]:
    found: list[ProcessRecord] = []
    cursor = None
    while True:
        page = flow_tracker.list_processes(limit=500, cursor=cursor)
        found.extend(page)
        cursor = page.next_cursor
        if cursor is None:
            return found


def kill_reap_requeue(queue: Queue, tmp_path: Path) -> None:
    """Enqueue JOBS jobs, SIGKILL the workers KILLS times mid-job, then recover every job.

    Asserts: every reap started once lost_after has passed since a kill finds the
    killed jobs lost (see :func:`_wait_for_lost`); after reaping and requeueing,
    every job's chain of runs ends completed; nothing is left running; health is
    good.
    """
    jobs = {queue.enqueue(i): i for i in range(JOBS)}
    env = {**queue.env, **RECOVERY_ENV}
    delays: list[float] = []
    rounds = 0
    # A kill can land between two jobs (a forking worker spends a good part of its
    # time starting work-horses): such a round kills nothing and is done again.
    while len(delays) < KILLS and rounds < 4 * KILLS:
        rounds += 1
        log = tmp_path / f"worker-{rounds}.log"
        with worker_process(queue.worker_args, env, log) as proc:
            deadline = time.monotonic() + 90
            while not _running(set(jobs)):
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                time.sleep(0.02)
            time.sleep(0.3)  # let it work a little: several jobs done, some running
            while not _running(set(jobs)) and time.monotonic() < deadline:
                time.sleep(0.005)  # kill while a job runs
            # The worker and every process under it, work-horses in sessions of their
            # own (RQ) included.
            doomed = _descendants(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            proc.wait()
        killed = set(_running(set(jobs)))
        if killed:
            delays.append(_wait_for_lost(killed, killed_at))
    assert len(delays) == KILLS, f"only {len(delays)} of {rounds} kills caught a running job"

    for attempt in range(8):
        log = tmp_path / f"drain-{attempt}.log"
        with worker_process(queue.drain_args, env, log) as proc:
            if queue.burst:
                proc.wait(timeout=600)
            else:
                deadline = time.monotonic() + 300
                settled = {Status.COMPLETED} if queue.redelivers else FINAL
                while not all(s in settled for s in _chain_ends(jobs)[0].values()):
                    assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                    time.sleep(0.5)
        flow_tracker.reap()
        statuses, _, _ = _chain_ends(jobs)
        if set(statuses.values()) == {Status.COMPLETED} or queue.redelivers:
            break
        results = flow_tracker.requeue(requeue_candidates(Status.LOST))
        assert all(r.outcome == "requeued" for r in results), results

    statuses, requeued, by_id = _chain_ends(jobs)
    assert set(statuses.values()) == {Status.COMPLETED}, {
        s: sum(1 for v in statuses.values() if v is s) for s in set(statuses.values())
    }
    if queue.redelivers:
        # The broker ran them again on their own rows: lost, then running, then completed.
        assert not requeued
        assert [p for p in by_id.values() if p.lost_count >= 1], "no row was ever lost"
    else:
        assert requeued and all(by_id[new].lost_count >= 1 for new in requeued.values())
        assert all(by_id[old].status is Status.LOST for old in requeued)
    assert not [p for p in by_id.values() if p.status is Status.RUNNING]
    assert flow_tracker.health().healthy
