"""The health page: lost / silent / stale jobs, reap and requeue buttons, held locks."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker import runtime
from flow_tracker.heartbeat import HEARTBEAT
from flow_tracker.store.clock import database_now
from flow_tracker.store.schema import processes
from flow_tracker.web import create_app
from flow_tracker.web.security import CSRF_COOKIE
from tests.integrations.workers import require_service
from tests.web.conftest import ORIGIN, Sample


def _token(client: TestClient) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/health").text)
    assert match, "the health page's forms carry a CSRF token"
    return match.group(1)


def _silence(process_id: str) -> None:
    """The process's worker died two minutes ago: no heartbeat since."""
    HEARTBEAT.clear()
    with runtime.store().engine.begin() as conn:
        old = database_now(conn) - timedelta(minutes=2)
        conn.execute(
            update(processes)
            .where(processes.c.id == uuid.UUID(process_id))
            .values(heartbeat_at=old)
        )


@pytest.fixture
def board(sample: Sample) -> Iterator[TestClient]:
    app = create_app(sample.url)
    with TestClient(app, base_url=ORIGIN) as client:
        yield client
    app.state.dashboard.store.dispose()


def test_the_page_shows_health_and_the_locks_held(board: TestClient, sample: Sample) -> None:
    with flow_tracker.exclusive("financial", key="user-42"):
        html = board.get("/health").text
    assert "healthy" in html and "needs attention" not in html
    assert "financial" in html and "user-42" in html
    assert board.get("/api/health").json()["healthy"] is True
    assert "No critical section is held" in board.get("/health").text


def test_reap_now_marks_the_silent_job_lost_and_health_says_so(
    board: TestClient, sample: Sample
) -> None:
    _silence(sample.running)
    assert "1 without heartbeat" in board.get("/health").text
    api = board.get("/api/health")
    assert api.status_code == 503 and api.json()["silent"] == 1
    response = board.post(
        "/health/reap",
        data={"csrf_token": _token(board)},
        headers={"origin": ORIGIN},
        follow_redirects=False,
    )
    assert response.status_code == 303
    html = board.get(response.headers["location"]).text
    assert "marked 1 process lost" in html and "needs attention" in html
    assert "LongJob" in html  # listed among lost jobs not requeued
    record = flow_tracker.get_process(sample.running)
    assert record is not None and record.status.value == "lost"


def test_a_forged_reap_or_requeue_is_refused_and_changes_nothing(
    board: TestClient, sample: Sample
) -> None:
    _silence(sample.running)
    for path in ("/health/reap", "/health/requeue"):
        no_token = board.post(path, data={"all": "lost"}, headers={"origin": ORIGIN})
        other_origin = board.post(
            path,
            data={"csrf_token": _token(board), "all": "lost"},
            headers={"origin": "http://evil.test"},
        )
        assert (no_token.status_code, other_origin.status_code) == (403, 403)
    assert board.get("/health/reap").status_code == 405  # no GET changes data
    record = flow_tracker.get_process(sample.running)
    assert record is not None and record.status.value == "running"


def test_requeueing_a_process_that_is_no_job_says_why(board: TestClient, sample: Sample) -> None:
    _silence(sample.running)
    flow_tracker.reap()
    response = board.post(
        "/health/requeue",
        data={"csrf_token": _token(board), "process_id": sample.running},
        headers={"origin": ORIGIN},
    )
    assert response.status_code == 200
    assert "0 sent; 1 refused: not_a_job" in response.text


def test_read_only_shows_no_buttons_and_refuses_the_actions(sample: Sample) -> None:
    app = create_app(sample.url, read_only=True)
    with TestClient(app, base_url=ORIGIN) as client:
        html = client.get("/health").text
        assert "Reap now" not in html and "Requeue" not in html
        cookie = client.cookies.get(CSRF_COOKIE) or ""
        for path in ("/health/reap", "/health/requeue"):
            refused = client.post(path, data={"csrf_token": cookie}, headers={"origin": ORIGIN})
            assert refused.status_code == 403
    app.state.dashboard.store.dispose()


def test_the_requeue_button_enqueues_a_lost_rq_job_again(board: TestClient, tracked: str) -> None:
    require_service("127.0.0.1", 6379, "Redis")
    from redis import Redis
    from rq import Queue

    from flow_tracker.integrations import rq as ft_rq
    from flow_tracker.recovery import requeue_job_id
    from tests.integrations import rq_jobs

    redis = Redis.from_url("redis://127.0.0.1:6379/13")
    ft_rq.install(connection=redis)
    queue = Queue(f"ft-health-{uuid.uuid4().hex[:8]}", connection=redis)
    try:
        job = queue.enqueue(rq_jobs.succeed, 3)
        queue.empty()  # type: ignore[no-untyped-call]  # a worker took it and died with it
        status = flow_tracker.get_status(job.id)
        assert status is not None
        with runtime.store().engine.begin() as conn:
            conn.execute(
                update(processes)
                .where(processes.c.id == status.process_id)
                .values(status="lost", lost_count=1)
            )
        response = board.post(
            "/health/requeue",
            data={"csrf_token": _token(board), "all": "lost"},
            headers={"origin": ORIGIN},
        )
        assert "1 sent." in response.text
        assert queue.job_ids == [requeue_job_id(status.process_id)]
        again = flow_tracker.get_status(queue.job_ids[0])
        assert again is not None and again.is_queued
        assert again.record.requeued_from_id == status.process_id
    finally:
        queue.delete(delete_jobs=True)
