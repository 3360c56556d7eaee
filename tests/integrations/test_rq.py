"""RQ: real Redis, the real ``rq worker`` command with its forking Worker and SimpleWorker."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rq import Queue

import flow_tracker
from flow_tracker import Status
from tests.integrations.workers import (
    check_job_mix,
    check_lock_skips,
    poll_progress,
    require_service,
    wait_until_final,
    worker_process,
)

REDIS_URL = "redis://127.0.0.1:6379/13"

# Real worker processes: the full run (make test), not the fast lane.
pytestmark = pytest.mark.slow


@pytest.fixture
def rq_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[Queue]:
    require_service("127.0.0.1", 6379, "Redis")
    from redis import Redis

    from flow_tracker.integrations import rq as ft_rq

    ft_rq.install()
    monkeypatch.setenv("FT_TEST_REDIS", REDIS_URL)
    redis = Redis.from_url(REDIS_URL)
    queue = Queue(f"ft-test-{uuid.uuid4().hex[:8]}", connection=redis)
    yield queue
    queue.delete(delete_jobs=True)


def worker(queue: Queue, worker_class: str = "rq.worker.Worker", burst: bool = True) -> list[str]:
    args = [
        "rq",
        "worker",
        "-c",
        "tests.integrations.rq_settings",
        "--url",
        REDIS_URL,
        "-w",
        worker_class,
        "--logging_level",
        "WARNING",
    ]
    return [*args, *(["--burst"] if burst else []), queue.name]


def enqueue_mix(queue: Queue, count: int) -> dict[str, str]:
    from rq import Retry

    from tests.integrations import rq_jobs

    kinds = {}
    for i in range(count):
        kind = ("succeed", "fail", "flaky", "always_fail")[i % 4]
        retry = {"flaky": Retry(max=1), "always_fail": Retry(max=2)}.get(kind)
        job = queue.enqueue(getattr(rq_jobs, kind), i, retry=retry)
        kinds[job.id] = kind
    return kinds


def check_mix(kinds: dict[str, str], log: Path) -> None:
    check_job_mix(kinds, log, "rq", retried_flow_status=Status.FAILED)


@pytest.mark.parametrize("worker_class", ["rq.worker.Worker", "rq.worker.SimpleWorker"])
def test_every_job_has_one_row_with_the_right_outcome(
    tracked: str, rq_queue: Queue, worker_class: str, tmp_path: Path
) -> None:
    kinds = enqueue_mix(rq_queue, 200)
    assert flow_tracker.get_status(next(iter(kinds))).is_queued  # type: ignore[union-attr]
    log = tmp_path / "worker.log"
    env = {"FLOW_TRACKER_DATABASE_URL": tracked, "FT_TEST_REDIS": REDIS_URL}
    with worker_process(worker(rq_queue, worker_class), env, log) as proc:
        proc.wait(timeout=300)
        check_mix(kinds, log)


def test_work_horses_store_every_job_even_without_waiting_for_completion(
    tracked: str, rq_queue: Queue, tmp_path: Path
) -> None:
    from tests.integrations import rq_jobs

    jobs = [rq_queue.enqueue(rq_jobs.succeed, i) for i in range(20)]
    log = tmp_path / "worker.log"
    env = {
        "FLOW_TRACKER_DATABASE_URL": tracked,
        "FT_TEST_REDIS": REDIS_URL,
        "FLOW_TRACKER_COMPLETION_TIMEOUT": "0",
    }
    with worker_process(worker(rq_queue), env, log) as proc:
        proc.wait(timeout=120)
    found = wait_until_final([job.id for job in jobs], log, seconds=30)
    assert all(p.status is Status.COMPLETED for p in found.values())


@pytest.mark.postgres
def test_work_horses_hand_their_records_to_the_worker_instead_of_connecting(
    pg_server_url: str, rq_queue: Queue, tmp_path: Path
) -> None:
    import psycopg

    from tests.integrations import rq_jobs

    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False)
    database = pg_server_url.rsplit("/", 1)[1]

    def sessions() -> int:  # connections ever opened to the test database
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = %s", (database,)
            ).fetchone()
        return int(row[0]) if row else 0

    count = 30
    jobs = [rq_queue.enqueue(rq_jobs.succeed, i) for i in range(count)]
    before = sessions()
    log = tmp_path / "worker.log"
    env = {"FLOW_TRACKER_DATABASE_URL": pg_server_url, "FT_TEST_REDIS": REDIS_URL}
    with worker_process(worker(rq_queue), env, log) as proc:
        proc.wait(timeout=120)
    found = wait_until_final([job.id for job in jobs], log, seconds=30)
    assert {p.status for p in found.values()} == {Status.COMPLETED}
    assert all(p.host and p.pid for p in found.values())  # the horse's own pid, not the worker's
    records = [flow_tracker.get_process(p.id) for p in found.values()]
    assert all(r is not None and r.flows for r in records)  # flows and logs came through too
    # One work-horse per job; the worker's own connections are a handful. The
    # count is read from PostgreSQL's statistics, which lag a little: wait for them.
    deadline = time.monotonic() + 10
    opened = sessions() - before
    while opened < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        opened = sessions() - before
    assert opened < count // 2, f"{opened} connections opened for {count} jobs"


def test_a_forking_worker_in_this_process_relays_its_work_horses_records(
    tracked: str, rq_queue: Queue
) -> None:
    from rq.worker import Worker

    from tests.integrations import rq_jobs

    jobs = [rq_queue.enqueue(rq_jobs.succeed, i) for i in range(3)]
    Worker([rq_queue], connection=rq_queue.connection).work(burst=True)
    for job in jobs:
        record = flow_tracker.get_status(job.id)
        assert record is not None and record.status is Status.COMPLETED
        process = flow_tracker.get_process(record.process_id)
        assert process is not None and [f.name for f in process.flows] == [
            "load_user",
            "send_email",
            "update_stats",
        ]
        assert process.pid != os.getpid()  # run by a work-horse, stored by this worker


@pytest.mark.postgres
def test_work_horses_records_are_kept_by_the_worker_while_the_database_is_away(
    pg_server_url: str, rq_queue: Queue, tmp_path: Path
) -> None:
    from redis import Redis
    from rq.job import Job
    from sqlalchemy.engine import make_url

    from tests.integrations import rq_jobs
    from tests.support.proxy import TcpProxy

    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False)
    url = make_url(pg_server_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    through_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
    log = tmp_path / "worker.log"
    env = {"FLOW_TRACKER_DATABASE_URL": through_proxy, "FT_TEST_REDIS": REDIS_URL}
    redis = Redis.from_url(REDIS_URL)
    try:
        with worker_process(worker(rq_queue, burst=False), env, log):
            first = rq_queue.enqueue(rq_jobs.succeed, 0)
            wait_until_final([first.id], log)  # the worker is up and storing
            proxy.stop()  # the database goes away, for the worker and its work-horses
            jobs = [rq_queue.enqueue(rq_jobs.succeed, i) for i in range(1, 11)]
            deadline = time.monotonic() + 120
            while not all(
                Job.fetch(job.id, connection=redis).get_status() == "finished" for job in jobs
            ):
                assert time.monotonic() < deadline, (
                    "the jobs did not run while the database was away"
                )
                time.sleep(0.2)
            proxy.start()  # back: the worker stores what its work-horses handed it
            found = wait_until_final([job.id for job in jobs], log, seconds=60)
    finally:
        proxy.stop()
    assert {p.status for p in found.values()} == {Status.COMPLETED}
    records = [flow_tracker.get_process(p.id) for p in found.values()]
    assert all(r is not None and len(r.flows) == 3 for r in records)


def test_progress_is_readable_by_job_id_while_it_runs(
    tracked: str, rq_queue: Queue, tmp_path: Path
) -> None:
    from tests.integrations import rq_jobs

    job = rq_queue.enqueue(rq_jobs.slow_progress, 30)
    log = tmp_path / "worker.log"
    env = {"FLOW_TRACKER_DATABASE_URL": tracked, "FT_TEST_REDIS": REDIS_URL}
    with worker_process(worker(rq_queue), env, log):
        seen = poll_progress(job.id)
    assert seen and seen == sorted(seen)


def test_job_enqueued_inside_a_job_records_its_parent(
    tracked: str, rq_queue: Queue, tmp_path: Path
) -> None:
    from tests.integrations import rq_jobs

    parent = rq_queue.enqueue(rq_jobs.parent_job, rq_queue.name)
    log = tmp_path / "worker.log"
    env = {"FLOW_TRACKER_DATABASE_URL": tracked, "FT_TEST_REDIS": REDIS_URL}
    with worker_process(worker(rq_queue), env, log) as proc:
        proc.wait(timeout=120)
    child_id = str(parent.return_value(refresh=True))
    found = wait_until_final([parent.id, child_id], log)
    assert found[child_id].parent_process_id == found[parent.id].id


def test_jobs_succeed_when_the_tracking_database_is_down(rq_queue: Queue, tmp_path: Path) -> None:
    from tests.integrations import rq_jobs

    down = "postgresql://postgres@127.0.0.1:1/nowhere"
    flow_tracker.configure(database_url=down, verify=False, log_to_stdlib=False)
    jobs = [rq_queue.enqueue(rq_jobs.succeed, i) for i in range(20)]
    log = tmp_path / "worker.log"
    with worker_process(
        worker(rq_queue), {"FLOW_TRACKER_DATABASE_URL": down, "FT_TEST_REDIS": REDIS_URL}, log
    ) as proc:
        proc.wait(timeout=120)
    for i, job in enumerate(jobs):
        assert job.return_value(refresh=True) == i * 2, log.read_text()


def test_track_all_false_tracks_only_opted_in_jobs(tracked: str, rq_queue: Queue) -> None:
    from rq import SimpleWorker

    from flow_tracker.integrations import rq as ft_rq
    from tests.integrations import rq_jobs

    ft_rq.install(track_all=False)
    try:
        plain = rq_queue.enqueue(rq_jobs.succeed, 1)
        opted = rq_queue.enqueue(rq_jobs.succeed, 2, meta={"flow_tracker": True})
        SimpleWorker([rq_queue], connection=rq_queue.connection).work(burst=True)
    finally:
        ft_rq.install(track_all=True)
    assert flow_tracker.get_status(plain.id) is None
    status = flow_tracker.get_status(opted.id)
    assert status is not None and status.is_completed


def test_a_job_refused_its_critical_section_is_skipped_not_failed(
    tracked: str, rq_queue: Queue, tmp_path: Path
) -> None:
    from tests.integrations import rq_jobs

    user = uuid.uuid4().hex
    log = tmp_path / "worker.log"
    env = {"FLOW_TRACKER_DATABASE_URL": tracked, "FT_TEST_REDIS": REDIS_URL}
    with flow_tracker.exclusive("ft-test-charge", key=user):  # another holder
        refused = [
            rq_queue.enqueue(rq_jobs.charge, user),
            rq_queue.enqueue(rq_jobs.guarded_block, user),
        ]
        with worker_process(worker(rq_queue), env, log) as proc:
            proc.wait(timeout=120)
    ran = rq_queue.enqueue(rq_jobs.charge, user)
    with worker_process(worker(rq_queue), env, log) as proc:
        proc.wait(timeout=120)
    for job in refused:
        job.refresh()
        assert job.get_status() == "finished" and job.return_value() is None
    found = wait_until_final([job.id for job in [*refused, ran]], log, seconds=30)
    check_lock_skips(found, [job.id for job in refused], ran.id)


def test_a_lost_job_its_broker_delivers_again_after_a_requeue_runs_once(
    tracked: str, rq_queue: Queue, tmp_path: Path
) -> None:
    from redis import Redis
    from sqlalchemy import update

    from flow_tracker import runtime
    from flow_tracker.integrations import rq as ft_rq
    from flow_tracker.store.schema import processes
    from tests.integrations import rq_jobs

    redis = Redis.from_url(REDIS_URL)
    counter = f"ft-test-runs-{uuid.uuid4().hex}"
    ft_rq.install(connection=redis)
    job = rq_queue.enqueue(rq_jobs.count_run, counter)
    original = flow_tracker.get_status(job.id)
    assert original is not None
    # Its worker died (the reaper said lost), the operator requeued it, and the
    # original message is still there to be delivered again.
    with runtime.store().engine.begin() as conn:
        conn.execute(
            update(processes).where(processes.c.id == original.process_id).values(status="lost")
        )
    (result,) = flow_tracker.requeue([original.process_id])
    assert result.outcome == "requeued"
    log = tmp_path / "worker.log"
    env = {"FLOW_TRACKER_DATABASE_URL": tracked, "FT_TEST_REDIS": REDIS_URL}
    with worker_process(worker(rq_queue), env, log) as proc:
        proc.wait(timeout=120)
    found = wait_until_final([job.id, str(result.job_id)], log, seconds=30)
    assert int(redis.get(counter) or 0) == 1
    assert found[job.id].status is Status.SKIPPED
    assert "requeued as process" in found[job.id].metadata["skip_reason"]
    assert found[str(result.job_id)].status is Status.COMPLETED
    redis.delete(counter)


def test_forked_work_horses_feed_one_set_of_prometheus_metrics(
    tracked: str, rq_queue: Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from flow_tracker.exporters import prometheus as ft_prometheus
    from tests.integrations import rq_jobs

    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    jobs = [rq_queue.enqueue(rq_jobs.succeed, i) for i in range(12)]
    jobs += [rq_queue.enqueue(rq_jobs.fail, i) for i in range(3)]
    log = tmp_path / "worker.log"
    env = {
        "FLOW_TRACKER_DATABASE_URL": tracked,
        "FT_TEST_REDIS": REDIS_URL,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    with worker_process(worker(rq_queue), env, log) as proc:  # a work-horse forked per job
        proc.wait(timeout=120)
    wait_until_final([job.id for job in jobs], log, seconds=30)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    ended: dict[str, float] = {}
    for family in text_string_to_metric_families(ft_prometheus.render()[0].decode()):
        for sample in family.samples:
            if sample.name == "flow_tracker_processes_total":
                status = sample.labels["status"]
                ended[status] = ended.get(status, 0) + sample.value
    assert ended == {"completed": 12, "failed": 3}


@pytest.mark.parametrize("worker_class", ["rq.worker.Worker", "rq.worker.SimpleWorker"])
def test_a_job_with_a_bad_critical_section_fails_without_running(
    tracked: str, rq_queue: Queue, worker_class: str, tmp_path: Path
) -> None:
    from redis import Redis

    user = uuid.uuid4().hex
    log = tmp_path / "worker.log"
    env = {"FLOW_TRACKER_DATABASE_URL": tracked, "FT_TEST_REDIS": REDIS_URL}
    # By name: the module cannot be imported, its decorator refuses the template.
    job = rq_queue.enqueue("tests.integrations.rq_bad_jobs.charge", user)
    with worker_process(worker(rq_queue, worker_class), env, log) as proc:
        proc.wait(timeout=120)
    job.refresh()
    assert job.get_status() == "failed"
    assert "UsageError" in (job.latest_result().exc_string or "")  # type: ignore[union-attr]
    assert Redis.from_url(REDIS_URL).get(f"ft-test-ran:rq-charge:{user}") is None
    record = wait_until_final([job.id], log, seconds=30)[job.id]
    assert record.status is Status.FAILED
    assert record.error is not None and record.error.type.endswith("UsageError")
    assert "names 'account', which is not an argument" in record.error.message
