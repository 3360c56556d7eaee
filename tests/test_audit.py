"""The audit log: one row per action of the library, never a payload value.

On SQLite and PostgreSQL: every action (retry, resolve, cancel, start, requeue,
reap, cleanup) writes exactly one row with who, how they got in, what and the
outcome; a failed action a ``failed`` row; refusals of one minute one row; an
audit write that fails never fails the action; the log keeps its own retention.
Workflows run on the in-process pool; no worker process is started.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import insert, select, text, update

import flow_tracker
from flow_tracker import NotFoundError, UsageError, job_systems, runtime
from flow_tracker.actors import Actor, acting_as, cli_actor, library_actor
from flow_tracker.heartbeat import HEARTBEAT
from flow_tracker.store import audit
from flow_tracker.store.clock import database_now
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import audit_log, processes, transitions
from tests.conftest import PG_SERVER
from tests.support.queues import only_the_pool
from tests.workflows.helpers import Calls

WAIT = 30.0
# A value that must never reach the audit log, whatever column.
SECRET = "s3cr3t-" + uuid.uuid4().hex
ANA = Actor("ana", role="operator", via="hook", client="10.1.2.3", request_id="req-ana-1")


def _store() -> Store:
    store = runtime.store()
    store.ensure_schema()
    return store


def _rows(**where: Any) -> list[dict[str, Any]]:
    """The audit rows, oldest first, as dicts (only those matching ``where``)."""
    query = select(audit_log).order_by(audit_log.c.id)
    for column, value in where.items():
        query = query.where(audit_log.c[column] == value)
    with _store().engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def _as_text(rows: list[dict[str, Any]]) -> str:
    """Every column of every row as one text, to look for what must not be there."""
    return json.dumps(rows, default=str, ensure_ascii=False)


def failing_order(name: str, calls: Calls | None = None) -> Any:
    """Steps validate, charge (fails) and confirm, on the in-process pool."""
    wf = flow_tracker.workflow(name)
    counted = calls or Calls()

    @wf.step()
    def validate(context: dict[str, Any]) -> int:
        return 1

    @wf.step(depends_on=["validate"])
    def charge(context: Any, validate: int) -> None:
        counted.hit("charge")
        raise TimeoutError("the gateway timed out")

    @wf.step(depends_on=["charge"])
    def confirm(context: Any, charge: Any) -> str:
        return "confirmed"

    return wf


def _failed_run(name: str) -> uuid.UUID:
    run = failing_order(name).run(context={"card": SECRET})
    assert run.wait(WAIT).status == "failed"
    run_id: uuid.UUID = run.id
    return run_id


# -- every action, one row ----------------------------------------------------------------------


def test_a_resolve_writes_one_allowed_row_with_its_reason_redacted_and_never_its_result(
    tracked: str,
) -> None:
    run_id = _failed_run("audit_resolve")
    assert _rows() == []  # the app's own run (the library's) is its traffic, not an action
    with acting_as(ANA):
        flow_tracker.resolve_step(
            run_id,
            "charge",
            result={"paid": SECRET},
            reason="paid by phone, password=hunter2",
        )
    assert flow_tracker.get_workflow(run_id).steps["charge"].status == "resolved"
    rows = _rows()
    assert len(rows) == 1
    row = rows[0]
    assert (row["action"], row["outcome"], row["target"]) == (
        "workflows:resolve",
        "allowed",
        str(run_id),
    )
    assert (row["actor"], row["role"], row["via"]) == ("ana", "operator", "hook")
    assert (row["client"], row["request_id"], row["times"]) == ("10.1.2.3", "req-ana-1", 1)
    assert row["detail"]["step"] == "charge"
    assert row["detail"]["reason"].startswith("paid by phone, password=[REDACTED]")
    assert row["at"] is not None
    written = _as_text(rows)
    assert SECRET not in written and "hunter2" not in written


def test_the_history_says_who_acted_when_the_caller_gives_no_by(tracked: str) -> None:
    run_id = _failed_run("audit_history_by")
    with acting_as(ANA):
        flow_tracker.retry_step(run_id, "charge")
    with _store().engine.connect() as conn:
        reasons = conn.execute(
            select(transitions.c.reason).where(transitions.c.process_id == run_id)
        ).scalars()
        assert "retried step charge by ana" in list(reasons)


def test_a_retry_writes_one_row_as_the_library_by_default(tracked: str) -> None:
    run_id = _failed_run("audit_retry")
    flow_tracker.retry_step(run_id, "charge", reason="gateway is back")
    rows = _rows()
    assert [(r["action"], r["outcome"], r["target"]) for r in rows] == [
        ("workflows:retry", "allowed", str(run_id))
    ]
    me = library_actor()
    assert (rows[0]["actor"], rows[0]["via"], rows[0]["role"]) == (me.name, "library", "admin")
    assert rows[0]["detail"]["step"] == "charge"
    assert SECRET not in _as_text(rows)


def test_retry_failed_steps_writes_one_row_per_step_it_retried(tracked: str) -> None:
    run_id = _failed_run("audit_retry_failed")
    with acting_as(ANA):
        retried = flow_tracker.retry_failed_steps(run_id, reason="all again")
    assert retried.steps == ("charge",)
    rows = _rows()
    assert [(r["action"], r["outcome"], r["detail"]["step"]) for r in rows] == [
        ("workflows:retry", "allowed", "charge")
    ]


def test_a_cancel_writes_one_row_with_the_steps_it_cancelled(tracked: str) -> None:
    run_id = _failed_run("audit_cancel")
    with acting_as(ANA):
        assert flow_tracker.cancel_workflow(run_id, reason="customer left") == 1
        assert flow_tracker.cancel_workflow(run_id) == 0  # again: nothing more
    rows = _rows()
    assert [(r["action"], r["outcome"]) for r in rows] == [("workflows:cancel", "allowed")] * 2
    assert rows[0]["detail"] == {"reason": "customer left", "cancelled_steps": 1}
    assert rows[1]["detail"] == {"cancelled_steps": 0, "already_cancelled": True}


def test_a_start_writes_one_row_with_its_parameters_and_never_its_context(tracked: str) -> None:
    wf = flow_tracker.workflow("audit_start", namespace="payments", version="2")
    wf.step(name="only")(lambda context: 1)
    with acting_as(ANA):
        run = flow_tracker.start_workflow(
            "payments/audit_start",
            context={"card": SECRET, "password": SECRET},
            idempotency_key="cart-7",
            tags={"customer": "c-42"},
            reason="asked again; token=hunter2",
            source="admin-api",
        )
        again = flow_tracker.start_workflow(
            "payments/audit_start", context={"card": SECRET}, idempotency_key="cart-7"
        )
    assert run.created and not again.created and again.id == run.id
    run.wait(WAIT)
    rows = _rows(action="workflows:start")
    assert [(r["outcome"], r["target"], r["actor"]) for r in rows] == [
        ("allowed", str(run.id), "ana"),
        ("allowed", str(run.id), "ana"),
    ]
    first = rows[0]["detail"]
    assert first["workflow"] == "payments/audit_start" and first["version"] == "2"
    assert first["idempotency"] == "cart-7" and first["tags"] == {"customer": "c-42"}
    assert first["created"] is True and first["source"] == "admin-api"
    assert rows[1]["detail"]["created"] is False
    written = _as_text(_rows())
    assert SECRET not in written and "hunter2" not in written


def test_the_apps_own_runs_are_not_audited_but_a_run_someone_starts_is(tracked: str) -> None:
    wf = flow_tracker.workflow("audit_own_runs")
    wf.step(name="only")(lambda context: 1)
    wf.run().wait(WAIT)
    assert _rows() == []
    with acting_as(cli_actor()):
        run = wf.run()
    run.wait(WAIT)
    rows = _rows()
    assert [(r["action"], r["target"], r["via"]) for r in rows] == [
        ("workflows:start", str(run.id), cli_actor().via)
    ]


def _job_row(**values: Any) -> uuid.UUID:
    """A lost job whose stored arguments hold the secret."""
    with _store().engine.begin() as conn:
        now = database_now(conn)
        row = {
            "id": uuid.uuid4(),
            "name": "charge",
            "category": "jobs",
            "status": "lost",
            "created_at": now,
            "job_system": "auditq",
            "job_id": uuid.uuid4().hex,
            "queue": "default",
            "job_payload": {"func": "app.charge", "args": [SECRET], "kwargs": {"pw": SECRET}},
            **values,
        }
        conn.execute(insert(processes).values(**row))
    return row["id"]  # type: ignore[no-any-return]


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, str]]:
    """An in-process stand-in for the queue's publish, as an integration registers it."""
    published: list[tuple[Any, str]] = []
    only_the_pool(monkeypatch)
    job_systems.update(
        "auditq", requeue=lambda payload, job_id: published.append((payload, job_id))
    )
    return published


