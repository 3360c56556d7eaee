"""Definitions and versions: recorded once per version on first use, listed without user code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
from sqlalchemy import func, select

import flow_tracker
from flow_tracker import UsageError
from flow_tracker.store import definitions as stored_definitions
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import workflow_definitions, workflow_runs
from flow_tracker.workflows import definition, definitions

WAIT = 30.0


def two_versions(name: str) -> tuple[Any, Any]:
    """Version 1 (a -> b) and version 2 (a -> c -> d) of one workflow, side by side."""
    v1 = flow_tracker.workflow(name, namespace="payments", version="1")

    @v1.step()
    def a(context: Any) -> str:
        return "a of version 1"

    @v1.step(depends_on=["a"])
    def b(context: Any, a: str) -> str:
        return f"b after {a}"

    v2 = flow_tracker.workflow(name, namespace="payments", version="2", description="c and d")

    @v2.step(name="a")
    def a2(context: Any) -> str:
        return "a of version 2"

    @v2.step(depends_on=["a"])
    def c(context: Any, a: str) -> str:
        return f"c after {a}"

    @v2.step(depends_on=["c"], retries=2)
    def d(context: Any, c: str) -> str:
        return f"d after {c}"

    return v1, v2


def _rows(url: str) -> list[Any]:
    store = Store(url)
    try:
        store.ensure_schema()
        with store.engine.connect() as conn:
            return list(conn.execute(select(workflow_definitions)).all())
    finally:
        store.dispose()


def test_declaring_stores_nothing_until_first_use(tracked: str) -> None:
    two_versions("defs_lazy")
    assert _rows(tracked) == []


def test_each_run_keeps_the_version_it_was_started_with(tracked: str) -> None:
    v1, _v2 = two_versions("defs_side_by_side")
    old = v1.run(context={"n": 1}).wait(WAIT)
    new = flow_tracker.start_workflow("payments/defs_side_by_side", context={"n": 2}).wait(WAIT)
    pinned = flow_tracker.start_workflow("payments/defs_side_by_side", version="1").wait(WAIT)
    assert old.steps["b"].result == "b after a of version 1"
    assert new.steps["d"].result == "d after c after a of version 2"  # None: the newest here
    assert list(pinned.steps) == ["a", "b"]
    assert pinned.steps["b"].result == "b after a of version 1"
    store = Store(tracked)
    with store.engine.connect() as conn:
        versions = dict(conn.execute(select(workflow_runs.c.id, workflow_runs.c.version)).all())
    store.dispose()
    assert sorted(versions.values()) == ["1", "1", "2"]


def test_definitions_list_every_version_with_its_steps_and_options(tracked: str) -> None:
    two_versions("defs_listed")
    found = [d for d in flow_tracker.list_workflow_definitions() if d.name == "defs_listed"]
    assert [(d.namespace, d.version, d.description) for d in found] == [
        ("payments", "2", "c and d"),
        ("payments", "1", None),
    ]
    newest = found[0]
    assert [s["name"] for s in newest.steps] == ["a", "c", "d"]
    assert newest.steps[2]["depends_on"] == ["c"] and newest.steps[2]["retries"] == 2
    assert (newest.queue, newest.queue_name) == ("threads", "threads")
    assert newest.first_seen <= newest.last_seen
    assert newest.to_dict()["version"] == "2"


def test_a_process_records_each_version_once_however_many_runs_it_starts(
    tracked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, _v2 = two_versions("defs_once")
    writes: list[str] = []
    real = stored_definitions.record

    def counted(store: Store, row: Any) -> None:
        writes.append(row["version"])
        real(store, row)

    monkeypatch.setattr(stored_definitions, "record", counted)
    for _ in range(3):
        v1.run().wait(WAIT)
    assert writes == ["1"]
    assert len(_rows(tracked)) == 1


def test_another_process_declaring_a_version_keeps_one_row_and_moves_last_seen(
    tracked: str,
) -> None:
    v1, _v2 = two_versions("defs_two_processes")
    v1.run().wait(WAIT)
    [first] = _rows(tracked)
    script = textwrap.dedent(
        f"""
        import flow_tracker
        flow_tracker.configure(database_url={tracked!r}, log_to_stdlib=False)
        wf = flow_tracker.workflow("defs_two_processes", namespace="payments", version="1")

        @wf.step()
        def a(context):
            return 1

        print(len(flow_tracker.list_workflow_definitions()))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    [again] = _rows(tracked)
    assert again.first_seen == first.first_seen
    assert again.last_seen >= first.last_seen
    assert [s["name"] for s in again.dag["steps"]] == ["a"]  # what the newest process declares


