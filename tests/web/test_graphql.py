"""The GraphQL API: REST's answers, the library's actions, REST's rules — on both databases."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from graphql import get_introspection_query
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.permissions import Principal
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import audit_log, outbox, workflow_runs
from flow_tracker.web import create_app
from flow_tracker.web.graphql_limits import MAX_LIMIT
from flow_tracker.web.params import clean
from flow_tracker.workflows import definition, definitions
from tests.support.readme import blocks
from tests.web.conftest import ORIGIN, Sample

WAIT = 30.0
SECRET = "s3cr3t-7f1e9b"  # a payload value no answer to a viewer may hold
HOSTILE = '<script>alert("t")</script>\'"&'


def graphql_app(url: str, **kwargs: Any) -> Starlette:
    """The dashboard with ``/graphql`` mounted."""
    return create_app(url, graphql=True, **{"keep_statistics": False, **kwargs})


@pytest.fixture
def client_for(tracked: str) -> Iterator[Callable[..., TestClient]]:
    """Test clients of GraphQL dashboards on the test's database, closed at the end."""
    made: list[tuple[Starlette, TestClient]] = []

    def make(**kwargs: Any) -> TestClient:
        app = graphql_app(tracked, **kwargs)
        client = TestClient(app, base_url=ORIGIN)
        client.__enter__()
        made.append((app, client))
        return client

    yield make
    for app, client in made:
        client.__exit__(None, None, None)
        app.state.dashboard.store.dispose()


@pytest.fixture
def admin(client_for: Callable[..., TestClient]) -> TestClient:
    """A dashboard without authentication: everyone is admin."""
    return client_for()


@pytest.fixture
def viewer(client_for: Callable[..., TestClient]) -> TestClient:
    """A dashboard whose every request is a viewer's: runs:read, nothing more."""
    return client_for(auth=lambda request: Principal("vera", role="viewer"))


def ask(client: TestClient, query: str, **variables: Any) -> dict[str, Any]:
    """POST ``query``; the answer's JSON (a 200 expected: it ran)."""
    answer = client.post("/graphql", json={"query": query, "variables": variables or None})
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


def messages(answer: dict[str, Any]) -> list[str]:
    return [error["message"] for error in answer.get("errors", [])]


def as_rest(value: Any) -> Any:
    """A GraphQL answer with REST's keys (``createdAt`` → ``created_at``), ``hidden`` dropped."""
    if isinstance(value, list):
        return [as_rest(v) for v in value]
    if not isinstance(value, dict):
        return value
    return {
        re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): as_rest(v)
        for key, v in value.items()
        if key != "hidden"
    }


def _count(url: str, table: Any) -> int:
    store = Store(url)
    try:
        store.ensure_schema()
        with store.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    finally:
        store.dispose()


# -- reads: what REST answers --------------------------------------------------------------

ERROR = "error { type message traceback }"
PROCESS = f"""id name category status metadata {ERROR} createdAt queuedAt startedAt finishedAt
    durationMs progress {{ current total }} jobSystem jobId queue attempt parentProcessId host pid
    heartbeatAt droppedLogs jobArgs requeuedFromId lostCount"""
LOG = "id flowId level message data createdAt position"
FLOW = f"id parentId name status metadata {ERROR} startedAt finishedAt durationMs attempt position"
PROCESS_DETAIL = f"""{PROCESS} flows {{ {FLOW} depth logs {{ {LOG} }} }} logs {{ {LOG} }}
    history {{ status at attempt reason }} counts {{ flows logs }} truncated"""
STEP = """name status attempts result error processId dependsOn blockedBy nextAttemptAt queuedAt
    startedAt finishedAt durationMs delivery deliveryWaitingS"""
RUN = f"""id name namespace version tags {{ key value }} queue status failedStep context createdAt
    finishedAt steps {{ {STEP} }}"""
RUN_SUMMARY = """id name queue status failedStep version tags { key value } stepsDone stepsTotal
    createdAt finishedAt durationMs"""


