"""No job forgotten: SIGKILL real Celery and RQ workers mid-job; reap, requeue, all finish."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from rq import Queue as RqQueue
from sqlalchemy import update

import flow_tracker
from flow_tracker import Status, runtime
from flow_tracker.store.schema import processes
from tests.conftest import _truncate
from tests.integrations import recovery_harness as harness
from tests.integrations.test_celery import celery_env, worker_args  # noqa: F401 - a fixture
from tests.integrations.test_dramatiq import app  # noqa: F401 - a fixture
from tests.integrations.test_dramatiq import env_for as dramatiq_env
from tests.integrations.test_dramatiq import worker_command as dramatiq_worker
from tests.integrations.test_rq import REDIS_URL, rq_queue, worker  # noqa: F401 - a fixture

# Real worker processes: the full run (make test), not the fast lane.
pytestmark = pytest.mark.slow


def _configure(database_url: str) -> None:
    flow_tracker.configure(
        database_url=database_url,
        log_to_stdlib=False,
        lost_after=harness.LOST_AFTER,
        heartbeat_interval=harness.HEARTBEAT,
    )


def test_rq_jobs_of_killed_workers_are_reaped_requeued_and_all_finish(
    tracked: str,
    rq_queue: RqQueue,  # noqa: F811
    tmp_path: Path,
) -> None:
    from flow_tracker.integrations import rq as ft_rq
    from tests.integrations import rq_jobs

    _configure(tracked)
    ft_rq.install(connection=rq_queue.connection)
    queue = harness.Queue(
        job_system="rq",
        enqueue=lambda i: str(rq_queue.enqueue(rq_jobs.sleepy, i, harness.JOB_SECONDS).id),
        worker_args=worker(rq_queue, burst=False),
        drain_args=worker(rq_queue),
        env={"FLOW_TRACKER_DATABASE_URL": tracked, "FT_TEST_REDIS": REDIS_URL},
        burst=True,
    )
    harness.kill_reap_requeue(queue, tmp_path)


def test_celery_jobs_of_killed_prefork_workers_are_reaped_requeued_and_all_finish(
    tracked: str,
    celery_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    from tests.integrations import celery_app

    _configure(tracked)
    name = celery_env["FT_TEST_QUEUE"]
    queue = harness.Queue(
        job_system="celery",
        enqueue=lambda i: str(
            celery_app.sleepy.apply_async((i, harness.JOB_SECONDS), queue=name).id
        ),
        worker_args=worker_args(name),
        drain_args=worker_args(name),
        env={**celery_env, "FLOW_TRACKER_DATABASE_URL": tracked},
        burst=False,
    )
    harness.kill_reap_requeue(queue, tmp_path)


def test_dramatiq_jobs_of_killed_workers_are_reaped_and_redelivered_and_all_finish(
    tracked: str,
    app: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    _configure(tracked)
    env = {**dramatiq_env(tracked), "FT_TEST_DRAMATIQ_HEARTBEAT_TIMEOUT_MS": "4000"}
    queue = harness.Queue(
        job_system="dramatiq",
        enqueue=lambda i: str(app.sleepy.send(i, harness.JOB_SECONDS).message_id),
        worker_args=dramatiq_worker(),
        drain_args=dramatiq_worker(),
        env=env,
        burst=False,
        redelivers=True,
    )
    harness.kill_reap_requeue(queue, tmp_path)


def _age(job_ids: list[str], seconds: float) -> None:
    """Make the jobs' rows look queued ``seconds`` ago."""
    old = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    with runtime.store().engine.begin() as conn:
        conn.execute(
            update(processes)
            .where(processes.c.job_id.in_(job_ids))
            .values(created_at=old, queued_at=old)
        )


