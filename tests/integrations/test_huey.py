"""Huey: real Redis, the real ``huey_consumer`` with worker threads (and processes)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

import flow_tracker
from flow_tracker import Status, runtime
from flow_tracker.ids import process_id_for
from flow_tracker.store.schema import processes
from tests.integrations import recovery_harness as harness
from tests.integrations.workers import (
    check_job_mix,
    check_lock_skips,
    poll_progress,
    require_service,
    wait_until_final,
    worker_process,
)

REDIS_URL = "redis://127.0.0.1:6379/13"
# One Huey instance per test session, named before the app module is imported anywhere
# (Huey keeps letters, digits and underscores of a name for its Redis keys).
os.environ.setdefault("FT_TEST_HUEY_NAME", f"ft_huey_{uuid.uuid4().hex[:8]}")
os.environ.setdefault("FT_TEST_HUEY_REDIS", REDIS_URL)
LOST_AFTER = 3.0

# Real consumer processes: the full run (make test), not the fast lane.
pytestmark = pytest.mark.slow


@pytest.fixture
def app() -> Iterator[Any]:
    require_service("127.0.0.1", 6379, "Redis")
    from tests.integrations import huey_app

    huey_app.huey.flush()  # this run's instance only: its queue, schedule and results
    yield huey_app
    huey_app.huey.flush()


def consumer(worker_type: str = "thread") -> list[str]:
    return ["huey_consumer", "tests.integrations.huey_app.huey", "-w", "2", "-k", worker_type]


def env_for(database_url: str) -> dict[str, str]:
    return {
        "FLOW_TRACKER_DATABASE_URL": database_url,
        "FT_TEST_HUEY_NAME": os.environ["FT_TEST_HUEY_NAME"],
        "FT_TEST_HUEY_REDIS": REDIS_URL,
        "FLOW_TRACKER_HEARTBEAT_INTERVAL": "0.5",
        "FLOW_TRACKER_LOST_AFTER": str(LOST_AFTER),
    }


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_every_task_has_one_row_with_the_right_outcome(
    tracked: str, app: Any, tmp_path: Path, worker_type: str
) -> None:
    kinds = {}
    for i in range(40):
        kind = ("succeed", "fail", "flaky", "always_fail")[i % 4]
        kinds[getattr(app, kind)(i).id] = kind
    assert flow_tracker.get_status(next(iter(kinds))).is_queued  # type: ignore[union-attr]
    log = tmp_path / "consumer.log"
    with worker_process(consumer(worker_type), env_for(tracked), log):
        check_job_mix(kinds, log, "huey", retried_flow_status=Status.FAILED)
    row = flow_tracker.get_process(process_id_for("huey", next(iter(kinds))))
    assert (
        row is not None
        and row.queue == app.NAME
        and row.name == "tests.integrations.huey_app.succeed"
    )


def test_the_queued_row_is_stored_before_redis_gets_the_message(
    tracked: str, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = app.huey.storage
    seen: dict[str, Any] = {}
    original = storage.enqueue

    def enqueue(data: bytes, priority: Any = None) -> None:
        task_id = app.huey.serializer.deserialize(data).id
        seen["in_redis"] = app.huey.pending_count()
        seen["status"] = flow_tracker.get_status(task_id)
        original(data, priority)

    monkeypatch.setattr(storage, "enqueue", enqueue)
    result = app.succeed(7)
    assert seen["in_redis"] == 0  # the message had not reached Redis...
    status = seen["status"]
    assert status is not None and status.is_queued  # ...and its row was stored already
    assert status.process_id == process_id_for("huey", result.id)
    assert [task.id for task in app.huey.pending()] == [result.id]


def test_a_message_redis_refuses_marks_its_job_failed(
    tracked: str, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(data: bytes, priority: Any = None) -> None:
        raise ConnectionError("Redis is away")

    monkeypatch.setattr(app.huey.storage, "enqueue", refuse)
    task = app.succeed.s(1)
    with pytest.raises(ConnectionError):
        app.huey.enqueue(task)
    flow_tracker.flush()
    record = flow_tracker.get_process(process_id_for("huey", task.id))
    assert record is not None and record.status is Status.FAILED
    assert "publishing to the broker failed: Redis is away" in record.error.message  # type: ignore[union-attr]


def test_retry_task_runs_again_on_the_same_row_as_control_flow(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex
    result = app.asks_retry(key)
    log = tmp_path / "consumer.log"
    with worker_process(consumer(), env_for(tracked), log):
        assert result.get(blocking=True, timeout=120) == key
        found = wait_until_final([result.id], log)
    record = flow_tracker.get_process(found[result.id].id)
    assert record is not None
    assert (record.status, record.attempt, record.error) == (Status.COMPLETED, 2, None)
    assert [(f.attempt, f.status) for f in record.all_flows()] == [
        (1, Status.RETRYING),  # RetryTask is no failure
        (2, Status.COMPLETED),
    ]
    assert [p.job_id for p in flow_tracker.list_processes()] == [result.id]


def test_progress_is_readable_by_task_id_while_it_runs(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    result = app.slow_progress(30)
    log = tmp_path / "consumer.log"
    with worker_process(consumer(), env_for(tracked), log):
        seen = poll_progress(result.id)
    assert seen and seen == sorted(seen)


def test_a_task_refused_its_critical_section_is_skipped_not_retried(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    user = uuid.uuid4().hex
    log = tmp_path / "consumer.log"
    with worker_process(consumer(), env_for(tracked), log):
        with flow_tracker.exclusive("ft-test-charge", key=user):  # another holder
            refused = [app.charge(user), app.guarded_block(user)]
            results = [r.get(blocking=True, timeout=120) for r in refused]
            assert results == [None, None]
        ran = app.charge(user)
        assert ran.get(blocking=True, timeout=120) == f"charged {user}"
        ids = [r.id for r in refused]
        found = wait_until_final([*ids, ran.id], log)
    check_lock_skips(found, ids, ran.id)


def test_a_killed_consumers_task_is_reaped_requeued_and_completes(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    from redis import Redis

    flow_tracker.configure(
        database_url=tracked, log_to_stdlib=False, lost_after=LOST_AFTER, heartbeat_interval=0.5
    )
    key = uuid.uuid4().hex
    result = app.stall_once(key)
    redis = Redis.from_url(REDIS_URL)
    with worker_process(consumer(), env_for(tracked), tmp_path / "first.log") as proc:
        deadline = time.monotonic() + 120
        while redis.get(f"ft-huey-stall-{key}-pid") is None:
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lost_id = process_id_for("huey", result.id)
    while lost_id not in flow_tracker.reap().lost:
        assert time.monotonic() < deadline, "the killed task was never reaped"
        time.sleep(0.5)
    (requeued,) = flow_tracker.requeue([lost_id])
    assert requeued.outcome == "requeued", requeued
    assert requeued.job_id in [task.id for task in app.huey.pending()]
    log = tmp_path / "second.log"
    with worker_process(consumer(), env_for(tracked), log):
        assert requeued.job_id is not None
        found = wait_until_final([requeued.job_id], log)
    copy = flow_tracker.get_process(found[requeued.job_id].id)
    assert copy is not None and copy.status is Status.COMPLETED
    assert copy.requeued_from_id == lost_id and copy.job_args == {"args": [key], "kwargs": {}}
    lost = flow_tracker.get_process(lost_id)
    assert lost is not None and lost.status is Status.LOST and lost.lost_count == 1
    assert app.huey.result(requeued.job_id) == f"done {key}"


def test_killed_consumers_jobs_are_all_recovered(tracked: str, app: Any, tmp_path: Path) -> None:
    flow_tracker.configure(
        database_url=tracked,
        log_to_stdlib=False,
        lost_after=harness.LOST_AFTER,
        heartbeat_interval=harness.HEARTBEAT,
    )
    queue = harness.Queue(
        job_system="huey",
        enqueue=lambda i: str(app.sleepy(i, harness.JOB_SECONDS).id),
        worker_args=consumer(),
        drain_args=consumer(),
        env=env_for(tracked),
        burst=False,
    )
    harness.kill_reap_requeue(queue, tmp_path)


def test_a_task_taken_by_a_consumer_that_died_before_starting_it_is_reaped(
    tracked: str, app: Any
) -> None:
    flow_tracker.configure(
        database_url=tracked, log_to_stdlib=False, lost_after=LOST_AFTER, heartbeat_interval=0.5
    )
    delayed = app.succeed.schedule((2,), delay=3600)
    app.huey.execute(app.huey.dequeue())  # as a consumer does: not due, so to the schedule
    taken, waiting = app.succeed(3), app.succeed(1)
    assert app.huey.dequeue().id == taken.id  # taken by a consumer that died before starting it
    old = datetime.now(timezone.utc) - timedelta(seconds=120)
    with runtime.store().engine.begin() as conn:
        conn.execute(update(processes).values(created_at=old, queued_at=old))
    lost = flow_tracker.reap().lost
    assert lost == [process_id_for("huey", taken.id)]
    record = flow_tracker.get_process(lost[0])
    assert record is not None and "died before it could start it" in record.error.message  # type: ignore[union-attr]
    assert flow_tracker.get_status(waiting.id).is_queued  # type: ignore[union-attr]
    assert flow_tracker.get_status(delayed.id).is_queued  # type: ignore[union-attr]


@pytest.mark.postgres
def test_a_workflow_runs_its_steps_on_huey_with_a_retry(
    pg_server_url: str, app: Any, tmp_path: Path
) -> None:
    from tests.conftest import _truncate
    from tests.workflows import steps

    _truncate(pg_server_url)
    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False)
    key = f"huey-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "consumer.log"
    with worker_process(consumer(), env_for(pg_server_url), log):
        run = app.WORKFLOWS["orders"].run(context={"key": key, "fails": 1})
        status = run.wait(240)
    assert status.status == "completed", {n: (s.status, s.error) for n, s in status.steps.items()}
    assert steps.counts(key) == {"validate": 1, "charge": 2, "reserve_stock": 1, "confirm": 1}
    assert status.steps["charge"].attempts == 2
    assert status.steps["confirm"].result == [{"paid": 42}, "reserved"]
    flow_tracker.flush()
    step = flow_tracker.get_process(status.steps["charge"].process_id)
    assert step is not None and step.job_system == "huey" and step.queue == app.NAME
    assert step.parent_process_id == run.id and step.attempt == 2
    # The step task is no job of its own: only the run and its steps have rows.
    assert len(flow_tracker.list_processes(limit=50)) == 1 + len(status.steps)


# -- in this process (Huey's immediate mode runs a task as it is enqueued) ------------------


def _instance() -> Any:
    from huey import RedisHuey

    return RedisHuey(f"ft_huey_local_{uuid.uuid4().hex[:6]}", immediate=True)


def test_track_all_false_tracks_only_opted_in_tasks(tracked: str) -> None:
    from flow_tracker.integrations import huey as ft_huey

    huey = _instance()
    ft_huey.install(huey, track_all=False)
    ft_huey.install(huey, track_all=False)  # idempotent

    @huey.task()
    def plain() -> None:
        assert flow_tracker.current() is None

    @huey.task(flow_tracker=True)
    def opted() -> None:
        assert isinstance(flow_tracker.current(), flow_tracker.Tracker)

    plain()
    opted()
    flow_tracker.flush()
    assert [p.name for p in flow_tracker.list_processes()] == [f"{__name__}.opted"]


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ({"name": "ft-test-charge", "key": "{account}"}, "names 'account'"),
        ({"name": "ft-test-charge", "on_conflict": "maybe"}, "on_conflict must be one of"),
        ("ft-test-charge", "takes flow_tracker.exclusive"),
    ],
)
def test_declaring_a_task_with_a_bad_critical_section_raises_at_once(
    option: object, reason: str
) -> None:
    from flow_tracker.integrations import huey as ft_huey

    huey = _instance()
    ft_huey.install(huey)
    with pytest.raises(flow_tracker.UsageError, match=reason):

        @huey.task(flow_tracker_exclusive=option)
        def charge(user_id: str) -> None: ...

    assert not [name for name in huey._registry._registry if name.endswith(".charge")]


def test_a_task_declared_before_install_is_tracked_inside_its_critical_section(
    tracked: str,
) -> None:
    from flow_tracker.integrations import huey as ft_huey

    huey = _instance()

    @huey.task(
        flow_tracker_exclusive={"name": "ft-early", "key": "{user_id}", "on_conflict": "skip"}
    )
    def early(user_id: str) -> str:
        tracker = flow_tracker.current()
        assert tracker is not None
        return str(tracker.process_id)

    ft_huey.install(huey)
    with flow_tracker.exclusive("ft-early", key="u1"):  # held: the task is skipped
        assert early("u1")() is None
    result = early("u2")
    assert result() == str(process_id_for("huey", result.id))
    flow_tracker.flush()
    statuses = sorted(p.status.value for p in flow_tracker.list_processes())
    assert statuses == ["completed", "skipped"]


def test_a_task_enqueued_inside_a_task_records_its_parent(tracked: str) -> None:
    from flow_tracker.integrations import huey as ft_huey

    huey = _instance()
    ft_huey.install(huey)

    @huey.task()
    def child() -> str:
        return "child"

    @huey.task()
    def parent() -> str:
        return str(child().id)

    result = parent()
    child_id = result()
    flow_tracker.flush()
    record = flow_tracker.get_process(process_id_for("huey", child_id))
    assert record is not None and record.parent_process_id == process_id_for("huey", result.id)


@pytest.mark.postgres
def test_a_step_past_its_timeout_on_huey_is_ended_at_its_deadline_as_step_timeout(
    pg_server_url: str, app: Any, tmp_path: Path
) -> None:
    """Huey stops no thread: the worker's deadline ends the attempt, and the retry follows."""
    from tests.conftest import _truncate
    from tests.workflows import steps

    _truncate(pg_server_url)
    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False)
    key = f"huey-timed-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "consumer.log"
    with worker_process(consumer(), env_for(pg_server_url), log):
        run = app.WORKFLOWS["timed"].run(context={"key": key})
        status = run.wait(240)
    step = status.steps["hang"]
    assert status.status == "failed" and step.attempts == 2, (step.status, step.error)
    assert step.error == "flow_tracker.StepTimeout: timed out after 1 s"
    assert steps.counts(key) == {"hang": 2}