def test_processes_answer_what_the_rest_api_answers(admin: TestClient, sample: Sample) -> None:
    query = f"""query($limit: Int, $cursor: String, $status: [String!], $category: [String!],
        $name: String) {{
        processes(limit: $limit, cursor: $cursor, status: $status, category: $category,
                  name: $name) {{ items {{ {PROCESS} }} nextCursor }} }}"""
    cases: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({"limit": 100}, {"limit": "100"}),
        ({"limit": 7}, {"limit": "7"}),
        ({"status": ["failed"]}, {"status": "failed"}),
        ({"category": ["jobs"], "name": "LongJob"}, {"category": "jobs", "name": "LongJob"}),
    ]
    for graph_args, rest_args in cases:
        rest = admin.get("/api/processes", params=rest_args).json()
        page = ask(admin, query, **graph_args)["data"]["processes"]
        assert as_rest(page["items"]) == rest["items"]
        assert page["nextCursor"] == rest["next_cursor"]
    first = ask(admin, query, limit=7)["data"]["processes"]
    second = ask(admin, query, limit=7, cursor=first["nextCursor"])["data"]["processes"]
    rest = admin.get("/api/processes", params={"limit": 7, "cursor": first["nextCursor"]}).json()
    assert as_rest(second["items"]) == rest["items"]
    assert not {i["id"] for i in first["items"]} & {i["id"] for i in second["items"]}


def _depth_first(flows: list[dict[str, Any]], depth: int = 0) -> list[dict[str, Any]]:
    flat = []
    for flow in flows:
        children = flow.pop("children")
        flat.append({**flow, "depth": depth})
        flat.extend(_depth_first(children, depth + 1))
    return flat


def test_a_process_answers_its_flows_logs_and_history_like_the_rest_api(
    admin: TestClient, sample: Sample
) -> None:
    for pid in (sample.imported, sample.charged, sample.running):
        rest = admin.get(f"/api/processes/{pid}").json()
        rest["flows"] = _depth_first(rest["flows"])
        found = ask(admin, f"query($id: ID!) {{ process(id: $id) {{ {PROCESS_DETAIL} }} }}", id=pid)
        assert as_rest(found["data"]["process"]) == rest
    flows = ask(
        admin, "query($id: ID!) { process(id: $id) { flows { name depth } } }", id=sample.imported
    )["data"]["process"]["flows"]
    assert flows == [
        {"name": "download", "depth": 0},
        {"name": "fetch orders.csv", "depth": 1},
        {"name": "store", "depth": 0},
    ]


@pytest.mark.parametrize("ident", ["nope", str(uuid.uuid4()), "x" * 10_000, HOSTILE, "\x00"])
def test_an_unknown_or_malformed_id_is_null_with_an_error(admin: TestClient, ident: str) -> None:
    answer = ask(
        admin,
        "query($id: ID!) { process(id: $id) { id } workflowRun(id: $id) { id } }",
        id=ident,
    )
    assert answer["data"] == {"process": None, "workflowRun": None}
    assert messages(answer) == ["no process with this id", "no workflow run with this id"]


def declare(name: str) -> Any:
    """Validate -> (charge, email) on the in-process pool, in namespace ``shop``."""
    wf = flow_tracker.workflow(name, namespace="shop", version="2", description=HOSTILE)

    @wf.step()
    def validate(context: Any) -> int:
        return int(context.get("cart", 0))

    @wf.step(depends_on=["validate"])
    def charge(context: Any, validate: int) -> dict[str, Any]:
        return {"charged": validate * 10, "card": context.get("card")}

    @wf.step(depends_on=["validate"])
    def email(context: Any, validate: int) -> str:
        return "sent"

    return wf


