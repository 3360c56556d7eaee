"""The dashboard's actions deliver, or say they have not, through the real app.

The web process here plays ``flow-tracker serve``: a ``threads`` workflow is not
declared there (``undeclared``), so its Retry button stores the step for a
process that declares it instead of running it in the web server.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, update
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker import job_systems, runtime
from flow_tracker.cli import commands
from flow_tracker.jobs import start_job
from flow_tracker.store import step_writes
from flow_tracker.store.clock import database_now
from flow_tracker.store.schema import processes
from flow_tracker.web import create_app
from flow_tracker.workflows import definition, engine
from tests.support.queues import only_the_pool
from tests.web.conftest import ORIGIN

DEADLINE_S = 60.0
RAN_IN: list[str] = []
FAILING = {"charge": True}

billing = flow_tracker.workflow("delivery_pages_billing")


@billing.step()
def charge(context: dict[str, Any]) -> str:
    RAN_IN.append(threading.current_thread().name)
    if FAILING["charge"]:
        raise ValueError("card declined")
    return "paid"


def _wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {DEADLINE_S:g} s for {what}")
        time.sleep(0.05)


@pytest.fixture
def board(tracked: str) -> Iterator[TestClient]:
    app = create_app(tracked)
    with TestClient(app, base_url=ORIGIN) as client:
        yield client
    app.state.dashboard.store.dispose()


def _token(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, f"{path} carries a CSRF token"
    return match.group(1)


def _post(client: TestClient, path: str, **form: str) -> Any:
    return client.post(
        path,
        data={"csrf_token": _token(client, path.rsplit("/", 1)[0]), **form},
        headers={"origin": ORIGIN},
        follow_redirects=False,
    )


class Undeclared:
    """The workflow as a web server sees it: declared elsewhere, until back()."""

    def __init__(self) -> None:
        self.kept = definition._WORKFLOWS.pop(billing.name)

    def back(self) -> None:
        definition._WORKFLOWS[billing.name] = self.kept


def test_the_retry_button_on_a_threads_run_waits_for_a_process_that_declares_it(
    board: TestClient,
) -> None:
    RAN_IN.clear()
    FAILING["charge"] = True
    run = billing.run(context={"cart": 7})
    assert run.wait(DEADLINE_S).status == "failed"
    FAILING["charge"] = False
    page = f"/workflows/{run.id}"

    undeclared = Undeclared()
    try:
        done = _post(board, f"{page}/retry", step="charge", reason="card fixed")
        shown = board.get(done.headers["location"])
        api = board.get(f"/api/workflows/{run.id}").json()
    finally:
        undeclared.back()

    # The web process did not run the step, and the page does not claim it was sent.
    assert done.status_code == 303 and "waiting=threads" in done.headers["location"]
    assert "waiting for a worker of threads" in shown.text
    assert "The step was sent again" not in shown.text
    [step] = [s for s in api["steps"] if s["name"] == "charge"]
    assert step["delivery"] == "waiting for a worker of threads"
    assert step["delivery_waiting_s"] >= 0
    assert len(RAN_IN) == 1

    # This process declares the workflow and runs the pool: its delivery thread runs it.
    _wait_for("the declaring process to run the retried step", lambda: len(RAN_IN) == 2)
    status = run.wait(DEADLINE_S)
    assert status.status == "completed"
    [step] = board.get(f"/api/workflows/{run.id}").json()["steps"]
    assert step["delivery"] is None


def _age_heartbeats() -> None:
    with runtime.store().engine.begin() as conn:
        conn.execute(
            update(processes)
            .where(processes.c.status == "running", processes.c.heartbeat_at.is_not(None))
            .values(heartbeat_at=datetime.now(timezone.utc) - timedelta(hours=1))
        )


def test_reap_now_holds_a_lost_threads_step_for_the_process_that_declares_it(
    board: TestClient,
) -> None:
    RAN_IN.clear()
    FAILING["charge"] = False
    real = engine.sender_for("threads")
    assert real is not None
    taken: list[Any] = []

    def dying_worker(dispatch: Any) -> None:
        # Takes the step, starts it, then "dies": no end, no more heartbeats.
        if taken:
            real(dispatch)
            return
        store = runtime.store()
        assert step_writes.claim(store, dispatch.run_id, "charge", {}, datetime.now(timezone.utc))
        start_job(job_system="threads", job_id=dispatch.job_id, name="x", queue=None, attempt=1)
        flow_tracker.heartbeat.HEARTBEAT.clear()
        taken.append(dispatch)

    engine.register_sender("threads", dying_worker)
    try:
        run = billing.run(context={"cart": 1})
        _wait_for("the step to be taken by the dying worker", lambda: bool(taken))
    finally:
        engine.register_sender("threads", real)

    notices: list[str] = []
    undeclared = Undeclared()
    try:

        def reaped_the_step() -> bool:
            # A heartbeat already under way as the worker "died" may stamp the row
            # again after it was aged: age it again until the reaper finds it.
            _age_heartbeats()
            done = _post(board, "/health/reap")
            assert done.status_code == 303, done.text
            notices.append(board.get(done.headers["location"]).text)
            return "workflow step" in notices[-1]

        _wait_for("Reap now to find the step lost", reaped_the_step)
    finally:
        undeclared.back()

    # The web server, which does not declare the workflow, neither ran the step
    # nor said it was sent: it waits for a process that declares it ...
    assert "1 workflow step waiting for a worker of threads" in notices[-1]
    assert "sent again" not in notices[-1]
    assert RAN_IN == []
    # ... which this test's process is again: its delivery thread runs it, once.
    _wait_for("the declaring process to run the step", lambda: len(RAN_IN) == 1)
    assert run.wait(DEADLINE_S).status == "completed"
    assert len(RAN_IN) == 1


def _lost_job(job_system: str) -> uuid.UUID:
    store = runtime.store()
    store.ensure_schema()
    process_id = uuid.uuid4()
    with store.engine.begin() as conn:
        now = database_now(conn)
        conn.execute(
            insert(processes).values(
                id=process_id,
                name="charge",
                category="jobs",
                status="lost",
                created_at=now,
                finished_at=now,
                job_system=job_system,
                job_id=uuid.uuid4().hex,
                queue="default",
                job_payload={"task": "app.charge", "args": [1]},
            )
        )
    return process_id


def test_the_requeue_notice_says_what_was_sent_and_what_waits_for_a_worker(
    board: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[str] = []

    def publish(payload: Mapping[str, Any], job_id: str) -> None:
        published.append(job_id)

    only_the_pool(monkeypatch)
    job_systems.update("sentq", requeue=publish)
    ids = [_lost_job("sentq"), _lost_job("sentq"), _lost_job("waitq")]

    done = _post(board, "/health/requeue", all="lost")
    page = board.get(done.headers["location"])

    assert len(published) == 2
    assert "2 sent, 1 waiting for a worker of waitq." in page.text
    assert "stays lost until a live worker" in page.text
    assert re.search(r"Waiting for a worker</span>\s*<span[^>]*>1<", page.text)
    assert "waitq 1; oldest" in page.text
    assert ids[2] in flow_tracker.recovery.requeue_candidates(flow_tracker.Status.LOST)


def test_serve_import_installs_the_integration_so_the_dashboards_requeue_is_sent(
    tracked: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_the_pool(monkeypatch)
    module = f"delivery_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from flow_tracker import job_systems\n"
        "PUBLISHED = []\n"
        "job_systems.update('appq', requeue=lambda payload, job_id: PUBLISHED.append(job_id))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    lost = _lost_job("appq")
    notices: list[str] = []

    def serve_here(database_url: str | None, host: str, port: int, **options: Any) -> None:
        app = create_app(tracked)
        with TestClient(app, base_url=ORIGIN) as client:
            done = _post(client, "/health/requeue", process_id=str(lost))
            notices.append(client.get(done.headers["location"]).text)
        app.state.dashboard.store.dispose()

    monkeypatch.setattr(commands, "_serve", serve_here)
    result = CliRunner().invoke(
        commands.main, ["serve", "--database-url", tracked, "--import", module]
    )

    assert result.exit_code == 0, result.output
    assert "1 sent." in notices[0] and "waiting for a worker" not in notices[0]
    import sys

    assert len(sys.modules[module].PUBLISHED) == 1
    sys.modules.pop(module)
