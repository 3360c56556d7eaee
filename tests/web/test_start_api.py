"""Starting runs from outside the code: the REST endpoint, the definitions list, the pages."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import outbox, workflow_run_tags, workflow_runs, workflow_steps
from flow_tracker.web import create_app
from flow_tracker.workflows import definition, definitions
from tests.web.conftest import ORIGIN

WAIT = 30.0
JSON = {"content-type": "application/json"}
HOSTILE = '<script>alert("t")</script>\'"&'


def declare(name: str) -> Any:
    """Validate -> (charge, email) on the in-process pool, in namespace ``shop``, version 2."""
    wf = flow_tracker.workflow(name, namespace="shop", version="2", description=HOSTILE)

    @wf.step()
    def validate(context: Any) -> int:
        return int(context.get("cart", 0))

    @wf.step(depends_on=["validate"])
    def charge(context: Any, validate: int) -> int:
        return validate * 10

    @wf.step(depends_on=["validate"])
    def email(context: Any, validate: int) -> str:
        return "sent"

    return wf


@pytest.fixture
def board(tracked: str) -> Iterator[TestClient]:
    app = create_app(tracked, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN) as client:
        yield client
    app.state.dashboard.store.dispose()


def _count(url: str, table: Any) -> int:
    store = Store(url)
    try:
        store.ensure_schema()
        with store.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    finally:
        store.dispose()


def test_the_api_starts_a_run_and_a_repeated_key_returns_it(board: TestClient) -> None:
    declare("api_start")
    body = {
        "context": {"cart": 4},
        "idempotency_key": "cart-4",
        "tags": {"customer": "c-42"},
        "skip": ["email"],
        "reason": "customer asked again",
    }
    first = board.post("/api/workflows/shop/api_start/runs", json=body)
    assert first.status_code == 201, first.text
    made = first.json()
    assert (made["created"], made["version"], made["namespace"]) == (True, "2", "shop")
    assert made["delivery"] == "sent"  # declared here: the pool runs it
    assert made["url"] == f"/workflows/{made['id']}"
    assert made["run"]["steps"][2]["status"] == "resolved"
    again = board.post("/api/workflows/shop/api_start/runs", json=body)
    assert again.status_code == 200
    assert (again.json()["id"], again.json()["created"]) == (made["id"], False)
    status = flow_tracker.WorkflowRun(uuid.UUID(made["id"]), "").wait(WAIT)
    assert status.steps["charge"].result == 40
    history = flow_tracker.get_process(made["id"])
    assert history is not None
    assert "by dashboard via api: customer asked again" in (history.history[0].reason or "")
    tagged = board.get("/api/workflows", params={"tag": "customer:c-42"}).json()["items"]
    assert [r["id"] for r in tagged] == [made["id"]]


def test_a_workflow_declared_nowhere_here_starts_from_its_definition_and_waits(
    board: TestClient, tracked: str
) -> None:
    wf = declare("api_elsewhere")
    definitions.ensure_recorded(wf)
    del definition._VERSIONS[("shop", "api_elsewhere", "2")]
    del definition._WORKFLOWS["api_elsewhere"]
    try:
        started = board.post("/api/workflows/shop/api_elsewhere/runs", json={"context": {}})
    finally:
        definition._VERSIONS[("shop", "api_elsewhere", "2")] = wf
        definition._WORKFLOWS["api_elsewhere"] = wf
    assert started.status_code == 201
    assert started.json()["delivery"] == "waiting"
    assert started.json()["message"] == "waiting for a worker of threads"
    assert _count(tracked, outbox) == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "says"),
    [
        ({"content": b"[1, 2]", "headers": JSON}, 400, "JSON object"),
        ({"content": b"{nope", "headers": JSON}, 400, "not JSON"),
        ({"json": {"context": [1]}}, 400, "context is a JSON object"),
        ({"json": {"context": "x"}}, 400, "context is a JSON object"),
        ({"json": {"skip": ["nope"]}}, 400, "no step 'nope' to skip; its steps: validate"),
        ({"json": {"skip": "validate"}}, 400, "skip is a list"),
        ({"json": {"tags": {"k": 1}}}, 400, "tags is an object of strings"),
        ({"json": {"tags": {"bad key": "v"}}}, 400, "tag key"),
        ({"json": {"version": "9"}}, 404, "no version '9'"),
        ({"json": {"version": 2}}, 400, "version is a string"),
        ({"json": {"contxt": {}}}, 400, "unknown field 'contxt'"),
        ({"json": {"idempotency_key": "k" * 300}}, 400, "at most 255"),
        ({"content": b"context=x", "headers": {"content-type": "text/plain"}}, 415, "JSON"),
        ({"json": {}, "headers": {"origin": "https://evil.example"}}, 403, "cross-origin"),
        ({"json": {}, "headers": {"sec-fetch-site": "cross-site"}}, 403, "cross-origin"),
    ],
)
def test_a_bad_body_is_refused_with_its_reason_and_stores_nothing(
    board: TestClient, tracked: str, kwargs: dict[str, Any], status: int, says: str
) -> None:
    wf = declare("api_bad")
    definitions.ensure_recorded(wf)
    answer = board.post("/api/workflows/shop/api_bad/runs", **kwargs)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["error"]
    assert _count(tracked, workflow_runs) == 0
    assert _count(tracked, workflow_steps) == 0
    assert _count(tracked, workflow_run_tags) == 0


def test_a_50_mb_body_is_refused_before_it_is_read(board: TestClient, tracked: str) -> None:
    declare("api_huge")
    huge = b'{"context": {"blob": "' + b"x" * (50 * 1024 * 1024) + b'"}}'
    answer = board.post("/api/workflows/shop/api_huge/runs", content=huge, headers=JSON)
    assert answer.status_code == 413
    assert "the body is over" in answer.json()["error"]
    assert _count(tracked, workflow_runs) == 0


def test_an_unknown_namespace_or_name_is_404(board: TestClient) -> None:
    declare("api_unknown")
    for path in ("/api/workflows/shop/nothing/runs", "/api/workflows/nowhere/api_unknown/runs"):
        answer = board.post(path, json={})
        assert answer.status_code == 404
        assert "no workflow" in answer.json()["error"]


def test_a_read_only_dashboard_refuses_a_start(tracked: str) -> None:
    declare("api_read_only")
    app = create_app(tracked, read_only=True, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN) as viewer:
        answer = viewer.post("/api/workflows/shop/api_read_only/runs", json={})
        assert answer.status_code == 403
        assert "read-only" in answer.json()["error"]
        page = viewer.get("/workflows/definitions").text
        assert "Start run" not in page
        assert viewer.get("/workflows/definitions/start?namespace=shop&name=x").status_code == 403
    app.state.dashboard.store.dispose()
    assert _count(tracked, workflow_runs) == 0


def test_the_definitions_api_and_the_openapi_document_describe_them(board: TestClient) -> None:
    definitions.ensure_recorded(declare("api_listed"))
    items = board.get("/api/workflow-definitions").json()["items"]
    [mine] = [d for d in items if d["name"] == "api_listed"]
    assert (mine["namespace"], mine["version"], mine["description"]) == ("shop", "2", HOSTILE)
    assert [s["name"] for s in mine["steps"]] == ["validate", "charge", "email"]
    doc = board.get("/api/openapi.json").json()
    start = doc["paths"]["/api/workflows/{namespace}/{name}/runs"]["post"]
    assert set(start["responses"]) >= {"200", "201", "400", "403", "404", "413", "415"}
    assert set(start["requestBody"]["content"]["application/json"]["schema"]["properties"]) == {
        "context",
        "version",
        "idempotency_key",
        "skip",
        "tags",
        "reason",
    }
    listed = doc["paths"]["/api/workflow-definitions"]["get"]["responses"]["200"]
    required = listed["content"]["application/json"]["schema"]["properties"]["items"]["items"]
    assert set(required["required"]) <= set(mine)
    tag = [p for p in doc["paths"]["/api/workflows"]["get"]["parameters"] if p["name"] == "tag"]
    assert tag and tag[0]["in"] == "query"


def _token(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, path
    return match.group(1)


def test_the_definitions_page_lists_versions_escaped_and_links_start(board: TestClient) -> None:
    definitions.ensure_recorded(declare("page_listed"))
    page = board.get("/workflows/definitions")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "&lt;script&gt;alert" in page.text
    assert "shop/page_listed" in page.text
    assert (
        "/workflows/definitions/start?namespace=shop&amp;name=page_listed&amp;version=2"
        in page.text
    )
    assert 'href="/workflows/definitions"' in board.get("/workflows").text


def test_the_start_form_starts_a_run_with_tags_and_a_skipped_step(board: TestClient) -> None:
    definitions.ensure_recorded(declare("page_start"))
    form_path = "/workflows/definitions/start?namespace=shop&name=page_start&version=2"
    form = board.get(form_path)
    assert form.status_code == 200 and 'name="skip" value="email"' in form.text
    token = _token(board, form_path)
    fields = {
        "csrf_token": token,
        "namespace": "shop",
        "name": "page_start",
        "version": "2",
        "context": '{"cart": 3}',
        "tags": f"customer={HOSTILE}\nteam=ops",
        "skip": "email",
        "reason": "from the page",
    }
    forged = board.post("/workflows/definitions/start", data={**fields, "csrf_token": "x" * 43})
    assert forged.status_code == 403
    done = board.post(
        "/workflows/definitions/start",
        data=fields,
        headers={"origin": ORIGIN},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"].endswith("?done=start")
    run_id = done.headers["location"].split("/")[-1].split("?")[0]
    status = flow_tracker.WorkflowRun(uuid.UUID(run_id), "").wait(WAIT)
    assert status.steps["charge"].result == 30 and status.steps["email"].status == "resolved"
    page = board.get(done.headers["location"]).text
    assert "The run was started: its first steps were sent." in page
    assert "<script>alert" not in page and "customer:&lt;script&gt;alert" in page
    listed = board.get("/workflows", params={"tag": f"customer:{HOSTILE}"})
    assert listed.status_code == 200 and run_id in listed.text


def test_a_bad_start_form_comes_back_with_the_reason_and_stores_nothing(
    board: TestClient, tracked: str
) -> None:
    definitions.ensure_recorded(declare("page_bad"))
    token = _token(board, "/workflows/definitions/start?namespace=shop&name=page_bad")
    base = {"csrf_token": token, "namespace": "shop", "name": "page_bad", "version": "2"}
    for fields, says in [
        ({"context": "[1]"}, "a dict (a JSON object)"),
        ({"context": "{nope"}, "not JSON"),
        ({"tags": "no separator"}, "key=value"),
        ({"skip": "nope"}, "to skip"),
    ]:
        answer = board.post(
            "/workflows/definitions/start", data={**base, **fields}, headers={"origin": ORIGIN}
        )
        assert answer.status_code == 400, fields
        assert says in html.unescape(answer.text), fields
    assert _count(tracked, workflow_runs) == 0


def test_run_again_fills_the_form_with_the_runs_values_and_starts_a_new_run(
    board: TestClient,
) -> None:
    wf = declare("page_again")
    first = wf.run(context={"cart": 5, "note": HOSTILE}, tags={"customer": "c-7"})
    first.wait(WAIT)
    run_page = board.get(f"/workflows/{first.id}").text
    assert f'href="/workflows/{first.id}/run-again"' in run_page
    form = board.get(f"/workflows/{first.id}/run-again")
    assert form.status_code == 200
    assert "customer=c-7" in form.text
    assert "&#34;cart&#34;: 5" in form.text or "&quot;cart&quot;: 5" in form.text
    assert "<script>alert" not in form.text
    token = _token(board, f"/workflows/{first.id}/run-again")
    done = board.post(
        "/workflows/definitions/start",
        data={
            "csrf_token": token,
            "namespace": "shop",
            "name": "page_again",
            "version": "2",
            "context": '{"cart": 6}',
            "tags": "customer=c-7",
            "skip": "charge",
            "again": str(first.id),
        },
        headers={"origin": ORIGIN},
        follow_redirects=False,
    )
    assert done.status_code == 303
    again_id = done.headers["location"].split("/")[-1].split("?")[0]
    assert again_id != str(first.id)
    status = flow_tracker.WorkflowRun(uuid.UUID(again_id), "").wait(WAIT)
    assert (status.steps["charge"].status, status.steps["email"].result) == ("resolved", "sent")
    history = flow_tracker.get_process(again_id)
    assert history is not None and f"run again from {first.id}" in (history.history[0].reason or "")
    both = board.get("/api/workflows", params={"tag": "customer:c-7"}).json()["items"]
    assert {r["id"] for r in both} == {str(first.id), again_id}


def test_run_again_is_offered_only_on_finished_runs_and_hidden_values_stay_hidden(
    board: TestClient,
) -> None:
    wf = declare("page_again_secret")
    run = wf.run(context={"cart": 1, "password": "hunter2"})
    run.wait(WAIT)
    form = board.get(f"/workflows/{run.id}/run-again")
    assert "hunter2" not in form.text
    assert "type them again" in form.text
    assert board.get(f"/workflows/{uuid.uuid4()}/run-again").status_code == 404


def test_the_run_list_and_api_refuse_a_malformed_tag_filter(board: TestClient) -> None:
    declare("page_tag_filter").run().wait(WAIT)
    for value in ("no-separator", "bad key:v", ":v"):
        assert board.get("/api/workflows", params={"tag": value}).status_code == 400
        page = board.get("/workflows", params={"tag": value})
        assert page.status_code == 400 and "Cannot filter" in page.text
    hostile = board.get("/api/workflows", params={"tag": "k:' OR 1=1 --"})
    assert hostile.status_code == 200 and hostile.json()["items"] == []


def test_the_run_list_page_combines_several_tag_filters_and_keeps_them_in_its_links(
    board: TestClient,
) -> None:
    wf = declare("page_two_tags")
    both = wf.run(tags={"customer": "c-1", "region": "eu"})
    one = wf.run(tags={"customer": "c-1", "region": "us"})
    both.wait(WAIT)
    one.wait(WAIT)
    page = board.get("/workflows", params=[("tag", "customer:c-1"), ("tag", "region:eu")])
    assert page.status_code == 200, page.text
    shown = set(re.findall(r'href="/workflows/([0-9a-f-]{36})"', page.text))
    assert shown == {str(both.id)}
    # Both filters stay in the form, and a tag's link adds itself to them.
    assert page.text.count('name="tag" value="customer:c-1"') == 1
    assert page.text.count('name="tag" value="region:eu"') == 1
    assert "?tag=customer%3Ac-1&amp;tag=region%3Aeu&amp;tag=" in page.text
    api = board.get("/api/workflows", params=[("tag", "customer:c-1"), ("tag", "region:us")])
    assert [r["id"] for r in api.json()["items"]] == [str(one.id)]
    detail = board.get(f"/api/workflows/{both.id}").json()
    assert (detail["namespace"], detail["version"], detail["tags"]) == (
        "shop",
        "2",
        {"customer": "c-1", "region": "eu"},
    )
