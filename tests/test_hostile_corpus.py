"""The hostile-input lane: every odd value through the library and the dashboard, both databases.

For each value of :mod:`tests.support.hostile` and each place it can go, the
answer is one of: a clear ``UsageError`` at the call, or the value stored (cut,
escaped or replaced where it must be) and shown escaped, with a page that
answers 200 and JSON a strict parser reads. Never a 5xx, a dropped row, a hang
or a step run twice. ``make test-hostile`` runs this lane alone (with the
dashboard's own fuzzing of every route, ``tests/web/test_bad_input.py``).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker import UsageError, jobs
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import flows, log_entries, processes
from flow_tracker.web import create_app
from tests.support.hostile import TEXTS, data_values
from tests.workflows.helpers import Calls

pytestmark = pytest.mark.hostile

WAIT = 60.0  # generous: a busy machine; these runs end in a second when idle
DATA = data_values()


@pytest.fixture
def dashboard(tracked: str) -> Iterator[TestClient]:
    """The dashboard on the tracked database."""
    app = create_app(tracked)
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as client:
        yield client
    app.state.dashboard.store.dispose()


@pytest.fixture
def store(tracked: str) -> Iterator[Store]:
    """A store to read back what was stored."""
    reader = Store(tracked)
    yield reader
    reader.dispose()


def strict_json(text: str) -> Any:
    """Parse JSON as a browser or another language would: no NaN, no Infinity."""

    def refuse(token: str) -> None:
        raise AssertionError(f"the API wrote the non-JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def assert_shown(client: TestClient, path: str) -> str:
    """The page answers 200 and shows no markup from the data unescaped."""
    page = client.get(path)
    assert page.status_code == 200, f"{path}: {page.status_code} {page.text[:300]}"
    assert "<script>alert(1)" not in page.text and "<img src=x onerror" not in page.text
    assert "<Opaque onload" not in page.text
    return str(page.text)


def count(store: Store, table: Any, **where: Any) -> int:
    """Rows of ``table`` matching ``where``."""
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


# -- processes, flows, logs, metadata, errors -----------------------------------------------


class Failure(Exception):
    """The error a hostile job raises, with a hostile message."""


@pytest.mark.parametrize("key", list(TEXTS))
def test_a_process_named_and_written_with_hostile_text_is_stored_and_shown_escaped(
    key: str, store: Store, dashboard: TestClient
) -> None:
    value = TEXTS[key]
    holder: list[Any] = []

    def job() -> None:
        with flow_tracker.track(value, metadata={value: value, "k": value}) as tracker:
            holder.append(tracker)
            with tracker.flow(value) as flow:
                flow.log(value, data={value: value})
                flow.update_metadata(note=value)
            tracker.warning(value)
            raise Failure(value)

    with pytest.raises(Failure):
        job()
    tracker = holder[0]
    flow_tracker.flush()
    pid = tracker.process_id
    assert count(store, processes, id=pid) == 1, "the process row was dropped"
    assert count(store, flows, process_id=pid) == 1, "the flow row was dropped"
    assert count(store, log_entries, process_id=pid) == 2, "a log row was dropped"
    record = flow_tracker.get_process(pid)
    assert record is not None and record.status == "failed"
    assert "hunter2" not in json.dumps(record.to_dict())  # redacted wherever it went
    assert_shown(dashboard, f"/processes/{pid}")
    strict_json(dashboard.get(f"/api/processes/{pid}").text)


@pytest.mark.parametrize("key", list(DATA))
def test_hostile_data_and_metadata_are_stored_safely_and_shown(
    key: str, store: Store, dashboard: TestClient
) -> None:
    value = DATA[key]
    with flow_tracker.track("hostile data", metadata={"value": value}) as tracker:
        tracker.info("data", data={"value": value})
        with tracker.flow("nested", metadata={"value": value}):
            pass
    flow_tracker.flush()
    pid = tracker.process_id
    assert count(store, processes, id=pid) == 1, "the process row was dropped"
    assert count(store, log_entries, process_id=pid) == 1, "the log row was dropped"
    assert_shown(dashboard, f"/processes/{pid}")
    strict_json(dashboard.get(f"/api/processes/{pid}").text)


@pytest.mark.parametrize("key", list(TEXTS))
def test_a_queued_job_with_hostile_ids_has_its_row(
    key: str, store: Store, dashboard: TestClient
) -> None:
    value = TEXTS[key]
    pid = jobs.record_enqueued(job_system="rq", job_id=value, name=value, queue=value)
    flow_tracker.flush()
    assert pid is not None and count(store, processes, id=pid) == 1, "the queued row was dropped"
    assert_shown(dashboard, f"/processes/{pid}")
    assert flow_tracker.get_status(pid) is not None


def test_progress_past_the_largest_float_stays_json(tracked: str, dashboard: TestClient) -> None:
    with flow_tracker.track("overflowing progress") as tracker:
        tracker.progress.total = 1e308
        tracker.progress.increment(1e308)
        tracker.progress.increment(1e308)
    flow_tracker.flush()
    strict_json(dashboard.get(f"/api/processes/{tracker.process_id}").text)
    strict_json(dashboard.get(f"/api/status/{tracker.process_id}").text)


# -- workflows: names, context, results, reasons --------------------------------------------


def _declare(name: str, step: str, calls: Calls, result: Any = "ok", fail: bool = False) -> Any:
    wf = flow_tracker.workflow(name)

    def body(context: Any) -> Any:
        calls.hit(step)
        if fail:
            raise Failure("failed on purpose")
        return result

    wf.step(body, name=step)
    return wf


@pytest.mark.parametrize("key", list(TEXTS))
def test_a_hostile_workflow_or_step_name_is_refused_or_runs_and_is_shown(
    key: str, dashboard: TestClient
) -> None:
    value = TEXTS[key]
    calls = Calls()
    try:
        wf = _declare(value, value, calls)
    except UsageError:
        return  # refused at the line that declares it: nothing stored
    run = wf.run()
    assert run.wait(WAIT).status == "completed"
    assert calls.counts == {value: 1}
    assert_shown(dashboard, f"/workflows/{run.id}")
    strict_json(dashboard.get(f"/api/workflows/{run.id}").text)
    assert dashboard.get(f"/api/workflows/{run.id}/diagram").status_code == 200
    diagram = flow_tracker.workflow_diagram(run.id)
    assert "%%{" not in diagram and "\n`" not in diagram


@pytest.mark.parametrize("key", [*TEXTS, *DATA])
def test_a_hostile_context_is_refused_or_the_run_completes(key: str, dashboard: TestClient) -> None:
    value = TEXTS.get(key, DATA.get(key))
    calls = Calls()
    wf = _declare(f"context_{uuid.uuid4().hex[:8]}", "only", calls)
    try:
        run = wf.run(context={"value": value, str(key): value})
    except UsageError:
        assert calls.counts == {}
        return
    assert run.wait(WAIT).status == "completed"
    assert calls.counts == {"only": 1}
    assert_shown(dashboard, f"/workflows/{run.id}")
    strict_json(dashboard.get(f"/api/workflows/{run.id}").text)


@pytest.mark.parametrize("key", [*TEXTS, *DATA])
def test_a_hostile_result_completes_or_fails_its_step_once(
    key: str, tracked: str, dashboard: TestClient
) -> None:
    value = TEXTS.get(key, DATA.get(key))
    calls = Calls()
    run = _declare(f"result_{uuid.uuid4().hex[:8]}", "only", calls, result=value).run()
    status = run.wait(WAIT)
    assert status.status in ("completed", "failed")
    flow_tracker.reap()  # nothing left for a reaper to run again
    assert flow_tracker.get_workflow(run.id).status == status.status
    assert calls.counts == {"only": 1}
    assert_shown(dashboard, f"/workflows/{run.id}")
    strict_json(dashboard.get(f"/api/workflows/{run.id}").text)


@pytest.mark.parametrize("key", list(TEXTS))
def test_hostile_reasons_and_resolve_results_are_stored_redacted_and_shown(
    key: str, dashboard: TestClient
) -> None:
    value = TEXTS[key]
    calls = Calls()
    run = _declare(f"acted_{uuid.uuid4().hex[:8]}", "only", calls, fail=True).run()
    assert run.wait(WAIT).status == "failed"
    flow_tracker.retry_step(run.id, "only", reason=value, by=value)
    assert run.wait(WAIT).status == "failed"
    flow_tracker.resolve_step(run.id, "only", result={"given": value}, reason=value, by=value)
    assert run.wait(WAIT).status == "completed"
    assert calls.counts == {"only": 2}
    page = assert_shown(dashboard, f"/workflows/{run.id}")
    assert "hunter2" not in page
    strict_json(dashboard.get(f"/api/workflows/{run.id}").text)
    other = _declare(f"cancelled_{uuid.uuid4().hex[:8]}", "only", Calls()).run()
    other.wait(WAIT)
    with contextlib.suppress(UsageError):  # it completed before: refused, and said so
        flow_tracker.cancel_workflow(other.id, reason=value, by=value)
