"""Runs on the in-process pool, on SQLite and PostgreSQL: results, retries, failures, by hand."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

import flow_tracker
from flow_tracker import NotFoundError, UsageError, job_systems
from flow_tracker.store.schema import processes, transitions
from flow_tracker.workflows import engine, manage
from tests.workflows.helpers import Calls, process

WAIT = 30.0  # generous: a busy machine; the runs end in milliseconds when idle


def order_workflow(name: str, calls: Calls, *, charge_fails: int = 0, retries: int = 0) -> Any:
    wf = flow_tracker.workflow(name)

    @wf.step()
    def validate(context: dict[str, Any]) -> dict[str, Any]:
        calls.hit("validate")
        return {"total": context["cart_id"] * 6}

    @wf.step(depends_on=["validate"], retries=retries, backoff=0.01, jitter=0)
    def charge(context: Any, validate: dict[str, Any]) -> dict[str, Any]:
        if calls.hit("charge") <= charge_fails:
            raise TimeoutError("the gateway timed out")
        return {"paid": validate["total"]}

    @wf.step(depends_on=["validate"])
    def reserve_stock(context: Any, validate: Any) -> str:
        calls.hit("reserve_stock")
        flow_tracker.log("reserved", data={"items": 3})
        return "reserved"

    @wf.step(depends_on=["charge", "reserve_stock"])
    def confirm(context: Any, charge: Any, reserve_stock: Any) -> list[Any]:
        calls.hit("confirm")
        return [charge, reserve_stock]

    return wf


def test_a_run_passes_results_by_keyword_and_completes(tracked: str) -> None:
    calls = Calls()
    run = order_workflow("running_diamond", calls).run(context={"cart_id": 7})
    status = run.wait(WAIT)
    assert status.status == "completed"
    assert status.steps["confirm"].result == [{"paid": 42}, "reserved"]
    assert calls.counts == {"validate": 1, "charge": 1, "reserve_stock": 1, "confirm": 1}
    assert [s.status for s in status.steps.values()] == ["completed"] * 4
    assert status.to_dict()["steps"][0]["name"] == "validate"


def test_a_run_and_its_steps_are_processes_with_their_logs(tracked: str) -> None:
    run = order_workflow("running_processes", Calls()).run(context={"cart_id": 1})
    status = run.wait(WAIT)
    flow_tracker.flush()
    parent = process(run.id)
    assert parent.status == "completed" and parent.category == "workflows"
    step = process(status.steps["reserve_stock"].process_id)
    assert step.name == "running_processes.reserve_stock"
    assert step.parent_process_id == run.id
    assert any(entry.message == "reserved" for entry in step.logs)


def test_a_step_retries_with_backoff_and_keeps_one_row(tracked: str) -> None:
    calls = Calls()
    run = order_workflow("running_retry", calls, charge_fails=2, retries=2).run(
        context={"cart_id": 2}
    )
    status = run.wait(WAIT)
    assert status.status == "completed"
    assert status.steps["charge"].attempts == 3
    assert calls.counts["charge"] == 3 and calls.counts["confirm"] == 1
    flow_tracker.flush()
    charge = process(status.steps["charge"].process_id)
    assert charge.attempt == 3 and charge.status == "completed"


def test_an_exception_outside_retry_on_fails_at_once(tracked: str) -> None:
    wf = flow_tracker.workflow("running_retry_on")
    calls = Calls()

    @wf.step(retries=5, retry_on=(TimeoutError,), backoff=0.01)
    def a(context: Any) -> None:
        calls.hit("a")
        raise KeyError("no such cart")

    status = wf.run().wait(WAIT)
    assert status.status == "failed" and calls.counts["a"] == 1
    assert status.steps["a"].error == "KeyError: 'no such cart'"


def test_a_failure_stops_only_its_dependents_and_names_the_root_cause(tracked: str) -> None:
    calls = Calls()
    run = order_workflow("running_failure", calls, charge_fails=99).run(context={"cart_id": 3})
    status = run.wait(WAIT)
    assert status.status == "failed"
    assert status.failed_step == "charge"
    assert status.steps["reserve_stock"].status == "completed"  # the independent branch ended
    assert status.steps["confirm"].status == "pending"
    assert status.steps["confirm"].blocked_by == "charge"
    assert status.steps["charge"].error == "TimeoutError: the gateway timed out"
    parent = process(run.id)
    assert parent.status == "failed" and parent.error is not None
    assert "step charge failed (TimeoutError: the gateway timed out)" in parent.error.message


def test_retry_step_runs_the_failed_step_then_its_dependents_and_nothing_else(
    tracked: str,
) -> None:
    calls = Calls()
    run = order_workflow("running_retry_step", calls, charge_fails=1).run(context={"cart_id": 4})
    assert run.wait(WAIT).status == "failed"
    flow_tracker.retry_step(run.id, "charge", by="alice", reason="gateway is back")
    status = run.wait(WAIT)
    assert status.status == "completed"
    assert calls.counts == {"validate": 1, "charge": 2, "reserve_stock": 1, "confirm": 1}
    assert status.steps["charge"].attempts == 2
    reasons = _history(tracked, run.id)
    assert ("retried", "retried step charge by alice: gateway is back") in reasons
    assert ("running", "step charge retried by hand") in reasons


def test_resolve_step_hands_its_result_to_the_children(tracked: str) -> None:
    calls = Calls()
    run = order_workflow("running_resolve", calls, charge_fails=99).run(context={"cart_id": 5})
    assert run.wait(WAIT).status == "failed"
    flow_tracker.resolve_step(
        run.id, "charge", result={"paid": "phone"}, reason="paid by phone", by="bob"
    )
    status = run.wait(WAIT)
    assert status.status == "completed"
    assert status.steps["charge"].status == "resolved"
    assert status.steps["confirm"].result == [{"paid": "phone"}, "reserved"]
    assert calls.counts["charge"] == 1  # not run again
    assert ("resolved", "resolved step charge by bob: paid by phone") in _history(tracked, run.id)


def test_bad_targets_of_retry_and_resolve_raise_and_change_nothing(tracked: str) -> None:
    run = order_workflow("running_bad_targets", Calls()).run(context={"cart_id": 6})
    before = run.wait(WAIT)
    with pytest.raises(NotFoundError):
        flow_tracker.retry_step(uuid.uuid4(), "charge")
    with pytest.raises(NotFoundError, match="no step 'nope'"):
        flow_tracker.resolve_step(run.id, "nope", result=1)
    with pytest.raises(UsageError, match="is completed, not failed"):
        flow_tracker.retry_step(run.id, "charge")
    with pytest.raises(UsageError, match="is completed, not failed"):
        flow_tracker.resolve_step(run.id, "charge", result=1)
    with pytest.raises(UsageError, match="not a workflow run id"):
        flow_tracker.get_workflow("not-a-uuid")
    with pytest.raises(UsageError, match="must be JSON"):
        flow_tracker.resolve_step(run.id, "charge", result={1j})
    with pytest.raises(UsageError, match="has completed"):
        flow_tracker.cancel_workflow(run.id)
    assert flow_tracker.get_workflow(run.id) == before


def test_a_result_that_is_not_json_fails_the_step_clearly_and_nul_is_kept_safely(
    tracked: str,
) -> None:
    wf = flow_tracker.workflow("running_results")
    wf.step(name="obj")(lambda context: object())
    wf.step(name="nul")(lambda context: {"text": "a\x00b", "tuple": (1, 2)})
    status = wf.run().wait(WAIT)
    assert status.steps["obj"].status == "failed"
    assert "the result of step 'obj' must be JSON" in (status.steps["obj"].error or "")
    assert status.steps["nul"].result == {"text": "a\ufffdb", "tuple": [1, 2]}


def test_cancel_keeps_every_step_not_started_from_starting(tracked: str) -> None:
    wf = flow_tracker.workflow("running_cancel")
    started = threading.Event()
    release = threading.Event()
    calls = Calls()

    @wf.step()
    def slow(context: Any) -> int:
        started.set()
        release.wait(WAIT)
        return 1

    @wf.step(depends_on=["slow"])
    def after(context: Any, slow: int) -> None:
        calls.hit("after")

    run = wf.run()
    assert started.wait(WAIT), "the first step never started"
    assert flow_tracker.cancel_workflow(run.id, by="carol") == 1
    release.set()
    status = run.wait(WAIT)
    assert status.status == "cancelled"
    _wait_for(lambda: flow_tracker.get_workflow(run.id).steps["slow"].status == "completed")
    assert flow_tracker.get_workflow(run.id).steps["after"].status == "cancelled"
    assert calls.counts["after"] == 0
    assert flow_tracker.cancel_workflow(run.id) == 0  # again: nothing more
    with pytest.raises(UsageError, match="was cancelled"):
        flow_tracker.retry_step(run.id, "slow")


def test_wait_raises_timeout_error_while_the_run_goes_on(tracked: str) -> None:
    wf = flow_tracker.workflow("running_timeout")
    release = threading.Event()
    wf.step(name="a")(lambda context: release.wait(WAIT))
    run = wf.run()
    with pytest.raises(TimeoutError, match="still running"):
        run.wait(0.05)
    release.set()
    assert run.wait(WAIT).status == "completed"


def test_a_fan_in_step_starts_once_however_its_parents_race(tracked: str) -> None:
    wf = flow_tracker.workflow("running_fan_in")
    calls = Calls()
    leaves = [f"leaf_{i}" for i in range(30)]
    wf.step(name="root")(lambda context: 0)
    for leaf in leaves:
        wf.step(name=leaf, depends_on=["root"])(lambda context, root, leaf=leaf: calls.hit(leaf))

    def join(context: Any, **parents: Any) -> int:
        calls.hit("join")
        return len(parents)

    wf.step(name="join", depends_on=leaves)(join)
    runs = [wf.run(context={"n": n}) for n in range(8)]
    for run in runs:
        status = run.wait(WAIT)
        assert status.status == "completed"
        assert status.steps["join"].result == 30
    assert calls.counts["join"] == 8
    assert all(calls.counts[leaf] == 8 for leaf in leaves)


def test_a_step_found_lost_by_the_reaper_runs_again_on_its_own(tracked: str) -> None:
    """A worker that took a step and died: its process goes silent, the reaper requeues it."""
    wf = flow_tracker.workflow("running_lost")
    calls = Calls()
    wf.step(name="a")(lambda context: calls.hit("a"))
    wf.step(name="b", depends_on=["a"])(lambda context, a: calls.hit("b"))
    real = engine.sender_for("threads")
    assert real is not None
    dropped: list[Any] = []

    def dying_worker(dispatch: Any) -> None:
        if dispatch.step == "b" and not dropped:
            from flow_tracker.jobs import start_job
            from flow_tracker.store import step_writes

            # Taken, started, then the worker "dies": said only once all of it is
            # stored, or the test would age heartbeats the claim then writes anew.
            store = flow_tracker.runtime.store()
            assert step_writes.claim(store, dispatch.run_id, "b", {}, datetime.now(timezone.utc))
            start_job(job_system="threads", job_id=dispatch.job_id, name="x", queue=None, attempt=1)
            flow_tracker.heartbeat.HEARTBEAT.clear()
            dropped.append(dispatch)
            return
        real(dispatch)

    engine.register_sender("threads", dying_worker)
    try:
        run = wf.run()
        _wait_for(lambda: bool(dropped), "the step to be taken by the dying worker")
        requeued: list[int] = []

        def found_lost() -> bool:
            # A heartbeat already under way as the worker "died" may stamp the row
            # once more after it was aged: age it again until the reaper sees it.
            _age_heartbeats(tracked)
            requeued.append(flow_tracker.reap(lost_after=60).workflow_steps)
            return sum(requeued) > 0

        _wait_for(found_lost, "the reaper to find step b lost")
        assert sum(requeued) == 1
        status = run.wait(WAIT)
    finally:
        engine.register_sender("threads", real)
    assert status.status == "completed"
    assert calls.counts == {"a": 1, "b": 1}
    assert status.steps["b"].attempts == 2  # the lost attempt, then the one that ran


def test_the_diagram_is_mermaid_with_escaped_labels(tracked: str) -> None:
    wf = flow_tracker.workflow("running_diagram")
    wf.step(name='say "hi" <b>#1')(lambda context: 1)
    status = wf.run().wait(WAIT)
    text = flow_tracker.workflow_diagram(status.id)
    assert text.startswith("flowchart TD\n")
    assert '"say &quot;hi&quot; &lt;b&gt;&num;1<br/>completed"' in text
    assert "classDef completed" in text and "class s0 completed" in text


def test_list_workflows_filters_by_name_and_status(tracked: str) -> None:
    ok = order_workflow("running_list_ok", Calls()).run(context={"cart_id": 1})
    bad = order_workflow("running_list_bad", Calls(), charge_fails=99).run(context={"cart_id": 1})
    ok.wait(WAIT), bad.wait(WAIT)
    failed = flow_tracker.list_workflows(status="failed")
    assert [r["id"] for r in failed] == [str(bad.id)]
    assert failed[0]["failed_step"] == "charge" and failed[0]["steps_done"] == 2
    assert failed[0]["steps_total"] == 4
    assert [r["name"] for r in flow_tracker.list_workflows(name="running_list_ok")] == [
        "running_list_ok"
    ]
    with pytest.raises(UsageError):
        flow_tracker.list_workflows(status="weird")


# -- helpers -----------------------------------------------------------------------------


def _history(url: str, run_id: uuid.UUID) -> list[tuple[str, str]]:
    store = flow_tracker.runtime.store()
    with store.engine.connect() as conn:
        rows = conn.execute(select(transitions.c.status, transitions.c.reason)).all()
    return [(r.status, r.reason) for r in rows]


def _age_heartbeats(url: str) -> None:
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    store = flow_tracker.runtime.store()
    with store.engine.begin() as conn:
        conn.execute(
            update(processes)
            .where(processes.c.status == "running", processes.c.heartbeat_at.is_not(None))
            .values(heartbeat_at=datetime.now(timezone.utc) - timedelta(hours=1))
        )


def _wait_for(condition: Any, what: str = "the condition") -> None:
    import time

    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {WAIT:g} s for {what}")
        time.sleep(0.01)


def test_cleanup_removes_a_finished_run_with_its_steps(tracked: str) -> None:
    run = order_workflow("running_cleanup", Calls()).run(context={"cart_id": 1})
    run.wait(WAIT)
    flow_tracker.flush()
    assert flow_tracker.cleanup(days=0) >= 5  # the run and its four steps
    with pytest.raises(NotFoundError):
        flow_tracker.get_workflow(run.id)


def test_a_worker_that_does_not_know_the_workflow_fails_the_step_and_says_why(
    tracked: str,
) -> None:
    wf = flow_tracker.workflow("running_unknown_here")
    wf.step(name="a")(lambda context: 1)
    real = engine.sender_for("threads")
    assert real is not None
    sent: list[Any] = []
    engine.register_sender("threads", sent.append)
    try:
        run = wf.run()
    finally:
        engine.register_sender("threads", real)
    (dispatch,) = sent
    engine.execute_step("threads", "not_declared_anywhere", str(run.id), "a", dispatch.job_id)
    status = run.wait(WAIT)
    assert status.status == "failed"
    assert "has no step 'a' in this worker" in (status.steps["a"].error or "")
    # A second delivery of the same message finds the step taken: nothing happens.
    engine.execute_step("threads", "running_unknown_here", str(run.id), "a", dispatch.job_id)
    assert flow_tracker.get_workflow(run.id).steps["a"].attempts == 1


def test_a_step_of_a_queue_not_installed_here_waits_in_the_outbox_and_says_so(
    tracked: str,
) -> None:
    from flow_tracker import runtime
    from flow_tracker.store import outbox
    from flow_tracker.store.workflows import Dispatch

    saved = job_systems.get("rq")
    job_systems.unregister("rq")
    try:
        said = engine.send([Dispatch("rq", "w", uuid.uuid4(), "s", "job", "default")])
    finally:
        if saved is not None:
            job_systems.register(saved)
    assert (said.ok, str(said)) == (False, "waiting for a worker of rq")
    [waiting] = outbox.pending_counts(runtime.store())
    assert (waiting.job_system, waiting.count) == ("rq", 1)


def test_workflows_say_clearly_when_tracking_is_off_or_the_database_is_away(
    sqlite_url: str,
) -> None:
    from flow_tracker import DatabaseUnavailableError

    wf = flow_tracker.workflow("running_no_database")
    wf.step(name="a")(lambda context: 1)
    flow_tracker.configure(database_url=sqlite_url, enabled=False)
    with pytest.raises(UsageError, match="disabled"):
        wf.run()
    flow_tracker.configure(database_url="postgresql://nobody@127.0.0.1:1/none", verify=False)
    with pytest.raises(DatabaseUnavailableError, match="the database is unavailable"):
        wf.run()


def test_an_async_step_runs_to_its_end(tracked: str) -> None:
    import asyncio

    wf = flow_tracker.workflow("running_async")

    @wf.step()
    async def fetch(context: Any) -> int:
        await asyncio.sleep(0.01)
        return 20

    @wf.step(depends_on=[fetch], retries=1, backoff=0.01)
    async def double(context: Any, fetch: int) -> int:
        return fetch * 2

    status = wf.run().wait(WAIT)
    assert status.status == "completed" and status.steps["double"].result == 40


def test_an_outline_reads_every_step_but_only_the_results_asked_for(tracked: str) -> None:
    wf = flow_tracker.workflow("running_outline")
    odd = {"text": "é ☃ <b>", "deep": [[[1]]], "big": 2**62}
    wf.step(name="a")(lambda context: odd)
    wf.step(name="b", depends_on=["a"])(lambda context, a: 7)
    wf.step(name="c", depends_on=["b"])(lambda context, b: None)
    full = wf.run().wait(WAIT)
    assert full.steps["a"].result == odd and full.steps["b"].result == 7
    assert all(
        s.started_at and s.started_at.utcoffset() == timedelta(0) for s in full.steps.values()
    )
    assert all(isinstance(s.process_id, uuid.UUID) for s in full.steps.values())

    outline = manage.get_workflow_outline(full.id)
    assert [s.result for s in outline.steps.values()] == [None, None, None]
    assert {n: s.status for n, s in outline.steps.items()} == {
        n: s.status for n, s in full.steps.items()
    }
    some = manage.with_results(outline, ["b", "a", "nope"])
    assert [s.result for s in some.steps.values()] == [odd, 7, None]
    assert some.steps["a"].process_id == full.steps["a"].process_id


def test_a_finished_runs_outline_is_read_once_and_read_again_once_it_changes(
    tracked: str,
) -> None:
    run = order_workflow("running_outline", Calls(), charge_fails=1).run(context={"cart_id": 2})
    assert run.wait(WAIT).status == "failed"
    first = manage.get_workflow_outline(run.id)
    assert first.steps["charge"].status == "failed"
    assert manage.get_workflow_outline(run.id) is first  # kept, not read again
    flow_tracker.retry_step(run.id, "charge", by="alice")
    assert manage.get_workflow_outline(run.id) is not first
    assert run.wait(WAIT).status == "completed"
    done = manage.get_workflow_outline(run.id)
    assert (done.status, done.steps["charge"].status) == ("completed", "completed")
    assert manage.get_workflow_outline(run.id) is done


def test_a_running_runs_outline_is_read_every_time(tracked: str) -> None:
    gate = threading.Event()
    wf = flow_tracker.workflow("running_outline_live")

    @wf.step()
    def held(context: Any) -> int:
        gate.wait(WAIT)
        return 1

    run = wf.run(context={})
    try:
        first = manage.get_workflow_outline(run.id)
        assert first.status == "running"
        assert manage.get_workflow_outline(run.id) is not first
    finally:
        gate.set()
    assert run.wait(WAIT).status == "completed"
