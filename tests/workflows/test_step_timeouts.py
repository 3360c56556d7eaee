"""A step's ``timeout=``: checked when declared, enforced by the in-process pool (both backends).

The pool cannot stop a thread: at the deadline it stores the attempt's end as
timed out, and what the function returns later changes nothing. The steps here
wait on an event the test sets once the timeout is stored, so the late return
happens when the test says, never by a race against a clock.
"""

from __future__ import annotations

import importlib
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

import flow_tracker
from flow_tracker import StepTimeout, UsageError
from flow_tracker import runtime as ft_runtime
from flow_tracker.errors import FlowTrackerError
from flow_tracker.store import step_writes
from flow_tracker.workflows import threads
from flow_tracker.workflows.status import explain
from tests.workflows.helpers import Calls, process

WAIT = 30.0  # generous: a busy machine
TIMEOUT = 0.5
TIMED_OUT = f"flow_tracker.StepTimeout: timed out after {TIMEOUT:g} s"


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"still not {what} after {WAIT} s"
        time.sleep(0.05)


# -- declaring --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 0.0, float("nan"), float("inf"), "5", True, [1]])
def test_a_timeout_that_is_not_a_positive_finite_number_is_refused_when_declared(
    bad: Any,
) -> None:
    wf = flow_tracker.workflow("timeouts_bad")
    with pytest.raises(UsageError, match="timeout is a positive, finite number of seconds"):
        wf.step(name="slow", timeout=bad)(lambda context: None)
    assert "slow" not in wf.steps


@pytest.mark.parametrize(("given", "kept"), [(None, None), (2, 2.0), (0.5, 0.5)])
def test_a_timeout_is_kept_on_the_step_and_in_the_dag_snapshot(
    given: float | None, kept: float | None
) -> None:
    wf = flow_tracker.workflow("timeouts_kept")
    wf.step(name="slow", timeout=given)(lambda context: None)
    assert wf.steps["slow"].timeout == kept
    assert wf.snapshot()["steps"][0]["timeout"] == kept


def test_step_timeout_is_a_timeout_error_that_names_its_seconds_and_survives_pickling() -> None:
    import pickle

    exc = StepTimeout(0.5)
    assert isinstance(exc, TimeoutError) and isinstance(exc, FlowTrackerError)
    assert str(exc) == "timed out after 0.5 s"
    again = pickle.loads(pickle.dumps(exc))
    assert str(again) == str(exc) and again.seconds == 0.5
    assert flow_tracker.StepTimeout is StepTimeout
    assert f"{StepTimeout.__module__}.{StepTimeout.__qualname__}" == "flow_tracker.StepTimeout"


# -- the in-process pool ----------------------------------------------------------------


def test_a_step_past_its_timeout_fails_with_step_timeout_and_its_late_return_is_not_stored(
    tracked: str,
) -> None:
    calls = Calls()
    release = threading.Event()
    wf = flow_tracker.workflow(f"timeouts_fail_{uuid.uuid4().hex[:6]}")

    @wf.step(timeout=TIMEOUT)
    def slow(context: Any) -> str:
        calls.hit("slow")
        release.wait(WAIT)  # past the timeout: returns only when the test says
        calls.hit("slow_returned")
        return "too late"

    @wf.step(depends_on=["slow"])
    def after(context: Any, slow: str) -> str:
        calls.hit("after")
        return slow

    run = wf.run()
    status = run.wait(WAIT)
    step = status.steps["slow"]
    assert status.status == "failed" and status.failed_step == "slow"
    assert (step.status, step.attempts, step.error) == ("failed", 1, TIMED_OUT)
    assert explain(status, step).startswith("timed out")

    release.set()
    assert threads.wait_idle(WAIT)
    assert calls.counts["slow_returned"] == 1  # it did return, late
    again = flow_tracker.get_workflow(run.id)
    late = again.steps["slow"]
    assert (late.status, late.result, late.error) == ("failed", None, TIMED_OUT)
    assert again.status == "failed" and calls.counts["after"] == 0

    def process_says_timed_out() -> bool:
        record = process(late.process_id)
        return (
            record.status == "failed"
            and record.error is not None
            and record.error.type == "flow_tracker.StepTimeout"
        )

    _wait_for(process_says_timed_out, "a timed-out process")
    flow_tracker.flush()
    assert process_says_timed_out()  # the tracker's own end, written last, says the same


def test_the_database_refuses_a_second_end_of_an_attempt_that_timed_out(tracked: str) -> None:
    release = threading.Event()
    wf = flow_tracker.workflow(f"timeouts_refused_{uuid.uuid4().hex[:6]}")
    wf.step(name="slow", timeout=TIMEOUT)(lambda context: release.wait(WAIT))
    run = wf.run()
    try:
        assert run.wait(WAIT).steps["slow"].error == TIMED_OUT
        store = ft_runtime.store()
        late = step_writes.end(
            store, run.id, "slow", 1, "completed", now=datetime.now(timezone.utc), result="late"
        )
        assert not late.stored
        step = flow_tracker.get_workflow(run.id).steps["slow"]
        assert (step.status, step.result, step.error) == ("failed", None, TIMED_OUT)
    finally:
        release.set()


