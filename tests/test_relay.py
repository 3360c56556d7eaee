"""The relay: a work-horse's batches stored by the worker that forked it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import make_url

import flow_tracker
from flow_tracker import Status, relay, runtime
from flow_tracker import events as ev
from flow_tracker.sink import MemorySink
from flow_tracker.store.bulk import Prepared
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import processes
from flow_tracker.tracker import Tracker
from tests.support.proxy import TcpProxy


def wait_for(predicate: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in {seconds:.0f} s: {what}"
        time.sleep(0.05)


def _job_events(name: str = "horse job") -> tuple[uuid.UUID, list[ev.Change]]:
    """A job's start, one flow with a log entry, and its end, as a work-horse records them."""
    capture = MemorySink()
    tracker = Tracker(
        name,
        category="jobs",
        metadata={"shard": 3},
        settings=flow_tracker.config.current(),
        writer=capture,
        process_id=uuid.uuid4(),
    )
    tracker._begin(None, {"job_system": "rq", "job_id": uuid.uuid4().hex})
    with tracker.flow("step") as flow:
        flow.info("inside")
    tracker.complete()
    return tracker.process_id, capture.events


def _serve(store: Store) -> tuple[relay.RelayClient, socket.socket]:
    horse_end, worker_end = socket.socketpair()
    relay.RelayServer(store, runtime.writer().batch_writer).add(worker_end)
    return relay.RelayClient(horse_end), worker_end


def _status(process_id: uuid.UUID) -> Status | None:
    record = flow_tracker.get_process(process_id)
    return None if record is None else record.status


def test_a_work_horses_batches_are_stored_by_the_worker_and_answered(tracked: str) -> None:
    process_id, events = _job_events()
    builder = runtime.writer().batch_writer
    client, _ = _serve(runtime.store())
    rows, copy, stored = client.store(builder.prepare(events[:1]))
    assert (rows, copy, stored) == (2, {}, True)  # the running row and its history row
    assert _status(process_id) is Status.RUNNING
    client.store(builder.prepare(events[1:]))
    record = flow_tracker.get_process(process_id)
    assert record is not None and record.status is Status.COMPLETED
    assert [f.name for f in record.flows] == ["step"]
    assert record.flows[0].logs[0].message == "inside"
    assert [h.status for h in record.history] == ["running", "completed"]


def test_a_requeued_copy_is_found_through_the_relay(tracked: str) -> None:
    process_id, events = _job_events()
    copy = uuid.uuid4()
    now = flow_tracker.store.types.as_utc("2026-01-01T00:00:00")
    row = {"name": "horse job", "category": "jobs", "created_at": now}
    runtime.store().ensure_schema()
    with runtime.store().engine.begin() as conn:
        conn.execute(insert(processes).values(id=process_id, status="lost", **row))
        conn.execute(
            insert(processes).values(id=copy, status="queued", requeued_from_id=process_id, **row)
        )
    client, _ = _serve(runtime.store())
    prepared = runtime.writer().batch_writer.prepare(events[:1], copies_of=(process_id.int,))
    assert client.store(prepared)[1] == {process_id.int: copy}


@pytest.mark.postgres
def test_the_worker_keeps_a_work_horses_batches_while_the_database_is_away(
    pg_server_url: str,
) -> None:
    url = make_url(pg_server_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    through = url.set(port=proxy.port).render_as_string(hide_password=False)
    flow_tracker.configure(database_url=through, log_to_stdlib=False)
    worker_store = runtime.store()
    worker_store.ensure_schema()
    process_id, events = _job_events()
    builder = runtime.writer().batch_writer
    client, _ = _serve(worker_store)
    try:
        client.store(builder.prepare([events[0]]))  # a connection to keep
        proxy.stop()
        for event in events[1:]:  # the flow, its log, the end: kept, in order
            assert client.store(builder.prepare([event]))[2] is False
        proxy.start()
        reader = Store(pg_server_url)
        try:

            def completed() -> bool:
                found = flow_tracker.store.queries.get_process(reader, process_id)
                return found is not None and found.status is Status.COMPLETED

            wait_for(completed, "the kept batches stored once the database is back")
            record = flow_tracker.store.queries.get_process(reader, process_id)
        finally:
            reader.dispose()
    finally:
        proxy.stop()
    assert record is not None and [f.status for f in record.flows] == [Status.COMPLETED]
    assert record.flows[0].logs[0].message == "inside"


@pytest.mark.postgres
def test_a_batch_the_database_refuses_is_answered_as_refused(pg_server_url: str) -> None:
    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False)
    runtime.store().ensure_schema()
    client, _ = _serve(runtime.store())
    bad = Prepared(
        1, [], ("INSERT INTO flow_tracker_processes (id) VALUES ('x'::uuid)", []), (), True
    )
    with pytest.raises(relay.RelayRefusedError):
        client.store(bad)
    _, events = _job_events()
    assert client.store(runtime.writer().batch_writer.prepare(events))[2]  # and it goes on


def test_a_relay_that_stopped_answering_is_dropped_and_the_horse_writes_itself(
    tracked: str,
) -> None:
    horse_end, worker_end = socket.socketpair()
    worker_end.close()  # the worker is gone
    client = relay.RelayClient(horse_end)
    process_id, events = _job_events()
    with pytest.raises(relay.RelayUnavailableError):
        client.store(runtime.writer().batch_writer.prepare(events))
    writer = runtime.writer()
    writer._relay = relay.RelayClient(socket.socketpair()[0])
    writer._relay._sock.close()
    assert writer.write_now(events).stored  # straight to the database instead
    assert writer._relay is None
    assert _status(process_id) is Status.COMPLETED


@pytest.fixture
def forked_horse(tracked: str) -> Callable[[list[ev.Change]], int]:
    """Runs a function in a forked child the way RQ's worker forks a work-horse."""

    def run(events: list[ev.Change]) -> int:
        writer = runtime.writer()
        pair = relay.open_for_child()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the work-horse; its exit status says how it went
            code = 1
            try:
                horse_writer = runtime.writer()
                if horse_writer._relay is not None and horse_writer.write_now(events).stored:
                    code = 0
            finally:
                os._exit(code)
        relay.after_fork_in_parent(pair, runtime.store(), writer.batch_writer)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    return run


def test_a_forked_work_horse_stores_through_the_worker_that_forked_it(
    forked_horse: Callable[[list[ev.Change]], int],
) -> None:
    process_id, events = _job_events()
    assert forked_horse(events) == 0, "the work-horse had no relay or its write failed"
    assert _status(process_id) is Status.COMPLETED