def test_workflow_runs_and_definitions_answer_what_the_rest_api_answers(
    admin: TestClient,
) -> None:
    declare("gql_read")
    tagged = flow_tracker.start_workflow(
        "shop/gql_read", {"cart": 2}, tags={"customer": "c-42", "tier": HOSTILE}
    )
    other = flow_tracker.start_workflow("shop/gql_read", {"cart": 3})
    for run in (tagged, other):
        flow_tracker.WorkflowRun(run.id, "").wait(WAIT)
    query = f"""query($tags: [TagInput!], $status: String, $limit: Int, $cursor: String) {{
        workflowRuns(tags: $tags, status: $status, limit: $limit, cursor: $cursor) {{
            items {{ {RUN_SUMMARY} }} nextCursor }} }}"""
    cases: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({}, {}),
        ({"tags": [{"key": "customer", "value": "c-42"}]}, {"tag": "customer:c-42"}),
        ({"status": "completed", "limit": 1}, {"status": "completed", "limit": "1"}),
    ]
    for graph_args, rest_args in cases:
        rest = admin.get("/api/workflows", params=rest_args).json()
        page = ask(admin, query, **graph_args)["data"]["workflowRuns"]
        for item in page["items"]:
            item["tags"] = {t["key"]: t["value"] for t in item["tags"]}
        assert as_rest(page["items"]) == rest["items"]
        assert page["nextCursor"] == rest["next_cursor"]
    [only] = ask(admin, query, tags=[{"key": "tier", "value": HOSTILE}])["data"]["workflowRuns"][
        "items"
    ]
    assert only["id"] == str(tagged.id)

    answer = ask(
        admin, f"query($id: ID!) {{ workflowRun(id: $id) {{ {RUN} }} }}", id=str(tagged.id)
    )
    shown = answer["data"]["workflowRun"]
    shown["tags"] = {t["key"]: t["value"] for t in shown["tags"]}
    assert as_rest(shown) == admin.get(f"/api/workflows/{tagged.id}").json()
    assert shown["steps"][1]["result"] == {"charged": 20, "card": None}

    fields = "namespace name version description queue queueName module steps firstSeen lastSeen"
    listed = ask(admin, f"{{ workflowDefinitions {{ {fields} }} }}")["data"]["workflowDefinitions"]
    assert as_rest(listed) == admin.get("/api/workflow-definitions").json()["items"]
    assert listed[0]["description"] == HOSTILE  # stored and answered as it is: JSON escapes it


# -- actions: each changes the run and says what happened ------------------------------------

START = """mutation($name: String!, $context: JSON, $key: String, $skip: [String!],
    $tags: [TagInput!], $reason: String) {
    startWorkflow(namespace: "shop", name: $name, context: $context, idempotencyKey: $key,
                  skip: $skip, tags: $tags, reason: $reason) {
        id namespace name version created delivery waitingFor message url
        run { status steps { name status } } } }"""


def test_start_workflow_starts_a_run_and_a_repeated_key_returns_it(admin: TestClient) -> None:
    declare("gql_start")
    variables = {
        "name": "gql_start",
        "context": {"cart": 4},
        "key": "cart-4",
        "skip": ["email"],
        "tags": [{"key": "customer", "value": "c-42"}],
        "reason": "customer asked again",
    }
    first = ask(admin, START, **variables)
    assert "errors" not in first
    made = first["data"]["startWorkflow"]
    assert (made["created"], made["version"], made["namespace"]) == (True, "2", "shop")
    assert (made["delivery"], made["message"], made["waitingFor"]) == ("sent", "sent", [])
    assert made["url"] == f"/workflows/{made['id']}"
    assert {"name": "email", "status": "resolved"} in made["run"]["steps"]
    again = ask(admin, START, **variables)["data"]["startWorkflow"]
    assert (again["id"], again["created"], again["delivery"]) == (
        made["id"],
        False,
        "existing run",
    )
    status = flow_tracker.WorkflowRun(uuid.UUID(made["id"]), "").wait(WAIT)
    assert status.status == "completed" and status.steps["charge"].result["charged"] == 40
    assert status.tags == {"customer": "c-42"}
    history = flow_tracker.get_process(made["id"])
    assert history is not None
    assert "via graphql: customer asked again" in (history.history[0].reason or "")


def test_a_start_that_no_worker_here_can_send_says_it_waits(
    admin: TestClient, tracked: str
) -> None:
    wf = declare("gql_elsewhere")
    definitions.ensure_recorded(wf)
    del definition._VERSIONS[("shop", "gql_elsewhere", "2")]
    del definition._WORKFLOWS["gql_elsewhere"]
    try:
        made = ask(admin, START, name="gql_elsewhere", context={})["data"]["startWorkflow"]
    finally:
        definition._VERSIONS[("shop", "gql_elsewhere", "2")] = wf
        definition._WORKFLOWS["gql_elsewhere"] = wf
    assert (made["created"], made["delivery"]) == (True, "waiting")
    assert (made["message"], made["waitingFor"]) == ("waiting for a worker of threads", ["threads"])
    assert _count(tracked, outbox) == 1


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ({"context": [1]}, "context is a JSON object"),
        ({"skip": ["nope"]}, "no step 'nope' to skip"),
        ({"tags": [{"key": "bad key", "value": "v"}]}, "tag key"),
        ({"tags": [{"key": "k", "value": "1"}, {"key": "k", "value": "2"}]}, "given twice"),
        ({"key": "k" * 300}, "at most 255"),
        ({"name": "nothing"}, "no workflow shop/nothing"),
    ],
)
def test_a_bad_start_says_why_and_stores_nothing(
    admin: TestClient, tracked: str, variables: dict[str, Any], says: str
) -> None:
    declare("gql_bad")
    answer = ask(admin, START, **{"name": "gql_bad", **variables})
    assert answer["data"] == {"startWorkflow": None}
    assert says in messages(answer)[0]
    assert _count(tracked, workflow_runs) == 0


