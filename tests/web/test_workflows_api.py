"""Workflow runs through the dashboard: the JSON API, the Mermaid text, the run's process page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.web import create_app
from tests.web.conftest import ORIGIN

XSS = "<script>alert(1)</script>"


@pytest.fixture
def runs(tracked: str) -> dict[str, Any]:
    """A completed run and a failed one, with hostile text in a step name, context and result."""
    wf = flow_tracker.workflow("api_orders")

    @wf.step(name=f"validate {XSS}")
    def validate(context: Any) -> dict[str, Any]:
        return {"note": XSS, "password": "hunter2"}

    @wf.step(depends_on=[validate])
    def charge(context: Any, **parents: Any) -> None:
        if context.get("fail"):
            raise TimeoutError("gateway down, token=abc123secret")

    wf.step(name="confirm", depends_on=["charge"])(lambda context, charge: "ok")
    ok = wf.run(context={"cart": XSS, "api_key": "k-123"}).wait(30)
    bad = wf.run(context={"fail": True}).wait(30)
    flow_tracker.flush()
    return {"ok": ok, "bad": bad, "url": tracked}


@pytest.fixture
def api(runs: dict[str, Any]) -> Iterator[TestClient]:
    app = create_app(runs["url"])
    with TestClient(app, base_url=ORIGIN) as client:
        yield client
    app.state.dashboard.store.dispose()


def test_the_list_filters_by_status_and_pages_with_a_cursor(
    api: TestClient, runs: dict[str, Any]
) -> None:
    failed = api.get("/api/workflows", params={"status": "failed"}).json()
    assert [r["id"] for r in failed["items"]] == [str(runs["bad"].id)]
    assert failed["items"][0]["failed_step"] == "charge"
    first = api.get("/api/workflows", params={"limit": 1}).json()
    assert first["items"][0]["id"] == str(runs["bad"].id)  # newest first
    second = api.get("/api/workflows", params={"limit": 1, "before": first["next_cursor"]}).json()
    assert [r["id"] for r in second["items"]] == [str(runs["ok"].id)]
    assert api.get("/api/workflows", params={"status": "nope"}).status_code == 400
    assert api.get("/api/workflows", params={"before": "garbage"}).status_code == 400
    assert api.get("/api/workflows", params={"limit": "x"}).status_code == 400


def test_a_run_shows_every_step_with_context_and_results_redacted(
    api: TestClient, runs: dict[str, Any]
) -> None:
    body = api.get(f"/api/workflows/{runs['ok'].id}").json()
    assert body["status"] == "completed" and body["context"]["api_key"] == "[REDACTED]"
    steps = {s["name"]: s for s in body["steps"]}
    assert steps[f"validate {XSS}"]["result"] == {"note": XSS, "password": "[REDACTED]"}
    failed = api.get(f"/api/workflows/{runs['bad'].id}").json()
    charge = {s["name"]: s for s in failed["steps"]}["charge"]
    assert charge["status"] == "failed" and "abc123secret" not in charge["error"]
    assert {s["name"]: s for s in failed["steps"]}["confirm"]["blocked_by"] == "charge"
    assert api.get("/api/workflows/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get("/api/workflows/not-an-id").status_code == 404


def test_the_diagram_is_mermaid_text(api: TestClient, runs: dict[str, Any]) -> None:
    response = api.get(f"/api/workflows/{runs['bad'].id}/diagram")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.startswith("flowchart TD") and "class s1 failed" in response.text
    assert "<script>" not in response.text
    assert api.get("/api/workflows/not-an-id/diagram").status_code == 404


def test_the_run_process_page_lists_its_steps_escaped(
    api: TestClient, runs: dict[str, Any]
) -> None:
    page = api.get(f"/processes/{runs['bad'].id}")
    assert page.status_code == 200
    assert "Workflow steps" in page.text and "Root cause: step <strong>charge</strong>" in page.text
    assert "blocked: upstream charge failed" in page.text
    assert XSS not in page.text and "&lt;script&gt;" in page.text
    ok = api.get(f"/processes/{runs['ok'].id}").text
    assert "hunter2" not in ok and "k-123" not in ok
    step_id = runs["ok"].steps["charge"].process_id
    step_page = api.get(f"/processes/{step_id}").text
    assert "Workflow steps" not in step_page and str(runs["ok"].id)[:8] in step_page