def test_a_requeue_writes_one_row_per_job_with_ids_and_never_its_arguments(
    tracked: str, broker: list[tuple[Any, str]]
) -> None:
    lost = _job_row()
    with acting_as(ANA):
        [result] = flow_tracker.requeue([lost])
    assert result.outcome == "requeued" and len(broker) == 1
    rows = _rows()
    assert len(rows) == 1
    row = rows[0]
    assert (row["action"], row["outcome"], row["target"], row["actor"]) == (
        "jobs:requeue",
        "allowed",
        str(lost),
        "ana",
    )
    assert row["detail"]["job_id"] == result.job_id
    assert row["detail"]["new_process_id"] == str(result.new_process_id)
    assert SECRET not in _as_text(rows)


def test_a_requeue_that_waits_for_a_worker_is_audited_with_its_outbox_request(
    tracked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_the_pool(monkeypatch)
    lost = _job_row()
    [result] = flow_tracker.requeue([lost])
    assert result.outcome == "waiting"
    rows = _rows()
    assert [(r["action"], r["outcome"], r["target"]) for r in rows] == [
        ("jobs:requeue", "allowed", str(lost))
    ]
    assert rows[0]["detail"]["result"] == "waiting"
    assert rows[0]["detail"]["job_system"] == "auditq"
    assert SECRET not in _as_text(rows)


def test_a_requeue_that_did_nothing_is_a_failed_row_saying_why(
    tracked: str, broker: list[tuple[Any, str]]
) -> None:
    missing = uuid.uuid4()
    running = _job_row(status="running")
    results = flow_tracker.requeue([missing, running])
    assert [r.outcome for r in results] == ["not_found", "not_finished"]
    rows = _rows()
    assert [(r["outcome"], r["target"], r["detail"]["result"]) for r in rows] == [
        ("failed", str(missing), "not_found"),
        ("failed", str(running), "not_finished"),
    ]
    assert broker == []


def _silence(process_id: uuid.UUID) -> None:
    with _store().engine.begin() as conn:
        old = database_now(conn) - timedelta(hours=2)
        conn.execute(update(processes).where(processes.c.id == process_id).values(heartbeat_at=old))


def test_a_scheduled_reap_that_found_nothing_writes_nothing_one_someone_asked_for_does(
    tracked: str,
) -> None:
    flow_tracker.reap()  # the library's reaper: a cron job, a worker's loop
    with acting_as(cli_actor()), audit.scheduled():  # flow-tracker reap --every
        flow_tracker.reap()
    assert _rows() == []
    with acting_as(cli_actor()):
        flow_tracker.reap()
    rows = _rows()
    assert [(r["action"], r["outcome"], r["via"], r["target"]) for r in rows] == [
        ("jobs:reap", "allowed", cli_actor().via, None)
    ]
    assert rows[0]["detail"]["lost"] == 0


def test_a_scheduled_reap_that_found_lost_jobs_writes_one_row_with_counts(tracked: str) -> None:
    tracker = flow_tracker.start("audit_silent_job")
    flow_tracker.flush()
    HEARTBEAT.clear()  # its worker died: nothing stamps it any more
    _silence(tracker.process_id)
    result = flow_tracker.reap()
    assert result.lost == [tracker.process_id]
    rows = _rows()
    assert [(r["action"], r["via"]) for r in rows] == [("jobs:reap", "library")]
    assert rows[0]["detail"]["lost"] == 1


def test_a_cleanup_writes_one_row_and_never_deletes_the_audit_log(tracked: str) -> None:
    with flow_tracker.track("audit_old_job"):
        pass
    flow_tracker.flush()
    audit.record(_store(), action="jobs:reap", target=None, outcome="allowed")
    with acting_as(ANA):
        assert flow_tracker.cleanup(days=0) == 1
    rows = _rows()
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("jobs:reap", library_actor().name),
        ("history:delete", "ana"),
    ]
    assert rows[1]["detail"] == {"days": 0, "deleted": 1}
    with acting_as(ANA):
        flow_tracker.cleanup(days=0, statuses=["completed", "failed"])
    assert len(_rows()) == 3  # the clean-up of processes left the audit log as it was


