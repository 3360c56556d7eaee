"""Retry every failed step of a run at once: library, page, API and CLI, on both databases."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker import NotFoundError, UsageError
from flow_tracker.cli import main
from flow_tracker.web import create_app
from tests.web.conftest import ORIGIN

WAIT = 30.0


def _two_failures(name: str) -> tuple[flow_tracker.Workflow, dict[str, int]]:
    """Two independent steps that fail their first attempt, and one that waits on both."""
    calls: dict[str, int] = {"charge": 0, "reserve": 0}
    lock = threading.Lock()
    wf = flow_tracker.workflow(name)

    def failing_once(step: str) -> Any:
        def run(context: Any) -> str:
            with lock:
                calls[step] += 1
                first = calls[step] == 1
            if first:
                raise TimeoutError(f"{step} timed out")
            return step

        return run

    wf.step(name="charge")(failing_once("charge"))
    wf.step(name="reserve")(failing_once("reserve"))
    wf.step(name="confirm", depends_on=["charge", "reserve"])(
        lambda context, charge, reserve: [charge, reserve]
    )
    return wf, calls


def _failed_run(name: str) -> tuple[uuid.UUID, dict[str, int]]:
    wf, calls = _two_failures(name)
    run = wf.run()
    status = run.wait(WAIT)
    assert status.status == "failed"
    assert {n for n, s in status.steps.items() if s.status == "failed"} == {"charge", "reserve"}
    return run.id, calls


def _finished(run_id: uuid.UUID) -> flow_tracker.WorkflowStatus:
    return flow_tracker.WorkflowRun(run_id, "").wait(WAIT)


def test_every_failed_step_is_retried_and_the_run_completes(tracked: str) -> None:
    run_id, calls = _failed_run("retry_failed_lib")
    retried = flow_tracker.retry_failed_steps(run_id, by="ops", reason="gateway is back")
    assert retried.steps == ("charge", "reserve")
    assert retried.delivery.ok
    status = _finished(run_id)
    assert status.status == "completed" and status.steps["confirm"].result == ["charge", "reserve"]
    assert calls == {"charge": 2, "reserve": 2}
    history = flow_tracker.get_process(run_id)
    assert history is not None
    reasons = [t.reason or "" for t in history.history]
    assert sum("retried step" in r and "by ops: gateway is back" in r for r in reasons) == 2


def test_a_run_without_failed_steps_or_cancelled_or_unknown_is_refused(tracked: str) -> None:
    wf = flow_tracker.workflow("retry_failed_none")
    wf.step(name="only")(lambda context: 1)
    done = wf.run().wait(WAIT)
    with pytest.raises(UsageError, match="has no failed step"):
        flow_tracker.retry_failed_steps(done.id)
    run_id, _ = _failed_run("retry_failed_cancelled")
    flow_tracker.cancel_workflow(run_id)
    with pytest.raises(UsageError, match="cancelled"):
        flow_tracker.retry_failed_steps(run_id)
    with pytest.raises(NotFoundError):
        flow_tracker.retry_failed_steps(uuid.uuid4())
    with pytest.raises(UsageError, match="not a workflow run id"):
        flow_tracker.retry_failed_steps("nonsense")


# -- the page ------------------------------------------------------------------------------


@pytest.fixture
def board(tracked: str) -> Iterator[TestClient]:
    app = create_app(tracked, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN) as client:
        yield client
    app.state.dashboard.store.dispose()


def _token(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, f"{path} carries a CSRF token"
    return match.group(1)


def test_the_page_button_retries_every_failed_step(board: TestClient) -> None:
    run_id, _ = _failed_run("retry_failed_page")
    path = f"/workflows/{run_id}"
    assert "Retry failed steps (2)" in board.get(path).text
    token = _token(board, path)
    forged = board.post(f"{path}/retry-failed", data={"csrf_token": "x" * 43})
    assert forged.status_code == 403
    assert flow_tracker.get_workflow(run_id).status == "failed"
    done = board.post(
        f"{path}/retry-failed",
        data={"csrf_token": token, "reason": "all at once"},
        headers={"origin": ORIGIN},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"].endswith("?done=retry-failed")
    assert _finished(run_id).status == "completed"
    assert "The failed steps were sent again." in board.get(done.headers["location"]).text
    again = board.post(
        f"{path}/retry-failed",
        data={"csrf_token": token},
        headers={"origin": ORIGIN},
        follow_redirects=False,
    )
    assert again.status_code == 409 and "no failed step" in again.text


def test_a_read_only_dashboard_hides_the_button_and_refuses_the_action(tracked: str) -> None:
    run_id, _ = _failed_run("retry_failed_read_only")
    app = create_app(tracked, read_only=True, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN) as viewer:
        path = f"/workflows/{run_id}"
        assert "Retry failed steps" not in viewer.get(path).text
        token = viewer.cookies.get("flow_tracker_csrf") or "y" * 43
        refused = viewer.post(
            f"{path}/retry-failed",
            data={"csrf_token": token},
            headers={"origin": ORIGIN},
            follow_redirects=False,
        )
        assert refused.status_code == 403
        api = viewer.post(f"/api/workflows/{run_id}/retry-failed", json={})
        assert api.status_code == 403 and api.json()["error"] == "this dashboard is read-only"
    app.state.dashboard.store.dispose()
    assert flow_tracker.get_workflow(run_id).status == "failed"


# -- the API -------------------------------------------------------------------------------


def test_the_api_retries_every_failed_step_as_its_document_says(board: TestClient) -> None:
    run_id, _ = _failed_run("retry_failed_api")
    response = board.post(f"/api/workflows/{run_id}/retry-failed", json={"reason": "from CI"})
    assert response.status_code == 200
    body = response.json()
    assert body["retried"] == ["charge", "reserve"] and body["delivery"] == "sent"
    doc = board.get("/api/openapi.json").json()
    operation = doc["paths"]["/api/workflows/{run_id}/retry-failed"]["post"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) <= set(body)
    assert _finished(run_id).status == "completed"
    again = board.post(f"/api/workflows/{run_id}/retry-failed", json={})
    assert again.status_code == 409 and "no failed step" in again.json()["error"]


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"content": b"reason=x", "headers": {"content-type": "text/plain"}}, 415),
        ({"data": {"reason": "a form"}}, 415),  # what a cross-site form can send
        ({"content": b"{nope", "headers": {"content-type": "application/json"}}, 400),
        ({"json": ["a list"]}, 400),
        ({"json": {"reason": 7}}, 400),
        ({"json": {}, "headers": {"origin": "https://evil.example"}}, 403),
        ({"json": {}, "headers": {"sec-fetch-site": "cross-site"}}, 403),
        ({"content": b"{}" + b" " * 20_000, "headers": {"content-type": "application/json"}}, 413),
    ],
)
def test_the_api_refuses_what_is_not_a_same_site_json_object(
    board: TestClient, kwargs: dict[str, Any], status: int
) -> None:
    run_id, _ = _failed_run("retry_failed_api_refused")
    response = board.post(f"/api/workflows/{run_id}/retry-failed", **kwargs)
    assert response.status_code == status, response.text
    assert flow_tracker.get_workflow(run_id).status == "failed"


def test_the_api_says_404_for_no_such_run(board: TestClient) -> None:
    board.app.state.dashboard.store.ensure_schema()  # type: ignore[attr-defined]
    for run in (uuid.uuid4(), "not-an-id"):
        response = board.post(f"/api/workflows/{run}/retry-failed", json={})
        assert response.status_code == 404


# -- the CLI -------------------------------------------------------------------------------


def test_the_cli_retries_every_failed_step_and_says_which(tracked: str) -> None:
    run_id, _ = _failed_run("retry_failed_cli")
    runner = CliRunner()
    result = runner.invoke(
        main, ["workflows", "retry-failed", str(run_id), "--database-url", tracked]
    )
    assert result.exit_code == 0, result.output
    assert "2 failed step(s)" in result.output and "charge, reserve" in result.output
    assert _finished(run_id).status == "completed"
    again = runner.invoke(
        main, ["workflows", "retry-failed", str(run_id), "--database-url", tracked]
    )
    assert again.exit_code != 0 and "no failed step" in again.output
