"""arq: real Redis, the real ``arq`` command running the worker, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import flow_tracker
from flow_tracker import Status
from flow_tracker.ids import process_id_for
from tests.integrations.workers import (
    check_job_mix,
    check_lock_skips,
    require_service,
    wait_until_final,
    worker_process,
)

REDIS_URL = "redis://127.0.0.1:6379/15"
# One queue per test session, named before the app module is imported anywhere.
os.environ.setdefault("FT_TEST_ARQ_QUEUE", f"ft-arq-{uuid.uuid4().hex[:8]}")
os.environ.setdefault("FT_TEST_ARQ_REDIS", REDIS_URL)
LOST_AFTER = 3.0

# Real worker processes: the full run (make test), not the fast lane.
pytestmark = pytest.mark.slow


@pytest.fixture
def app() -> Iterator[Any]:
    require_service("127.0.0.1", 6379, "Redis")
    from tests.integrations import arq_app

    arq_app.clear_queue()
    yield arq_app
    arq_app.clear_queue()


def worker_command() -> list[str]:
    return ["arq", "tests.integrations.arq_app.WorkerSettings"]


def env_for(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "FLOW_TRACKER_DATABASE_URL": database_url,
        "FT_TEST_ARQ_QUEUE": os.environ["FT_TEST_ARQ_QUEUE"],
        "FT_TEST_ARQ_REDIS": REDIS_URL,
        **extra,
    }


def enqueue(calls: Sequence[tuple[str, tuple[Any, ...]]], **options: Any) -> list[str]:
    """Enqueue ``(function, args)`` calls through a pool installed as an app's is; the job ids."""
    from arq import create_pool
    from arq.connections import RedisSettings

    from flow_tracker.integrations import arq as ft_arq
    from tests.integrations import arq_app

    async def send() -> list[str]:
        redis = await create_pool(
            RedisSettings.from_dsn(REDIS_URL), default_queue_name=arq_app.QUEUE
        )
        ft_arq.install(pool=redis)
        try:
            jobs = [await redis.enqueue_job(name, *args, **options) for name, args in calls]
        finally:
            await redis.aclose()
        return [job.job_id for job in jobs if job is not None]

    return asyncio.run(send())


