"""flow_tracker.testing.capture: what a job records, read back with no database."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import pytest

import flow_tracker
from flow_tracker import Status, config, heartbeat, runtime, tracker
from flow_tracker import events as ev
from flow_tracker.errors import Skipped, UsageError
from flow_tracker.sink import MemorySink, Sink
from flow_tracker.testing import JOB_SYSTEM, Captured, capture, run_job
from flow_tracker.writer import Writer


@pytest.fixture(autouse=True)
def empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder, so that a default SQLite file would show up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOW_TRACKER_DATABASE_URL", raising=False)
    monkeypatch.delenv("FLOW_TRACKER_ENABLED", raising=False)
    return tmp_path


@flow_tracker.track("import_orders", metadata={"tenant": "acme"})
def import_orders(rows: list[int]) -> int:
    job = flow_tracker.current()
    assert job is not None
    job.progress.total = len(rows)
    with flow_tracker.flow("load", metadata={"source": "csv"}) as load:
        load.info("loaded", data={"rows": len(rows)})
        with load.flow("validate") as check:
            check.warning("odd row", data={"row": rows[0]})
            check.update_metadata(checked=len(rows))
    with flow_tracker.flow("store"):
        for _ in rows:
            job.progress.increment()
        flow_tracker.log("stored", level="debug")
    job.update_metadata(imported=len(rows))
    job.error("one left over")
    return len(rows)


def test_a_decorated_job_comes_back_with_its_flow_tree_logs_metadata_and_progress() -> None:
    with capture() as captured:
        assert import_orders([7, 8, 9]) == 3
    process = captured.process("import_orders")
    assert (process.status, process.error, process.category) == (Status.COMPLETED, None, "jobs")
    assert process.metadata == {"tenant": "acme", "imported": 3}
    assert (process.progress_current, process.progress_total) == (3.0, 3.0)
    assert [flow.name for flow in process.flows] == ["load", "store"]
    assert [(f.name, f.depth) for f in process.all_flows()] == [
        ("load", 0),
        ("validate", 1),
        ("store", 0),
    ]
    validate = process.flow("validate")
    assert validate.parent_id == process.flow("load").id
    assert validate.metadata == {"checked": 3}
    assert validate.logs[0].data == {"row": 7}
    assert [(e.level, e.message) for e in process.all_logs()] == [
        ("info", "loaded"),
        ("warning", "odd row"),
        ("debug", "stored"),
        ("error", "one left over"),
    ]
    assert [e.message for e in process.logs] == ["one left over"]  # outside any flow


def test_a_failing_job_records_its_error_and_the_exception_goes_on_unchanged() -> None:
    boom = KeyError("card")

    @flow_tracker.track("charge")
    def charge() -> None:
        with flow_tracker.flow("call gateway"):
            raise boom

    with capture() as captured, pytest.raises(KeyError) as raised:
        charge()
    assert raised.value is boom
    process = captured.process("charge")
    assert process.status is Status.FAILED
    assert process.error is not None and process.error.type == "KeyError"
    assert process.error.message == "'card'" and "raise boom" in (process.error.traceback or "")
    gateway = process.flow("call gateway")
    assert gateway.status is Status.FAILED and gateway.error is not None
    assert (gateway.error.type, gateway.error.message) == ("KeyError", "'card'")


def test_async_blocks_and_threads_bound_to_the_process_are_captured() -> None:
    @flow_tracker.track("fetch")
    async def fetch() -> None:
        async with flow_tracker.flow("page 1"):
            await asyncio.sleep(0)
            flow_tracker.log("got page 1")

    def in_thread() -> None:
        flow_tracker.log("from a thread")

    with capture() as captured:
        asyncio.run(fetch())
        with flow_tracker.track("threaded"):
            worker = threading.Thread(target=flow_tracker.bind(in_thread))
            worker.start()
            worker.join()
    assert captured.process("fetch").flow("page 1").logs[0].message == "got page 1"
    assert captured.process("threaded").logs[0].message == "from a thread"


def test_a_process_started_inside_another_names_its_parent() -> None:
    with capture() as captured, flow_tracker.track("outer") as outer:
        with flow_tracker.track("inner", category="services"):
            pass
    inner = captured.process("inner")
    assert inner.parent_process_id == outer.process_id and inner.category == "services"
    assert [p.name for p in captured.processes] == ["outer", "inner"]


def test_a_process_still_running_reads_as_running_until_it_completes() -> None:
    with capture() as captured:
        started = flow_tracker.start("manual")
        started.info("half way")
        assert captured.process("manual").status is Status.RUNNING
        started.complete()
        assert captured.process("manual").status is Status.COMPLETED
    assert captured.messages() == ["half way"]


def test_logs_filter_by_level_and_unknown_levels_are_refused() -> None:
    with capture() as captured, flow_tracker.track("levels") as job:
        job.warn("w1")
        job.info("i1")
        job.log("w2", level="warning")
    assert captured.messages("warn") == captured.messages("warning") == ["w1", "w2"]
    assert captured.logs(level="critical") == []
    with pytest.raises(UsageError):
        captured.logs(level="loud")


def test_looking_up_what_was_not_recorded_says_what_was() -> None:
    with capture() as captured:
        for _ in range(2):
            with flow_tracker.track("twice") as job, job.flow("only step"):
                pass
    with pytest.raises(LookupError, match=r"2 process called 'twice'"):
        captured.process("twice")
    with pytest.raises(LookupError, match=r"0 process called 'never'"):
        captured.process("never")
    with pytest.raises(LookupError, match=r"flows there: \['only step'\]"):
        captured.processes[0].flow("missing")
    assert [f.name for f in captured.flows("only step")] == ["only step", "only step"]


def test_nothing_is_stored_and_no_database_file_is_made(empty_folder: Path) -> None:
    assert config.in_force() is None
    with capture() as captured, flow_tracker.track("no db") as job:
        job.info("kept in memory")
    assert captured.process("no db").logs[0].message == "kept in memory"
    assert list(empty_folder.iterdir()) == []  # no flow_tracker.db
    assert config.in_force() is None  # nothing was configured, and still nothing is
    assert runtime._writer is None and runtime._store is None


def test_the_configured_settings_and_writer_are_back_after_the_block_even_on_error(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'never-opened.db'}"
    configured = flow_tracker.configure(database_url=url, enabled=False, verify=False)
    kept: list[Captured] = []

    def record_then_fail() -> None:
        with capture() as captured:
            kept.append(captured)
            assert config.current() is not configured and config.current().enabled
            with flow_tracker.track("while disabled"):
                pass
            raise RuntimeError("the test's own")

    with pytest.raises(RuntimeError, match="the test's own"):
        record_then_fail()
    captured = kept[0]
    assert config.in_force() is configured
    assert runtime._capture is None
    assert captured.process("while disabled").status is Status.COMPLETED
    with flow_tracker.track("after the block") as after:  # disabled again: recorded nowhere
        pass
    assert isinstance(after, flow_tracker.NullTracker)
    assert [p.name for p in captured.processes] == ["while disabled"]
    assert not (tmp_path / "never-opened.db").exists()


def test_captures_nest_each_keeping_its_own_processes() -> None:
    with capture() as outer:
        with flow_tracker.track("first"):
            pass
        with capture() as inner, flow_tracker.track("second"):
            pass
        with flow_tracker.track("third"):
            pass
    assert [p.name for p in outer.processes] == ["first", "third"]
    assert [p.name for p in inner.processes] == ["second"]


def test_a_captured_process_gets_no_heartbeat_and_runs_no_start_hook() -> None:
    called: list[object] = []
    tracker.BEGIN_HOOKS.append(called.append)
    try:
        with capture(), flow_tracker.track("quiet") as job:
            assert job.process_id.int not in heartbeat.HEARTBEAT._processes
    finally:
        tracker.BEGIN_HOOKS.remove(called.append)
    assert called == []


def test_run_job_records_a_job_function_as_its_worker_would() -> None:
    def send_welcome(user_id: int) -> str:
        with flow_tracker.flow("send"):
            flow_tracker.log(f"Sending email to user {user_id}")
        return "sent"

    with capture() as captured:
        assert run_job(send_welcome, 42) == "sent"
    process = captured.process()
    assert process.name == f"{__name__}.{send_welcome.__qualname__}"  # as RQ names it
    assert (process.status, process.job_system) == (Status.COMPLETED, JOB_SYSTEM)
    assert uuid.UUID(hex=process.job_id or "")
    assert process.flow("send").logs[0].message == "Sending email to user 42"


def test_run_job_ends_a_failing_job_failed_and_a_skipped_one_skipped() -> None:
    class Task:
        """Stands for a Celery task object: called directly, named by its ``name``."""

        name = "shop.charge"

        def __call__(self, amount: int) -> None:
            raise ValueError(f"declined {amount}")

    def skipping() -> None:
        raise Skipped("another charge holds the card")

    with capture() as captured:
        with pytest.raises(ValueError, match="declined 5"):
            run_job(Task(), 5)
        assert run_job(skipping) is None
    failed, skipped = captured.processes
    assert (failed.name, failed.status) == ("shop.charge", Status.FAILED)
    assert failed.error is not None and failed.error.message == "declined 5"
    assert skipped.status is Status.SKIPPED
    assert skipped.metadata["skip_reason"] == "another charge holds the card"


def test_the_writer_and_the_memory_sink_are_both_sinks() -> None:
    # Checked by mypy (the Tracker takes any Sink), and at run time here.
    sinks: list[type[Sink]] = [Writer, MemorySink]
    for kind in sinks:
        for name in ("put", "put_flow", "put_log", "write_now", "write_through", "flush"):
            assert callable(getattr(kind, name)), (kind, name)
    assert (Writer.durable, MemorySink.durable) == (True, False)


def test_events_are_the_raw_changes_in_order() -> None:
    with capture() as captured, flow_tracker.track("raw") as job:
        job.info("one")
    kinds = [event[0] for event in captured.events]
    assert kinds == [ev.PROCESS_START, ev.LOG, ev.PROCESS_UPDATE]  # the last: its end


def test_a_job_enqueued_inside_a_capture_is_captured_and_no_database_is_made(
    empty_folder: Path,
) -> None:
    """The enqueue path records into the capture too (a queue in eager or immediate mode)."""
    from flow_tracker import jobs

    with capture() as captured:
        process_id = jobs.record_enqueued(
            job_system="testq", job_id="job-1", name="send_email", queue="mail", args=(42,)
        )
    assert process_id is not None
    assert [p.name for p in captured.processes] == ["send_email"]
    assert captured.process("send_email").status == "queued"
    assert list(empty_folder.iterdir()) == []