def failing_once(name: str) -> tuple[Any, dict[str, int]]:
    """Charge and reserve fail their first attempt; confirm waits on both."""
    calls = {"charge": 0, "reserve": 0}
    lock = threading.Lock()
    wf = flow_tracker.workflow(name)

    def step(step_name: str) -> Callable[[Any], str]:
        def run(context: Any) -> str:
            with lock:
                calls[step_name] += 1
                first = calls[step_name] == 1
            if first:
                raise TimeoutError(f"{step_name} timed out")
            return step_name

        return run

    wf.step(name="charge")(step("charge"))
    wf.step(name="reserve")(step("reserve"))
    wf.step(name="confirm", depends_on=["charge", "reserve"])(
        lambda context, charge, reserve: [charge, reserve]
    )
    return wf, calls


def failed_run(name: str) -> uuid.UUID:
    wf, _calls = failing_once(name)
    run = wf.run(context={"card": SECRET})
    assert run.wait(WAIT).status == "failed"
    run_id: uuid.UUID = run.id
    return run_id


STEP_ACTION = "runId step delivery waitingFor message"


def test_retry_step_and_resolve_step_finish_a_failed_run(admin: TestClient) -> None:
    run_id = failed_run("gql_retry_resolve")
    retried = ask(
        admin,
        f"""mutation($id: ID!) {{ retryStep(runId: $id, step: "charge", reason: "back") {{
            {STEP_ACTION} }} }}""",
        id=str(run_id),
    )["data"]["retryStep"]
    assert retried == {
        "runId": str(run_id),
        "step": "charge",
        "delivery": "sent",
        "waitingFor": [],
        "message": "sent",
    }
    resolved = ask(
        admin,
        f"""mutation($id: ID!, $result: JSON) {{
            resolveStep(runId: $id, step: "reserve", result: $result, reason: "by hand") {{
                {STEP_ACTION} run {{ id }} }} }}""",
        id=str(run_id),
        result="reserved by hand",
    )["data"]["resolveStep"]
    assert (resolved["step"], resolved["run"]["id"]) == ("reserve", str(run_id))
    status = flow_tracker.WorkflowRun(run_id, "").wait(WAIT)
    assert status.status == "completed"
    assert status.steps["confirm"].result == ["charge", "reserved by hand"]
    history = flow_tracker.get_process(run_id)
    assert history is not None
    reasons = " | ".join(t.reason or "" for t in history.history)
    assert re.search(r"retried step charge by [^|]+: back", reasons), reasons
    assert re.search(r"resolved step reserve by [^|]+: by hand", reasons), reasons


def test_retry_failed_steps_retries_every_failed_step(admin: TestClient) -> None:
    run_id = failed_run("gql_retry_failed")
    answer = ask(
        admin,
        """mutation($id: ID!) { retryFailedSteps(runId: $id) {
            runId retried delivery waitingFor message run { status } } }""",
        id=str(run_id),
    )["data"]["retryFailedSteps"]
    assert (answer["retried"], answer["delivery"]) == (["charge", "reserve"], "sent")
    assert flow_tracker.WorkflowRun(run_id, "").wait(WAIT).status == "completed"
    again = ask(
        admin, "mutation($id: ID!) { retryFailedSteps(runId: $id) { runId } }", id=str(run_id)
    )
    assert again["data"] == {"retryFailedSteps": None}
    assert "has no failed step to retry" in messages(again)[0]