def test_a_worker_without_the_runs_version_fails_the_step_and_says_which_it_has(
    tracked: str,
) -> None:
    v1, _v2 = two_versions("defs_gone")
    definitions.ensure_recorded(v1)
    # A deploy that dropped version 1: this process declares only version 2 now.
    del definition._VERSIONS[("payments", "defs_gone", "1")]
    try:
        run = flow_tracker.start_workflow("payments/defs_gone", version="1").wait(WAIT)
    finally:
        definition._VERSIONS[("payments", "defs_gone", "1")] = v1
    assert run.status == "failed"
    error = run.steps["a"].error or ""
    assert "version '1' is not declared in this worker (it declares '2')" in error


def test_a_bad_namespace_or_version_is_refused_where_it_is_declared(tracked: str) -> None:
    with pytest.raises(UsageError, match="no '/'"):
        flow_tracker.workflow("defs_bad", namespace="a/b")
    with pytest.raises(UsageError, match="no '/'"):
        flow_tracker.workflow("defs_bad", version="1/2")
    with pytest.raises(UsageError, match="version"):
        flow_tracker.workflow("defs_bad", version="")
    with pytest.raises(UsageError, match="description"):
        flow_tracker.workflow("defs_bad", description=42)  # type: ignore[arg-type]


def test_versions_sort_as_numbers_and_the_newest_is_the_default(tracked: str) -> None:
    for version in ("1.9", "1.10", "1.2"):
        wf = flow_tracker.workflow("defs_sorted", version=version)

        @wf.step(name="only")
        def only(context: Any, _v: str = version) -> str:
            return _v

    run = flow_tracker.start_workflow("defs_sorted").wait(WAIT)
    assert run.steps["only"].result == "1.10"
    assert definition.version_key("1.10") > definition.version_key("1.9")
    listed = [
        d.version for d in flow_tracker.list_workflow_definitions() if d.name == "defs_sorted"
    ]
    assert listed == ["1.10", "1.9", "1.2"]


def test_a_worker_install_records_what_its_process_declares(tracked: str) -> None:
    two_versions("defs_install")
    definitions.record_declared_soon()
    background = definitions._background
    if background is not None:
        background.join(WAIT)
    store = Store(tracked)
    try:
        with store.engine.connect() as conn:
            count = conn.execute(
                select(func.count()).where(workflow_definitions.c.name == "defs_install")
            ).scalar_one()
    finally:
        store.dispose()
    assert count == 2


def test_a_late_background_recording_goes_into_the_database_that_asked_for_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    first, second = f"sqlite:///{tmp_path / 'first.db'}", f"sqlite:///{tmp_path / 'second.db'}"
    flow_tracker.configure(database_url=first, log_to_stdlib=False)
    two_versions("defs_late")
    go_on = threading.Event()
    record = definitions.record_declared

    def slow(store: Any = None) -> int:
        assert go_on.wait(30), "the test never let the recording go on"
        return record(store)

    monkeypatch.setattr(definitions, "record_declared", slow)
    definitions.record_declared_soon()  # as a worker's install does, then it runs late
    flow_tracker.reset()
    flow_tracker.configure(database_url=second, log_to_stdlib=False)
    go_on.set()
    assert definitions.wait_recorded(30), "the background recording did not end"
    flow_tracker.reset()
    names = {row.name for row in _rows(first)}
    assert "defs_late" in names
    assert _rows(second) == []
