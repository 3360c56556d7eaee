"""Threads writing durable records at once share one transaction, and lose nothing by it.

The group forms behind a write the test holds on a real PostgreSQL row lock,
so who waits for whom is certain, not a matter of timing.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest
from sqlalchemy import insert

import flow_tracker
from flow_tracker import Status, runtime
from flow_tracker import events as ev
from flow_tracker.ids import process_id_for
from flow_tracker.jobs import _REQUEUED_COPIES, finish_job, start_job
from flow_tracker.store.schema import processes
from tests.conftest import _truncate

WAIT_S = 30.0


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_S:g} s for {what}"
        time.sleep(0.01)


def _lock_waits(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return 0 if row is None else int(row[0])


def _start(job_id: str) -> Any:
    return start_job(job_system="celery", job_id=job_id, name="charge", queue="q", attempt=1)


def _status(job_id: str) -> Status | None:
    record = flow_tracker.get_process(process_id_for("celery", job_id))
    return None if record is None else record.status


def _lost_job_with_a_copy(job_id: str) -> uuid.UUID:
    """A lost job an operator requeued: its row, and the copy's row pointing at it."""
    now = datetime.now(timezone.utc)
    original = process_id_for("celery", job_id)
    row = {"name": "charge", "category": "jobs", "created_at": now, "job_system": "celery"}
    copy = uuid.uuid4()
    runtime.store().ensure_schema()
    with runtime.store().engine.begin() as conn:
        conn.execute(insert(processes).values(id=original, status="lost", job_id=job_id, **row))
        conn.execute(
            insert(processes).values(
                id=copy, status="queued", requeued_from_id=original, job_id="copy", **row
            )
        )
    return copy


@contextlib.contextmanager
def _write_held(url: str, ahead: Any) -> Iterator[None]:
    """Job ``ahead`` ends on a thread whose write waits on a row lock until the block ends."""
    with psycopg.connect(url) as holder:
        holder.execute(
            "SELECT 1 FROM flow_tracker_processes WHERE id = %s FOR UPDATE", (ahead.process_id,)
        )
        ending = threading.Thread(target=finish_job, args=(ahead, Status.COMPLETED))
        ending.start()
        _wait_until(lambda: _lock_waits(url) >= 1, "the first write to wait on the lock")
        yield
        holder.rollback()  # the write ahead goes in, then the group behind it
    ending.join(WAIT_S)


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """An empty PostgreSQL tracking database: the write ahead is held on a row lock."""
    _truncate(pg_server_url)
    yield pg_server_url
    flow_tracker.reset()


@pytest.mark.postgres
def test_writes_made_while_another_is_stored_go_in_one_transaction_after_it(pg_url: str) -> None:
    database_url = pg_url
    flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
    ahead = _start("ahead")
    copy = _lost_job_with_a_copy("requeued")
    group = runtime.writer().group
    groups, requests = group.groups, group.requests
    started: dict[str, Any] = {}

    def start_in_thread(job_id: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: started.__setitem__(job_id, _start(job_id)))
        thread.start()
        return thread

    with _write_held(database_url, ahead):
        threads = [start_in_thread(job_id) for job_id in ("b", "c", "requeued")]
        _wait_until(lambda: len(group._pending) == 3, "three threads to wait behind it")
    for thread in threads:
        thread.join(WAIT_S)
    # The write ahead alone, then the three behind it together.
    assert (group.groups - groups, group.requests - requests) == (2, 4)
    assert _status("ahead") is Status.COMPLETED
    assert _status("b") is Status.RUNNING and _status("c") is Status.RUNNING
    # Each thread learns of its own job's copy only.
    assert _REQUEUED_COPIES.get(started["requeued"]) == copy
    assert started["b"] not in _REQUEUED_COPIES and started["c"] not in _REQUEUED_COPIES
    for job_id in ("b", "c", "requeued"):
        finish_job(started[job_id], Status.COMPLETED)


def test_jobs_on_many_threads_store_every_start_and_end(tracked: str) -> None:
    """However the threads happen to group, every job's rows are stored, in order."""
    count, threads = 40, 8

    def run(first: int) -> None:
        for n in range(first, count, threads):
            tracker = _start(f"job-{n}")
            with tracker.flow("step"):
                tracker.info("working", data={"n": n})
            finish_job(tracker, Status.COMPLETED if n % 3 else Status.FAILED)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT_S * 2)
    for n in range(count):
        record = flow_tracker.get_process(process_id_for("celery", f"job-{n}"))
        assert record is not None
        assert record.status is (Status.COMPLETED if n % 3 else Status.FAILED)
        assert [flow.name for flow in record.flows] == ["step"]
        assert [log.message for log in record.all_logs()] == ["working"]
        assert [change.status for change in record.history] == ["running", record.status.value]


@pytest.mark.postgres
def test_a_record_the_database_refuses_costs_only_its_own_thread(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One thread's bad record in a group: the others are stored, it alone goes to the writer."""
    database_url = pg_url
    flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
    ahead = _start("ahead")
    writer = runtime.writer()
    group = writer.group
    bad_id = process_id_for("celery", "bad")
    # A running row PostgreSQL refuses (an attempt past its integer column).
    now = time.time()
    fields = {"name": "bad", "category": "jobs", "status": "running", "created_at": now}
    bad = (ev.PROCESS_START, bad_id.int, {**fields, "attempt": 2**70})
    errors: list[str] = []
    monkeypatch.setattr(writer, "on_error", lambda exc, what: errors.append(what))
    results: dict[str, Any] = {}
    with _write_held(database_url, ahead):
        good = threading.Thread(target=lambda: results.__setitem__("good", _start("good")))
        refused = threading.Thread(
            target=lambda: results.__setitem__("bad", writer.write_now((bad,)))
        )
        good.start()
        refused.start()
        _wait_until(lambda: len(group._pending) == 2, "two threads to wait behind it")
    for thread in (good, refused):
        thread.join(WAIT_S)
    assert _status("good") is Status.RUNNING
    assert results["bad"].stored is False  # kept for the writer thread, which isolates it
    assert errors[0] == "storing a record at once"  # then the writer drops it alone
    finish_job(results["good"], Status.COMPLETED)


def test_a_thread_waits_for_a_stuck_write_ahead_of_it_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write that never finishes (a server that stopped answering) does not hold the rest."""
    from flow_tracker import group_commit
    from flow_tracker.group_commit import GroupCommit, Request

    monkeypatch.setattr(group_commit, "GROUP_WAIT_S", 0.2)
    release = threading.Event()
    stored: list[list[Request]] = []

    def store_group(take: Callable[[], list[Request]]) -> None:
        release.wait(WAIT_S)  # stuck before it even took the group
        group = take()
        stored.append(group)
        for request in group:
            request.stored = True

    commits = GroupCommit(store_group)
    first, second = Request((), None), Request((), None)
    writing = threading.Thread(target=commits.submit, args=(first,))
    writing.start()
    _wait_until(lambda: commits._writing, "the first write to start")
    commits.submit(second)  # returns after GROUP_WAIT_S, not when the first write ends
    assert isinstance(second.error, TimeoutError) and not second.stored
    release.set()
    writing.join(WAIT_S)
    assert first.stored and first.error is None
    assert stored == [[first]]  # the one that gave up was not stored twice