def test_cancel_workflow_stops_the_steps_that_have_not_started(admin: TestClient) -> None:
    release = threading.Event()
    wf = flow_tracker.workflow("gql_cancel")
    wf.step(name="slow")(lambda context: release.wait(WAIT))
    wf.step(name="after", depends_on=["slow"])(lambda context, slow: "ran")
    run = wf.run()
    try:
        answer = ask(
            admin,
            """mutation($id: ID!) { cancelWorkflow(runId: $id, reason: "not needed") {
                runId cancelledSteps message run { status steps { name status } } } }""",
            id=str(run.id),
        )["data"]["cancelWorkflow"]
    finally:
        release.set()
    assert answer["cancelledSteps"] >= 1
    assert answer["run"]["status"] == "cancelled"
    status = run.wait(WAIT)
    assert status.status == "cancelled" and status.steps["after"].status == "cancelled"


def test_an_action_on_an_unknown_run_or_step_says_so(admin: TestClient) -> None:
    run_id = failed_run("gql_unknown")
    for query, says in [
        ('mutation { retryStep(runId: "nope", step: "charge") { runId } }', "no workflow run"),
        (f'mutation {{ retryStep(runId: "{uuid.uuid4()}", step: "charge") {{ runId }} }}', "no"),
        (f'mutation {{ retryStep(runId: "{run_id}", step: "nope") {{ runId }} }}', "no step"),
        (f'mutation {{ retryStep(runId: "{run_id}", step: "confirm") {{ runId }} }}', "not failed"),
        (f'mutation {{ cancelWorkflow(runId: "{uuid.uuid4()}") {{ runId }} }}', "no workflow run"),
    ]:
        answer = ask(admin, query)
        assert list(answer["data"].values()) == [None]
        assert says in messages(answer)[0], (query, answer)
    assert flow_tracker.WorkflowRun(run_id, "").wait(WAIT).status == "failed"


# -- permissions and payloads ----------------------------------------------------------------


def _audited(url: str, outcome: str) -> list[tuple[str, str, str]]:
    """(actor, action, target) of the audit log's rows with this outcome."""
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(audit_log.c.actor, audit_log.c.action, audit_log.c.target).where(
                    audit_log.c.outcome == outcome
                )
            ).all()
    finally:
        store.dispose()
    return [(row.actor, row.action, row.target) for row in rows]


def test_an_operator_s_actions_are_audited_and_kept_under_its_name(
    client_for: Callable[..., TestClient], tracked: str
) -> None:
    operator = client_for(auth=lambda request: Principal("olga", role="operator"))
    run_id = failed_run("gql_audited")
    answer = ask(
        operator,
        """mutation($id: ID!) { retryStep(runId: $id, step: "charge", reason: "back") {
            delivery } }""",
        id=str(run_id),
    )
    assert answer["data"] == {"retryStep": {"delivery": "sent"}}
    assert ("olga", "workflows:retry", str(run_id)) in _audited(tracked, "allowed")
    assert not _audited(tracked, "refused")
    history = flow_tracker.get_process(run_id)
    assert history is not None
    assert any("retried step charge by olga: back" in (t.reason or "") for t in history.history)


def test_a_viewer_may_read_but_every_action_is_refused_and_nothing_changes(
    viewer: TestClient, tracked: str
) -> None:
    declare("gql_viewer")
    run_id = failed_run("gql_viewer_failed")
    actions = {
        "workflows:start": 'startWorkflow(namespace: "shop", name: "gql_viewer") { id }',
        "workflows:retry": f'retryStep(runId: "{run_id}", step: "charge") {{ runId }}',
        "workflows:resolve": f'resolveStep(runId: "{run_id}", step: "charge") {{ runId }}',
        "workflows:cancel": f'cancelWorkflow(runId: "{run_id}") {{ runId }}',
    }
    runs_before = _count(tracked, workflow_runs)
    for permission, field in actions.items():
        answer = ask(viewer, f"mutation {{ {field} }}")
        assert list(answer["data"].values()) == [None]
        assert messages(answer) == [f"forbidden: needs {permission}"]
    retry_all = ask(viewer, f'mutation {{ retryFailedSteps(runId: "{run_id}") {{ runId }} }}')
    assert messages(retry_all) == ["forbidden: needs workflows:retry"]
    status = flow_tracker.get_workflow(run_id)
    assert status.status == "failed" and status.steps["charge"].status == "failed"
    assert _count(tracked, workflow_runs) == runs_before
    refused = {(actor, action) for actor, action, _target in _audited(tracked, "refused")}
    assert refused == {("vera", permission) for permission in actions}
    listed = ask(viewer, "{ workflowRuns { items { id status } } }")["data"]["workflowRuns"]
    assert str(run_id) in {item["id"] for item in listed["items"]}


