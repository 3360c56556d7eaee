"""No job forgotten, with RQ: SIGKILL workers mid-job, reap, requeue, and every job finishes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

from rq import Queue

import flow_tracker
from flow_tracker import Status
from flow_tracker.recovery import requeue_candidates
from tests.integrations.test_rq import REDIS_URL, rq_queue, worker  # noqa: F401 - a fixture
from tests.integrations.workers import worker_process

LOST_AFTER = 3.0
HEARTBEAT = 0.5
REAP_EVERY = 0.5


def _running(job_ids: set[str]) -> dict[uuid.UUID, int]:
    """The running processes of these jobs, with the pid of the work-horse running each."""
    page = flow_tracker.list_processes(status="running", limit=500)
    return {p.id: p.pid for p in page if p.job_id in job_ids and p.pid}


def _wait_for_lost(killed: set[uuid.UUID], killed_at: float) -> float:
    """Reap every REAP_EVERY s until the killed processes are lost; the seconds it took."""
    deadline = time.monotonic() + 60
    left = set(killed)
    while left:
        left -= set(flow_tracker.reap().lost)
        for process_id in list(left):
            record = flow_tracker.get_process(process_id)
            if record is not None and record.status is not Status.RUNNING:
                left.discard(process_id)  # it ended just before the kill
        if time.monotonic() > deadline:
            rows = [flow_tracker.get_process(p) for p in left]
            raise AssertionError(f"killed jobs never reaped: {rows}")
        if left:
            time.sleep(REAP_EVERY)
    return time.monotonic() - killed_at


def _final_outcome(process_id: uuid.UUID) -> Status:
    """The status at the end of a job's chain of requeues."""
    while True:
        page = flow_tracker.list_processes(limit=500)
        nxt = [p for p in page if p.requeued_from_id == process_id]
        record = flow_tracker.get_process(process_id)
        assert record is not None
        if not nxt:
            return record.status
        assert record.status is Status.LOST
        (follow,) = nxt
        process_id = follow.id


def test_jobs_of_killed_workers_are_reaped_requeued_and_all_finish(
    tracked: str,
    rq_queue: Queue,  # noqa: F811
    tmp_path: Path,
) -> None:
    from flow_tracker.integrations import rq as ft_rq
    from tests.integrations import rq_jobs

    flow_tracker.configure(
        database_url=tracked,
        log_to_stdlib=False,
        lost_after=LOST_AFTER,
        heartbeat_interval=HEARTBEAT,
    )
    ft_rq.install(connection=rq_queue.connection)
    jobs = {rq_queue.enqueue(rq_jobs.sleepy, i, 1.0).id: i for i in range(12)}
    env = {
        "FLOW_TRACKER_DATABASE_URL": tracked,
        "FT_TEST_REDIS": REDIS_URL,
        "FLOW_TRACKER_HEARTBEAT_INTERVAL": str(HEARTBEAT),
        "FLOW_TRACKER_LOST_AFTER": str(LOST_AFTER),
    }
    delays = []
    for kill in range(3):
        log = tmp_path / f"worker-{kill}.log"
        with worker_process(worker(rq_queue, burst=False), env, log) as proc:
            deadline = time.monotonic() + 60
            while not (running := _running(set(jobs))):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            # The worker, and its work-horse (RQ puts it in a session of its own).
            os.killpg(proc.pid, signal.SIGKILL)
            for horse in running.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(horse, signal.SIGKILL)
            killed_at = time.monotonic()
            proc.wait()
        delays.append(_wait_for_lost(set(running), killed_at))
    # Kill to lost: at most lost_after + one reap interval, plus scheduling slack.
    assert max(delays) <= LOST_AFTER + REAP_EVERY + 1.5, delays

    for attempt in range(5):
        log = tmp_path / f"final-{attempt}.log"
        with worker_process(worker(rq_queue), env, log) as proc:  # burst: ends when empty
            proc.wait(timeout=300)
        flow_tracker.reap()
        lost = requeue_candidates(Status.LOST)
        if not lost and not _running(set(jobs)):
            break
        results = flow_tracker.requeue(lost)
        assert all(r.outcome == "requeued" for r in results), results
    outcomes = {}
    for job_id in jobs:
        status = flow_tracker.get_status(job_id)
        assert status is not None
        outcomes[job_id] = _final_outcome(status.process_id)
    assert set(outcomes.values()) == {Status.COMPLETED}, outcomes
    requeued = [p for p in flow_tracker.list_processes(limit=500) if p.requeued_from_id]
    assert requeued, "no job was lost: the kills missed every job"
    assert all(p.lost_count >= 1 for p in requeued)
    assert not flow_tracker.list_processes(status="running", limit=10).items
    assert flow_tracker.health().healthy
