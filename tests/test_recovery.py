"""Heartbeats, the reaper, requeue outcomes and health, on SQLite and PostgreSQL.

Requeueing through real queues after SIGKILLed workers is in
tests/integrations/test_recovery_rq.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update

import flow_tracker
from flow_tracker import Status, runtime
from flow_tracker.heartbeat import HEARTBEAT
from flow_tracker.recovery import requeue_candidates, requeue_job_id
from flow_tracker.store.clock import database_now
from flow_tracker.store.schema import flows, processes


def _db_now() -> Any:
    runtime.store().ensure_schema()
    with runtime.store().engine.connect() as conn:
        return database_now(conn)


def _silence(process_ids: list[uuid.UUID], seconds: float) -> None:
    """Make the processes' last heartbeat ``seconds`` old by the database's clock."""
    old = _db_now() - timedelta(seconds=seconds)
    with runtime.store().engine.begin() as conn:
        conn.execute(
            update(processes).where(processes.c.id.in_(process_ids)).values(heartbeat_at=old)
        )


def _job_row(**values: Any) -> uuid.UUID:
    now = _db_now()
    row = {
        "id": uuid.uuid4(),
        "name": "charge",
        "category": "jobs",
        "status": "lost",
        "created_at": now,
        "job_system": "rq",
        "job_id": uuid.uuid4().hex,
        "queue": "default",
        "job_payload": {"func": "app.charge", "args": [1], "kwargs": {}, "queue": "default"},
        **values,
    }
    with runtime.store().engine.begin() as conn:
        conn.execute(insert(processes).values(**row))
    return row["id"]  # type: ignore[no-any-return]


def test_heartbeats_stamp_running_processes_with_the_database_clock(tracked: str) -> None:
    flow_tracker.configure(database_url=tracked, heartbeat_interval=0.1, log_to_stdlib=False)
    tracker = flow_tracker.start("long_job")
    flow_tracker.flush()
    _silence([tracker.process_id], 3600)
    deadline = time.monotonic() + 10
    while True:
        record = flow_tracker.get_process(tracker.process_id)
        assert record is not None and record.heartbeat_at is not None
        if abs((_db_now() - record.heartbeat_at).total_seconds()) < 5:
            break
        assert time.monotonic() < deadline, "no heartbeat stamped"
        time.sleep(0.05)
    assert tracker.process_id in HEARTBEAT.running_here()
    tracker.complete()
    assert tracker.process_id not in HEARTBEAT.running_here()


@pytest.mark.postgres
def test_a_heartbeat_in_flight_lands_before_clear_returns_never_after(
    pg_server_url: str,
) -> None:
    """A worker that "dies" (clear) while a beat is in flight is not stamped afterwards.

    The beat's UPDATE is held on a row lock the test takes, so the beat has
    collected the process before clear() is called; clear() must wait for it.
    """
    import psycopg

    flow_tracker.configure(
        database_url=pg_server_url, heartbeat_interval=60, lost_after=180, log_to_stdlib=False
    )
    tracker = flow_tracker.start("dies_mid_beat")
    flow_tracker.flush()
    with psycopg.connect(pg_server_url) as holder:
        holder.execute(
            "SELECT 1 FROM flow_tracker_processes WHERE id = %s FOR UPDATE", (tracker.process_id,)
        )
        beating = threading.Thread(target=HEARTBEAT.beat)
        beating.start()
        cleared = threading.Event()

        def clear() -> None:
            HEARTBEAT.clear()
            cleared.set()

        clearing = threading.Thread(target=clear)
        _wait_for_lock_wait(pg_server_url)
        clearing.start()
        assert not cleared.wait(0.2), "clear() returned while a beat was in flight"
        holder.rollback()  # the beat's stamp goes in now
    beating.join(30)
    assert cleared.wait(30), "clear() never returned after the beat ended"
    clearing.join(30)
    _silence([tracker.process_id], 240)
    HEARTBEAT.beat()  # nothing is stamped: the process was forgotten
    assert tracker.process_id in flow_tracker.reap(lost_after=180).lost
    flow_tracker.reset()


def _wait_for_lock_wait(url: str) -> None:
    """Wait until a session of this database waits on a lock (the beat's UPDATE)."""
    import psycopg

    deadline = time.monotonic() + 30
    with psycopg.connect(url, autocommit=True) as conn:
        while not conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "waited 30 s for the beat to wait on the lock"
            time.sleep(0.01)


def test_the_reaper_marks_silent_running_processes_lost_once(tracked: str) -> None:
    silent = flow_tracker.start("died")
    with silent.flow("step"):
        alive = flow_tracker.start("alive")
        flow_tracker.flush()
        _silence([silent.process_id], 120)
        result = flow_tracker.reap(lost_after=60)
        assert result.lost == [silent.process_id]
        assert flow_tracker.reap(lost_after=60).lost == []
    record = flow_tracker.get_process(silent.process_id)
    assert record is not None
    # The flow's end was written by this very interpreter after the reap: a
    # process that was only slow, not dead, still records what it did.
    with runtime.store().engine.connect() as conn:
        row = conn.execute(select(processes).where(processes.c.id == silent.process_id)).one()
    assert (row.status, row.lost_count, row.error_class) == ("lost", 1, "flow_tracker.Lost")
    assert "no heartbeat for 60 s" in row.error_message
    alive_record = flow_tracker.get_process(alive.process_id)
    assert alive_record is not None and alive_record.status is Status.RUNNING
    alive.complete()


def test_the_reaper_marks_the_running_flows_of_a_lost_process_lost(tracked: str) -> None:
    tracker = flow_tracker.start("died")
    tracker.flow("stuck").__enter__()
    flow_tracker.flush()
    HEARTBEAT.clear()  # the worker dies: nothing ends the flow or stamps the process
    _silence([tracker.process_id], 120)
    assert flow_tracker.reap(lost_after=60).lost == [tracker.process_id]
    with runtime.store().engine.connect() as conn:
        statuses = conn.execute(
            select(flows.c.status).where(flows.c.process_id == tracker.process_id)
        ).scalars()
        assert list(statuses) == ["lost"]


def test_reapers_running_at_once_mark_each_process_once(tracked: str) -> None:
    trackers = [flow_tracker.start(f"job {i}") for i in range(120)]
    flow_tracker.flush()
    HEARTBEAT.clear()
    _silence([t.process_id for t in trackers], 120)
    results: list[list[uuid.UUID]] = []
    start = threading.Barrier(4)

    def reaper() -> None:
        start.wait()
        results.append(flow_tracker.reap(lost_after=60).lost)

    threads = [threading.Thread(target=reaper) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    marked = [process_id for result in results for process_id in result]
    assert sorted(marked) == sorted(t.process_id for t in trackers)


def test_the_reaper_trusts_the_database_clock_not_the_hosts(
    tracked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = flow_tracker.start("job")
    flow_tracker.flush()
    _silence([tracker.process_id], 30)  # 30 s old by the database's clock
    skewed = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: skewed)  # this host runs an hour ahead
    assert flow_tracker.reap(lost_after=60).lost == []
    monkeypatch.undo()
    tracker.complete()


def test_requeue_refuses_what_it_cannot_or_must_not_enqueue_and_says_why(tracked: str) -> None:
    running = _job_row(status="running")
    plain = _job_row(job_system=None, job_id=None)
    no_args = _job_row(job_payload=None)
    poisoned = _job_row(lost_count=3)
    other_queue = _job_row(job_system="beanstalk")
    missing = uuid.uuid4()
    results = flow_tracker.requeue([running, plain, no_args, poisoned, other_queue, missing])
    outcomes = [(r.outcome, r.ok) for r in results]
    assert outcomes == [
        ("not_finished", False),
        ("not_a_job", False),
        ("not_a_job", False),
        ("poison_pill", False),
        ("waiting", False),
        ("not_found", False),
    ]
    assert "max_lost=3" in results[3].reason
    assert results[4].message == "waiting for a worker of beanstalk"
    with pytest.raises(flow_tracker.UsageError):
        flow_tracker.requeue(["not an id"])


def test_requeue_candidates_are_lost_jobs_not_requeued_yet(tracked: str) -> None:
    first = _job_row()
    done = _job_row()
    _job_row(requeued_from_id=done, status="completed")
    _job_row(status="failed")
    assert requeue_candidates(Status.LOST) == [first]
    assert len(requeue_candidates(Status.FAILED)) == 1


def test_health_is_bad_while_a_job_is_silent_lost_or_stale_and_good_after(
    tracked: str,
) -> None:
    report = flow_tracker.health()
    assert report.healthy and report.last_reap is None
    tracker = flow_tracker.start("job")
    flow_tracker.flush()
    HEARTBEAT.clear()
    _silence([tracker.process_id], 120)
    report = flow_tracker.health()
    assert (report.healthy, report.running, report.silent) == (False, 1, 1)
    flow_tracker.reap()
    report = flow_tracker.health()
    assert (report.healthy, report.silent, report.lost) == (False, 0, 1)
    assert report.last_reap is not None
    # Enqueued again (here: its new row stored as a requeue would): nothing is forgotten.
    _job_row(
        requeued_from_id=tracker.process_id,
        status="queued",
        job_id=requeue_job_id(tracker.process_id),
    )
    report = flow_tracker.health()
    assert report.healthy, report
    old = _db_now() - timedelta(hours=2)
    stale = _job_row(status="queued", created_at=old)
    report = flow_tracker.health()
    assert (report.healthy, report.stale_queued) == (False, 1)
    assert report.oldest_queued_age_s is not None and report.oldest_queued_age_s > 7000
    assert report.to_dict()["stale_queued"] == 1
    assert stale


@pytest.mark.parametrize("same_batch", [False, True])
def test_a_late_end_of_an_earlier_attempt_never_overwrites_a_later_attempt(
    tracked: str, same_batch: bool
) -> None:
    from flow_tracker.jobs import finish_job, start_job

    if same_batch:  # nothing stored at once: every event waits in the buffer
        flow_tracker.configure(database_url=tracked, completion_timeout=0, log_to_stdlib=False)
    first = start_job(job_system="test", job_id="j", name="charge", queue="q", attempt=1)
    flow_tracker.flush()
    # The retry runs in another thread and finishes before the first attempt's end
    # is stored (its retry message went out from inside its body).
    done: list[Any] = []

    def retry() -> None:
        second = start_job(job_system="test", job_id="j", name="charge", queue="q", attempt=2)
        finish_job(second, Status.COMPLETED)
        done.append(second)

    thread = threading.Thread(target=retry)
    thread.start()
    thread.join()
    finish_job(first, Status.RETRYING, ConnectionError("flaky"))
    flow_tracker.flush()
    record = flow_tracker.get_process(first.process_id)
    assert record is not None
    assert (record.status, record.attempt, record.error) == (Status.COMPLETED, 2, None)


def test_a_requeue_never_claims_a_job_its_broker_already_started_again(tracked: str) -> None:
    from flow_tracker.store.jobs import claim_requeue

    lost = _job_row()
    with runtime.store().engine.connect() as conn:
        row = conn.execute(select(processes).where(processes.c.id == lost)).one()
    # Between requeue's first read and its claim, a redelivery stored the job running.
    with runtime.store().engine.begin() as conn:
        conn.execute(update(processes).where(processes.c.id == lost).values(status="running"))
    new_id = uuid.uuid4()
    assert claim_requeue(runtime.store(), row, new_id, requeue_job_id(lost)) == "came_back"
    with runtime.store().engine.connect() as conn:
        assert conn.execute(select(processes.c.id).where(processes.c.id == new_id)).first() is None


def test_a_job_with_a_requeued_copy_stands_down_and_says_why(tracked: str) -> None:
    from flow_tracker.ids import process_id_for
    from flow_tracker.jobs import job_body, start_job

    ran: list[int] = []

    def charge(i: int) -> int:
        ran.append(i)
        return i

    body = job_body(charge)
    original = _job_row(id=process_id_for("rq", "original-job"), job_id="original-job")
    _job_row(requeued_from_id=original, status="queued")
    # The broker delivers the lost job again after the operator requeued it.
    tracker = start_job(
        job_system="rq", job_id="original-job", name="charge", queue="default", attempt=1
    )
    assert body(7) is None
    tracker.complete()
    assert ran == []
    record = flow_tracker.get_process(original)
    assert record is not None
    assert record.status is Status.SKIPPED
    assert "requeued as process" in record.metadata["skip_reason"]
    # A job without a copy runs as usual, its result unchanged.
    other = start_job(
        job_system="rq", job_id="other-job", name="charge", queue="default", attempt=1
    )
    assert body(8) == 8
    other.complete()
    assert ran == [8]
    other_record = flow_tracker.get_process(process_id_for("rq", "other-job"))
    assert other_record is not None and other_record.status is Status.COMPLETED


def test_silent_means_the_same_on_the_overview_the_health_page_and_health(tracked: str) -> None:
    from flow_tracker.web.statistics import overview

    old = _db_now() - timedelta(minutes=5)
    _job_row(status="running", heartbeat_at=old)  # its worker died: silent
    _job_row(status="retrying", heartbeat_at=old)  # waits for its next attempt: not silent
    report = flow_tracker.health()
    board = overview(runtime.store(), "1h", lost_after=60.0)
    assert report.silent == board.silent_running == 1
    assert flow_tracker.reap(lost_after=60.0).lost  # and the reaper takes exactly that one
    assert flow_tracker.health().silent == overview(runtime.store(), "1h").silent_running == 0


@pytest.mark.postgres
def test_a_start_that_waits_on_a_requeue_in_progress_finds_the_copy_and_stands_down(
    pg_server_url: str,
) -> None:
    import psycopg

    from flow_tracker.ids import process_id_for
    from flow_tracker.jobs import skip_if_requeued, start_job

    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False)
    original = _job_row(id=process_id_for("rq", "raced-job"), job_id="raced-job", status="queued")
    copy = uuid.uuid4()
    # The job found lost and requeued in one transaction not yet committed: the
    # row locked, the copy stored. A start that began before reads "queued" in
    # its snapshot; only the row as the requeue leaves it tells it to stand down.
    requeue = psycopg.connect(pg_server_url)
    requeue.execute(
        "UPDATE flow_tracker_processes SET status = 'lost', updated_at = now() WHERE id = %s",
        (original,),
    )
    requeue.execute(
        "INSERT INTO flow_tracker_processes (id, name, category, status, created_at, "
        "requeued_from_id) VALUES (%s, 'charge', 'jobs', 'queued', now(), %s)",
        (copy, original),
    )
    started: list[Any] = []
    # The broker redelivers the job meanwhile: its start must wait for the requeue.
    redelivery = threading.Thread(
        target=lambda: started.append(
            start_job(job_system="rq", job_id="raced-job", name="charge", queue="q", attempt=1)
        )
    )
    redelivery.start()
    try:
        deadline = time.monotonic() + 30
        with psycopg.connect(pg_server_url, autocommit=True) as watcher:
            while not watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'flow-tracker' "
                "AND wait_event_type = 'Lock'"
            ).fetchone():
                assert redelivery.is_alive(), "the start did not wait for the requeue's lock"
                assert time.monotonic() < deadline, "the start never waited on the lock"
                time.sleep(0.02)
    finally:
        requeue.commit()
        requeue.close()
        redelivery.join(timeout=30)
    assert started, "the redelivered start did not finish"
    tracker = started[0]
    assert skip_if_requeued(tracker), "the redelivery would run beside its requeued copy"
    tracker.complete()
    record = flow_tracker.get_process(original)
    assert record is not None and record.status is Status.SKIPPED
    assert str(copy) in record.metadata["skip_reason"]