class Declined(Exception):
    """The error of a process whose message holds the secret."""


def test_a_viewer_sees_every_payload_hidden(viewer: TestClient) -> None:
    with contextlib.suppress(Declined):
        with flow_tracker.track("Secretive", metadata={"token": SECRET}) as tracker:
            tracker.info("kept", data={"value": SECRET})
            with tracker.flow("inner", metadata={"also": SECRET}) as inner:
                inner.info("inner line", data=[SECRET])
                raise Declined(f"failed with {SECRET}")
    flow_tracker.flush()
    run_id = failed_run("gql_hidden")  # its context holds the secret
    declare("gql_hidden_result")
    done = flow_tracker.start_workflow("shop/gql_hidden_result", {"cart": 1, "card": SECRET})
    flow_tracker.WorkflowRun(done.id, "").wait(WAIT)
    pid = ask(viewer, '{ processes(name: "Secretive") { items { id } } }')["data"]["processes"]
    answers = [
        viewer.post(
            "/graphql",
            json={
                "query": f"""query($pid: ID!, $run: ID!, $done: ID!) {{
                    processes {{ items {{ {PROCESS} hidden }} }}
                    process(id: $pid) {{ {PROCESS_DETAIL} hidden }}
                    failed: workflowRun(id: $run) {{ {RUN} hidden }}
                    done: workflowRun(id: $done) {{ {RUN} hidden }} }}""",
                "variables": {
                    "pid": pid["items"][0]["id"],
                    "run": str(run_id),
                    "done": str(done.id),
                },
            },
        )
    ]
    text = answers[0].text
    assert answers[0].status_code == 200 and "errors" not in answers[0].json()
    assert SECRET not in text
    data = answers[0].json()["data"]
    assert data["process"]["metadata"] == {"token": "[hidden]"}
    assert data["process"]["error"]["type"].endswith("Declined")
    assert data["process"]["error"]["message"] == "[hidden]"
    assert data["process"]["logs"][0] == {**data["process"]["logs"][0], "data": "[hidden]"}
    assert data["process"]["flows"][0]["metadata"] == {"also": "[hidden]"}
    assert data["failed"]["context"] == "[hidden]" and data["failed"]["hidden"] is True
    assert data["failed"]["steps"][0]["error"] == "TimeoutError: [hidden]"
    assert data["done"]["steps"][1]["result"] == "[hidden]"
    assert data["process"]["logs"][0]["message"] == "kept"  # log messages stay visible


def test_a_read_only_dashboard_answers_queries_and_refuses_every_action(
    client_for: Callable[..., TestClient], tracked: str
) -> None:
    declare("gql_read_only")
    board = client_for(read_only=True)
    answer = ask(
        board, 'mutation { startWorkflow(namespace: "shop", name: "gql_read_only") { id } }'
    )
    assert answer["data"] == {"startWorkflow": None}
    assert messages(answer) == ["forbidden: needs workflows:start (this dashboard is read-only)"]
    assert _count(tracked, workflow_runs) == 0
    assert not _audited(tracked, "refused")  # no one signed in: no one to name, as in REST
    assert ask(board, "{ workflowRuns { items { id } } }")["data"] == {
        "workflowRuns": {"items": []}
    }
    schema = ask(board, get_introspection_query())["data"]["__schema"]
    assert schema["mutationType"]["name"] == "Mutation"


# -- limits: refused before anything runs --------------------------------------------------------


def refused(client: TestClient, query: str, status: int = 400) -> str:
    answer = client.post("/graphql", json={"query": query})
    assert answer.status_code == status, answer.text
    assert "data" not in answer.json()
    return str(answer.json()["errors"][0]["message"])


def test_a_query_nested_1000_levels_deep_is_refused_before_it_is_parsed(admin: TestClient) -> None:
    deep = "{" + "processes { items { " * 500 + "id" + " } }" * 500 + "}"
    assert "nested over 30 levels deep" in refused(admin, deep)
    braces = "{" * 1000 + "}" * 1000
    assert "nested over 30 levels deep" in refused(admin, braces)
    values = 'query { process(id: "x") { id } } ' + "[" * 1000  # deep list values
    assert "nested" in refused(admin, values)


