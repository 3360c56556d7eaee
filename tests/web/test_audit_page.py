"""The audit log's page and API: filters, keyset pages, hostile values shown safely.

On SQLite and PostgreSQL, behind basic auth: an admin reads ``/audit`` and
``/api/audit``; an operator (no ``audit:read``) is refused. Actions done through
the dashboard appear under the principal that did them.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker import runtime
from flow_tracker.actors import Actor
from flow_tracker.store import audit
from flow_tracker.store.engine import Store
from flow_tracker.web import create_app
from tests.web.conftest import ORIGIN
from tests.web.test_bad_input import HOSTILE

USERS = [("boss", "pw-boss", "admin"), ("ops", "pw-ops", "operator")]
EVIL = "<script>alert('x')</script>\x00" + "ü" * 10_000
PARAMETERS = ("actor", "action", "outcome", "target", "range", "since", "until", "limit", "cursor")
ANA = Actor("ana", role="operator", via="hook", client="10.0.0.7", request_id="req-7")


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def board(tracked: str) -> Iterator[TestClient]:
    """The dashboard behind basic auth, as its admin."""
    app = create_app(tracked, basic_auth=USERS, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN, headers=_basic("boss", "pw-boss")) as client:
        yield client
    app.state.dashboard.store.dispose()


def _store() -> Store:
    store = runtime.store()
    store.ensure_schema()
    return store


def _some_rows() -> None:
    store = _store()
    for n in range(5):
        audit.record(store, action="jobs:requeue", target=f"proc-{n}", outcome="allowed", actor=ANA)
    audit.record(
        store,
        action="workflows:resolve",
        target="run-1",
        outcome="failed",
        detail={"step": "charge", "error": "NotFoundError"},
    )
    audit.record_refusal(store, action="history:delete", target="/cleanup", actor=ANA)


def _table(page: str) -> str:
    """The rows of the page's table (the filters above list every action too)."""
    return page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]


def test_the_page_lists_rows_newest_first_and_filters_them(board: TestClient) -> None:
    _some_rows()
    page = board.get("/audit")
    assert page.status_code == 200
    assert "Audit log" in page.text and 'aria-current="page"' in page.text
    text = _table(page.text)
    assert text.index("history:delete") < text.index("workflows:resolve") < text.index("proc-4")
    assert "10.0.0.7" in text and "req-7" in text
    failed = _table(board.get("/audit?outcome=failed").text)
    assert "workflows:resolve" in failed and "proc-1" not in failed
    by_ana = _table(board.get("/audit?actor=ana&action=jobs:requeue").text)
    assert "proc-0" in by_ana and "workflows:resolve" not in by_ana
    assert "No audit rows match these filters" in board.get("/audit?actor=nobody").text


def test_the_pages_follow_one_another_without_gaps_or_repeats(board: TestClient) -> None:
    _some_rows()
    seen: list[str] = []
    url = "/audit?actor=ana&action=jobs:requeue&limit=2"
    while url:
        text = board.get(url).text
        seen += re.findall(r">(proc-\d)<", _table(text))
        found = re.search(r'href="([^"]+)" rel="next"|rel="next" href="([^"]+)"', text)
        url = html.unescape(next(g for g in found.groups() if g)) if found else ""
    assert seen == [f"proc-{n}" for n in range(4, -1, -1)]


