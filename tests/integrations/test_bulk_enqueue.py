"""Bulk enqueues (Celery group, RQ enqueue_many, Dramatiq group): one write for the batch.

Rows written in one transaction share their ``xmin`` on PostgreSQL: a batch
stored in one statement shows one, a batch stored row by row shows as many as
it has rows. Every row must still be stored before its message is published,
and a real worker then runs the jobs on those same rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import flow_tracker
from flow_tracker import Status
from flow_tracker.ids import process_id_for
from tests.integrations.workers import require_service, wait_until_final, worker_process

pytestmark = pytest.mark.postgres
BATCH = 25


@pytest.fixture
def pg_tracked(pg_server_url: str) -> Iterator[str]:
    """flow-tracker on the test PostgreSQL database."""
    require_service("127.0.0.1", 6379, "Redis")
    flow_tracker.configure(database_url=pg_server_url, log_to_stdlib=False)
    yield pg_server_url
    flow_tracker.reset()


def _stored(url: str, job_system: str, job_ids: list[str]) -> tuple[list[tuple[str, str]], int]:
    """(job id, status) of each stored row, and how many transactions wrote them."""
    ids = [process_id_for(job_system, job_id) for job_id in job_ids]
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT job_id, status FROM flow_tracker_processes WHERE id = ANY(%s) ORDER BY job_id",
            (ids,),
        ).fetchall()
        transactions = conn.execute(
            "SELECT count(DISTINCT xmin::text) FROM flow_tracker_processes WHERE id = ANY(%s)",
            (ids,),
        ).fetchone()
    assert transactions is not None
    return [(r[0], r[1]) for r in rows], int(transactions[0])


def test_a_celery_group_stores_its_queued_rows_in_one_transaction(pg_tracked: str) -> None:
    from celery import group
    from redis import Redis

    from tests.integrations import celery_app as ca

    queue = f"ft-test-{uuid.uuid4().hex[:8]}"
    result = group(ca.succeed.s(i) for i in range(BATCH)).apply_async(queue=queue)
    job_ids = [r.id for r in result.results]
    try:
        rows, transactions = _stored(pg_tracked, "celery", job_ids)
        assert sorted(rows) == sorted((job_id, "queued") for job_id in job_ids)
        assert transactions == 1, f"{BATCH} rows written in {transactions} transactions"
        record = flow_tracker.get_process(process_id_for("celery", job_ids[3]))
        assert record is not None and record.job_args == {"args": [3], "kwargs": {}}
        assert record.queue == queue  # routed as Celery routes it
    finally:
        Redis.from_url("redis://127.0.0.1:6379/14").delete(queue)


def test_an_rq_enqueue_many_stores_its_queued_rows_in_one_transaction(pg_tracked: str) -> None:
    from redis import Redis
    from rq import Queue

    from flow_tracker.integrations import rq as ft_rq
    from tests.integrations import rq_jobs

    ft_rq.install()
    queue = Queue(
        f"ft-test-{uuid.uuid4().hex[:8]}", connection=Redis.from_url("redis://127.0.0.1:6379/13")
    )
    try:
        jobs = queue.enqueue_many(
            [Queue.prepare_data(rq_jobs.succeed, args=(i,)) for i in range(BATCH)]
        )
        job_ids = [job.id for job in jobs]
        rows, transactions = _stored(pg_tracked, "rq", job_ids)
        assert sorted(rows) == sorted((job_id, "queued") for job_id in job_ids)
        assert transactions == 1, f"{BATCH} rows written in {transactions} transactions"
        assert queue.count == BATCH  # and the batch reached Redis
    finally:
        queue.delete(delete_jobs=True)


def test_a_dramatiq_group_stores_its_queued_rows_in_one_transaction(pg_tracked: str) -> None:
    import dramatiq

    from tests.integrations import dramatiq_app as da

    messages = [da.succeed.message(i) for i in range(BATCH)]
    try:
        dramatiq.group(messages).run()
        job_ids = [m.message_id for m in messages]
        rows, transactions = _stored(pg_tracked, "dramatiq", job_ids)
        assert sorted(rows) == sorted((job_id, "queued") for job_id in job_ids)
        assert transactions == 1, f"{BATCH} rows written in {transactions} transactions"
    finally:
        da.broker.flush(da.QUEUE)


@pytest.mark.slow
def test_a_celery_group_runs_to_completion_on_the_rows_stored_ahead(
    pg_tracked: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery import group

    from tests.integrations import celery_app as ca
    from tests.integrations.test_celery import BACKEND, worker_args

    queue = f"ft-test-{uuid.uuid4().hex[:8]}"
    env = {
        "FT_TEST_BROKER": "redis://127.0.0.1:6379/14",
        "FT_TEST_BACKEND": BACKEND,
        "FT_TEST_QUEUE": queue,
        "FLOW_TRACKER_DATABASE_URL": pg_tracked,
    }
    result = group(ca.succeed.s(i) for i in range(BATCH)).apply_async(queue=queue)
    job_ids = [r.id for r in result.results]
    log = tmp_path / "worker.log"
    with worker_process(worker_args(queue), env, log):
        found = wait_until_final(job_ids, log)
    assert {p.status for p in found.values()} == {Status.COMPLETED}
    assert all(p.queued_at is not None and p.attempt == 1 for p in found.values())
