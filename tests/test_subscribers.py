"""Event subscribers and the state history, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

import flow_tracker
from flow_tracker import Status, runtime
from flow_tracker.heartbeat import HEARTBEAT
from flow_tracker.jobs import finish_job, record_enqueued, start_job
from flow_tracker.store.clock import database_now
from flow_tracker.store.schema import processes
from flow_tracker.subscribers import BUS, CATALOG


def _collect(pattern: str = "*") -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    flow_tracker.on(pattern, seen.append)
    return seen


def test_subscribers_hear_every_lifecycle_event_off_the_jobs_thread(tracked: str) -> None:
    threads: set[str] = set()
    flow_tracker.on("*", lambda e: threads.add(threading.current_thread().name))
    seen = _collect()
    tracker = flow_tracker.start("import", category="jobs")
    with tracker.flow("download", metadata={"file": "a.csv"}) as flow:
        flow.warning("slow mirror", data={"seconds": 3})
    tracker.complete(ValueError("bad row 7"))
    assert flow_tracker.flush()
    names = [e["event"] for e in seen]
    assert names[0] == "process.started" and names[-1] == "process.failed"
    assert {"flow.started", "log.written", "flow.completed"} <= set(names)
    failed = seen[-1]
    assert failed["name"] == "import" and failed["category"] == "jobs"
    assert failed["process_id"] == str(tracker.process_id)
    assert failed["error"]["class"] == "ValueError" and failed["error"]["message"] == "bad row 7"
    assert failed["duration_ms"] >= 0
    log = next(e for e in seen if e["event"] == "log.written")
    assert (log["flow_name"], log["level"], log["data"]) == ("download", "warning", {"seconds": 3})
    assert threads == {"flow-tracker-events"}
    assert set(names) <= set(CATALOG)


def test_a_failing_callback_is_counted_and_never_reaches_the_job(tracked: str) -> None:
    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("webhook down")

    flow_tracker.on("process.completed", broken)
    later = _collect("process.completed")
    before = BUS.failed_callbacks
    with flow_tracker.track("still fine") as tracker:
        tracker.info("working")
    assert flow_tracker.flush()
    assert BUS.failed_callbacks == before + 1
    assert [e["name"] for e in later] == ["still fine"]  # the next subscriber still hears it


def test_subscriber_hooks_get_their_own_events(tracked: str) -> None:
    class Alerts(flow_tracker.Subscriber):
        def __init__(self) -> None:
            self.failed: list[str] = []
            self.every: list[str] = []

        def on_event(self, event: dict[str, Any]) -> None:
            self.every.append(event["event"])

        def on_process_failed(self, event: dict[str, Any]) -> None:
            self.failed.append(event["name"])

    alerts = Alerts()
    subscription = flow_tracker.subscribe(alerts)
    with pytest.raises(KeyError), flow_tracker.track("charge"):
        raise KeyError("card")
    with flow_tracker.track("refund"):
        pass
    assert flow_tracker.flush()
    assert alerts.failed == ["charge"]
    assert alerts.every.count("process.started") == 2
    subscription.cancel()
    with flow_tracker.track("after cancel"):
        pass
    assert flow_tracker.flush()
    assert alerts.every.count("process.started") == 2


def test_unknown_event_names_and_callbacks_are_refused_at_once() -> None:
    with pytest.raises(flow_tracker.UsageError, match=r"unknown event .*process\.failed"):
        flow_tracker.on("process.fialed", print)
    with pytest.raises(flow_tracker.UsageError, match="callable"):
        flow_tracker.on("process.failed", "not a function")  # type: ignore[arg-type]
    with pytest.raises(flow_tracker.UsageError):
        flow_tracker.subscribe(object())  # type: ignore[arg-type]
    flow_tracker.on("flow.*", print).cancel()


def test_a_jobs_state_history_keeps_every_change_with_attempt_and_reason(tracked: str) -> None:
    seen = _collect("process.*")
    job_id = uuid.uuid4().hex
    process_id = record_enqueued(job_system="rq", job_id=job_id, name="charge", queue="q")
    first = start_job(job_system="rq", job_id=job_id, name="charge", queue="q", attempt=1)
    finish_job(first, Status.RETRYING, ConnectionError("gateway timeout"))
    second = start_job(job_system="rq", job_id=job_id, name="charge", queue="q", attempt=2)
    finish_job(second, Status.COMPLETED)
    assert process_id is not None
    record = flow_tracker.get_process(process_id)
    assert record is not None
    history = [(h.status, h.attempt, h.reason) for h in record.history]
    assert history == [
        ("queued", 1, None),
        ("running", 1, None),
        ("retrying", 1, "ConnectionError: gateway timeout"),
        ("running", 2, None),
        ("completed", 2, None),
    ]
    times = [h.at for h in record.history]
    assert times == sorted(times)
    assert record.to_dict()["history"][2]["reason"] == "ConnectionError: gateway timeout"
    assert flow_tracker.flush()
    assert [e["event"] for e in seen] == [
        "process.queued",
        "process.started",
        "process.retrying",
        "process.started",
        "process.completed",
    ]
    assert [e.get("attempt") for e in seen] == [1, 1, 1, 2, 2]


def test_lost_requeued_and_skipped_runs_say_so_in_their_history(tracked: str) -> None:
    from flow_tracker import job_systems

    sent: list[str] = []
    job_systems.update("history-test", requeue=lambda payload, job_id: sent.append(job_id))
    seen = _collect("process.*")
    process_id = record_enqueued(
        job_system="history-test", job_id="j-1", name="resize", queue="q", payload={"a": 1}
    )
    start_job(job_system="history-test", job_id="j-1", name="resize", queue="q", attempt=1)
    assert process_id is not None and flow_tracker.flush()
    HEARTBEAT.clear()  # its worker died: no heartbeat since two minutes ago
    with runtime.store().engine.begin() as conn:
        old = database_now(conn) - timedelta(minutes=2)
        conn.execute(update(processes).where(processes.c.id == process_id).values(heartbeat_at=old))
    assert process_id in flow_tracker.reap().lost
    (result,) = flow_tracker.requeue([process_id])
    assert result.outcome == "requeued" and sent == [result.job_id]
    record = flow_tracker.get_process(process_id)
    assert record is not None
    statuses = [h.status for h in record.history]
    assert statuses == ["queued", "running", "lost", "requeued"]
    assert "no heartbeat" in (record.history[2].reason or "")
    assert record.history[3].reason == f"as process {result.new_process_id}"
    copy = flow_tracker.get_process(result.new_process_id)  # type: ignore[arg-type]
    assert copy is not None
    assert [(h.status, h.reason) for h in copy.history] == [
        ("queued", f"requeued from {process_id}")
    ]
    assert flow_tracker.flush()
    assert [e["event"] for e in seen][-2:] == ["process.lost", "process.requeued"]
    with flow_tracker.exclusive("report", key="daily"):  # held by another holder
        with flow_tracker.track("nightly") as tracker:
            with flow_tracker.exclusive("report", key="daily", on_conflict="skip"):
                pass
    skipped = flow_tracker.get_process(tracker.process_id)
    assert skipped is not None and skipped.status is Status.SKIPPED
    assert skipped.history[-1].status == "skipped"
    assert "lock 'report' for key 'daily' is held" in (skipped.history[-1].reason or "")


def test_the_events_command_prints_the_whole_catalog() -> None:
    import json

    from click.testing import CliRunner

    from flow_tracker.cli import main

    result = CliRunner().invoke(main, ["events", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [row["name"] for row in rows] == list(CATALOG)
    assert all(row["description"] and row["payload"] for row in rows)
    text = CliRunner().invoke(main, ["events"]).output
    assert "process.failed" in text and "payload:" in text


def test_subscribers_and_the_logging_mirror_get_redacted_values(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    flow_tracker.configure(database_url=database_url, log_to_stdlib=True)
    seen: list[dict[str, Any]] = []
    flow_tracker.on("*", seen.append)
    with caplog.at_level(logging.INFO, logger="flow_tracker"):
        with flow_tracker.track("Login", metadata={"api_key": "AKIA0000"}) as tracker:
            tracker.info("dsn postgresql://app:s3cret@db/app", data={"pw": "hunter2"})
    assert flow_tracker.flush()
    everything = repr(seen) + repr(
        [(r.getMessage(), getattr(r, "flow_tracker_data", None)) for r in caplog.records]
    )
    for secret in ("AKIA0000", "s3cret", "hunter2"):
        assert secret not in everything
    logged = next(e for e in seen if e["event"] == "log.written")
    assert logged["data"] == {"pw": "[REDACTED]"}
