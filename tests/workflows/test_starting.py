"""start_workflow and wf.run(...): idempotency keys, skipped steps, tags, who started it and why."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select

import flow_tracker
from flow_tracker import NotFoundError, UsageError
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import (
    outbox,
    processes,
    transitions,
    workflow_run_tags,
    workflow_runs,
    workflow_steps,
)
from flow_tracker.workflows import definition, definitions
from flow_tracker.workflows.starting import StartedRun

WAIT = 30.0
HOSTILE = [
    "'; DROP TABLE flow_tracker_workflow_runs; --",
    "%",
    "_",
    "a:b=c",
    '<script>alert("x")</script>',
    "ünïcødé ☃",
    "\\",
]


def order(name: str) -> Any:
    """Validate -> (charge, send_email) -> confirm, on the in-process pool."""
    wf = flow_tracker.workflow(name, namespace="shop", version="3")

    @wf.step()
    def validate(context: Any) -> int:
        return int(context.get("cart", 0)) * 2

    @wf.step(depends_on=["validate"])
    def charge(context: Any, validate: int) -> dict[str, int]:
        return {"paid": validate}

    @wf.step(depends_on=["validate"])
    def send_email(context: Any, validate: int) -> str:
        return "sent"

    @wf.step(depends_on=["charge", "send_email"])
    def confirm(context: Any, charge: Any, send_email: Any) -> list[Any]:
        return [charge, send_email]

    return wf


def _count(url: str, table: Any, *where: Any) -> int:
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
            )
    finally:
        store.dispose()


def test_a_repeated_idempotency_key_returns_the_run_it_started(tracked: str) -> None:
    wf = order("start_repeat")
    first = wf.run(context={"cart": 1}, idempotency_key="cart-1")
    again = flow_tracker.start_workflow(
        "shop/start_repeat", context={"cart": 9}, idempotency_key="cart-1"
    )
    other = wf.run(context={"cart": 1}, idempotency_key="cart-2")
    assert isinstance(again, StartedRun)
    assert (first.created, again.created, again.id) == (True, False, first.id)
    assert other.id != first.id
    assert again.wait(WAIT).context == {"cart": 1}  # the run it started, as it was started
    assert _count(tracked, workflow_runs) == 2


def test_concurrent_starts_of_one_key_from_threads_make_one_run(tracked: str) -> None:
    order("start_threads")
    barrier = threading.Barrier(8)
    ids: list[Any] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait(WAIT)
            run = flow_tracker.start_workflow("shop/start_threads", idempotency_key="same")
            ids.append((run.id, run.created))
        except BaseException as exc:  # collected: asserted below, on the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=start) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    assert errors == []
    assert len({run_id for run_id, _ in ids}) == 1
    assert sorted(created for _, created in ids) == [False] * 7 + [True]
    assert _count(tracked, workflow_runs) == 1
    assert _count(tracked, processes) >= 1


def test_concurrent_starts_of_one_key_from_processes_make_one_run(tracked: str) -> None:
    wf = order("start_processes")
    definitions.ensure_recorded(wf)
    at = time.time() + 3.0  # every process starts at this moment: they race for the key
    script = textwrap.dedent(
        f"""
        import time
        import flow_tracker
        flow_tracker.configure(database_url={tracked!r}, log_to_stdlib=False)
        time.sleep(max(0.0, {at!r} - time.time()))
        run = flow_tracker.start_workflow("shop/start_processes", idempotency_key="k")
        print(run.id, run.created)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out.split())
    assert len({run_id for run_id, _ in outputs}) == 1
    assert sorted(created for _, created in outputs) == ["False", "False", "True"]
    assert _count(tracked, workflow_runs) == 1
    # Started where the workflow is not declared: its first step waits for a worker.
    assert _count(tracked, outbox) == 1


def test_skipped_steps_count_as_resolved_with_none(tracked: str) -> None:
    wf = order("start_skip")
    run = wf.run(context={"cart": 2}, skip=["send_email"]).wait(WAIT)
    assert run.status == "completed"
    assert (run.steps["send_email"].status, run.steps["send_email"].result) == ("resolved", None)
    assert run.steps["confirm"].result == [{"paid": 4}, None]
    assert run.steps["send_email"].attempts == 0


def test_skipping_every_root_still_runs_what_does_not_wait_on_them(tracked: str) -> None:
    wf = order("start_skip_root")
    run = wf.run(context={"cart": 2}, skip=["validate", "charge"]).wait(WAIT)
    assert run.status == "completed"
    assert run.steps["send_email"].result == "sent"
    assert run.steps["confirm"].result == [None, "sent"]


def test_skipping_every_step_ends_the_run_at_once(tracked: str) -> None:
    wf = order("start_skip_all")
    run = wf.run(skip=list(wf.steps))
    assert run.wait(WAIT).status == "completed"


def test_a_step_to_skip_the_workflow_lacks_is_refused_listing_its_steps(tracked: str) -> None:
    wf = order("start_bad_skip")
    with pytest.raises(UsageError, match="no step 'nope' to skip; its steps: validate, charge"):
        wf.run(skip=["nope"])
    with pytest.raises(UsageError, match="to skip"):
        wf.run(skip=[3])
    assert _count(tracked, workflow_runs) == 0