# -- failed actions ---------------------------------------------------------------------------


def test_actions_that_raise_write_a_failed_row_with_the_error_and_no_payload(
    tracked: str,
) -> None:
    run_id = _failed_run("audit_failures")
    with acting_as(ANA):
        with pytest.raises(NotFoundError):
            flow_tracker.resolve_step(run_id, "nope", result={"x": SECRET})
        with pytest.raises(UsageError, match="not failed"):
            flow_tracker.retry_step(run_id, "validate")
        with pytest.raises(UsageError, match="must be JSON"):
            flow_tracker.resolve_step(run_id, "charge", result={SECRET: {1j}})
        with pytest.raises(NotFoundError):
            flow_tracker.start_workflow("nowhere/audit_missing", context={"k": SECRET})
        with pytest.raises(UsageError):
            flow_tracker.cancel_workflow("not-a-run-id")
    rows = _rows()
    assert [(r["action"], r["outcome"], r["detail"]["error"]) for r in rows] == [
        ("workflows:resolve", "failed", "NotFoundError"),
        ("workflows:retry", "failed", "UsageError"),
        ("workflows:resolve", "failed", "UsageError"),
        ("workflows:start", "failed", "NotFoundError"),
        ("workflows:cancel", "failed", "UsageError"),
    ]
    assert rows[0]["detail"]["step"] == "nope" and rows[0]["target"] == str(run_id)
    assert rows[3]["target"] == "nowhere/audit_missing"
    assert all(r["actor"] == "ana" for r in rows)
    assert SECRET not in _as_text(rows)


