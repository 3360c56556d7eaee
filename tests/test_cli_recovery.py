"""The flow-tracker recovery commands: reap, requeue, health, locks."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import update

import flow_tracker
from flow_tracker import runtime
from flow_tracker.cli import main
from flow_tracker.heartbeat import HEARTBEAT
from flow_tracker.store.clock import database_now
from flow_tracker.store.schema import processes


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def silent_process(url: str) -> uuid.UUID:
    """A running process whose worker died two minutes ago."""
    flow_tracker.configure(database_url=url, log_to_stdlib=False)
    tracker = flow_tracker.start("died")
    flow_tracker.flush()
    HEARTBEAT.clear()
    with runtime.store().engine.begin() as conn:
        old = database_now(conn) - timedelta(minutes=2)
        conn.execute(
            update(processes).where(processes.c.id == tracker.process_id).values(heartbeat_at=old)
        )
    flow_tracker.reset()
    return tracker.process_id


def test_health_exits_0_when_healthy_and_1_with_a_silent_job(
    runner: CliRunner, database_url: str
) -> None:
    assert runner.invoke(main, ["db", "upgrade", "--database-url", database_url]).exit_code == 0
    healthy = runner.invoke(main, ["health", "--database-url", database_url])
    assert healthy.exit_code == 0, healthy.output
    assert healthy.output.startswith("healthy")
    silent_process(database_url)
    sick = runner.invoke(main, ["health", "--json", "--database-url", database_url])
    assert sick.exit_code == 1
    report = json.loads(sick.output)
    assert (report["healthy"], report["silent"], report["running"]) == (False, 1, 1)


def test_reap_marks_the_silent_job_lost_and_requeue_says_why_it_cannot(
    runner: CliRunner, database_url: str
) -> None:
    process_id = silent_process(database_url)
    reaped = runner.invoke(main, ["reap", "--database-url", database_url])
    assert reaped.exit_code == 0, reaped.output
    assert "lost: 1" in reaped.output and f"lost {process_id}" in reaped.output
    again = runner.invoke(main, ["requeue", str(process_id), "--database-url", database_url])
    assert again.exit_code == 1
    assert f"{process_id}  refused because not enqueued through a job queue" in again.output
    assert "0 of 1 sent" in again.output
    none_lost = runner.invoke(main, ["requeue", "--lost", "--database-url", database_url])
    assert none_lost.exit_code == 0 and "0 of 0 sent" in none_lost.output  # not a job


def test_requeue_needs_ids_or_one_selection(runner: CliRunner, sqlite_url: str) -> None:
    assert runner.invoke(main, ["db", "upgrade", "--database-url", sqlite_url]).exit_code == 0
    neither = runner.invoke(main, ["requeue", "--database-url", sqlite_url])
    both = runner.invoke(main, ["requeue", "--lost", "x", "--database-url", sqlite_url])
    assert neither.exit_code == both.exit_code == 2
    bad_module = runner.invoke(
        main, ["requeue", "--lost", "--import", "no.such.module", "--database-url", sqlite_url]
    )
    assert bad_module.exit_code == 1 and "cannot import no.such.module" in bad_module.output


def test_locks_lists_what_is_held(runner: CliRunner, database_url: str) -> None:
    flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
    with flow_tracker.exclusive("financial", key="user-7", ttl=120):
        held = runner.invoke(main, ["locks", "--json", "--database-url", database_url])
    assert held.exit_code == 0, held.output
    (row,) = json.loads(held.output)
    assert (row["name"], row["key"], row["fence"]) == ("financial", "user-7", 1)
    free = runner.invoke(main, ["locks", "--database-url", database_url])
    assert "no locks held" in free.output
    assert (
        json.loads(runner.invoke(main, ["locks", "--json", "--database-url", database_url]).output)
        == []
    )


def test_requeue_of_a_queue_not_installed_says_it_waits_and_names_the_import_option(
    runner: CliRunner, sqlite_url: str
) -> None:
    from flow_tracker.jobs import record_enqueued, record_publish_failed

    flow_tracker.configure(database_url=sqlite_url, log_to_stdlib=False)
    process_id = record_enqueued(
        job_system="huey", job_id="h-1", name="send", queue="q", payload={"task": "send"}
    )
    record_publish_failed("huey", "h-1", ConnectionError("broker down"))
    flow_tracker.reset()
    result = runner.invoke(main, ["requeue", str(process_id), "--database-url", sqlite_url])
    assert result.exit_code == 1
    assert f"{process_id}  waiting for a worker of huey" in result.output
    assert "0 of 1 sent" in result.output
    assert "pass --import MODULE" in result.output
