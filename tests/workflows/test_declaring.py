"""Declaring workflows: every misuse is a UsageError at the line that declares it."""

from __future__ import annotations

import random
from typing import Any

import pytest

import flow_tracker
from flow_tracker import UsageError, job_systems


def test_a_parent_must_be_a_step_declared_before() -> None:
    wf = flow_tracker.workflow("declaring_unknown")
    with pytest.raises(UsageError, match="'missing', which is not a step of workflow"):
        wf.step(name="b", depends_on=["missing"])(lambda context, missing: None)


def test_a_step_naming_itself_is_a_cycle() -> None:
    wf = flow_tracker.workflow("declaring_cycle")
    with pytest.raises(UsageError, match="depends on itself"):

        @wf.step(depends_on=["a"])
        def a(context: Any, a: Any) -> None: ...


def test_a_duplicate_step_name_is_refused() -> None:
    wf = flow_tracker.workflow("declaring_duplicate")
    wf.step(name="a")(lambda context: 1)
    with pytest.raises(UsageError, match="declared already"):
        wf.step(name="a")(lambda context: 2)


def test_a_parent_of_another_workflow_is_refused_by_name_and_by_function() -> None:
    other = flow_tracker.workflow("declaring_other")

    @other.step()
    def shared(context: Any) -> int:
        return 1

    mine = flow_tracker.workflow("declaring_mine")
    with pytest.raises(UsageError, match="it is a step of workflow 'declaring_other'"):
        mine.step(name="x", depends_on=["shared"])(lambda context, shared: None)
    with pytest.raises(UsageError, match="of workflow 'declaring_other'"):
        mine.step(name="y", depends_on=[shared])(lambda context, shared: None)


def test_each_parent_must_be_a_parameter_of_the_function() -> None:
    wf = flow_tracker.workflow("declaring_signature")
    wf.step(name="a")(lambda context: 1)
    with pytest.raises(UsageError, match="takes no parameter 'a'"):
        wf.step(name="b", depends_on=["a"])(lambda context: 2)
    with pytest.raises(UsageError, match="first argument"):
        wf.step(name="c")(lambda: 3)
    with pytest.raises(UsageError, match="neither the context nor a parent"):
        wf.step(name="d", depends_on=["a"])(lambda context, a, other: 4)
    wf.step(name="e", depends_on=["a"])(lambda context, **parents: parents)  # takes them all


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "retries must be an integer"),
        ({"retries": 1.5}, "retries must be an integer"),
        ({"backoff": -1}, "backoff must be a number"),
        ({"backoff_factor": 0.5}, "backoff_factor must be a number >= 1"),
        ({"jitter": 2}, "jitter is a fraction"),
        ({"backoff_max": float("nan")}, "backoff_max must be"),
        ({"retry_on": (ValueError, "x")}, "retry_on takes exception classes"),
        ({"queue_name": ""}, "queue_name is a non-empty string"),
    ],
)
def test_bad_step_options_are_refused(options: dict[str, Any], message: str) -> None:
    wf = flow_tracker.workflow("declaring_options")
    with pytest.raises(UsageError, match=message):
        wf.step(name="a", **options)(lambda context: 1)


def test_an_unknown_queue_or_a_bad_name_is_refused() -> None:
    with pytest.raises(UsageError, match="no queue 'sqs'"):
        flow_tracker.workflow("declaring_queue", queue="sqs")
    with pytest.raises(UsageError, match="workflow name"):
        flow_tracker.workflow("")


def test_the_backoff_delay_follows_the_documented_formula() -> None:
    wf = flow_tracker.workflow("declaring_backoff")
    spec_fn = wf.step(
        name="a", retries=5, backoff=1.0, backoff_factor=2.0, backoff_max=5.0, jitter=0
    )
    spec_fn(lambda context: 1)
    spec = wf.steps["a"]
    assert [spec.delay_before(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    jittery = flow_tracker.workflow("declaring_jitter")
    jittery.step(name="a", backoff=10.0, jitter=0.1)(lambda context: 1)
    rng = random.Random(7)
    delays = [jittery.steps["a"].delay_before(1, rng) for _ in range(200)]
    assert all(9.0 <= d <= 11.0 for d in delays)
    assert max(delays) - min(delays) > 1.0  # spread, not constant


def test_the_dag_snapshot_keeps_order_parents_and_rules() -> None:
    wf = flow_tracker.workflow("declaring_snapshot", queue="celery", queue_name="steps")
    wf.step(name="a")(lambda context: 1)
    wf.step(name="b", depends_on="a", retries=2, retry_on=TimeoutError)(lambda context, a: 2)
    snap = wf.snapshot()
    assert [s["name"] for s in snap["steps"]] == ["a", "b"]
    assert snap["steps"][1]["depends_on"] == ["a"]
    assert snap["steps"][1]["retry_on"] == ["TimeoutError"]
    assert snap["steps"][1]["queue_name"] == "steps"
    assert wf.steps["a"].children == ["b"]


def test_a_run_needs_steps_and_a_json_context(sqlite_url: str) -> None:
    flow_tracker.configure(database_url=sqlite_url)
    empty = flow_tracker.workflow("declaring_empty")
    with pytest.raises(UsageError, match="has no steps"):
        empty.run()
    wf = flow_tracker.workflow("declaring_context")
    wf.step(name="a")(lambda context: 1)
    with pytest.raises(UsageError, match="must be JSON"):
        wf.run(context={"when": object()})
    with pytest.raises(UsageError, match="is a dict"):
        wf.run(context=[1, 2])  # type: ignore[arg-type]


def test_a_run_on_a_queue_whose_integration_is_not_installed_waits_for_a_worker_of_it(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from flow_tracker import runtime
    from flow_tracker.store import outbox

    flow_tracker.configure(database_url=sqlite_url)
    wf = flow_tracker.workflow("declaring_not_installed", queue="dramatiq")
    wf.step(name="a")(lambda context: 1)
    saved = job_systems.get("dramatiq")
    job_systems.unregister("dramatiq")
    try:
        run = wf.run()
    finally:
        if saved is not None:
            job_systems.register(saved)
    assert flow_tracker.get_workflow(run.id).steps["a"].status == "queued"
    [waiting] = outbox.pending_counts(runtime.store())
    assert (waiting.job_system, waiting.count) == ("dramatiq", 1)
    assert "integrations.dramatiq.install" in caplog.text