# -- refusals -----------------------------------------------------------------------------------


def test_refusals_of_one_actor_action_and_minute_are_one_row_that_counts_them(
    tracked: str,
) -> None:
    store = _store()
    for n in range(3):
        request = dataclasses.replace(ANA, request_id=f"req-{n}")
        audit.record_refusal(store, action="history:delete", target=f"/cleanup?{n}", actor=request)
    audit.record_refusal(store, action="jobs:requeue", target="/health/requeue", actor=ANA)
    other_way_in = Actor("ana", role="viewer", via="token:ci")
    audit.record_refusal(store, action="history:delete", target="/cleanup", actor=other_way_in)
    rows = _rows(outcome="refused")
    assert [(r["action"], r["via"], r["times"]) for r in rows] == [
        ("history:delete", "hook", 3),
        ("jobs:requeue", "hook", 1),
        ("history:delete", "token:ci", 1),
    ]
    # The minute's row points at the latest refused request, to look up in the server's log.
    assert (rows[0]["request_id"], rows[0]["target"]) == ("req-2", "/cleanup?2")


def test_a_refusal_of_another_minute_starts_a_new_row(tracked: str) -> None:
    store = _store()
    audit.record_refusal(store, action="history:delete", target=None, actor=ANA)
    with store.engine.begin() as conn:  # that refusal was two minutes ago
        old = database_now(conn) - timedelta(minutes=2)
        conn.execute(update(audit_log).values(at=old))
    audit.record_refusal(store, action="history:delete", target=None, actor=ANA)
    assert [r["times"] for r in _rows()] == [1, 1]


# -- an audit write that fails ----------------------------------------------------------------