def test_every_job_has_one_row_with_the_right_outcome(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    kinds = dict(
        zip(
            enqueue(
                [(("succeed", "fail", "flaky", "always_fail")[i % 4], (i,)) for i in range(40)]
            ),
            ["succeed", "fail", "flaky", "always_fail"] * 10,
            strict=True,
        )
    )
    first = flow_tracker.get_status(next(iter(kinds)))
    assert first is not None and first.is_queued
    log = tmp_path / "worker.log"
    with worker_process(worker_command(), env_for(tracked), log):
        check_job_mix(kinds, log, "arq", retried_flow_status=Status.RETRYING)
    record = flow_tracker.get_process(process_id_for("arq", next(iter(kinds))))
    assert record is not None and record.queue == app.QUEUE
    assert record.job_args == {"args": [0], "kwargs": {}}


def test_a_retried_job_keeps_its_row_and_job_id_and_counts_its_attempts(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    (job_id,) = enqueue([("flaky", (7,))])
    log = tmp_path / "worker.log"
    with worker_process(worker_command(), env_for(tracked), log):
        record = wait_until_final([job_id], log)[job_id]
    assert (record.status, record.attempt, record.job_id) == (Status.COMPLETED, 2, job_id)
    assert record.id == process_id_for("arq", job_id)
    history = flow_tracker.get_process(record.id)
    assert history is not None
    assert [(t.status, t.attempt) for t in history.history] == [
        ("queued", 1),
        ("running", 1),
        ("retrying", 1),
        ("running", 2),
        ("completed", 2),
    ]


def test_a_job_enqueued_inside_a_job_records_its_parent(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    (parent,) = enqueue([("parent_job", ())])
    log = tmp_path / "worker.log"
    with worker_process(worker_command(), env_for(tracked), log):
        found = wait_until_final([parent], log)
        children = [
            p for p in flow_tracker.list_processes(name="child_job") if p.job_system == "arq"
        ]
        assert len(children) == 1
        child = wait_until_final([str(children[0].job_id)], log)[str(children[0].job_id)]
    assert child.parent_process_id == found[parent].id
    assert child.status is Status.COMPLETED


def test_the_queued_row_is_stored_before_redis_has_the_job(tracked: str, app: Any) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    from flow_tracker.integrations import arq as ft_arq

    job_id = f"durable-{uuid.uuid4().hex}"
    seen: list[bool | None] = []

    async def send() -> None:
        redis = await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name=app.QUEUE)
        ft_arq.install(pool=redis)
        ft_arq.install(pool=redis)  # again: the pool is wrapped once
        writes = redis.pipeline

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            # arq's enqueue writes the job to Redis in this pipeline: the row is there first.
            status = flow_tracker.get_status(job_id)
            seen.append(None if status is None else status.is_queued)
            return writes(*args, **kwargs)

        redis.pipeline = pipeline  # type: ignore[method-assign]
        try:
            await redis.enqueue_job("succeed", 1, _job_id=job_id)
        finally:
            await redis.aclose()

    asyncio.run(send())
    assert seen == [True]


def test_a_job_redis_refuses_leaves_a_failed_row(tracked: str) -> None:
    from arq.connections import ArqRedis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from flow_tracker.integrations import arq as ft_arq

    async def send() -> None:
        redis = ArqRedis(host="127.0.0.1", port=1, socket_connect_timeout=1)
        ft_arq.install(pool=redis)
        try:
            with pytest.raises(RedisConnectionError, match=r"127\.0\.0\.1:1\b"):
                await redis.enqueue_job("succeed", 1, _job_id="will-not-publish")
        finally:
            await redis.aclose()

    asyncio.run(send())
    status = flow_tracker.get_status("will-not-publish")
    assert status is not None and status.is_failed
    assert status.record.error is not None
    assert "publishing to the broker failed" in status.record.error.message


def test_track_all_false_tracks_only_opted_in_functions(tracked: str, app: Any) -> None:
    from arq.worker import Worker, func

    from flow_tracker.integrations import arq as ft_arq

    async def plain(ctx: dict[str, Any]) -> bool:
        return flow_tracker.current() is None

    @ft_arq.tracked
    async def opted(ctx: dict[str, Any]) -> bool:
        return isinstance(flow_tracker.current(), flow_tracker.Tracker)

    queue = f"ft-arq-opt-in-{uuid.uuid4().hex[:6]}"
    settings: dict[str, Any] = {
        "functions": [func(plain, name="plain"), func(opted, name="opted")],
        "queue_name": queue,
        "redis_settings": app.WorkerSettings.redis_settings,
        "burst": True,
        "poll_delay": 0.05,
    }
    try:
        ft_arq.install(settings, track_all=False)
        ft_arq.install(settings, track_all=False)  # again: nothing wrapped twice

        async def prepared() -> list[Any]:
            from arq import create_pool

            redis = await create_pool(settings["redis_settings"], default_queue_name=queue)
            worker = Worker(**settings, redis_pool=redis, handle_signals=False)
            jobs = [await redis.enqueue_job(name) for name in ("plain", "opted")]
            await worker.main()
            results = [await job.result(timeout=30) for job in jobs if job is not None]
            await worker.close()
            return results

        assert asyncio.run(prepared()) == [True, True]
    finally:
        ft_arq.install(track_all=True)
    names = [p.name for p in flow_tracker.list_processes()]
    assert names == ["opted"]


def test_a_job_refused_its_critical_section_is_skipped_not_retried(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    user = uuid.uuid4().hex
    log = tmp_path / "worker.log"
    with worker_process(worker_command(), env_for(tracked), log):
        with flow_tracker.exclusive("ft-test-charge", key=user):  # another holder
            refused = enqueue([("charge", (user,)), ("guarded_block", (user,))])
            wait_until_final(refused, log)
        (ran,) = enqueue([("charge", (user,))])
        found = wait_until_final([*refused, ran], log)
    check_lock_skips(found, refused, ran)


def _age(job_ids: list[str], seconds: float) -> None:
    """Make the jobs' rows look queued ``seconds`` ago."""
    from sqlalchemy import update

    from flow_tracker import runtime
    from flow_tracker.store.schema import processes

    old = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    with runtime.store().engine.begin() as conn:
        conn.execute(
            update(processes)
            .where(processes.c.job_id.in_(job_ids))
            .values(created_at=old, queued_at=old)
        )


def test_a_queued_job_redis_no_longer_holds_is_reaped_and_one_it_holds_is_not(
    tracked: str, app: Any
) -> None:
    import redis

    waiting, vanished = enqueue([("succeed", (1,)), ("succeed", (2,))])
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(f"arq:job:{vanished}")  # Redis lost it (restarted without its data)
    client.zrem(app.QUEUE, vanished)
    _age([waiting, vanished], 120)
    assert flow_tracker.reap().lost == [process_id_for("arq", vanished)]
    assert flow_tracker.get_status(waiting).is_queued  # type: ignore[union-attr]


def test_a_killed_workers_job_is_reaped_requeued_and_completes(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    flow_tracker.configure(
        database_url=tracked, log_to_stdlib=False, lost_after=LOST_AFTER, heartbeat_interval=0.5
    )
    key = uuid.uuid4().hex
    (job_id,) = enqueue([("killed_once", (key,))])
    env = env_for(
        tracked, FLOW_TRACKER_HEARTBEAT_INTERVAL="0.5", FLOW_TRACKER_LOST_AFTER=str(LOST_AFTER)
    )
    deadline = time.monotonic() + 120
    first = tmp_path / "first.log"
    with worker_process(worker_command(), env, first) as proc:
        while app.started_pid(key) is None:
            assert time.monotonic() < deadline, first.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        status = flow_tracker.get_status(job_id)
        assert status is not None and status.is_running
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    process_id = process_id_for("arq", job_id)
    while process_id not in flow_tracker.reap().lost:
        assert time.monotonic() < deadline, "the killed job was never reaped"
        time.sleep(0.5)
    (result,) = flow_tracker.requeue([process_id])
    assert result.outcome == "requeued", result
    second = tmp_path / "second.log"
    with worker_process(worker_command(), env, second):
        copy = wait_until_final([str(result.job_id)], second)[str(result.job_id)]
    assert copy.status is Status.COMPLETED and copy.requeued_from_id == process_id
    lost = flow_tracker.get_process(process_id)
    assert lost is not None and lost.status is Status.LOST and lost.lost_count == 1
    assert app.runs(key) == {"runs": 2}


@pytest.mark.postgres
def test_a_workflow_of_three_steps_runs_on_arq_with_a_retry(
    pg_server_url: str, app: Any, tmp_path: Path
) -> None:
    from flow_tracker.integrations import arq as ft_arq
    from tests.conftest import _truncate

    _truncate(pg_server_url)
    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False)
    ft_arq.install(app.WorkerSettings)  # steps are sent with the worker's Redis settings
    try:
        key = uuid.uuid4().hex
        log = tmp_path / "worker.log"
        with worker_process(worker_command(), env_for(pg_server_url), log):
            run = app.orders.run(context={"key": key})
            status = run.wait(180)
        assert status.status == "completed", {
            n: (s.status, s.attempts, s.error) for n, s in status.steps.items()
        }
        assert status.steps["pay"].attempts == 2
        assert status.steps["confirm"].result == "paid 42"
        assert app.runs(key) == {"validate": 1, "pay": 2, "confirm": 1}
        flow_tracker.flush()
        step = flow_tracker.get_process(status.steps["pay"].process_id)
        assert step is not None and step.job_system == "arq" and step.queue == app.QUEUE
    finally:
        flow_tracker.reset()


@pytest.mark.postgres
def test_a_step_past_its_timeout_on_arq_is_ended_at_its_deadline_as_step_timeout(
    pg_server_url: str, app: Any, tmp_path: Path
) -> None:
    from flow_tracker.integrations import arq as ft_arq
    from tests.conftest import _truncate

    _truncate(pg_server_url)
    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False)
    ft_arq.install(app.WorkerSettings)
    try:
        key = uuid.uuid4().hex
        with worker_process(worker_command(), env_for(pg_server_url), tmp_path / "worker.log"):
            status = app.timed.run(context={"key": key}).wait(180)
        step = status.steps["hang"]
        assert status.status == "failed" and step.attempts == 2, (step.status, step.error)
        assert step.error == "flow_tracker.StepTimeout: timed out after 1 s"
        assert app.runs(key) == {"hang": 2}
    finally:
        flow_tracker.reset()


def test_a_job_stopped_by_its_timeout_ends_failed_with_arqs_timeout(tracked: str, app: Any) -> None:
    from arq import create_pool
    from arq.worker import Worker, func

    from flow_tracker.integrations import arq as ft_arq

    async def hangs(ctx: dict[str, Any]) -> None:
        await asyncio.sleep(60)

    queue = f"ft-arq-timeout-{uuid.uuid4().hex[:6]}"
    settings: dict[str, Any] = {
        "functions": [func(hangs, name="hangs", timeout=0.5)],
        "queue_name": queue,
        "redis_settings": app.WorkerSettings.redis_settings,
        "burst": True,
        "poll_delay": 0.05,
    }
    ft_arq.install(settings)

    async def run() -> str:
        redis = await create_pool(settings["redis_settings"], default_queue_name=queue)
        ft_arq.install(pool=redis)
        job = await redis.enqueue_job("hangs")
        assert job is not None
        worker = Worker(**settings, redis_pool=redis, handle_signals=False)
        await worker.main()
        await worker.close()
        return job.job_id

    job_id = asyncio.run(run())
    status = flow_tracker.get_status(job_id)
    assert status is not None and status.is_failed, status
    assert status.record.error is not None and status.record.error.type == "TimeoutError"
