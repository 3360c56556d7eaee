"""Payload hiding: without ``payloads:read``, no payload value leaves the dashboard.

Every surface on SQLite and PostgreSQL: a reader (or an admin, where the page is
an action's) sees the values; a viewer and an operator without ``payloads:read``
see ``[hidden]``, and no secret appears anywhere in any answer of any GET route.
Searching and metadata filters, which would confirm a hidden value, answer 403.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import select
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from flow_tracker.permissions import ROLES, Principal
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import audit_log
from flow_tracker.web import create_app
from flow_tracker.web.hiding import HIDDEN
from tests.web.conftest import ORIGIN
from tests.web.secret_payloads import (
    LOG_MESSAGE,
    NAMESPACE,
    SECRETS,
    WORKFLOW,
    Recorded,
    record,
)

VIEWER = Principal("vic", role="viewer")
OPS = Principal("ops", permissions=ROLES["operator"] - {"payloads:read"})
READER = Principal("rita", role="reader")
ADMIN = Principal("ada", role="admin")
WITHOUT = [pytest.param(VIEWER, id="viewer"), pytest.param(OPS, id="operator-without-payloads")]


@pytest.fixture
def recorded(tracked: str) -> Recorded:
    """The runs holding a secret in every payload, on both backends."""
    return record(tracked)


@contextlib.contextmanager
def dashboard(url: str, principal: Principal) -> Iterator[TestClient]:
    """The dashboard as ``principal`` sees it."""
    app = create_app(url, auth=lambda request: principal, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN) as client:
        yield client
    app.state.dashboard.store.dispose()


def _leaks(text: str) -> list[str]:
    return [what for what, secret in SECRETS.items() if secret in text]


# -- every GET route --------------------------------------------------------------------

# Query strings that reach more of a route's code than its bare path does.
VARIANTS: dict[str, list[str]] = {
    "/processes": ["?status=failed", "?name=Checkout", "?category=billing&range=24h"],
    "/api/processes": ["?status=failed", "?name=Checkout&limit=5"],
    "/processes/{process_id}": ["?level=debug"],
    "/processes/{process_id}/compare": ["?with={baseline}"],
    "/api/processes/{process_id}/compare": ["?flows=all", "?with={baseline}&flows=all"],
    "/workflows": ["?status=failed", f"?name={WORKFLOW}"],
    "/api/workflows": ["?status=completed", f"?name={WORKFLOW}"],
    "/workflows/{run_id}": ["?expand=1"],
    "/workflows/definitions/start": [f"?namespace={NAMESPACE}&name={WORKFLOW}"],
    "/": ["?window=1h", "?window=7d"],
    "/api/stats": ["?window=1h"],
}


def get_urls(app: Any, recorded: Recorded) -> list[str]:
    """Every GET route of ``app`` with each recorded id in its path, and their variants.

    A route whose path takes a parameter this test has no values for fails the
    test: a new route must be added here, not skipped.
    """
    values = {
        "process_id": recorded.process_ids,
        "run_id": recorded.run_ids,
        "ident": [*recorded.process_ids, recorded.job_id],
    }
    urls: list[str] = []
    for route in app.routes:
        if isinstance(route, Mount):
            continue  # the static files: the stylesheet, the script, the icon
        assert isinstance(route, Route), route
        if "GET" not in (route.methods or ()):
            continue
        names = re.findall(r"{(\w+)(?::\w+)?}", route.path)
        unknown = [n for n in names if n not in values]
        assert not unknown, f"{route.path}: no sample values for {unknown}"
        paths = [route.path]
        for name in names:
            pattern = re.compile(r"{" + name + r"(?::\w+)?}")
            paths = [pattern.sub(quote(v), p) for p in paths for v in values[name]]
        suffixes = ["", *VARIANTS.get(route.path, [])]
        urls += [p + s.format(baseline=recorded.baseline) for p in paths for s in suffixes]
    return urls


def _bodies(client: TestClient, urls: list[str]) -> dict[str, tuple[int, str]]:
    found = {}
    for url in urls:
        response = client.get(url)
        found[url] = (response.status_code, response.text)
    return found


@pytest.mark.parametrize("principal", WITHOUT)
def test_no_get_route_answers_a_secret_to_a_principal_without_payloads_read(
    recorded: Recorded, principal: Principal
) -> None:
    with dashboard(recorded.url, principal) as client:
        urls = get_urls(client.app, recorded)
        answers = _bodies(client, urls)
    leaks = {url: _leaks(text) for url, (_status, text) in answers.items() if _leaks(text)}
    assert leaks == {}
    # Not by answering nothing: the pages and the API answered, with [hidden] in them.
    for url in (
        "/",
        "/processes",
        f"/processes/{recorded.failed}",
        f"/processes/{recorded.failed}/compare",
        f"/workflows/{recorded.failed_run}",
        f"/api/processes/{recorded.failed}",
        f"/api/workflows/{recorded.resolved_run}",
        f"/api/status/{recorded.job_id}",
        "/health",
    ):
        assert answers[url][0] == 200, url
    assert sum(HIDDEN in text for _status, text in answers.values()) >= 20


def test_every_secret_reaches_an_admin_through_the_same_routes(recorded: Recorded) -> None:
    """The sweep above can fail: each secret is in some answer when payloads may be read."""
    with dashboard(recorded.url, ADMIN) as client:
        answers = _bodies(client, get_urls(client.app, recorded))
    seen = set()
    for _status, text in answers.values():
        seen.update(_leaks(text))
    assert seen == set(SECRETS)


# -- each surface -------------------------------------------------------------------------


@pytest.mark.parametrize("principal", WITHOUT)
def test_the_process_page_hides_values_and_keeps_keys_messages_and_error_classes(
    recorded: Recorded, principal: Principal
) -> None:
    with dashboard(recorded.url, principal) as client:
        page = client.get(f"/processes/{recorded.failed}")
        lost = client.get(f"/processes/{recorded.lost_job}")
    assert page.status_code == 200 and lost.status_code == 200
    assert _leaks(page.text) == [] and _leaks(lost.text) == []
    text = page.text
    assert "CardDeclined" in text and "GatewayTimeout" in text  # the error classes stay
    assert LOG_MESSAGE in text and "tenant" in text and "ref" in text  # messages and keys
    assert "call_gateway" in text and "Checkout" in text
    assert text.count(HIDDEN) >= 6  # metadata, flow metadata and error, log data, error, history
    assert "Job arguments" in lost.text and HIDDEN in lost.text


def test_the_process_page_shows_every_value_to_a_reader(recorded: Recorded) -> None:
    with dashboard(recorded.url, READER) as client:
        text = client.get(f"/processes/{recorded.failed}").text
        lost = client.get(f"/processes/{recorded.lost_job}").text
    for what in ("metadata", "flow metadata", "log data", "error message", "flow error"):
        assert SECRETS[what] in text, what
    assert SECRETS["job args"] in lost and SECRETS["job kwargs"] in lost
    assert HIDDEN not in text


@pytest.mark.parametrize("principal", WITHOUT)
def test_the_process_api_says_hidden_and_keeps_the_shape(
    recorded: Recorded, principal: Principal
) -> None:
    with dashboard(recorded.url, principal) as client:
        one = client.get(f"/api/processes/{recorded.failed}").json()
        job = client.get(f"/api/processes/{recorded.lost_job}").json()
        page = client.get("/api/processes", params={"name": "Checkout"}).json()
        status = client.get(f"/api/status/{recorded.job_id}").json()
    assert one["hidden"] is True and job["hidden"] is True
    assert one["metadata"] == {"tenant": HIDDEN}
    assert one["error"]["type"].endswith("CardDeclined")
    assert one["error"]["message"] == HIDDEN and one["error"]["traceback"] == HIDDEN
    assert one["logs"][0]["message"] == LOG_MESSAGE and one["logs"][0]["data"] == HIDDEN
    flow = one["flows"][0]
    assert flow["metadata"] == {"ref": HIDDEN}
    assert flow["error"]["message"] == HIDDEN and flow["error"]["traceback"] == HIDDEN
    assert flow["error"]["type"].endswith("GatewayTimeout")
    assert [c["reason"] for c in one["history"] if c["status"] == "failed"] == [HIDDEN]
    assert job["job_args"] == HIDDEN
    assert page["hidden"] is True and page["items"]
    assert all(item["hidden"] is True for item in page["items"])
    assert {json.dumps(item["metadata"]) for item in page["items"]} == {'{"tenant": "[hidden]"}'}
    assert status["hidden"] is True and status["status"] == "lost"


def test_the_process_api_answers_values_to_a_reader_with_no_hidden_flag(
    recorded: Recorded,
) -> None:
    with dashboard(recorded.url, READER) as client:
        one = client.get(f"/api/processes/{recorded.failed}").json()
        job = client.get(f"/api/processes/{recorded.lost_job}").json()
    assert "hidden" not in one and one["metadata"] == {"tenant": SECRETS["metadata"]}
    assert one["error"]["message"] == SECRETS["error message"]
    assert job["job_args"] == {
        "args": [SECRETS["job args"]],
        "kwargs": {"note": SECRETS["job kwargs"]},
    }


@pytest.mark.parametrize("principal", WITHOUT)
def test_the_overview_and_the_stats_hide_recent_failures_messages(
    recorded: Recorded, principal: Principal
) -> None:
    with dashboard(recorded.url, principal) as client:
        page = client.get("/").text
        stats = client.get("/api/stats").json()
    assert "CardDeclined" in page and HIDDEN in page
    failures = {f["id"]: f for f in stats["recent_failures"]}
    assert failures[recorded.failed]["error"]["message"] == HIDDEN
    assert failures[recorded.failed]["error"]["type"].endswith("CardDeclined")
    assert stats["hidden"] is True


@pytest.mark.parametrize("principal", WITHOUT)
def test_a_workflow_run_hides_its_context_results_and_step_errors(
    recorded: Recorded, principal: Principal
) -> None:
    with dashboard(recorded.url, principal) as client:
        page = client.get(f"/workflows/{recorded.failed_run}").text
        resolved = client.get(f"/api/workflows/{recorded.resolved_run}").json()
        failed = client.get(f"/api/workflows/{recorded.failed_run}").json()
        as_process = client.get(f"/processes/{recorded.resolved_run}").text
    assert "Root cause" in page and "CardDeclined: [hidden]" in page
    assert resolved["hidden"] is True and resolved["context"] == HIDDEN
    steps = {s["name"]: s for s in resolved["steps"]}
    assert steps["charge"]["status"] == "resolved" and steps["charge"]["result"] == HIDDEN
    assert steps["validate"]["result"] == HIDDEN
    charge = {s["name"]: s for s in failed["steps"]}["charge"]
    assert charge["error"].endswith("CardDeclined: [hidden]")
    assert {s["result"] for s in failed["steps"] if s["status"] == "pending"} == {None}
    assert HIDDEN in as_process and _leaks(as_process) == []


def test_a_workflow_run_shows_its_values_to_a_reader(recorded: Recorded) -> None:
    with dashboard(recorded.url, READER) as client:
        page = client.get(f"/workflows/{recorded.failed_run}").text
        resolved = client.get(f"/api/workflows/{recorded.resolved_run}").json()
    assert SECRETS["step error"] in page and SECRETS["context"] in page
    steps = {s["name"]: s for s in resolved["steps"]}
    assert steps["charge"]["result"] == {"manual": SECRETS["resolve result"]}
    assert "hidden" not in resolved


@pytest.mark.parametrize("principal", WITHOUT)
def test_a_comparison_hides_the_values_that_differ_and_keeps_what_differs(
    recorded: Recorded, principal: Principal
) -> None:
    with dashboard(recorded.url, principal) as client:
        found = client.get(f"/api/processes/{recorded.failed}/compare?flows=all").json()
        steps = client.get(f"/api/processes/{recorded.failed_run}/compare").json()
        page = client.get(f"/processes/{recorded.failed}/compare").text
    assert found["hidden"] is True and found["baseline"]["id"] == recorded.baseline
    assert found["metadata"] == [
        {"key": "tenant", "change": "changed", "value": HIDDEN, "baseline_value": HIDDEN}
    ]
    assert found["run"]["error"]["message"] == HIDDEN
    assert found["run"]["error"]["type"].endswith("CardDeclined")
    assert "metadata key `tenant` changed" in found["summary"] or "tenant" in found["summary"]
    charge = {s["name"]: s for s in steps["steps"]}["charge"]
    assert charge["error"].endswith("CardDeclined: [hidden]") and charge["newly_failed"]
    assert "tenant" in page and HIDDEN in page and _leaks(page) == []


def test_a_comparison_shows_both_values_to_a_reader(recorded: Recorded) -> None:
    with dashboard(recorded.url, READER) as client:
        found = client.get(f"/api/processes/{recorded.failed}/compare").json()
    assert found["metadata"][0]["value"] == SECRETS["metadata"]
    assert found["metadata"][0]["baseline_value"] == SECRETS["baseline metadata"]
    assert "hidden" not in found


def test_run_again_fills_the_context_only_for_a_principal_who_may_read_it(
    recorded: Recorded,
) -> None:
    path = f"/workflows/{recorded.completed_run}/run-again"
    with dashboard(recorded.url, OPS) as client:
        hidden = client.get(path)
    with dashboard(recorded.url, ADMIN) as client:
        shown = client.get(path)
    assert hidden.status_code == 200 and shown.status_code == 200
    assert _leaks(hidden.text) == [] and "payloads:read" in hidden.text
    assert re.search(r'<textarea name="context"[^>]*>{}</textarea>', hidden.text)
    assert SECRETS["context"] in shown.text


def test_the_start_api_hides_the_context_of_the_run_a_repeated_key_answers_with(
    recorded: Recorded,
) -> None:
    body = {"context": {"customer": SECRETS["context"]}, "idempotency_key": "hiding-key"}
    path = f"/api/workflows/{NAMESPACE}/{WORKFLOW}/runs"
    with dashboard(recorded.url, ADMIN) as client:
        first = client.post(path, json=body)
    assert first.status_code == 201, first.text
    assert first.json()["run"]["context"] == {"customer": SECRETS["context"]}
    with dashboard(recorded.url, OPS) as client:
        again = client.post(path, json={"idempotency_key": "hiding-key"})
    assert again.status_code == 200, again.text
    answer = again.json()
    assert answer["id"] == first.json()["id"] and answer["created"] is False
    assert answer["hidden"] is True and answer["run"]["context"] == HIDDEN
    assert _leaks(again.text) == []


# -- searches and filters -------------------------------------------------------------------


FILTERS = [
    {"q": "quokka"},
    {"q": SECRETS["error message"]},
    {"meta": f"tenant={SECRETS['metadata']}"},
    {"meta": "tenant=anything", "status": "failed"},
]


@pytest.mark.parametrize("principal", WITHOUT)
@pytest.mark.parametrize("params", FILTERS)
def test_searching_and_metadata_filters_are_refused_without_payloads_read(
    recorded: Recorded, principal: Principal, params: dict[str, str]
) -> None:
    with dashboard(recorded.url, principal) as client:
        api = client.get("/api/processes", params=params)
        page = client.get("/processes", params=params)
    assert api.status_code == 403 and "payloads:read" in api.json()["error"]
    assert page.status_code == 403 and "payloads:read" in page.text
    assert 'name="q"' not in page.text and 'name="meta"' not in page.text
    assert _leaks(api.text) == [] and _leaks(page.text) == []


def test_a_refused_search_is_audited_without_the_value_searched_for(recorded: Recorded) -> None:
    with dashboard(recorded.url, VIEWER) as client:
        assert client.get("/api/processes", params={"q": SECRETS["metadata"]}).status_code == 403
    store = Store(recorded.url)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(audit_log).where(audit_log.c.action == "payloads:read")
            ).all()
    finally:
        store.dispose()
    assert [(r.actor, r.outcome, r.target) for r in rows] == [
        ("vic", "refused", "/api/processes (q=)")
    ]


@pytest.mark.parametrize("principal", WITHOUT)
def test_lists_without_a_search_or_metadata_filter_answer(
    recorded: Recorded, principal: Principal
) -> None:
    with dashboard(recorded.url, principal) as client:
        blank = client.get("/api/processes", params={"q": " ", "meta": ""})
        named = client.get("/processes", params={"name": "Checkout", "status": "failed"})
        tagged = client.get("/api/workflows", params={"tag": "customer:c-1"})
    assert blank.status_code == 200 and blank.json()["items"]
    assert named.status_code == 200 and recorded.failed in named.text
    assert tagged.status_code == 200  # tags are labels the starter chose, not payloads


def test_a_reader_searches_and_filters_by_metadata(recorded: Recorded) -> None:
    with dashboard(recorded.url, READER) as client:
        found = client.get("/api/processes", params={"meta": f"tenant={SECRETS['metadata']}"})
        searched = client.get("/processes", params={"q": "Checkout"})
    assert found.status_code == 200
    assert [item["id"] for item in found.json()["items"]] == [recorded.failed]
    assert searched.status_code == 200 and 'name="q"' in searched.text
