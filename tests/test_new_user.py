"""What a new user trips on, following the README with ordinary mistakes.

A health check that forgot its database, a ``lost_after`` shorter than the
heartbeat, a demo whose charts stayed empty or that cannot run twice, a
password in a pasted snippet, a clean-up that did not ask, and the command
line's smaller rough edges (JSON output, paging, names, repeated actions).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, update

import flow_tracker
from flow_tracker import runtime
from flow_tracker.cli import main, terminal
from flow_tracker.cli.demo_history import record_history
from flow_tracker.heartbeat import HEARTBEAT
from flow_tracker.status import FINISHED_STATUSES, Status
from flow_tracker.store import queries, rollups
from flow_tracker.store.clock import database_now
from flow_tracker.store.schema import locks, processes, transitions
from flow_tracker.web.statistics import overview

WAIT = 30.0


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _count(statuses: Any = Status) -> int:
    store = runtime.store()
    with store.engine.connect() as conn:
        return sum(queries.count_by_status(conn, statuses).values())


def _sample(url: str, count: int = 1) -> list[str]:
    """``count`` completed processes, oldest first."""
    flow_tracker.configure(database_url=url, log_to_stdlib=False)
    ids = []
    for index in range(count):
        with flow_tracker.track("sample", metadata={"n": index}) as tracker:
            tracker.info("done")
        ids.append(str(tracker.process_id))
    flow_tracker.flush()
    return ids


# -- 1. no database configured: every command fails loudly ---------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["health"],
        ["reap"],
        ["locks"],
        ["workflows", "list"],
        ["cleanup", "--yes"],
        ["list"],
        ["requeue", "--lost"],
        ["rollups", "rebuild"],
    ],
)
def test_a_command_with_no_database_configured_fails_and_creates_no_file(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOW_TRACKER_DATABASE_URL", raising=False)
    result = runner.invoke(main, command)
    assert result.exit_code == 1, result.output
    assert "no tracking database configured" in result.output
    assert "FLOW_TRACKER_DATABASE_URL" in result.output
    assert "healthy" not in result.output
    assert not (tmp_path / "flow_tracker.db").exists()


# -- 2. lost_after must stay above the heartbeat -------------------------------------


def test_configure_refuses_a_lost_after_the_heartbeat_cannot_keep_up_with(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    with pytest.raises(flow_tracker.ConfigurationError, match="at least 30 s") as refused:
        flow_tracker.configure(database_url=url, lost_after=5, heartbeat_interval=10)
    assert isinstance(refused.value, ValueError)
    flow_tracker.configure(database_url=url, lost_after=30, heartbeat_interval=10)


def test_an_environment_whose_heartbeat_outgrew_lost_after_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOW_TRACKER_HEARTBEAT_INTERVAL", "30")  # lost_after stays 60
    with pytest.raises(flow_tracker.ConfigurationError, match="heartbeat_interval=30"):
        flow_tracker.config.current()


def test_reap_refuses_a_lost_after_shorter_than_three_heartbeats_and_marks_nothing(
    runner: CliRunner, tracked: str
) -> None:
    running = flow_tracker.start("still alive")
    flow_tracker.flush()
    with pytest.raises(flow_tracker.UsageError, match="at least 30 s"):
        flow_tracker.reap(lost_after=1)
    result = runner.invoke(main, ["reap", "--lost-after", "1", "--database-url", tracked])
    assert result.exit_code == 2
    assert "too short for heartbeat_interval=10 s" in result.output
    status = flow_tracker.get_status(running.process_id)
    assert status is not None and status.is_running
    running.complete()


# -- 3. the rollups: rebuilt after rows arrive late, and the demo's charts ----------------


def _finished_in_charts(window: str) -> int:
    return overview(runtime.store(), window).finished_total


def test_rollups_rebuild_brings_rows_stored_late_into_the_charts(
    runner: CliRunner, tracked: str
) -> None:
    store = runtime.store()
    rollups.refresh(store, queries.database_time(store))  # the hours up to now are rolled
    written = record_history(store, days=3, count=60, seed=5)  # then restored, say
    assert _finished_in_charts("7d") < written  # in the lists, not in the charts
    result = runner.invoke(main, ["rollups", "rebuild", "--database-url", tracked])
    assert result.exit_code == 0, result.output
    assert "rebuilt the rollups of" in result.output
    assert _finished_in_charts("7d") == written == _count(FINISHED_STATUSES)


def test_rebuild_reports_its_progress_day_by_day(tracked: str) -> None:
    store = runtime.store()
    record_history(store, days=3, count=30, seed=9)
    seen: list[tuple[int, int]] = []
    done = rollups.rebuild(store, queries.database_time(store), progress=lambda *p: seen.append(p))
    assert done.days == len(seen) >= 3
    assert seen[-1] == (done.days, done.days)
    assert _finished_in_charts("7d") == 30


def test_rebuild_of_an_empty_database_says_there_is_nothing(
    runner: CliRunner, tracked: str
) -> None:
    runtime.store().ensure_schema()
    result = runner.invoke(main, ["rollups", "rebuild", "--database-url", tracked])
    assert result.exit_code == 0 and "nothing finished yet" in result.output


# -- 7. the demo: twice in a row, its charts full, its count true -------------------------


def test_the_demo_runs_twice_in_a_row_with_its_week_in_the_charts(
    runner: CliRunner, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flow_tracker")
    for run in (1, 2):
        result = runner.invoke(main, ["demo", "--no-serve", "--database-url", database_url])
        assert result.exit_code == 0, f"run {run}: {result.output}"
        flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
        total = _count()
        assert f"{total:,} processes recorded" in result.output
        assert total > 1600
        # The week of past runs is in the charts, not only in the lists.
        assert _finished_in_charts("30d") == _count(FINISHED_STATUSES)
        HEARTBEAT.clear()  # the demo's process exits: its heartbeats and leases stop
    if database_url.startswith("postgresql"):  # the second run added to the first one's
        assert "Freed the lock an earlier demo's LongRunningSync still held" in result.output
    assert "taken over" not in caplog.text


def test_a_renewal_that_lands_after_its_lease_was_released_is_no_takeover(
    tracked: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flow_tracker")
    with flow_tracker.exclusive("renew-race", key="k") as lease:
        pass
    lease.renew()  # the heartbeat thread collected it just before the block released it
    assert not lease.lost
    assert "taken over" not in caplog.text


def test_a_lease_taken_over_while_its_holder_was_paused_is_still_reported(
    tracked: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flow_tracker")
    with flow_tracker.exclusive("paused", key="k") as first:
        HEARTBEAT.clear()  # its holder is paused: no renewal (a beat in flight ends first)
        with runtime.store().engine.begin() as conn:
            expired = database_now(conn) - timedelta(seconds=1)
            conn.execute(update(locks).where(locks.c.name == "paused").values(expires_at=expired))
        with flow_tracker.exclusive("paused", key="k") as second:  # another holder
            first.renew()
            assert second.fence > first.fence
    assert first.lost
    assert "lock 'paused' for key 'k' was taken over" in caplog.text


# -- 8. init keeps a password out of the snippet ------------------------------------------


def test_init_prints_no_password_and_points_the_snippet_at_the_environment(
    runner: CliRunner, pg_server_url: str
) -> None:
    with_password = pg_server_url.replace("postgres@", "postgres:s3cret-pw@", 1)
    result = runner.invoke(main, ["init", "--database-url", with_password])
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output
    assert "postgres:***@" in result.output  # the line above still names the server
    assert "$FLOW_TRACKER_DATABASE_URL" in result.output
    assert "database_url=" not in result.output


def test_init_without_a_password_puts_the_url_in_the_snippet(
    runner: CliRunner, sqlite_url: str
) -> None:
    result = runner.invoke(main, ["init", "--database-url", sqlite_url])
    assert result.exit_code == 0, result.output
    assert f"database_url={sqlite_url!r}," in result.output


# -- 10. clean-up asks; long work shows its progress in a terminal only ------------------


def test_cleanup_refuses_without_yes_where_it_cannot_ask(
    runner: CliRunner, database_url: str
) -> None:
    _sample(database_url, 2)
    result = runner.invoke(main, ["cleanup", "--days", "0", "--database-url", database_url])
    assert result.exit_code == 1
    assert "Delete 2 processes older than 0 days" in result.output
    assert "pass --yes" in result.output
    assert _count() == 2


def test_cleanup_asks_in_a_terminal_and_deletes_only_on_yes(
    runner: CliRunner, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sample(database_url, 2)
    monkeypatch.setattr(terminal, "stdin_is_terminal", lambda: True)
    args = ["cleanup", "--days", "0", "--database-url", database_url]
    declined = runner.invoke(main, args, input="n\n")
    assert declined.exit_code == 1 and _count() == 2
    accepted = runner.invoke(main, args, input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "deleted 2 processes" in accepted.output and _count() == 0


def test_a_progress_bar_is_drawn_only_when_stderr_is_a_terminal(
    runner: CliRunner, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sample(sqlite_url, 3)
    args = ["cleanup", "--days", "0", "--yes", "--database-url", sqlite_url]
    quiet = runner.invoke(main, args)
    assert quiet.exit_code == 0 and quiet.stderr == ""
    _sample(sqlite_url, 3)
    monkeypatch.setattr(terminal, "stderr_is_terminal", lambda: True)
    drawn = runner.invoke(main, args)
    assert drawn.exit_code == 0 and "deleting" in drawn.stderr
    assert drawn.stdout == "deleted 3 processes older than 0 days\n"


# -- 11. the smaller rough edges ------------------------------------------------------------


def test_every_json_option_prints_one_document_an_array_for_a_list(
    runner: CliRunner, database_url: str
) -> None:
    (process_id,) = _sample(database_url)
    url = ["--database-url", database_url]
    for command in (["list", *url], ["locks", *url], ["workflows", "list", *url], ["events"]):
        result = runner.invoke(main, [*command, "--json"])
        assert result.exit_code == 0, result.output
        assert isinstance(json.loads(result.stdout), list), command
    assert json.loads(runner.invoke(main, ["locks", "--json", *url]).stdout) == []
    nothing = runner.invoke(main, ["list", "--status", "lost", "--json", *url])
    assert json.loads(nothing.stdout) == []
    shown = runner.invoke(main, ["show", process_id, "--json", *url])
    assert json.loads(shown.stdout)["id"] == process_id
    health = runner.invoke(main, ["health", "--json", *url])
    assert json.loads(health.stdout)["jobs"] == {"silent": [], "lost": [], "stale_queued": []}


def test_lists_page_on_with_the_cursor_they_print(runner: CliRunner, database_url: str) -> None:
    ids = _sample(database_url, 3)
    url = ["--database-url", database_url]
    first = runner.invoke(main, ["list", "--limit", "2", "--json", *url])
    assert [row["id"] for row in json.loads(first.stdout)] == ids[:0:-1]
    cursor = first.stderr.strip().removeprefix("next page: --cursor ")
    rest = runner.invoke(main, ["list", "--limit", "2", "--cursor", cursor, *url])
    assert rest.exit_code == 0, rest.output
    assert ids[0] in rest.output and ids[1] not in rest.output
    assert "next page" not in rest.output


def _failed_run(name: str) -> Any:
    wf = flow_tracker.workflow(name)
    wf.step(name="validate")(lambda context: {"total": 42})

    @wf.step(depends_on=["validate"])
    def charge(context: Any, validate: Any) -> Any:
        raise TimeoutError("the gateway timed out")

    wf.step(name="confirm", depends_on=["charge"])(lambda context, charge: charge)
    run = wf.run(context={"cart_id": 7})
    assert run.wait(WAIT).status == "failed"
    return run


def test_workflow_runs_page_on_with_the_cursor_they_print(runner: CliRunner, tracked: str) -> None:
    runs = [str(_failed_run("paged").id) for _ in range(3)]
    url = ["--database-url", tracked]
    first = runner.invoke(main, ["workflows", "list", "--limit", "2", *url])
    cursor = first.stdout.splitlines()[-1].removeprefix("next page: --cursor ")
    rest = runner.invoke(
        main, ["workflows", "list", "--limit", "2", "--cursor", cursor, "--json", *url]
    )
    assert rest.exit_code == 0, rest.output
    assert [run["id"] for run in json.loads(rest.stdout)] == runs[:1]


def test_a_mistyped_step_names_the_nearest_and_the_runs_steps(
    runner: CliRunner, tracked: str
) -> None:
    run = _failed_run("mistyped")
    for action in (["retry"], ["resolve", "--result", "1"]):
        verb, *options = action
        result = runner.invoke(
            main, ["workflows", verb, str(run.id), "chrage", *options, "--database-url", tracked]
        )
        assert result.exit_code == 1
        assert "no step 'chrage': did you mean 'charge'?" in result.output
        assert "its steps: validate, charge, confirm" in result.output


def test_show_gives_a_resolved_steps_result_not_its_old_error(
    runner: CliRunner, tracked: str
) -> None:
    run = _failed_run("resolved")
    flow_tracker.resolve_step(run.id, "charge", result={"paid": 42}, reason="paid by phone")
    assert run.wait(WAIT).status == "completed"
    shown = runner.invoke(main, ["workflows", "show", str(run.id), "--database-url", tracked])
    (line,) = [row for row in shown.output.splitlines() if " charge" in row]
    assert 'resolved by hand -> {"paid": 42}' in line
    assert "TimeoutError" not in line


def test_a_second_cancel_says_the_run_was_already_cancelled(
    runner: CliRunner, tracked: str
) -> None:
    import threading

    release = threading.Event()
    wf = flow_tracker.workflow("cancel_twice")
    wf.step(name="slow")(lambda context: release.wait(WAIT))
    wf.step(name="after", depends_on=["slow"])(lambda context, slow: None)
    run = wf.run()
    args = ["workflows", "cancel", str(run.id), "--database-url", tracked]
    deadline = time.monotonic() + WAIT
    while flow_tracker.get_workflow(run.id).steps["slow"].status != "running":
        assert time.monotonic() < deadline, "step slow did not start"
        time.sleep(0.01)
    try:
        first = runner.invoke(main, args)
        assert first.exit_code == 0 and "cancelled (" in first.output
        second = runner.invoke(main, args)
    finally:
        release.set()
    assert second.exit_code == 0
    assert second.output == f"run {run.id} was already cancelled: nothing changed\n"


def test_health_names_the_silent_job_not_only_its_count(
    runner: CliRunner, database_url: str
) -> None:
    flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
    tracker = flow_tracker.start("ResizeUploads")
    flow_tracker.flush()
    HEARTBEAT.clear()  # its worker died
    with runtime.store().engine.begin() as conn:
        old = database_now(conn) - timedelta(minutes=2)
        conn.execute(
            update(processes).where(processes.c.id == tracker.process_id).values(heartbeat_at=old)
        )
    result = runner.invoke(main, ["health", "--database-url", database_url])
    assert result.exit_code == 1
    text = result.output
    assert "without heartbeat:" in text
    (line,) = [row for row in text.splitlines() if str(tracker.process_id) in row]
    assert "ResizeUploads" in line
    as_json = json.loads(
        runner.invoke(main, ["health", "--json", "--database-url", database_url]).stdout
    )
    assert [job["process_id"] for job in as_json["jobs"]["silent"]] == [str(tracker.process_id)]


def test_show_gives_the_job_arguments_and_the_wait_before_the_first_attempt(
    runner: CliRunner, database_url: str
) -> None:
    flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
    store = runtime.store()
    store.ensure_schema()
    queued = datetime(2026, 11, 2, 9, 0, 0, tzinfo=timezone.utc)
    process_id = uuid.uuid4()
    with store.engine.begin() as conn:
        conn.execute(
            insert(processes).values(
                id=process_id,
                name="welcome_email",
                category="jobs",
                status="completed",
                metadata={},
                created_at=queued,
                queued_at=queued,
                started_at=queued + timedelta(seconds=40),  # attempt 2's start
                finished_at=queued + timedelta(seconds=41),
                updated_at=queued + timedelta(seconds=41),
                duration_ms=1000.0,
                job_system="celery",
                job_id="t-1",
                queue="mail",
                job_args={"args": [42], "kwargs": {"template": "welcome"}},
                attempt=2,
            )
        )
        for status, after, attempt in (
            ("queued", 0, 1),
            ("running", 2, 1),  # waited 2 s, then attempt 1 ran and failed
            ("retrying", 30, 1),
            ("running", 40, 2),
            ("completed", 41, 2),
        ):
            conn.execute(
                insert(transitions).values(
                    id=uuid.uuid4(),
                    process_id=process_id,
                    status=status,
                    at=queued + timedelta(seconds=after),
                    attempt=attempt,
                )
            )
    shown = runner.invoke(main, ["show", str(process_id), "--database-url", database_url])
    assert shown.exit_code == 0, shown.output
    assert "waited    2.00 s in the queue before its first start" in shown.output
    assert 'args      {"args": [42], "kwargs": {"template": "welcome"}}' in shown.output


# -- 4. one duration of a step ---------------------------------------------------------------


def _steps_ran(name: str) -> Any:
    wf = flow_tracker.workflow(name)
    wf.step(name="first")(lambda context: 1)
    wf.step(name="second", depends_on=["first"])(lambda context, first: first + 1)
    run = wf.run()
    assert run.wait(WAIT).status == "completed"
    flow_tracker.flush()
    return flow_tracker.get_workflow(run.id)


def test_show_and_the_critical_path_give_each_step_the_same_duration(
    runner: CliRunner, tracked: str
) -> None:
    from flow_tracker.cli.render import duration
    from flow_tracker.web.workflow_statistics import _critical_path_of

    status = _steps_ran("one_duration")
    path = dict(_critical_path_of(runtime.store(), status.id))
    shown = runner.invoke(main, ["workflows", "show", str(status.id), "--database-url", tracked])
    for name, step in status.steps.items():
        assert step.duration_ms is not None
        assert path[name] == step.duration_ms
        (line,) = [row for row in shown.output.splitlines() if f" {name} " in row + " "]
        assert duration(step.duration_ms) in line


def test_a_steps_process_row_carries_the_duration_the_analytics_read(tracked: str) -> None:
    status = _steps_ran("analytics_duration")
    for step in status.steps.values():
        assert step.process_id is not None
        record = flow_tracker.get_process(step.process_id)
        assert record is not None and record.duration_ms is not None
        assert record.duration_ms == pytest.approx(step.duration_ms, abs=0.01)