def test_an_audit_write_that_fails_never_fails_the_action_and_is_logged_once(
    tracked: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _failed_run("audit_table_away")
    other_id = _failed_run("audit_table_away_cancel")
    monkeypatch.setattr(audit, "_REPORTED", set())
    store = _store()
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE flow_tracker_audit RENAME TO flow_tracker_audit_away"))
    try:
        with caplog.at_level(logging.DEBUG, logger="flow_tracker"), acting_as(ANA):
            flow_tracker.resolve_step(run_id, "charge", result="by phone", reason="first")
            flow_tracker.cancel_workflow(other_id, reason="second")
            audit.record(store, action="jobs:reap", target=None, outcome="allowed")
            audit.record_refusal(store, action="history:delete", target=None, actor=ANA)
            with pytest.raises(NotFoundError):  # the action's own error, not the audit's
                flow_tracker.retry_step(run_id, "nope")
    finally:
        with store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE flow_tracker_audit_away RENAME TO flow_tracker_audit"))
    # The changes committed without their rows.
    assert flow_tracker.get_workflow(run_id).steps["charge"].status == "resolved"
    assert flow_tracker.get_workflow(other_id).status == "cancelled"
    assert _rows() == []
    warned = [r for r in caplog.records if "audit row not written" in r.getMessage()]
    assert len(warned) >= 4
    assert len([r for r in warned if r.levelno == logging.WARNING]) == 1  # once per cause


@pytest.mark.postgres
def test_a_read_only_database_refuses_audit_rows_and_nothing_raises(
    pg_server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that refuses writes as a hot standby does (SQLSTATE 25006): a replica."""
    name = f"flow_tracker_audit_ro_{uuid.uuid4().hex[:8]}"
    url = f"{pg_server_url.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(PG_SERVER, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        primary = Store(url)
        primary.ensure_schema()
        primary.dispose()
        with psycopg.connect(PG_SERVER, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        replica = Store(url, reader=True)
        with caplog.at_level(logging.DEBUG, logger="flow_tracker"):
            audit.record(replica, action="jobs:reap", target=None, outcome="allowed")
            audit.record_refusal(replica, action="history:delete", target="/cleanup", actor=ANA)
        assert audit.list_entries(replica).entries == []
        said = [r.getMessage() for r in caplog.records if "audit row not written" in r.getMessage()]
        assert len(said) == 2 and "read-only" in said[0]
        replica.dispose()
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_row_written_in_a_transaction_that_rolls_back_goes_with_it(tracked: str) -> None:
    store = _store()

    def change_that_fails() -> None:
        with store.begin_write() as conn:
            audit.write(conn, action="jobs:reap", target=None, outcome="allowed", actor=ANA)
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        change_that_fails()
    assert _rows() == []


def test_an_unknown_outcome_is_a_mistake_of_the_caller(tracked: str) -> None:
    with pytest.raises(ValueError, match="outcome"), _store().begin_write() as conn:
        audit.write(conn, action="jobs:reap", target=None, outcome="ok")


# -- hostile values, reading, retention ---------------------------------------------------------


def test_hostile_names_and_targets_are_stored_cleaned_and_cut_and_found_again(
    tracked: str,
) -> None:
    hostile = "<script>alert(1)</script>\x00\udcff" + "é" * 10_000
    actor = Actor(hostile, role="x" * 100, via="basic:" + hostile, client=hostile)
    store = _store()
    audit.record(
        store,
        action="workflows:resolve" * 10,
        target=hostile,
        outcome="allowed",
        detail={"reason": hostile, hostile: [hostile] * 3},
        actor=actor,
    )
    [row] = _rows()
    assert len(row["actor"]) == audit.ACTOR_LIMIT and row["actor"].startswith("<script>")
    assert "\x00" not in row["actor"] and "\\u0000" in row["actor"]
    assert len(row["target"]) <= audit.TARGET_LIMIT and len(row["role"]) <= audit.ROLE_LIMIT
    assert len(row["action"]) <= audit.ACTION_LIMIT and len(row["client"]) <= audit.CLIENT_LIMIT
    assert len(json.dumps(row["detail"], ensure_ascii=False)) <= audit.DETAIL_LIMIT
    found = audit.list_entries(store, actor=hostile, target=hostile)
    assert [e.id for e in found] == [row["id"]]


def test_list_entries_pages_newest_first_with_filters(tracked: str) -> None:
    store = _store()
    for n in range(5):
        audit.record(store, action="jobs:requeue", target=f"p{n}", outcome="allowed", actor=ANA)
    audit.record(store, action="jobs:reap", target=None, outcome="failed")
    seen: list[str | None] = []
    cursor = None
    while True:
        page = audit.list_entries(store, actor="ana", limit=2, cursor=cursor)
        seen += [e.target for e in page]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["p4", "p3", "p2", "p1", "p0"]
    assert [e.action for e in audit.list_entries(store, outcome="failed")] == ["jobs:reap"]
    assert [e.target for e in audit.list_entries(store, target="p2")] == ["p2"]
    assert len(audit.list_entries(store, action="jobs:requeue")) == 5
    with store.engine.connect() as conn:
        moment = database_now(conn)
    assert audit.list_entries(store, since=moment + timedelta(minutes=1)).entries == []
    assert len(audit.list_entries(store, until=moment + timedelta(minutes=1))) == 6
    with pytest.raises(UsageError, match="outcome"):
        audit.list_entries(store, outcome="maybe")
    with pytest.raises(UsageError, match="cursor"):
        audit.list_entries(store, cursor="not-a-cursor")
    with pytest.raises(UsageError, match="limit"):
        audit.list_entries(store, limit=0)


def _aged(days: float) -> None:
    """Make every audit row ``days`` old."""
    with _store().engine.begin() as conn:
        conn.execute(update(audit_log).values(at=database_now(conn) - timedelta(days=days)))


def test_retention_deletes_only_audit_rows_older_than_it(tracked: str) -> None:
    store = _store()
    audit.record(store, action="jobs:reap", target="old", outcome="allowed")
    _aged(400)
    audit.record(store, action="jobs:reap", target="new", outcome="allowed")
    with pytest.raises(UsageError):
        audit.delete_older_than(store, 0)
    assert audit.delete_older_than(store, 365) == 1
    assert [r["target"] for r in _rows()] == ["new"]


def test_the_reaper_applies_the_audit_retention_setting(tracked: str) -> None:
    flow_tracker.configure(database_url=tracked, log_to_stdlib=False, audit_retention_days=30)
    store = _store()
    audit.record(store, action="history:delete", target="old", outcome="allowed")
    _aged(31)
    audit.record(store, action="history:delete", target="recent", outcome="allowed")
    flow_tracker.reap()
    assert [r["target"] for r in _rows()] == ["recent"]
