"""Celery: real brokers (Redis, RabbitMQ), real prefork and thread workers."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

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

BROKERS = {
    "redis": ("redis://127.0.0.1:6379/14", "redis", 6379),
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672//", "RabbitMQ", 5672),
}
BACKEND = "redis://127.0.0.1:6379/14"

# Real worker processes: the full run (make test), not the fast lane.
pytestmark = pytest.mark.slow


@pytest.fixture
def celery_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    broker_name = getattr(request, "param", "redis")
    broker, label, port = BROKERS[broker_name]
    require_service("127.0.0.1", port, label)
    require_service("127.0.0.1", 6379, "Redis (result backend)")
    queue = f"ft-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("FT_TEST_BROKER", broker)
    monkeypatch.setenv("FT_TEST_BACKEND", BACKEND)
    monkeypatch.setenv("FT_TEST_QUEUE", queue)
    from tests.integrations import celery_app

    app = celery_app.app
    app.conf.broker_url = broker
    # Forget connections made for another broker by an earlier test.
    app.close()
    app.amqp._producer_pool = None
    return {"FT_TEST_BROKER": broker, "FT_TEST_BACKEND": BACKEND, "FT_TEST_QUEUE": queue}


def worker_args(
    queue: str,
    pool: str = "prefork",
    concurrency: int = 2,
    app: str = "tests.integrations.celery_app",
) -> list[str]:
    return [
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-Q",
        queue,
        "-l",
        "warning",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"{queue}@%h",
    ]


def enqueue_mix(count: int, queue: str) -> dict[str, str]:
    """Enqueue ``count`` jobs, a quarter of each kind; return kind by task id."""
    from tests.integrations import celery_app as ca

    kinds = {}
    for i in range(count):
        task = (ca.succeed, ca.fail, ca.flaky, ca.always_retry)[i % 4]
        kind = task.name.rsplit(".", 1)[-1].replace("always_retry", "always_fail")
        kinds[task.apply_async((i,), queue=queue).id] = kind
    return kinds


def check_mix(kinds: dict[str, str], log: Path) -> None:
    check_job_mix(kinds, log, "celery", retried_flow_status=Status.RETRYING)


@pytest.mark.parametrize("celery_env", ["redis", "rabbitmq"], indirect=True)
def test_every_job_of_a_prefork_worker_has_one_row_with_the_right_outcome(
    tracked: str, celery_env: dict[str, str], tmp_path: Path
) -> None:
    queue = celery_env["FT_TEST_QUEUE"]
    kinds = enqueue_mix(200, queue)
    queued = flow_tracker.get_status(next(iter(kinds)))
    assert queued is not None  # stored before the broker had the message
    env = {**celery_env, "FLOW_TRACKER_DATABASE_URL": tracked}
    log = tmp_path / "worker.log"
    with worker_process(worker_args(queue), env, log):
        check_mix(kinds, log)


def test_thread_pool_worker_tracks_every_job(
    tracked: str, celery_env: dict[str, str], tmp_path: Path
) -> None:
    queue = celery_env["FT_TEST_QUEUE"]
    kinds = enqueue_mix(40, queue)
    log = tmp_path / "worker.log"
    env = {**celery_env, "FLOW_TRACKER_DATABASE_URL": tracked}
    with worker_process(worker_args(queue, pool="threads", concurrency=4), env, log):
        check_mix(kinds, log)


def test_progress_is_readable_by_task_id_from_another_process_while_it_runs(
    tracked: str, celery_env: dict[str, str], tmp_path: Path
) -> None:
    from tests.integrations import celery_app as ca

    queue = celery_env["FT_TEST_QUEUE"]
    task_id = ca.slow_progress.apply_async((30,), queue=queue).id
    assert flow_tracker.get_status(task_id).is_queued  # type: ignore[union-attr]
    log = tmp_path / "worker.log"
    env = {**celery_env, "FLOW_TRACKER_DATABASE_URL": tracked}
    with worker_process(worker_args(queue), env, log):
        seen = poll_progress(task_id)
    assert seen, "never saw the job running with partial progress"
    assert seen == sorted(seen)
    final = flow_tracker.get_status(task_id)
    assert final is not None and final.is_completed and final.current == 30 and final.total == 30


def test_job_enqueued_inside_a_tracked_job_records_it_as_parent(
    tracked: str, celery_env: dict[str, str], tmp_path: Path
) -> None:
    from tests.integrations import celery_app as ca

    queue = celery_env["FT_TEST_QUEUE"]
    parent = ca.parent_task.apply_async(queue=queue)
    log = tmp_path / "worker.log"
    env = {**celery_env, "FLOW_TRACKER_DATABASE_URL": tracked}
    with worker_process(worker_args(queue), env, log):
        child_id = parent.get(timeout=60)
        found = wait_until_final([parent.id, child_id], log)
    assert found[child_id].parent_process_id == found[parent.id].id
    assert found[parent.id].parent_process_id is None


def test_jobs_succeed_and_return_their_values_when_the_tracking_database_is_down(
    celery_env: dict[str, str], tmp_path: Path
) -> None:
    from tests.integrations import celery_app as ca

    down = "postgresql://postgres@127.0.0.1:1/nowhere"
    flow_tracker.configure(database_url=down, verify=False, log_to_stdlib=False)
    queue = celery_env["FT_TEST_QUEUE"]
    results = [ca.succeed.apply_async((i,), queue=queue) for i in range(20)]
    log = tmp_path / "worker.log"
    with worker_process(worker_args(queue), {**celery_env, "FLOW_TRACKER_DATABASE_URL": down}, log):
        values = [r.get(timeout=60) for r in results]
    assert values == [i * 2 for i in range(20)]


def test_eager_mode_tracks_in_process(tracked: str, celery_env: dict[str, str]) -> None:
    from tests.integrations import celery_app as ca

    ca.app.conf.task_always_eager = True
    try:
        result = ca.succeed.delay(21)
        with pytest.raises(ValueError, match="bad input 5"):
            ca.fail.apply((5,), throw=True)
    finally:
        ca.app.conf.task_always_eager = False
    assert result.get() == 42
    status = flow_tracker.get_status(result.id)
    assert status is not None and status.is_completed
    record = flow_tracker.get_process(status.process_id)
    assert record is not None and record.flows[0].name == "load_user"
    failed = flow_tracker.list_processes(status="failed", name="tests.integrations.celery_app.fail")
    assert len(failed) == 1 and failed.items[0].error is not None


def test_track_all_false_tracks_only_opted_in_tasks(tracked: str) -> None:
    from celery import Celery

    from flow_tracker.integrations import celery as ft_celery

    app = Celery("opt_in", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    ft_celery.install(app, track_all=False)
    ft_celery.install(app, track_all=False)  # idempotent

    @app.task(name="plain", shared=False)
    def plain() -> int:
        assert flow_tracker.current() is None
        return 1

    @app.task(name="opted_in", flow_tracker=True, shared=False)
    def opted_in() -> int:
        assert isinstance(flow_tracker.current(), flow_tracker.Tracker)
        return 2

    assert plain.delay().get() == 1
    assert opted_in.delay().get() == 2
    assert [p.name for p in flow_tracker.list_processes()] == ["opted_in"]


def test_a_publish_the_broker_refuses_leaves_a_failed_row(tracked: str) -> None:
    from celery import Celery

    from flow_tracker.integrations import celery as ft_celery

    app = Celery("no_broker", broker="redis://127.0.0.1:1/0")
    app.conf.update(
        task_publish_retry=False,
        broker_connection_retry=False,
        broker_connection_max_retries=0,
        broker_connection_timeout=1,
    )
    ft_celery.install(app)

    @app.task(name="unsendable", shared=False)
    def unsendable() -> None:
        return None

    with pytest.raises(Exception):  # noqa: B017, PT011 - kombu's own connection error
        unsendable.apply_async(task_id="will-not-publish")
    status = flow_tracker.get_status("will-not-publish")
    assert status is not None and status.is_failed
    assert "publishing to the broker failed" in (
        status.record.error.message if status.record.error else ""
    )


def test_a_task_refused_its_critical_section_is_skipped_not_failed(
    tracked: str, celery_env: dict[str, str], tmp_path: Path
) -> None:
    from tests.integrations import celery_app as ca

    queue = celery_env["FT_TEST_QUEUE"]
    user = uuid.uuid4().hex
    log = tmp_path / "worker.log"
    env = {**celery_env, "FLOW_TRACKER_DATABASE_URL": tracked}
    with worker_process(worker_args(queue), env, log):
        with flow_tracker.exclusive("ft-test-charge", key=user):  # another holder
            refused = [
                ca.charge.apply_async((user,), queue=queue),  # the per-task option
                ca.guarded_block.apply_async((user,), queue=queue),  # a block inside
            ]
            assert [r.get(timeout=60) for r in refused] == [None, None]
            assert [r.state for r in refused] == ["SUCCESS", "SUCCESS"]
        ran = ca.charge.apply_async((user,), queue=queue)
        assert ran.get(timeout=60) == f"charged {user}"
        found = wait_until_final([r.id for r in refused] + [ran.id], log)
    check_lock_skips(found, [r.id for r in refused], ran.id)


def test_a_task_sent_from_a_traced_context_continues_the_trace_in_the_worker(
    tracked: str, celery_env: dict[str, str], tmp_path: Path
) -> None:
    import json

    from opentelemetry.sdk.trace import TracerProvider

    from flow_tracker.exporters import opentelemetry as ft_otel
    from tests.integrations import celery_app as ca

    queue = celery_env["FT_TEST_QUEUE"]
    span_file = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    ft_otel.install(provider)
    try:
        with provider.get_tracer("app").start_as_current_span("POST /signup") as request:
            result = ca.succeed.apply_async((5,), queue=queue)
    finally:
        ft_otel.uninstall()
    log = tmp_path / "worker.log"
    env = {
        **celery_env,
        "FLOW_TRACKER_DATABASE_URL": tracked,
        "FT_TEST_OTEL_FILE": str(span_file),
    }
    with worker_process(worker_args(queue), env, log):
        assert result.get(timeout=60) == 10
        wait_until_final([result.id], log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = (
                [json.loads(line) for line in span_file.read_text().splitlines()]
                if (span_file.exists())
                else []
            )
            if any(r["name"] == ca.succeed.name for r in rows):
                break
            time.sleep(0.2)
    by_name = {row["name"]: row for row in rows}
    job = by_name[ca.succeed.name]
    context = request.get_span_context()
    assert job["trace_id"] == f"{context.trace_id:032x}"
    assert job["parent_span_id"] == f"{context.span_id:016x}"
    assert job["attributes"]["flow_tracker.job_id"] == result.id
    for flow in ("load_user", "send_email", "update_stats"):
        assert by_name[flow]["parent_span_id"] == job["span_id"]
        assert by_name[flow]["trace_id"] == job["trace_id"]


BAD_TASKS = ("bad_template", "bad_on_conflict", "bad_type")


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_task_with_a_bad_critical_section_fails_unrun_and_its_neighbours_keep_theirs(
    tracked: str, celery_env: dict[str, str], tmp_path: Path, pool: str
) -> None:
    from redis import Redis

    from tests.integrations import celery_bad_app as bad

    bad.app.conf.broker_url = celery_env["FT_TEST_BROKER"]
    queue = celery_env["FT_TEST_QUEUE"]
    user = uuid.uuid4().hex
    log = tmp_path / "worker.log"
    env = {**celery_env, "FLOW_TRACKER_DATABASE_URL": tracked}
    args = worker_args(queue, pool=pool, app="tests.integrations.celery_bad_app")
    with worker_process(args, env, log):
        with flow_tracker.exclusive("ft-test-charge", key=user):  # another holder
            refused = {
                name: getattr(bad, name).apply_async((user,), queue=queue) for name in BAD_TASKS
            }
            neighbour = bad.good_neighbour.apply_async((user,), queue=queue)
            plain = bad.plain_neighbour.apply_async((user,), queue=queue)
            for result in refused.values():
                result.get(timeout=60, propagate=False)
            assert neighbour.get(timeout=60) is None  # its section was taken: skipped
            assert plain.get(timeout=60) == f"plain_neighbour ran for {user}"
        found = wait_until_final([r.id for r in [*refused.values(), neighbour, plain]], log)
    redis = Redis.from_url(celery_env["FT_TEST_BACKEND"])
    for name, result in refused.items():
        assert result.state == "FAILURE"
        assert type(result.result).__name__ == "UsageError", result.result
        assert redis.get(f"ft-test-ran:{name}:{user}") is None  # the body never ran
        record = found[result.id]
        assert record.status is Status.FAILED
        assert record.error is not None and record.error.type.endswith("UsageError")
        assert f"task {bad.__name__}.{name}: bad flow_tracker_exclusive option" in (
            record.error.message
        )
        assert "the job was not run" in record.error.message
        # The mistake is in the worker's own log, not only on the jobs.
        assert f"task {bad.__name__}.{name}: bad flow_tracker_exclusive option" in (
            log.read_text(errors="replace")
        )
    assert found[neighbour.id].status is Status.SKIPPED
    assert found[plain.id].status is Status.COMPLETED


def test_a_bad_critical_section_fails_an_eager_task_without_running_it(tracked: str) -> None:
    from celery import Celery

    from flow_tracker.integrations import celery as ft_celery
    from flow_tracker.jobs import WRAPPED_MARK

    app = Celery("bad_eager", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    ft_celery.install(app)
    calls: list[str] = []

    @app.task(
        name="bad_eager.charge",
        shared=False,
        flow_tracker_exclusive={"name": "x", "key": "{account}"},
    )
    def charge(user_id: str) -> None:
        calls.append(user_id)

    @app.task(name="bad_eager.after", shared=False)
    def after() -> str:
        return "after"

    with pytest.raises(flow_tracker.UsageError, match="names 'account'"):
        charge.delay("u1").get()
    assert calls == []
    assert getattr(app.tasks["bad_eager.after"].run, WRAPPED_MARK, False)
    assert after.delay().get() == "after"
    failed = flow_tracker.list_processes(name="bad_eager.charge").items[0]
    assert failed.status is Status.FAILED


def test_install_on_a_finalized_app_raises_for_a_bad_critical_section(tracked: str) -> None:
    from celery import Celery

    from flow_tracker.integrations import celery as ft_celery
    from flow_tracker.jobs import WRAPPED_MARK

    app = Celery("bad_finalized", broker="memory://")

    @app.task(
        name="bad_finalized.charge",
        shared=False,
        flow_tracker_exclusive={"name": "x", "ttl": "soon"},
    )
    def charge(user_id: str) -> None:
        raise AssertionError("must not run")

    @app.task(name="bad_finalized.after", shared=False)
    def after() -> None:
        return None

    app.finalize()
    with pytest.raises(flow_tracker.UsageError, match="ttl must be a positive number"):
        ft_celery.install(app)
    assert getattr(app.tasks["bad_finalized.after"].run, WRAPPED_MARK, False)
    with pytest.raises(flow_tracker.UsageError, match="the job was not run"):
        app.tasks["bad_finalized.charge"].run("u1")


def test_a_failure_celery_cannot_pickle_is_stored_with_the_tasks_own_class_and_message(
    tracked: str, celery_env: dict[str, str], tmp_path: Path
) -> None:
    from tests.integrations import celery_unpicklable_app as unpicklable

    queue = celery_env["FT_TEST_QUEUE"]
    unpicklable.app.conf.broker_url = celery_env["FT_TEST_BROKER"]
    task_id = unpicklable.post_to_ledger.apply_async((7,), queue=queue).id
    log = tmp_path / "worker.log"
    env = {**celery_env, "FLOW_TRACKER_DATABASE_URL": tracked}
    args = worker_args(queue, app="tests.integrations.celery_unpicklable_app")
    with worker_process(args, env, log):
        found = wait_until_final([task_id], log)
    record = flow_tracker.get_process(found[task_id].id)
    assert record is not None and record.status is Status.FAILED
    assert record.error is not None
    assert record.error.type == "tests.integrations.celery_unpicklable_app.LedgerLockedError"
    assert record.error.message == "ledger entry 7 is locked by another posting"
    assert "UnpickleableExceptionWrapper" not in (record.error.traceback or "")
    failed = flow_tracker.list_processes(status="failed", name=unpicklable.post_to_ledger.name)
    assert [p.error.type for p in failed if p.error] == [record.error.type]


def test_a_worker_started_while_the_tracking_database_is_down_says_so_in_one_line(
    celery_env: dict[str, str], tmp_path: Path
) -> None:
    import socket

    from tests.integrations import celery_app as ca

    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    down = f"postgresql://postgres@127.0.0.1:{closed_port}/nowhere"
    flow_tracker.configure(database_url=down, verify=False, log_to_stdlib=False)
    queue = celery_env["FT_TEST_QUEUE"]
    result = ca.succeed.apply_async((21,), queue=queue)
    log = tmp_path / "worker.log"
    env = {**celery_env, "FLOW_TRACKER_DATABASE_URL": down}
    with worker_process(worker_args(queue, pool="threads", concurrency=1), env, log):
        assert result.get(timeout=60) == 42  # the task ran
    text = log.read_text(errors="replace")
    ours = [line for line in text.splitlines() if "flow-tracker" in line]
    assert any("cannot reach the tracking database" in line for line in ours), text
    assert "Traceback" not in text and "AttributeError" not in text, text
    start_up = [line for line in ours if "cannot reach the tracking database" in line]
    assert len(start_up) == 1, text