def test_the_run_list_filters_by_tags_hostile_values_included(tracked: str) -> None:
    wf = order("start_tags")
    wanted = {}
    for index, value in enumerate(HOSTILE):
        run = wf.run(tags={"customer": value, "n": str(index)})
        wanted[value] = run.id
    plain = wf.run(tags={"customer": "c-42"})
    for value, run_id in wanted.items():
        found = flow_tracker.list_workflows(tags={"customer": value})
        assert [r["id"] for r in found] == [str(run_id)], value
        assert found[0]["tags"]["customer"] == value
    both = flow_tracker.list_workflows(tags={"customer": "%", "n": "1"})
    assert [r["id"] for r in both] == [str(wanted["%"])]
    assert flow_tracker.list_workflows(tags={"customer": "%", "n": "2"}) == []
    assert [r["id"] for r in flow_tracker.list_workflows(tags={"customer": "c-42"})] == [
        str(plain.id)
    ]
    assert _count(tracked, workflow_runs) == len(HOSTILE) + 1  # the DROP was a value


def test_tag_filters_page_newest_first_with_the_cursor(tracked: str) -> None:
    wf = order("start_tag_pages")
    ids = [str(wf.run(tags={"batch": "b"}).id) for _ in range(5)]
    first = flow_tracker.list_workflows(tags={"batch": "b"}, limit=3)
    last = first[-1]
    import uuid
    from datetime import datetime

    rest = flow_tracker.list_workflows(
        tags={"batch": "b"},
        limit=3,
        before=(datetime.fromisoformat(last["created_at"]), uuid.UUID(last["id"])),
    )
    assert [r["id"] for r in first + rest] == ids[::-1]


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"bad key": "v"}, "tag key"),
        ({"k": ""}, "non-empty"),
        ({"k": "x" * 256}, "at most 255"),
        ({"k": "a\x00b"}, "control character"),
        ({"k": 7}, "non-empty string"),
        ({f"k{i}": "v" for i in range(21)}, "at most 20 tags"),
        (["k", "v"], "dict"),
    ],
)
def test_bad_tags_are_refused_and_nothing_is_stored(tracked: str, tags: Any, message: str) -> None:
    wf = order("start_bad_tags")
    with pytest.raises(UsageError, match=message):
        wf.run(tags=tags)
    assert _count(tracked, workflow_runs) == 0
    assert _count(tracked, workflow_steps) == 0
    assert _count(tracked, workflow_run_tags) == 0


def test_a_context_that_is_not_an_object_is_refused(tracked: str) -> None:
    order("start_bad_context")
    for context in ([1, 2], "text", 3):
        with pytest.raises(UsageError, match=r"a dict \(a JSON object\)"):
            flow_tracker.start_workflow("shop/start_bad_context", context=context)  # type: ignore[arg-type]
    assert _count(tracked, workflow_runs) == 0


def test_an_unknown_workflow_or_version_says_what_there_is(tracked: str) -> None:
    order("start_unknown")
    with pytest.raises(NotFoundError, match="no workflow shop/nothing"):
        flow_tracker.start_workflow("shop/nothing")
    definitions.ensure_recorded(definition.find_version("shop", "start_unknown", "3"))  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="no version '9'; its versions: '3'"):
        flow_tracker.start_workflow("shop/start_unknown", version="9")
    assert _count(tracked, workflow_runs) == 0


def test_who_started_a_run_from_where_and_why_is_in_its_history(tracked: str) -> None:
    wf = order("start_history")
    run = wf.run(
        initiator="alice",
        source="admin-api",
        reason="customer asked again, password=hunter2",
        skip=["send_email"],
    )
    run.wait(WAIT)
    store = Store(tracked)
    with store.engine.connect() as conn:
        first = conn.execute(
            select(transitions.c.reason)
            .where(transitions.c.process_id == run.id)
            .order_by(transitions.c.at)
            .limit(1)
        ).scalar_one()
    store.dispose()
    assert first.startswith("started: 4 steps, version 3, by alice via admin-api: customer asked")
    assert "hunter2" not in first
    assert first.endswith("(skipped: send_email)")


def test_a_run_of_a_workflow_declared_elsewhere_is_made_from_its_stored_definition(
    tracked: str,
) -> None:
    wf = order("start_elsewhere")
    definitions.ensure_recorded(wf)
    # Another process's view (the dashboard, the CLI): it declares no such workflow.
    del definition._VERSIONS[("shop", "start_elsewhere", "3")]
    del definition._WORKFLOWS["start_elsewhere"]
    try:
        run = flow_tracker.start_workflow(
            "shop/start_elsewhere", context={"cart": 5}, tags={"t": "1"}
        )
    finally:
        definition._VERSIONS[("shop", "start_elsewhere", "3")] = wf
        definition._WORKFLOWS["start_elsewhere"] = wf
    assert run.created and not run.delivery.ok
    assert str(run.delivery) == "waiting for a worker of threads"
    status = flow_tracker.get_workflow(run.id)
    assert list(status.steps) == ["validate", "charge", "send_email", "confirm"]
    assert status.steps["validate"].status == "queued"
    assert _count(tracked, outbox) == 1
