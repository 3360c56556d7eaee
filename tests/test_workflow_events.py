"""Workflow events for subscribers (``workflow.*``, ``step.*``), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from typing import Any

from click.testing import CliRunner

import flow_tracker
from flow_tracker.cli import main
from flow_tracker.subscribers import BUS, CATALOG, Subscriber

WAIT = 30.0  # generous: a busy machine; these runs end in milliseconds when idle


class Declined(Exception):
    """A step's failure."""


def _collect(*patterns: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    for pattern in patterns:
        flow_tracker.on(pattern, seen.append)
    return seen


def _names(seen: list[dict[str, Any]], last: str | None = None) -> list[str]:
    """The names of the events heard, once ``last`` (the one a test ends on) was heard.

    ``run.wait()`` may read the run's end in the database before the worker's
    thread, which stored it, has handed its event over.
    """
    deadline = time.monotonic() + WAIT
    while last is not None and not any(event["event"] == last for event in list(seen)):
        assert time.monotonic() < deadline, f"{last} was never heard"
        BUS.drain(0.1)
    assert BUS.drain(WAIT), "the subscribers did not get every event in time"
    return [event["event"] for event in seen]


def _wait_for_step(run_id: Any, step: str, status: str) -> None:
    deadline = time.monotonic() + WAIT
    while flow_tracker.get_workflow(run_id).steps[step].status != status:
        assert time.monotonic() < deadline, f"step {step} never became {status}"
        time.sleep(0.02)


def test_a_failed_run_is_announced_once_naming_the_step_that_failed_first(tracked: str) -> None:
    seen = _collect("workflow.*")
    started = threading.Event()
    runs: list[Any] = []
    wf = flow_tracker.workflow("events_two_failures")

    @wf.step()
    def start(context: Any) -> int:
        return 1

    @wf.step(depends_on=["start"])
    def charge(context: Any, start: int) -> None:
        raise Declined("card declined")

    @wf.step(depends_on=["start"])
    def ship(context: Any, start: int) -> None:
        # Fails too, but only once charge has failed: a consequence, not the cause.
        assert started.wait(WAIT)
        _wait_for_step(runs[0], "charge", "failed")
        raise RuntimeError("no address")

    run = wf.run()
    runs.append(run.id)
    started.set()
    status = run.wait(WAIT)
    assert status.status == "failed"
    assert status.steps["ship"].status == "failed"
    names = _names(seen, "workflow.failed")
    assert names.count("workflow.failed") == 1 and "workflow.completed" not in names
    assert names[0] == "workflow.started"
    failed = next(e for e in seen if e["event"] == "workflow.failed")
    assert failed["failed_step"] == "charge"
    assert failed["error"]["class"].endswith("Declined")
    assert failed["error"]["message"] == "card declined"
    assert failed["run_id"] == str(run.id) and failed["workflow"] == "events_two_failures"
    assert failed["status"] == "failed" and failed["duration_ms"] >= 0


def test_a_completed_run_is_announced_started_then_completed(tracked: str) -> None:
    seen = _collect("workflow.*")
    wf = flow_tracker.workflow("events_completed")

    @wf.step()
    def only(context: Any) -> str:
        return "ok"

    run = wf.run(context={"n": 1})
    assert run.wait(WAIT).status == "completed"
    assert _names(seen, "workflow.completed") == ["workflow.started", "workflow.completed"]
    begun, ended = seen
    assert begun["steps"] == 1 and begun["queue"] == "threads" and begun["status"] == "running"
    assert ended["run_id"] == str(run.id) and ended["duration_ms"] >= 0
    assert "failed_step" not in ended


def test_each_automatic_retry_is_announced_with_its_attempt_delay_and_error(
    tracked: str,
) -> None:
    seen = _collect("step.*", "workflow.completed")
    attempts: list[int] = []
    wf = flow_tracker.workflow("events_retries")

    @wf.step(retries=3, backoff=0.01, backoff_factor=1.0, jitter=0)
    def flaky(context: Any) -> str:
        attempts.append(1)
        if len(attempts) <= 2:
            raise TimeoutError(f"try {len(attempts)} timed out")
        return "done"

    assert wf.run().wait(WAIT).status == "completed"
    assert _names(seen, "workflow.completed") == [
        "step.retrying",
        "step.retrying",
        "workflow.completed",
    ]
    first, second = seen[0], seen[1]
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert first["step"] == "flaky" and first["workflow"] == "events_retries"
    assert first["delay_s"] == 0.01 and first["by"] is None
    assert first["error"] == {"class": "TimeoutError", "message": "try 1 timed out"}


def test_a_retry_and_a_resolve_by_hand_are_announced_with_who_and_why(tracked: str) -> None:
    seen = _collect("*")
    wf = flow_tracker.workflow("events_by_hand")

    @wf.step()
    def charge(context: Any) -> None:
        raise Declined("declined")

    @wf.step(depends_on=["charge"])
    def confirm(context: Any, charge: Any) -> Any:
        return charge

    run = wf.run()
    assert run.wait(WAIT).status == "failed"
    flow_tracker.retry_step(run.id, "charge", by="alice", reason="card updated")
    _wait_for_step(run.id, "charge", "failed")
    assert run.wait(WAIT).status == "failed"
    flow_tracker.resolve_step(
        run.id, "charge", result={"paid": True}, by="bob", reason="paid by phone, token=abc123"
    )
    assert run.wait(WAIT).status == "completed"
    names = [n for n in _names(seen, "workflow.completed") if n.startswith(("workflow.", "step."))]
    assert names == [
        "workflow.started",
        "workflow.failed",
        "step.retrying",
        "workflow.failed",
        "step.resolved",
        "workflow.completed",
    ]
    retried = next(e for e in seen if e["event"] == "step.retrying")
    assert (retried["by"], retried["reason"], retried["attempt"]) == ("alice", "card updated", None)
    assert retried["workflow"] == "events_by_hand"
    resolved = next(e for e in seen if e["event"] == "step.resolved")
    assert resolved["by"] == "bob" and resolved["step"] == "charge"
    assert "abc123" not in resolved["reason"]  # a reason's secrets are cut out, as stored


def test_a_cancel_is_announced_once_and_a_second_cancel_announces_nothing(
    tracked: str,
) -> None:
    seen = _collect("workflow.*")
    release = threading.Event()
    wf = flow_tracker.workflow("events_cancelled")

    @wf.step()
    def slow(context: Any) -> None:
        release.wait(WAIT)

    @wf.step(depends_on=["slow"])
    def after(context: Any, slow: Any) -> None:
        return None

    run = wf.run()
    _wait_for_step(run.id, "slow", "running")
    assert flow_tracker.cancel_workflow(run.id, by="carol", reason="duplicate order") == 1
    assert flow_tracker.cancel_workflow(run.id) == 0
    release.set()
    assert _names(seen, "workflow.cancelled") == ["workflow.started", "workflow.cancelled"]
    cancelled = seen[1]
    assert cancelled["by"] == "carol" and cancelled["reason"] == "duplicate order"
    assert cancelled["cancelled_steps"] == 1 and cancelled["status"] == "cancelled"


def test_a_subscriber_object_gets_workflow_events_through_its_hooks(tracked: str) -> None:
    heard: list[str] = []

    class Alerts(Subscriber):
        def on_workflow_failed(self, event: dict[str, Any]) -> None:
            heard.append(event["failed_step"])

    flow_tracker.subscribe(Alerts())
    wf = flow_tracker.workflow("events_hooks")

    @wf.step()
    def boom(context: Any) -> None:
        raise Declined("no")

    assert wf.run().wait(WAIT).status == "failed"
    deadline = time.monotonic() + WAIT
    while not heard and time.monotonic() < deadline:
        BUS.drain(0.1)
    assert BUS.drain(WAIT)
    assert heard == ["boom"]


def test_no_subscriber_no_workflow_event_and_the_run_is_unchanged(tracked: str) -> None:
    wf = flow_tracker.workflow("events_nobody")

    @wf.step()
    def only(context: Any) -> int:
        return 3

    assert not BUS.active
    before = BUS.delivered
    assert wf.run().wait(WAIT).steps["only"].result == 3
    assert BUS.delivered == before


def test_a_subscriber_that_raises_does_not_change_the_run(tracked: str) -> None:
    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("alerting is down")

    flow_tracker.on("workflow.*", broken)
    before = BUS.failed_callbacks
    wf = flow_tracker.workflow("events_broken_subscriber")

    @wf.step()
    def only(context: Any) -> int:
        return 3

    assert wf.run().wait(WAIT).status == "completed"
    deadline = time.monotonic() + WAIT
    while BUS.failed_callbacks < before + 2 and time.monotonic() < deadline:
        BUS.drain(0.1)
    assert BUS.drain(WAIT)
    assert BUS.failed_callbacks == before + 2


def test_the_events_command_lists_the_workflow_events_and_their_payloads() -> None:
    result = CliRunner().invoke(main, ["events", "--json"])
    assert result.exit_code == 0, result.output
    for name in (
        "workflow.started",
        "workflow.completed",
        "workflow.failed",
        "workflow.cancelled",
        "step.retrying",
        "step.resolved",
    ):
        assert name in CATALOG and name in result.output
    assert "failed_step" in CATALOG["workflow.failed"].payload