def test_fields_nested_past_the_depth_limit_are_refused(admin: TestClient) -> None:
    eleven = "{ " + " ".join(f"a{i} {{" for i in range(11)) + " b " + "} " * 11 + "}"
    assert "nested over 10 fields deep" in refused(admin, eleven)


def test_introspection_answers_under_the_limits(admin: TestClient) -> None:
    schema = ask(admin, get_introspection_query(descriptions=True))["data"]["__schema"]
    assert {"Query", "Mutation", "WorkflowRun"} <= {t["name"] for t in schema["types"]}


def test_aliases_and_fragments_that_multiply_fields_are_refused(admin: TestClient) -> None:
    aliases = "{ workflowDefinitions { " + " ".join(f"a{i}: name" for i in range(501)) + " } }"
    assert "selects over 500 fields" in refused(admin, aliases)
    bomb = ["query { workflowDefinitions { ...F0 } }"]
    for level in range(20):
        spread = f"...F{level + 1}"
        bomb.append(f"fragment F{level} on WorkflowDefinition {{ {spread} {spread} }}")
    bomb.append("fragment F20 on WorkflowDefinition { name }")
    assert "selects over 500 fields" in refused(admin, "\n".join(bomb))
    lookups = "{ " + " ".join(f"d{i}: workflowDefinitions {{ name }}" for i in range(21)) + " }"
    assert "at most 20 top-level fields" in refused(admin, lookups)


def test_a_limit_of_a_million_rows_is_refused_before_any_is_read(
    admin: TestClient, sample: Sample
) -> None:
    for field in ("processes", "workflowRuns"):
        for limit in (1_000_000, 0, -1, MAX_LIMIT + 1):
            answer = ask(admin, f"{{ {field}(limit: {limit}) {{ items {{ id }} }} }}")
            assert answer["data"] == {field: None}
            assert messages(answer) == [
                f"limit is between 1 and {MAX_LIMIT}, not {limit}; "
                "ask for the next page with cursor"
            ]
    too_big = "{ processes(limit: 10000000000) { items { id } } }"
    assert "non 32-bit signed integer" in refused(admin, too_big)


def test_a_long_document_or_one_of_too_many_tokens_is_refused(admin: TestClient) -> None:
    assert "at most 20,000 are accepted" in refused(admin, "{ __typename }" + " " * 20_000)
    assert "over 2,000 tokens" in refused(admin, "{" + " a" * 2_100 + " }")