def test_the_api_answers_the_same_filters_with_a_cursor(board: TestClient) -> None:
    _some_rows()
    got: list[str] = []
    cursor = None
    while True:
        params = {"action": "jobs:requeue", "limit": "2", **({"cursor": cursor} if cursor else {})}
        answer = board.get("/api/audit", params=params)
        assert answer.status_code == 200
        body = answer.json()
        got += [item["target"] for item in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert got == [f"proc-{n}" for n in range(4, -1, -1)]
    [refused] = board.get("/api/audit?outcome=refused").json()["items"]
    assert (refused["actor"], refused["via"], refused["times"]) == ("ana", "hook", 1)
    assert set(refused) >= {"id", "at", "role", "action", "target", "detail", "client"}


def test_bad_filters_answer_400_with_the_reason(board: TestClient) -> None:
    for query, reason in (
        ("outcome=maybe", "outcome 'maybe' is unknown"),
        ("since=last+tuesday", "is not a date and time"),
        ("until=9999-12-31T23:59:59-14:00", "outside the years 1 to 9999"),
        ("range=99y", "range '99y' is unknown"),
        ("cursor=not-a-cursor", "that page link is broken"),
    ):
        api = board.get(f"/api/audit?{query}")
        assert api.status_code == 400 and reason in api.json()["error"], query
        page = board.get(f"/audit?{query}")
        assert page.status_code == 400 and reason in html.unescape(page.text), query


def test_hostile_actor_names_targets_and_details_are_shown_escaped(board: TestClient) -> None:
    # A lone surrogate too, where no URL could carry it back as a filter.
    hostile = Actor(EVIL, role="<b>role</b>", via="basic:\udcff" + EVIL, client="\udcff" + EVIL)
    audit.record(
        _store(),
        action="<i>act</i>",
        target=EVIL,
        outcome="allowed",
        detail={"reason": EVIL, EVIL: "<img src=x onerror=alert(1)>"},
        actor=hostile,
    )
    page = board.get("/audit")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "<b>role" not in page.text and "<i>act" not in page.text
    assert "&lt;script&gt;alert(" in page.text
    [row] = board.get("/api/audit").json()["items"]
    assert row["actor"].startswith("<script>alert('x')</script>\\u0000ü")
    assert row["via"].startswith("basic:\\udcff<script>")
    assert len(row["actor"]) <= audit.ACTOR_LIMIT and len(row["target"]) <= audit.TARGET_LIMIT
    # Filtering by the name as it was given finds the row it was stored as.
    found = board.get("/api/audit?actor=" + quote(EVIL))
    assert found.status_code == 200 and [r["id"] for r in found.json()["items"]] == [row["id"]]
    # The links that narrow the page to that actor keep the name intact.
    assert board.get("/audit?" + "actor=" + quote(row["actor"])).status_code == 200


@pytest.mark.parametrize("route", ["/audit", "/api/audit"])
def test_hostile_query_values_answer_4xx_or_200_never_5xx(board: TestClient, route: str) -> None:
    _some_rows()
    for name in PARAMETERS:
        for value in HOSTILE:
            answer = board.get(f"{route}?{name}={value}")
            assert answer.status_code in (200, 400), (name, value[:40], answer.status_code)


def test_an_operator_may_not_read_the_audit_log(tracked: str) -> None:
    app = create_app(tracked, basic_auth=USERS, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN, headers=_basic("ops", "pw-ops")) as client:
        assert client.get("/audit").status_code == 403
        assert client.get("/api/audit").status_code == 403
        assert 'href="/audit"' not in client.get("/processes").text
    app.state.dashboard.store.dispose()


def test_a_dashboard_action_is_listed_under_the_principal_that_did_it(board: TestClient) -> None:
    with flow_tracker.track("old job"):
        pass
    flow_tracker.flush()
    match = re.search(r'name="csrf_token" value="([^"]+)"', board.get("/cleanup?days=0").text)
    assert match, "the cleanup form carries a CSRF token"
    token = match.group(1)
    done = board.post(
        "/cleanup",
        data={"csrf_token": token, "days": "0", "confirm": "yes"},
        headers={"origin": ORIGIN, "x-request-id": "cleanup-42"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    [row] = board.get("/api/audit?action=history:delete").json()["items"]
    assert (row["actor"], row["via"], row["role"], row["outcome"]) == (
        "boss",
        "basic:boss",
        "admin",
        "allowed",
    )
    assert row["detail"]["deleted"] == 1 and row["client"] and row["request_id"] == "cleanup-42"
    assert "basic:boss" in board.get("/audit?actor=boss").text
