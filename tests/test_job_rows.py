"""A job's durable rows: written by the driver in one round trip, read back exactly."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import select

import flow_tracker
from flow_tracker import Status, jobs, runtime
from flow_tracker.ids import process_id_for
from flow_tracker.records import ProcessRecord
from flow_tracker.store import queries
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import processes


@pytest.fixture
def store(tracked: str) -> Iterator[Store]:
    """A second store on the tracked database, read without flushing the writer."""
    reader = Store(tracked)
    yield reader
    reader.dispose()


def _read(store: Store, process_id: uuid.UUID) -> ProcessRecord:
    record = queries.get_process(store, process_id)
    assert record is not None, f"process {process_id} was not stored"
    return record


def _read_without_flush(url: str, process_id: uuid.UUID) -> ProcessRecord:
    """The process as stored now, read through a store of its own (no writer flush)."""
    reader = Store(url)
    try:
        return _read(reader, process_id)
    finally:
        reader.dispose()


def test_a_jobs_queued_running_and_final_rows_are_stored_as_given(store: Store) -> None:
    payload = {"task": "shop.charge", "args": [7], "kwargs": {"api_key": "kept for re-enqueue"}}
    process_id = jobs.record_enqueued(
        job_system="celery",
        job_id="job-1",
        name="shop.charge",
        queue="payments",
        args=[7],
        kwargs={"api_key": "sk_live_123", "note": "<script>x</script>"},
        payload=payload,
        max_attempts=3,
    )
    assert process_id == process_id_for("celery", "job-1")
    queued = _read(store, process_id)  # stored before record_enqueued returned
    assert queued.status is Status.QUEUED
    assert queued.queued_at is not None and queued.queue == "payments"
    assert queued.job_args == {
        "args": [7],
        "kwargs": {"api_key": "[REDACTED]", "note": "<script>x</script>"},
    }

    tracker = jobs.start_job(
        job_system="celery", job_id="job-1", name="shop.charge", queue="payments", attempt=1
    )
    running = _read(store, process_id)  # durable start: stored before the job's code
    assert running.status is Status.RUNNING
    assert running.host and running.pid and running.started_at is not None
    assert running.queued_at == queued.queued_at  # the upsert keeps what enqueue wrote

    jobs.finish_job(tracker, Status.FAILED, ValueError("card declined"))
    done = _read(store, process_id)  # stored before finish_job returned
    assert done.status is Status.FAILED
    assert done.error is not None and done.error.message == "card declined"
    assert done.finished_at is not None and done.duration_ms is not None
    assert [h.status for h in done.history] == ["queued", "running", "failed"]
    assert done.history[-1].reason == "ValueError: card declined"
    with store.engine.connect() as conn:
        stored_payload = conn.execute(
            select(processes.c.job_payload).where(processes.c.id == process_id)
        ).scalar()
    assert stored_payload == payload  # not redacted: it re-enqueues the job


def test_a_final_state_is_stored_after_the_jobs_own_buffered_flows(tracked: str) -> None:
    # A long flush interval: only the end of the job can store what it buffered.
    flow_tracker.configure(database_url=tracked, log_to_stdlib=False, flush_interval=60)
    with flow_tracker.track("import") as tracker:
        for step in range(40):  # more rows than fit one statement: COPY on PostgreSQL
            with flow_tracker.flow(f"step {step}") as flow:
                flow.info("row", data={"step": step})
        process_id = tracker.process_id
    record = _read_without_flush(tracked, process_id)
    assert record.status is Status.COMPLETED
    assert len(record.flows) == 40
    assert {f.status for f in record.flows} == {Status.COMPLETED}
    assert [len(f.logs) for f in record.flows] == [1] * 40


def test_a_small_job_is_stored_whole_by_its_final_write(tracked: str) -> None:
    flow_tracker.configure(database_url=tracked, log_to_stdlib=False, flush_interval=60)
    with flow_tracker.track("small") as tracker:
        with flow_tracker.flow("only") as flow:
            flow.warning("careful", data={"n": 1})
        process_id = tracker.process_id
    record = _read_without_flush(tracked, process_id)
    assert record.status is Status.COMPLETED
    assert [f.name for f in record.flows] == ["only"]
    assert [(log.level, log.message) for log in record.flows[0].logs] == [("warning", "careful")]


@pytest.mark.postgres
def test_a_kept_connection_the_server_closed_is_replaced_and_the_write_kept(
    pg_server_url: str,
) -> None:
    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False)
    first = jobs.record_enqueued(job_system="rq", job_id="before", name="job", queue="q")
    assert first is not None
    database = pg_server_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'flow-tracker' AND datname = %s",
            (database,),
        ).fetchall()
    assert ended, "the kept connection was not found to close"
    stored = runtime.writer().write_now(
        ((flow_tracker.events.PROCESS_START, process_id_for("rq", "after").int, _queued_row()),)
    )
    assert stored.stored, "the write went to the buffer instead of a new connection"
    assert runtime.writer().healthy


@pytest.mark.postgres
def test_a_statement_the_server_forgot_is_prepared_again(pg_server_url: str) -> None:
    """A pooler in front may DISCARD ALL between two uses: the write is stored all the same."""
    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False, flush_interval=60)
    assert jobs.record_enqueued(job_system="rq", job_id="first", name="job", queue="q")
    errors = runtime.internal_error_count()
    runtime.store().write_connections.run(lambda conn: conn.execute("DEALLOCATE ALL"))
    second = jobs.record_enqueued(job_system="rq", job_id="second", name="job", queue="q")
    assert second is not None  # the same statement as the first: prepared, then forgotten
    assert runtime.writer().stats()["buffered"] == 0, "the write went to the buffer"
    assert runtime.internal_error_count() == errors


def _queued_row() -> dict[str, object]:
    now = time.time()
    return {
        "name": "job",
        "category": "jobs",
        "status": "queued",
        "created_at": now,
        "queued_at": now,
        "updated_at": now,
        "job_system": "rq",
        "job_id": "after",
        "attempt": 1,
    }


def test_warm_up_rehearses_the_job_statements_and_stores_nothing(tracked: str) -> None:
    jobs.warm_up()
    reader = Store(tracked)
    try:
        with reader.engine.connect() as conn:
            assert conn.execute(select(processes.c.id)).first() is None
    finally:
        reader.dispose()


def test_threads_writing_at_once_take_turns_on_one_connection(pg_server_url: str) -> None:
    store = Store(pg_server_url)
    store.ensure_schema()
    lock = threading.Lock()
    inside, most, backends = [0], [0], set()
    both_in = threading.Event()

    def write(conn: Any) -> None:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            if inside[0] > 1:
                both_in.set()
        backends.add(conn.execute("SELECT pg_backend_pid()").fetchall()[0][0])
        # Stay until another thread is inside too: never, when they take turns (then
        # this waits its short while and lets the next one in); at once, when not.
        both_in.wait(0.05)
        with lock:
            inside[0] -= 1

    def many(take_turns: bool) -> None:
        def writes() -> None:
            for _ in range(5):
                store.write_connections.run(write, take_turns=take_turns)

        threads = [threading.Thread(target=writes) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    many(take_turns=True)
    assert most[0] == 1 and len(backends) == 1  # 30 writes, one connection, one at a time
    assert not both_in.is_set()
    many(take_turns=False)  # a workflow step's claim or end does not queue behind the rest
    assert both_in.is_set() and most[0] > 1
    store.dispose()
