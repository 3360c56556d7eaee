"""Dramatiq: real Redis broker, the real ``dramatiq`` command with worker processes and threads."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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

REDIS_URL = "redis://127.0.0.1:6379/11"
# One queue per test session, named before the app module is imported anywhere.
os.environ.setdefault("FT_TEST_DRAMATIQ_QUEUE", f"ft-test-{uuid.uuid4().hex[:8]}")
os.environ.setdefault("FT_TEST_DRAMATIQ_REDIS", REDIS_URL)

# Real worker processes: the full run (make test), not the fast lane.
pytestmark = pytest.mark.slow


@pytest.fixture
def app() -> Iterator[Any]:
    require_service("127.0.0.1", 6379, "Redis")
    from tests.integrations import dramatiq_app

    dramatiq_app.broker.flush_all()
    yield dramatiq_app
    dramatiq_app.broker.flush_all()


def worker_command() -> list[str]:
    return [
        "dramatiq",
        "tests.integrations.dramatiq_app",
        "-p",
        "2",
        "-t",
        "2",
        "-Q",
        os.environ["FT_TEST_DRAMATIQ_QUEUE"],
    ]


def env_for(database_url: str) -> dict[str, str]:
    return {
        "FLOW_TRACKER_DATABASE_URL": database_url,
        "FT_TEST_DRAMATIQ_QUEUE": os.environ["FT_TEST_DRAMATIQ_QUEUE"],
        "FT_TEST_DRAMATIQ_REDIS": REDIS_URL,
    }


def test_every_message_has_one_row_with_the_right_outcome(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    kinds = {}
    for i in range(200):
        kind = ("succeed", "fail", "flaky", "always_fail")[i % 4]
        kinds[getattr(app, kind).send(i).message_id] = kind
    assert flow_tracker.get_status(next(iter(kinds))).is_queued  # type: ignore[union-attr]
    log = tmp_path / "worker.log"
    with worker_process(worker_command(), env_for(tracked), log):
        check_job_mix(kinds, log, "dramatiq", retried_flow_status=Status.FAILED)


def test_progress_is_readable_by_message_id_while_it_runs(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    message_id = app.slow_progress.send(30).message_id
    log = tmp_path / "worker.log"
    with worker_process(worker_command(), env_for(tracked), log):
        seen = poll_progress(message_id)
    assert seen and seen == sorted(seen)


def test_message_sent_inside_a_job_records_its_parent(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    parent = app.parent_job.send()
    log = tmp_path / "worker.log"
    with worker_process(worker_command(), env_for(tracked), log):
        child_id = parent.get_result(block=True, timeout=60_000)
        found = wait_until_final([parent.message_id, child_id], log)
    assert found[child_id].parent_process_id == found[parent.message_id].id


def test_jobs_succeed_when_the_tracking_database_is_down(app: Any, tmp_path: Path) -> None:
    down = "postgresql://postgres@127.0.0.1:1/nowhere"
    flow_tracker.configure(database_url=down, verify=False, log_to_stdlib=False)
    messages = [app.succeed.send(i) for i in range(20)]
    log = tmp_path / "worker.log"
    with worker_process(worker_command(), env_for(down), log):
        values = [m.get_result(block=True, timeout=60_000) for m in messages]
    assert values == [i * 2 for i in range(20)]


def test_track_all_false_tracks_only_opted_in_actors(tracked: str) -> None:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from flow_tracker.integrations import dramatiq as ft_dramatiq

    require_service("127.0.0.1", 6379, "Redis")
    broker = RedisBroker(url=REDIS_URL, namespace=f"ft-opt-in-{uuid.uuid4().hex[:6]}")
    middleware = ft_dramatiq.install(broker, track_all=False)
    assert ft_dramatiq.install(broker, track_all=False) is middleware  # idempotent

    @dramatiq.actor(broker=broker, actor_name="plain_actor")
    def plain() -> None:
        assert flow_tracker.current() is None

    @dramatiq.actor(broker=broker, actor_name="opted_actor", flow_tracker=True)
    def opted() -> None:
        assert isinstance(flow_tracker.current(), flow_tracker.Tracker)

    plain.send()
    opted.send()
    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()
    broker.join(plain.queue_name)
    worker.join()
    worker.stop()
    broker.flush_all()
    assert [p.name for p in flow_tracker.list_processes()] == ["opted_actor"]


def test_a_message_refused_its_critical_section_is_skipped_not_retried(
    tracked: str, app: Any, tmp_path: Path
) -> None:
    user = uuid.uuid4().hex
    log = tmp_path / "worker.log"
    with worker_process(worker_command(), env_for(tracked), log):
        with flow_tracker.exclusive("ft-test-charge", key=user):  # another holder
            refused = [app.charge.send(user), app.guarded_block.send(user)]
            results = [m.get_result(block=True, timeout=60_000) for m in refused]
            assert results == [None, None]
        ran = app.charge.send(user)
        assert ran.get_result(block=True, timeout=60_000) == f"charged {user}"
        ids = [m.message_id for m in refused]
        found = wait_until_final([*ids, ran.message_id], log)
    check_lock_skips(found, ids, ran.message_id)


def test_a_worker_of_an_actor_with_a_bad_critical_section_refuses_to_start(
    tmp_path: Path,
) -> None:
    import subprocess

    from tests.integrations.workers import REPO, bin_path

    require_service("127.0.0.1", 6379, "Redis")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.run(
            [bin_path("dramatiq"), "tests.integrations.dramatiq_bad_app", "-p", "1", "-t", "1"],
            env={**os.environ, "PYTHONPATH": str(REPO), "FT_TEST_DRAMATIQ_REDIS": REDIS_URL},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
    output = log.read_text(errors="replace")
    assert proc.returncode != 0, output
    assert "UsageError: actor charge: bad flow_tracker_exclusive option" in output
    assert "names 'account', which is not an argument" in output


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ({"name": "ft-test-charge", "key": "{account}"}, "names 'account'"),
        ({"name": "ft-test-charge", "on_conflict": "maybe"}, "on_conflict must be one of"),
        ({"name": "ft-test-charge", "ttl": "soon"}, "ttl must be a positive number"),
        ("ft-test-charge", "takes flow_tracker.exclusive"),
    ],
)
def test_declaring_an_actor_with_a_bad_critical_section_raises_at_once(
    option: object, reason: str
) -> None:
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from flow_tracker.integrations import dramatiq as ft_dramatiq

    broker = StubBroker()
    ft_dramatiq.install(broker)
    with pytest.raises(flow_tracker.UsageError, match=reason):

        @dramatiq.actor(broker=broker, flow_tracker_exclusive=option)
        def charge(user_id: str) -> None: ...

    assert "charge" not in broker.actors


def test_an_actor_declared_before_install_is_wrapped_by_install() -> None:
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from flow_tracker.integrations import dramatiq as ft_dramatiq
    from flow_tracker.jobs import WRAPPED_MARK

    broker = StubBroker()

    @dramatiq.actor(broker=broker)
    def early() -> None: ...

    ft_dramatiq.install(broker)
    assert getattr(broker.actors["early"].fn, WRAPPED_MARK, False)
