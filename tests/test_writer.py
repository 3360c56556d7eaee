"""The write path: the database going away, bounded memory, bad events, forks, exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import flow_tracker
from flow_tracker import Status, runtime
from flow_tracker import events as ev
from flow_tracker.ids import new_id_int
from flow_tracker.redaction import Redactor
from flow_tracker.store.bulk import BatchWriter
from flow_tracker.store.engine import Store
from flow_tracker.store.queries import get_process
from flow_tracker.workflows import threads
from flow_tracker.writer import Writer
from tests.support.proxy import TcpProxy


def wait_for(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


@pytest.mark.postgres
def test_a_job_storing_its_own_queue_puts_it_back_in_order_when_the_database_fails(
    proxied_pg: tuple[str, TcpProxy],
) -> None:
    url, proxy = proxied_pg
    # A long flush interval: the job's end finds its flows still queued and
    # stores them itself (Writer.write_through), in front of nothing else.
    flow_tracker.configure(database_url=url, log_to_stdlib=False, flush_interval=60)
    with flow_tracker.track("warm") as warm:
        warm.info("connects")
    tracker = flow_tracker.start("interrupted")
    for step in range(5):
        with tracker.flow(f"step {step}") as flow:
            flow.info("queued")
    proxy.stop()
    tracker.complete()  # the store fails: queued again for the writer, nothing lost
    assert runtime.writer().healthy is False
    proxy.start()
    wait_for(lambda: _status(tracker.process_id) is Status.COMPLETED, seconds=60)
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None
    assert [f.name for f in record.flows] == [f"step {i}" for i in range(5)]
    assert {f.status for f in record.flows} == {Status.COMPLETED}


def test_job_runs_and_returns_its_result_when_database_is_unreachable() -> None:
    flow_tracker.configure(
        database_url="postgresql://postgres@127.0.0.1:1/nowhere", verify=False, log_to_stdlib=False
    )

    @flow_tracker.track("unreachable")
    def job(x: int) -> int:
        with flow_tracker.flow("step") as flow:
            flow.info("working", data={"x": x})
            flow_tracker.current().progress.increment()  # type: ignore[union-attr]
        return x + 1

    assert [job(i) for i in range(5)] == [1, 2, 3, 4, 5]
    with pytest.raises(KeyError):
        with flow_tracker.track("unreachable-failing"):
            raise KeyError("the job's own error")


def test_configure_reports_an_unreachable_server_as_one_clear_error() -> None:
    with pytest.raises(flow_tracker.DatabaseUnavailableError, match="cannot reach"):
        flow_tracker.configure(database_url="postgresql://postgres@127.0.0.1:1/nowhere")


def test_records_made_while_database_is_away_are_stored_when_it_returns(
    proxied_pg: tuple[str, TcpProxy],
) -> None:
    url, proxy = proxied_pg
    flow_tracker.configure(database_url=url, log_to_stdlib=False)
    with flow_tracker.track("before outage") as before:
        before.info("stored at once")
    assert flow_tracker.get_process(before.process_id) is not None

    proxy.stop()
    ids = []
    for index in range(20):
        with flow_tracker.track("during outage", metadata={"i": index}) as tracker:
            with tracker.flow("step") as flow:
                flow.info("kept in memory")
        ids.append(tracker.process_id)
    assert runtime.writer().healthy is False
    proxy.start()

    def all_stored() -> bool:
        page = flow_tracker.list_processes(name="during outage", limit=100)
        return len(page.items) == 20 and all(p.status is Status.COMPLETED for p in page)

    wait_for(all_stored)
    record = flow_tracker.get_process(ids[-1])
    assert record is not None and [f.name for f in record.flows] == ["step"]
    assert record.flows[0].logs[0].message == "kept in memory"


def test_full_buffer_drops_logs_and_counts_them_on_the_process(
    proxied_pg: tuple[str, TcpProxy],
) -> None:
    url, proxy = proxied_pg
    flow_tracker.configure(database_url=url, buffer_size=100, log_to_stdlib=False)
    tracker = flow_tracker.start("flood")
    flow_tracker.flush()
    proxy.stop()
    for index in range(1_000):
        tracker.debug(f"debug {index}")
        tracker.info(f"info {index}")
    proxy.start()
    tracker.complete()
    wait_for(lambda: _status(tracker.process_id) is Status.COMPLETED)
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None
    stored = len(record.logs)
    assert record.dropped_logs > 0
    assert stored + record.dropped_logs == 2_000
    # Debug entries go first: every info entry that fitted is kept before any debug one.
    kept_debug = sum(1 for e in record.logs if e.level == "debug")
    kept_info = stored - kept_debug
    assert kept_info > kept_debug


def test_under_memory_pressure_whole_flows_are_dropped_never_just_their_end(
    proxied_pg: tuple[str, TcpProxy],
) -> None:
    url, proxy = proxied_pg
    flow_tracker.configure(database_url=url, buffer_size=50, log_to_stdlib=False)
    tracker = flow_tracker.start("flows under pressure")
    flow_tracker.flush()
    proxy.stop()
    for index in range(300):
        with tracker.flow(f"step {index}") as flow:
            flow.info("inside")
    proxy.start()
    tracker.complete()
    wait_for(lambda: _status(tracker.process_id) is Status.COMPLETED)
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None
    flows = list(record.all_flows())
    assert 0 < len(flows) < 300
    assert all(f.status is Status.COMPLETED and f.finished_at is not None for f in flows)
    assert len(flows) + len(record.all_logs()) + record.dropped_logs == 600


def _status(process_id: Any) -> Status | None:
    status = flow_tracker.get_status(process_id)
    return None if status is None else status.status


def test_an_event_the_database_refuses_is_isolated_and_the_rest_stored(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    errors: list[str] = []
    writer = Writer(
        store,
        BatchWriter("sqlite", Redactor(), 1000),
        capacity=1000,
        batch_size=1000,
        flush_interval=0.05,
        on_error=lambda exc, where: errors.append(where),
    )
    process = new_id_int()
    now = time.time()
    row = {"name": "p", "category": "jobs", "status": "running", "created_at": now}
    writer.put((ev.PROCESS_START, process, row))
    for position in range(10):
        # position 5 does not fit a 64-bit integer column: the database refuses it.
        bad = 2**70 if position == 5 else position
        event = (ev.LOG, new_id_int(), process, None, "info", f"m{position}", None, now, bad)
        writer.put_log(event, 20)
    assert writer.flush(10)
    writer.close(5)
    record = get_process(store, uuid.UUID(int=process))
    assert record is not None
    assert sorted(e.message for e in record.logs) == [f"m{i}" for i in range(10) if i != 5]
    assert writer.poison_events == 1 and len(errors) == 1
    store.dispose()


def test_forked_child_records_its_own_processes_without_the_parents_buffer(
    database_url: str,
) -> None:
    flow_tracker.configure(database_url=database_url, flush_interval=30.0, log_to_stdlib=False)
    with flow_tracker.track("warm up"):
        pass  # the parent now holds a pooled connection
    parent = flow_tracker.start("parent")
    parent.info("buffered in the parent only")
    # A step another test left on this process's pool may be inside the database driver;
    # forked in that instant, the child would inherit its locks held.
    assert threads.wait_idle(60.0), threads.describe()
    read_end, write_end = os.pipe()
    child_pid = os.fork()
    if child_pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            with flow_tracker.track("child") as child:
                child.info("from the child")
            os.write(write_end, f"{child.process_id} {runtime.writer().rows_written}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, exit_status = os.waitpid(child_pid, 0)
    child_id, rows_written = os.read(read_end, 200).decode().split()
    os.close(read_end)
    assert os.waitstatus_to_exitcode(exit_status) == 0
    # The child stored its process row, its log entry and its two status changes
    # (running, completed), nothing of the parent's.
    assert int(rows_written) == 4
    parent.complete()
    child_record = flow_tracker.get_process(child_id)
    parent_record = flow_tracker.get_process(parent.process_id)
    assert child_record is not None and [e.message for e in child_record.logs] == ["from the child"]
    assert parent_record is not None
    assert [e.message for e in parent_record.logs] == ["buffered in the parent only"]
    assert parent_record.status is Status.COMPLETED


def test_buffered_records_are_stored_at_interpreter_exit(sqlite_url: str, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import flow_tracker
        flow_tracker.configure(database_url={sqlite_url!r}, flush_interval=60.0,
                               completion_timeout=0)
        tracker = flow_tracker.start("exits with a full buffer")
        for i in range(500):
            tracker.info(f"entry {{i}}")
        print(tracker.process_id)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    flow_tracker.configure(database_url=sqlite_url)
    record = flow_tracker.get_process(done.stdout.strip())
    assert record is not None and len(record.logs) == 500
    assert record.status is Status.RUNNING


def test_several_processes_write_one_sqlite_file_at_once(sqlite_url: str) -> None:
    script = textwrap.dedent(
        f"""
        import flow_tracker, sys
        flow_tracker.configure(database_url={sqlite_url!r}, log_to_stdlib=False)
        for i in range(50):
            with flow_tracker.track("multi", metadata={{"worker": int(sys.argv[1])}}) as t:
                with t.flow("step") as f:
                    for j in range(20):
                        f.info("entry")
        """
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(n)], stderr=subprocess.PIPE)
        for n in range(4)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err.decode()
        assert b"internal error" not in err
    flow_tracker.configure(database_url=sqlite_url)
    page = flow_tracker.list_processes(name="multi", limit=500)
    assert len(page.items) == 200
    assert all(p.status is Status.COMPLETED for p in page)
    for worker_no in range(4):
        assert len(flow_tracker.list_processes(metadata={"worker": worker_no}, limit=500)) == 50
    sample = flow_tracker.get_process(page.items[0].id)
    assert sample is not None and len(sample.flows[0].logs) == 20