def test_a_50_mb_body_is_refused_before_it_is_read(admin: TestClient, tracked: str) -> None:
    huge = b'{"query": "{ __typename }", "variables": {"x": "' + b"x" * (50 * 1024 * 1024) + b'"}}'
    answer = admin.post("/graphql", content=huge, headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert "the body is over" in answer.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    ("kwargs", "status", "says"),
    [
        ({"json": [{"query": "{ __typename }"}] * 2}, 400, "batches"),
        ({"json": "query"}, 400, "JSON object"),
        ({"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "not JSON"),
        ({"json": {"query": "{ __typename }", "variables": [1]}}, 400, "variables is a JSON"),
        ({"json": {"query": "{ __typename }", "operationName": 1}}, 400, "operationName"),
        ({"json": {"query": 7}}, 400, "non-empty string"),
        ({"json": {"querry": "{ __typename }"}}, 400, "unknown field 'querry'"),
        ({"json": {"query": "{ nope }"}}, 400, "Cannot query field 'nope'"),
        ({"json": {"query": "{ processes {"}}, 400, "Syntax Error"),
        ({"json": {"query": "query A { __typename } query B { __typename }"}}, 400, "name the"),
        (
            {
                "content": b'{"query": "{ __typename }", "variables": {"x": NaN}}',
                "headers": {"content-type": "application/json"},
            },
            400,
            "not JSON",
        ),
        (
            {"content": b"query={__typename}", "headers": {"content-type": "text/plain"}},
            415,
            "JSON",
        ),
        ({"data": {"query": "{ __typename }"}}, 415, "Content-Type: application/json"),
        (
            {"json": {"query": "{ __typename }"}, "headers": {"origin": "https://evil.example"}},
            403,
            "cross-origin",
        ),
        (
            {"json": {"query": "{ __typename }"}, "headers": {"sec-fetch-site": "cross-site"}},
            403,
            "cross-origin",
        ),
    ],
)
def test_a_request_that_cannot_run_says_why(
    admin: TestClient, kwargs: dict[str, Any], status: int, says: str
) -> None:
    answer = admin.post("/graphql", **kwargs)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["errors"][0]["message"]


def test_get_runs_a_query_but_never_a_mutation(admin: TestClient, tracked: str) -> None:
    declare("gql_get")
    got = admin.get("/graphql", params={"query": "{ workflowDefinitions { name } }"})
    assert got.status_code == 200 and got.json() == {"data": {"workflowDefinitions": []}}
    mutation = 'mutation { startWorkflow(namespace: "shop", name: "gql_get") { id } }'
    sent = admin.get("/graphql", params={"query": mutation})
    assert sent.status_code == 405
    assert sent.json()["errors"][0]["message"] == "a mutation is sent by POST, never by GET"
    assert _count(tracked, workflow_runs) == 0
    about = admin.get("/graphql")
    assert about.status_code == 200 and "type Query {" in about.text
    assert admin.put("/graphql", json={}).status_code == 405


@pytest.mark.hostile
@pytest.mark.parametrize("value", ["\x00", "\ud800", "x" * 10_000, HOSTILE, "Grüße ☃"])
def test_hostile_filter_values_are_refused_or_answered_safely(
    admin: TestClient, value: str
) -> None:
    query = """query($v: String!, $id: ID!) {
        processes(name: $v, category: [$v]) { items { id } }
        workflowRuns(name: $v) { items { id } }
        tagged: workflowRuns(tags: [{key: "k", value: $v}]) { items { id } }
        cursor: processes(cursor: $v) { items { id } }
        status: processes(status: [$v]) { items { id } }
        process(id: $id) { id } }"""
    # Escaped as JSON allows (a lone surrogate as \\ud800), which httpx would not send.
    body = json.dumps({"query": query, "variables": {"v": value, "id": value}})
    answer = admin.post("/graphql", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["processes"] == {"items": []}
    assert data["workflowRuns"] == {"items": []}
    if clean(value):  # a NUL or a lone surrogate alone is cleaned away, as REST cleans it
        assert data["cursor"] is None and data["status"] is None
    for message in messages(answer.json()):
        assert message != "internal error" and "Traceback" not in message


# -- errors: no traceback, an outage is the dashboard's 503 ---------------------------------------


def test_an_unexpected_error_is_logged_and_answered_without_its_detail(
    admin: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing here fails this way for real: a library bug is stood in for.
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError(f"internal detail {SECRET}")

    monkeypatch.setattr("flow_tracker.store.queries.list_processes", broken)
    answer = ask(admin, "{ processes { items { id } } workflowDefinitions { name } }")
    assert answer["data"] == {"processes": None, "workflowDefinitions": []}
    assert messages(answer) == ["internal error"]
    assert SECRET in caplog.text and SECRET not in str(answer)


@pytest.mark.postgres
def test_a_database_outage_is_a_503_with_retry_after(pg_server_url: str) -> None:
    from sqlalchemy.engine import make_url

    from tests.support.proxy import TcpProxy

    url = make_url(pg_server_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    through = url.set(port=proxy.port).render_as_string(hide_password=False)
    Store(through).ensure_schema()
    app = graphql_app(through)
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            assert ask(client, "{ workflowDefinitions { name } }")["data"] is not None
            proxy.stop()
            for query in (
                "{ processes { items { id } } }",
                f'mutation {{ cancelWorkflow(runId: "{uuid.uuid4()}") {{ runId }} }}',
            ):
                answer = client.post("/graphql", json={"query": query})
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"]
                assert answer.json()["error"] == "tracking database unavailable"
                assert str(proxy.port) not in answer.text
    finally:
        proxy.stop()
        app.state.dashboard.store.dispose()


# -- the README's example --------------------------------------------------------------------------


def test_the_readme_graphql_example_runs(admin: TestClient) -> None:
    declare("gql_readme")
    failed = failed_run("gql_readme_failed")
    [example] = blocks("graphql")
    answer = admin.post("/graphql", json={"query": example.code, "variables": {"run": str(failed)}})
    assert answer.status_code == 200, answer.text
    assert "errors" not in answer.json(), answer.text