def test_an_rq_job_taken_by_a_worker_that_died_before_starting_it_is_reaped(
    tracked: str,
    rq_queue: RqQueue,  # noqa: F811
) -> None:
    from rq.job import JobStatus

    from flow_tracker.integrations import rq as ft_rq
    from tests.integrations import rq_jobs

    _configure(tracked)
    ft_rq.install(connection=rq_queue.connection)
    waiting = rq_queue.enqueue(rq_jobs.succeed, 1)
    taken = rq_queue.enqueue(rq_jobs.succeed, 2)
    # A worker took it a minute ago, then died before the job could start.
    rq_queue.remove(taken)
    taken.set_status(JobStatus.STARTED)
    taken.started_at = datetime.now(timezone.utc) - timedelta(minutes=1)
    taken.save()
    _age([waiting.id, taken.id], 120)
    lost = flow_tracker.reap().lost
    assert lost == [flow_tracker.get_status(taken.id).process_id]  # type: ignore[union-attr]
    record = flow_tracker.get_process(lost[0])
    assert record is not None and record.lost_count == 1
    assert "died before it could start it" in record.error.message  # type: ignore[union-attr]
    assert flow_tracker.get_status(waiting.id).is_queued  # type: ignore[union-attr]


def test_a_celery_task_acked_by_a_worker_that_died_before_starting_it_is_reaped(
    tracked: str,
    celery_env: dict[str, str],  # noqa: F811
) -> None:
    from tests.integrations import celery_app

    _configure(tracked)
    name = celery_env["FT_TEST_QUEUE"]
    waiting = celery_app.succeed.apply_async((1,), queue=name)
    taken = celery_app.succeed.apply_async((2,), queue=name)
    with celery_app.app.connection_for_write() as conn:
        client = conn.default_channel.client
        for raw in client.lrange(name, 0, -1):  # a worker took and acknowledged it
            if taken.id in raw.decode():
                client.lrem(name, 1, raw)
    _age([waiting.id, taken.id], 120)
    lost = flow_tracker.reap().lost
    assert lost == [flow_tracker.get_status(taken.id).process_id]  # type: ignore[union-attr]
    assert flow_tracker.get_status(waiting.id).is_queued  # type: ignore[union-attr]
    with celery_app.app.connection_for_write() as conn:
        conn.default_channel.client.delete(name)


def test_jobs_run_on_while_the_tracking_database_restarts_and_their_records_catch_up(
    pg_server_url: str,
    rq_queue: RqQueue,  # noqa: F811
    tmp_path: Path,
) -> None:
    from sqlalchemy.engine import make_url

    from tests.integrations import rq_jobs
    from tests.integrations.workers import wait_until_final, worker_process
    from tests.support.proxy import TcpProxy

    _truncate(pg_server_url)
    real = make_url(pg_server_url)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
    proxy.start()
    url = real.set(port=proxy.port).render_as_string(hide_password=False)
    try:
        flow_tracker.configure(database_url=url, log_to_stdlib=False)
        jobs = [rq_queue.enqueue(rq_jobs.sleepy, i, 0.05) for i in range(80)]
        log = tmp_path / "worker.log"
        env = {"FLOW_TRACKER_DATABASE_URL": url, "FT_TEST_REDIS": REDIS_URL}
        args = worker(rq_queue, "rq.worker.SimpleWorker")
        with worker_process(args, env, log) as proc:
            while len(flow_tracker.list_processes(status="completed", limit=20)) < 10:
                time.sleep(0.05)
            proxy.stop()  # the database goes away mid-run...
            time.sleep(3)
            proxy.start()  # ...and comes back
            assert proc.wait(timeout=300) == 0
        assert "cannot store to" in log.read_text()  # the worker did see the outage
        # No job failed because of tracking: each returned its value...
        assert [job.return_value(refresh=True) for job in jobs] == list(range(80))
        # ...and every record caught up once the database was back.
        found = wait_until_final([job.id for job in jobs], log, seconds=120)
        assert {p.status for p in found.values()} == {Status.COMPLETED}
        for job in jobs[::20]:
            record = flow_tracker.get_process(found[job.id].id)
            assert record is not None and [f.name for f in record.flows] == ["work"]
    finally:
        flow_tracker.reset()
        proxy.stop()
