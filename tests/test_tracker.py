"""The recording API (docs/usage.md), checked against rows on both backends."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import flow_tracker
from flow_tracker import Status
from flow_tracker.records import ProcessRecord


def stored(process_id: Any) -> ProcessRecord:
    record = flow_tracker.get_process(process_id)
    assert record is not None, "process was not stored"
    return record


class CustomError(Exception):
    pass


def test_gem_readme_track_example_stores_process_flows_and_logs(tracked: str) -> None:
    items = [1, 2, 3]
    with flow_tracker.track("MyProcess", category="services", metadata={"user_id": 123}) as tracker:
        tracker.log("Starting process", level="info")
        with tracker.flow("validate_input") as flow:
            flow.log("Validating...")
        with tracker.flow("process_data", metadata={"count": len(items)}) as flow:
            flow.log(f"Processing {len(items)} items")

    record = stored(tracker.process_id)
    assert record.name == "MyProcess"
    assert record.category == "services"
    assert record.status is Status.COMPLETED
    assert record.metadata == {"user_id": 123}
    assert record.duration_ms is not None and record.duration_ms >= 0
    assert record.started_at is not None and record.finished_at is not None
    assert [f.name for f in record.flows] == ["validate_input", "process_data"]
    assert record.flows[1].metadata == {"count": 3}
    assert [e.message for e in record.logs] == ["Starting process"]
    assert [e.message for e in record.flows[0].logs] == ["Validating..."]
    assert [e.message for e in record.flows[1].logs] == ["Processing 3 items"]
    assert all(f.status is Status.COMPLETED for f in record.flows)


def test_gem_readme_manual_start_and_complete(tracked: str) -> None:
    tracker = flow_tracker.start("ManualProcess", category="api")
    try:
        tracker.log("Starting...")
        with tracker.flow("step_1"):
            pass
        tracker.complete()
    except Exception as e:  # pragma: no cover - the example's shape
        tracker.complete(error=e)
        raise
    record = stored(tracker.process_id)
    assert (record.name, record.category, record.status) == (
        "ManualProcess",
        "api",
        Status.COMPLETED,
    )
    assert [f.name for f in record.flows] == ["step_1"]
    assert flow_tracker.current() is None


def test_manual_complete_with_error_marks_failed_with_traceback(tracked: str) -> None:
    tracker = flow_tracker.start("ManualProcess")
    try:
        raise CustomError("went wrong")
    except CustomError as e:
        tracker.complete(error=e)
    record = stored(tracker.process_id)
    assert record.status is Status.FAILED
    assert record.error is not None
    assert record.error.type.endswith("CustomError")
    assert record.error.message == "went wrong"
    assert "raise CustomError" in (record.error.traceback or "")


def test_exception_leaving_block_fails_flow_and_process_and_is_reraised_unchanged(
    tracked: str,
) -> None:
    original = CustomError("boom")

    def fail_inside() -> Any:
        with flow_tracker.track("Failing") as tracker, tracker.flow("outer") as outer:
            ids.append(tracker.process_id)
            with outer.flow("inner"):
                raise original

    ids: list[Any] = []
    with pytest.raises(CustomError) as caught:
        fail_inside()
    assert caught.value is original
    record = stored(ids[0])
    assert record.status is Status.FAILED
    outer_rec = record.flows[0]
    inner_rec = outer_rec.children[0]
    assert outer_rec.status is Status.FAILED and inner_rec.status is Status.FAILED
    assert inner_rec.error is not None and inner_rec.error.message == "boom"
    assert record.error is not None and "test_tracker" in (record.error.traceback or "")


def test_failed_flow_inside_completed_process_stays_failed(tracked: str) -> None:
    with flow_tracker.track("Recovers") as tracker:
        try:
            with tracker.flow("flaky"):
                raise ConnectionError("reset")
        except ConnectionError:
            tracker.warning("retrying")
        with tracker.flow("flaky"):
            pass
    record = stored(tracker.process_id)
    assert record.status is Status.COMPLETED
    assert [f.status for f in record.flows] == [Status.FAILED, Status.COMPLETED]
    assert record.flows[0].error is not None
    assert record.flows[0].error.type == "ConnectionError"


def test_flows_nest_to_any_depth_and_keep_sibling_order(tracked: str) -> None:
    depth = 40
    with flow_tracker.track("Deep") as tracker:
        nodes = [tracker.flow("level-0")]
        nodes[0].__enter__()
        for level in range(1, depth):
            child = nodes[-1].flow(f"level-{level}")
            child.__enter__()
            nodes.append(child)
        for node in reversed(nodes):
            node.__exit__(None, None, None)
        for index in range(10):
            with tracker.flow(f"sibling-{index}"):
                pass
    record = stored(tracker.process_id)
    chain = record.flows[0]
    for level in range(1, depth):
        assert len(chain.children) == 1
        chain = chain.children[0]
        assert chain.name == f"level-{level}"
        assert chain.depth == level
    assert [f.name for f in record.flows[1:]] == [f"sibling-{i}" for i in range(10)]


def test_module_level_flow_and_log_use_innermost_current_flow(tracked: str) -> None:
    @flow_tracker.flow("load_user")
    def load_user(user_id: int) -> dict[str, int]:
        flow_tracker.log("loading", data={"user_id": user_id})
        return {"id": user_id}

    with flow_tracker.track("MyJob") as tracker:
        user = load_user(7)
        with flow_tracker.flow("send_email") as flow:
            flow_tracker.log("sending", level="warning")
            assert flow_tracker.current() is tracker
            assert flow_tracker.current_flow() is flow
        flow_tracker.log("done")
    assert user == {"id": 7}
    record = stored(tracker.process_id)
    assert [f.name for f in record.flows] == ["load_user", "send_email"]
    assert record.flows[0].logs[0].data == {"user_id": 7}
    assert record.flows[1].logs[0].level == "warning"
    assert [e.message for e in record.logs] == ["done"]


def test_module_level_flow_and_log_outside_a_process_do_nothing() -> None:
    @flow_tracker.flow("helper")
    def helper() -> int:
        flow_tracker.log("no process here")
        return 42

    assert helper() == 42
    with flow_tracker.flow("free") as flow:
        flow.info("nothing stored")
    assert flow_tracker.current() is None


def test_decorator_on_sync_and_async_functions_returns_their_results(tracked: str) -> None:
    @flow_tracker.track("nightly_import", category="jobs")
    def nightly_import(n: int) -> int:
        current = flow_tracker.current()
        assert isinstance(current, flow_tracker.Tracker)
        seen.append(current.process_id)
        return n * 2

    @flow_tracker.track("async_import")
    async def async_import(n: int) -> int:
        with flow_tracker.flow("awaiting"):
            await asyncio.sleep(0)
        current = flow_tracker.current()
        assert isinstance(current, flow_tracker.Tracker)
        seen.append(current.process_id)
        return n + 1

    seen: list[Any] = []
    assert nightly_import(21) == 42
    assert asyncio.run(async_import(1)) == 2
    first, second = stored(seen[0]), stored(seen[1])
    assert (first.name, first.status) == ("nightly_import", Status.COMPLETED)
    assert (second.name, second.status) == ("async_import", Status.COMPLETED)
    assert [f.name for f in second.flows] == ["awaiting"]


def test_bare_decorator_names_process_after_function(tracked: str) -> None:
    @flow_tracker.track
    def rebuild_index() -> str:
        current = flow_tracker.current()
        assert current is not None
        ids.append(current.process_id)
        return "ok"

    ids: list[Any] = []
    assert rebuild_index() == "ok"
    assert stored(ids[0]).name.endswith("rebuild_index")


def test_async_with_and_tasks_started_inside_belong_to_the_process(tracked: str) -> None:
    async def child(index: int) -> None:
        with flow_tracker.flow(f"task-{index}"):
            await asyncio.sleep(0.01)
            flow_tracker.log(f"from task {index}")

    async def main() -> Any:
        async with flow_tracker.track("AsyncProcess") as tracker:
            async with tracker.flow("fan_out"):
                await asyncio.gather(*(asyncio.create_task(child(i)) for i in range(5)))
        return tracker.process_id

    record = stored(asyncio.run(main()))
    fan_out = record.flows[0]
    assert sorted(c.name for c in fan_out.children) == [f"task-{i}" for i in range(5)]
    for task_flow in fan_out.children:
        assert [e.message for e in task_flow.logs] == [f"from task {task_flow.name[-1]}"]


def test_concurrent_async_processes_never_mix_their_flows(tracked: str) -> None:
    async def job(index: int) -> Any:
        async with flow_tracker.track(f"job-{index}") as tracker:
            for step in range(5):
                async with flow_tracker.flow(f"job-{index}-step-{step}"):
                    await asyncio.sleep(0.001)
                    flow_tracker.log(f"job-{index} step {step}")
        return tracker.process_id

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(job(i) for i in range(6))))

    for index, process_id in enumerate(asyncio.run(main())):
        record = stored(process_id)
        assert [f.name for f in record.flows] == [f"job-{index}-step-{s}" for s in range(5)]
        assert all(e.message.startswith(f"job-{index} ") for e in record.all_logs())


def test_concurrent_thread_processes_never_mix_their_flows(tracked: str) -> None:
    barrier = threading.Barrier(4)

    def job(index: int) -> Any:
        with flow_tracker.track(f"thread-job-{index}") as tracker:
            barrier.wait()
            for step in range(20):
                with flow_tracker.flow(f"t{index}-s{step}"):
                    flow_tracker.log(f"t{index}")
        return tracker.process_id

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(job, range(4)))
    for index, process_id in enumerate(ids):
        record = stored(process_id)
        assert [f.name for f in record.flows] == [f"t{index}-s{s}" for s in range(20)]
        assert {e.message for e in record.all_logs()} == {f"t{index}"}


def test_bind_carries_the_current_flow_into_worker_threads(tracked: str) -> None:
    def work(item: int) -> int:
        flow_tracker.log(f"item {item}")
        return item * item

    with flow_tracker.track("Threaded") as tracker:
        with tracker.flow("parallel"), ThreadPoolExecutor(3) as pool:
            results = list(pool.map(flow_tracker.bind(work), range(6)))
        # Without bind, a thread has no current process: nothing recorded, no error.
        threading.Thread(target=work, args=(99,)).start()
    assert results == [0, 1, 4, 9, 16, 25]
    record = stored(tracker.process_id)
    assert sorted(e.message for e in record.flows[0].logs) == [f"item {i}" for i in range(6)]
    assert all(e.message != "item 99" for e in record.all_logs())


def test_levels_are_stored_by_name_and_warn_is_warning(tracked: str) -> None:
    with flow_tracker.track("Levels") as tracker:
        tracker.debug("d")
        tracker.info("i")
        tracker.warn("w1")
        tracker.warning("w2")
        tracker.error("e")
        tracker.critical("c")
        tracker.log("upper", level="ERROR")
    levels = [(e.message, e.level) for e in stored(tracker.process_id).logs]
    assert levels == [
        ("d", "debug"),
        ("i", "info"),
        ("w1", "warning"),
        ("w2", "warning"),
        ("e", "error"),
        ("c", "critical"),
        ("upper", "error"),
    ]


def test_unknown_level_raises_usage_error_at_once() -> None:
    with pytest.raises(flow_tracker.UsageError, match="unknown log level"):
        flow_tracker.log("x", level="loud")
    with flow_tracker.track("Misuse") as tracker, pytest.raises(ValueError, match="loud"):
        tracker.log("x", level="loud")


def test_bad_category_or_empty_name_raise_usage_errors() -> None:
    with pytest.raises(flow_tracker.ConfigurationError):
        flow_tracker.track("x", category="Not A Category!")
    with pytest.raises(flow_tracker.UsageError):
        flow_tracker.track("")
    with pytest.raises(flow_tracker.UsageError):
        flow_tracker.flow("  ")
    with flow_tracker.track("names") as tracker, pytest.raises(flow_tracker.UsageError):
        tracker.flow(["not", "a", "name"])  # type: ignore[arg-type]


def test_update_metadata_merges_on_process_and_flow(tracked: str) -> None:
    with flow_tracker.track("Meta", metadata={"a": 1}) as tracker:
        tracker.update_metadata(b=2)
        tracker.update_metadata(a=3)
        with tracker.flow("step", metadata={"x": 1}) as flow:
            flow.update_metadata(y=2)
    record = stored(tracker.process_id)
    assert record.metadata == {"a": 3, "b": 2}
    assert record.flows[0].metadata == {"x": 1, "y": 2}


def test_progress_total_increment_decrement_finish(tracked: str) -> None:
    with flow_tracker.track("Progress") as tracker:
        tracker.progress.total = 1000
        for _ in range(600):
            tracker.progress.increment()
        tracker.progress.decrement(100)
        assert tracker.progress.current == 500
        flow_tracker.flush()
        midway = flow_tracker.get_status(tracker.process_id)
        assert midway is not None and midway.is_running
        assert midway.total == 1000
        tracker.progress.current = 750
        flow_tracker.flush()
        status = flow_tracker.get_status(tracker.process_id)
        assert status is not None and status.current == 750 and status.progress == 0.75
        tracker.progress.finish()
    record = stored(tracker.process_id)
    assert (record.progress_current, record.progress_total) == (1000, 1000)


def test_progress_increments_are_throttled_not_one_event_each(tracked: str) -> None:
    flow_tracker.configure(database_url=tracked, progress_interval=60.0, log_to_stdlib=False)
    with flow_tracker.track("Throttled") as tracker:
        writer = flow_tracker.runtime.writer()
        before = len(writer.buffer)
        for _ in range(10_000):
            tracker.progress.increment()
        assert len(writer.buffer) - before <= 1
    assert stored(tracker.process_id).progress_current == 10_000


def test_process_started_inside_another_records_its_parent(tracked: str) -> None:
    with flow_tracker.track("parent") as parent, flow_tracker.track("child") as child:
        assert flow_tracker.current() is child
    assert flow_tracker.current() is None
    assert stored(child.process_id).parent_process_id == parent.process_id
    assert stored(parent.process_id).parent_process_id is None


def test_status_property_follows_the_process(tracked: str) -> None:
    with flow_tracker.track("Status") as tracker:
        assert tracker.status is Status.RUNNING
    assert tracker.status.value == "completed"
    tracker.complete(error=CustomError("late"))  # a second end is ignored
    assert stored(tracker.process_id).status is Status.COMPLETED


def test_complete_can_name_skipped_or_cancelled(tracked: str) -> None:
    tracker = flow_tracker.start("Skipper")
    tracker.complete(status="skipped")
    assert stored(tracker.process_id).status is Status.SKIPPED
    other = flow_tracker.start("Bad")
    with pytest.raises(flow_tracker.UsageError):
        other.complete(status="exploded")


def test_data_dict_is_copied_when_logged(tracked: str) -> None:
    data = {"count": 1}
    with flow_tracker.track("Copy") as tracker:
        tracker.info("snapshot", data=data)
        data["count"] = 2
    assert stored(tracker.process_id).logs[0].data == {"count": 1}


def test_cancelled_task_marks_process_cancelled(tracked: str) -> None:
    ids: list[Any] = []

    async def job() -> None:
        async with flow_tracker.track("Cancelled") as tracker:
            ids.append(tracker.process_id)
            await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(job())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert stored(ids[0]).status is Status.CANCELLED