@pytest.mark.parametrize(
    ("retry_on", "attempts", "end"),
    [
        ((Exception,), 2, "completed"),  # the default: a timeout is a failure like any other
        ((TimeoutError,), 2, "completed"),
        ((ValueError,), 1, "failed"),  # not one worth a retry: fails at once
    ],
)
def test_a_timed_out_step_retries_per_its_policy_and_the_late_return_changes_nothing(
    tracked: str, retry_on: tuple[type[BaseException], ...], attempts: int, end: str
) -> None:
    calls = Calls()
    release = threading.Event()
    wf = flow_tracker.workflow(f"timeouts_retry_{uuid.uuid4().hex[:6]}")

    @wf.step(timeout=TIMEOUT, retries=2, backoff=0.01, jitter=0.0, retry_on=retry_on)
    def flaky(context: Any) -> str:
        attempt = calls.hit("flaky")
        if attempt == 1:
            release.wait(WAIT)  # the first attempt hangs past its timeout
            return "first, late"
        return f"attempt {attempt}"

    run = wf.run()
    status = run.wait(WAIT)
    release.set()
    assert threads.wait_idle(WAIT)
    step = flow_tracker.get_workflow(run.id).steps["flaky"]
    assert (step.status, step.attempts) == (end, attempts)
    assert calls.counts["flaky"] == attempts
    if end == "completed":
        assert step.result == "attempt 2" and status.status == "completed"
        # The first attempt's late tracker end lands on no row a later attempt started.
        flow_tracker.flush()
        record = process(step.process_id)
        assert (record.status, record.attempt, record.error) == ("completed", 2, None)
        assert [t.attempt for t in record.history if t.status == "retrying"] == [1]
    else:
        assert step.error == TIMED_OUT and step.result is None


def test_a_step_that_ends_in_time_is_not_touched_by_its_timeout(tracked: str) -> None:
    wf = flow_tracker.workflow(f"timeouts_in_time_{uuid.uuid4().hex[:6]}")
    wf.step(name="quick", timeout=5)(lambda context: "done")
    status = wf.run().wait(WAIT)
    step = status.steps["quick"]
    assert (status.status, step.status, step.result, step.error) == (
        "completed",
        "completed",
        "done",
        None,
    )


def test_the_run_page_and_the_cli_show_a_timed_out_step_as_such(tracked: str) -> None:
    from click.testing import CliRunner
    from starlette.testclient import TestClient

    from flow_tracker.cli import main
    from flow_tracker.web import create_app

    release = threading.Event()
    wf = flow_tracker.workflow(f"timeouts_shown_{uuid.uuid4().hex[:6]}")
    wf.step(name="slow", timeout=TIMEOUT)(lambda context: release.wait(WAIT))
    run = wf.run()
    try:
        assert run.wait(WAIT).status == "failed"
        shown = CliRunner().invoke(
            main, ["workflows", "show", str(run.id), "--database-url", tracked]
        )
        assert shown.exit_code == 0 and TIMED_OUT in shown.output, shown.output
        app = create_app(tracked)
        with TestClient(app, base_url="http://testserver") as client:
            page = client.get(f"/workflows/{run.id}")
        app.state.dashboard.store.dispose()
        assert page.status_code == 200
        assert "flow_tracker.StepTimeout: timed out after 0.5 s" in page.text
        assert "timed out; the root cause" in page.text
    finally:
        release.set()


def test_each_queue_gets_the_timeout_in_its_own_unit_even_where_the_workflow_is_not_declared(
    tracked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flow_tracker.store.workflows import Dispatch
    from flow_tracker.workflows import definition, timeouts

    name = f"timeouts_options_{uuid.uuid4().hex[:6]}"
    wf = flow_tracker.workflow(name)
    wf.step(name="slow", timeout=2.5)(lambda context: None)
    wf.step(name="free")(lambda context: None)
    run = wf.run()
    run.wait(WAIT)
    slow = Dispatch("celery", name, run.id, "slow", "job-1", "celery")
    free = Dispatch("celery", name, run.id, "free", "job-2", "celery")
    expected = {
        "celery": {"soft_time_limit": 2.5, "time_limit": 12.5},
        "rq": {"job_timeout": 3},
        "dramatiq": {"time_limit": 2500},
    }
    # Declared here, then known only from the run's stored DAG (an outbox's deliverer).
    for declared in (True, False):
        if not declared:
            monkeypatch.delitem(definition._WORKFLOWS, name)
        assert timeouts.limit_for(slow) == 2.5 and timeouts.limit_for(free) is None
        for system, options in expected.items():
            module = importlib.import_module(f"flow_tracker.integrations.{system}")
            assert module.time_limit_options(slow) == options, system
            assert module.time_limit_options(free) == {}, system
