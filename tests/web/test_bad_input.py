"""Hostile input to every route answers 4xx (or is handled), never 5xx, on both databases.

Every query parameter and form field of every route, and every path parameter,
gets each value of :data:`HOSTILE` alone, then all of them at once as a repeated
parameter. The database is up the whole time, so a 503 is as wrong as a 500: it
would report bad input as an outage.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select, text
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import transitions
from flow_tracker.web import create_app
from flow_tracker.workflows import manage
from tests.web.conftest import ORIGIN, record_sample

WAIT = 30.0
SOME_ID = "00000000-0000-0000-0000-000000000001"
# Values as they appear in a URL or a form body (already percent-encoded).
HOSTILE = [
    "",
    "%20",
    "%00",
    "a%00b",
    "%ff",
    "%C0%80",  # an overlong NUL
    "%ED%A0%80",  # a lone surrogate, UTF-8 encoded
    "%5Cud800",
    "%22%5Cu0000%22",  # "\u0000" as JSON
    "%22%5Cud800%22",  # "\ud800" as JSON
    "%7B%22%5Cud800%22%3A1%7D",  # {"\ud800": 1}
    "-1",
    "-99999999999999999999",
    "99999999999999999999",
    "9" * 5_000,
    "1e999",
    "NaN",
    "%C2%B2",  # ², a digit to str.isdigit() but not to int()
    "%D9%A3",  # an Arabic-Indic three
    "x" * 10_000,
    "%5B" * 8_000,  # [[[[... as JSON: deeper than Python's recursion limit
    "[" * 8_000,  # the same, unencoded (a form body of 8,000 bytes)
    "[" * 900 + "]" * 900,  # deep, but within the limit: stored, then drawn
    "%E2%80%AE",  # right-to-left override
    "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "..%2F..%2Fetc%2Fpasswd",
    "0001-01-01T00:00:00%2B14:00",
    "9999-12-31T23:59:59-14:00",
    f"0001-01-01T00:00:00%2B14:00|{SOME_ID}",
    f"9999-12-31T23:59:59-14:00|{SOME_ID}",
    f"0001-01-01T00:00:00|{SOME_ID}",
    f"2024-01-01T00:00:00%2B00:00|{'9' * 40}",
]

# GET routes and the query parameters each reads ({run} and {process}: real ids).
PAGES: dict[str, list[str]] = {
    "/": ["window"],
    "/processes": [
        "status",
        "category",
        "name",
        "q",
        "meta",
        "range",
        "since",
        "until",
        "order",
        "limit",
        "cursor",
    ],
    "/processes/{process}": ["level"],
    "/processes/{process}/compare": ["with"],
    "/workflows": ["name", "status", "before", "tag"],
    "/workflows/analytics": ["window", "name"],
    "/workflows/definitions": [],
    "/workflows/definitions/start": ["namespace", "name", "version"],
    "/workflows/{run}": ["expand", "done", "waiting"],
    "/workflows/{run}/run-again": [],
    "/cleanup": ["days", "status", "deleted"],
    "/health": ["reaped", "requeued", "refused", "reason"],
    "/api/health": [],
    "/api/processes": [
        "status",
        "category",
        "name",
        "q",
        "meta",
        "range",
        "since",
        "until",
        "order",
        "limit",
        "cursor",
    ],
    "/api/processes/{process}": [],
    "/api/processes/{process}/compare": ["with"],
    "/api/status/{process}": [],
    "/api/stats": ["window"],
    "/api/workflows": ["limit", "name", "status", "before", "tag"],
    "/api/workflow-definitions": [],
    "/api/workflows/{run}": [],
    "/api/workflows/{run}/diagram": [],
    "/api/openapi.json": [],
}
# Routes with a path parameter, and that parameter's place holder.
PATH_PARAMETERS = {
    "/processes/{process}": "{process}",
    "/processes/{process}/compare": "{process}",
    "/api/processes/{process}/compare": "{process}",
    "/api/processes/{process}": "{process}",
    "/api/status/{process}": "{process}",
    "/workflows/{run}": "{run}",
    "/workflows/{run}/run-again": "{run}",
    "/api/workflows/{run}": "{run}",
    "/api/workflows/{run}/diagram": "{run}",
}
# POST routes and their form fields (besides the CSRF token).
ACTIONS: dict[str, list[str]] = {
    "/workflows/{run}/retry": ["step", "reason"],
    "/workflows/{run}/resolve": ["step", "reason", "result"],
    "/workflows/{run}/cancel": ["reason"],
    "/workflows/{run}/retry-failed": ["reason"],
    "/cleanup": ["days", "status", "confirm"],
    "/health/reap": ["anything"],
    "/health/requeue": ["process_id", "all"],
    "/workflows/definitions/start": [
        "namespace",
        "name",
        "version",
        "context",
        "tags",
        "idempotency_key",
        "skip",
        "reason",
        "again",
    ],
}
# Fields given a valid value while another one is hostile, so the hostile one is used.
VALID_FORM = {"step": "b", "confirm": "yes", "days": "36500"}


@dataclass
class Target:
    """The dashboard on a database with sample processes and a failed workflow run."""

    client: TestClient
    process: str
    run: str

    def fresh_failed_run(self) -> None:
        """A new failed run to act on: the last action may have reopened or ended this one."""
        self.run = str(_failed_run().id)

    def path(self, template: str) -> str:
        """``template`` with the ids of the sample process and run."""
        return template.replace("{process}", self.process).replace("{run}", self.run)


def _failed_run() -> Any:
    wf = flow_tracker.workflow("hostile_input")
    wf.step(name="a")(lambda context: 1)

    def fails(context: Any, a: int) -> None:
        raise RuntimeError("fails every time")

    wf.step(name="b", depends_on=["a"])(fails)
    run = wf.run()
    assert run.wait(WAIT).status == "failed"
    return run


@pytest.fixture
def target(tracked: str) -> Iterator[Target]:
    imported, _charged, _running = record_sample()
    run = _failed_run()
    app = create_app(tracked, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN, raise_server_exceptions=False) as client:
        yield Target(client, imported, str(run.id))
    app.state.dashboard.store.dispose()


def _check(response: Any, what: str, failures: list[str]) -> None:
    if response.status_code >= 500 or "Traceback" in response.text:
        failures.append(f"{response.status_code} {what[:120]}: {response.text[:160]!r}")


@pytest.mark.parametrize("route", list(PAGES))
def test_hostile_query_parameters_answer_4xx_or_200_never_5xx(target: Target, route: str) -> None:
    failures: list[str] = []
    for name in [*PAGES[route], "unknown"]:
        for value in HOSTILE:
            path = f"{target.path(route)}?{name}={value}"
            _check(target.client.get(path), path, failures)
        repeated = "&".join(f"{name}={value}" for value in HOSTILE)
        path = f"{target.path(route)}?{repeated}"
        _check(target.client.get(path), f"{route} every value of {name}", failures)
    if route in PATH_PARAMETERS:
        for value in HOSTILE:
            path = route.replace(PATH_PARAMETERS[route], value or "%20")
            _check(target.client.get(target.path(path)), path, failures)
    assert not failures, "\n".join(failures)


def _token(target: Target) -> str:
    page = target.client.get(target.path("/workflows/{run}"))
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, "a failed run's page carries a CSRF token"
    return match.group(1)


def _post(target: Target, route: str, token: str, body: str) -> Any:
    return target.client.post(
        target.path(route),
        content=f"{body}&csrf_token={token}".encode(),
        headers={"origin": ORIGIN, "content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )


@pytest.mark.parametrize("route", list(ACTIONS))
def test_hostile_form_fields_answer_4xx_or_are_done_never_5xx(target: Target, route: str) -> None:
    token = _token(target)
    failures: list[str] = []
    for name in ACTIONS[route]:
        others = "&".join(f"{k}={v}" for k, v in VALID_FORM.items() if k != name)
        for value in HOSTILE:
            response = _post(target, route, token, f"{others}&{name}={value}")
            _check(response, f"{route} {name}={value}", failures)
            if response.status_code == 303 and route.startswith("/workflows/"):
                target.fresh_failed_run()  # acted on: the next value gets a failed run again
        repeated = "&".join(f"{name}={value}" for value in HOSTILE if len(value) < 100)
        response = _post(target, route, token, f"{others}&{repeated}")
        _check(response, f"{route} every value of {name}", failures)
    for value in HOSTILE:  # a hostile run id, and a hostile action
        if "{run}" in route:
            path = route.replace("{run}", value or "%20")
            _check(_post(target, path, token, "step=b"), path, failures)
        if route.endswith("/retry"):
            path = route.replace("retry", value or "%20")
            _check(_post(target, path, token, "step=b"), path, failures)
    assert not failures, "\n".join(failures)


# -- the cases of the attack pass, one by one ---------------------------------------------


def test_expand_values_that_are_no_group_number_are_ignored(target: Target) -> None:
    plain = target.client.get(target.path("/workflows/{run}"))
    for value in ("%C2%B2", "9" * 5_000, "-1", "%D9%A3"):
        response = target.client.get(target.path(f"/workflows/{{run}}?expand={value}"))
        assert response.status_code == 200, value
        assert response.text.count('class="node ') == plain.text.count('class="node ')


@pytest.mark.parametrize("route", ["/workflows", "/api/workflows"])
@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00%2B14:00"])
def test_a_cursor_outside_the_years_1_to_9999_in_utc_is_a_broken_link(
    target: Target, route: str, moment: str
) -> None:
    response = target.client.get(f"{route}?before={moment}|{SOME_ID}")
    assert response.status_code == 400
    assert "page link is broken" in response.text


def test_a_nul_in_an_action_reason_is_stored_escaped_not_an_outage(target: Target) -> None:
    response = _post(target, "/workflows/{run}/retry", _token(target), "step=b&reason=by%00phone")
    assert response.status_code == 303
    store = flow_tracker.runtime.store()
    with store.engine.connect() as conn:
        reasons = [r for (r,) in conn.execute(select(transitions.c.reason)) if r and "phone" in r]
    assert reasons  # the run's history and the step's
    for reason in reasons:
        assert reason.startswith("retried step b by dashboard: by") and "\x00" not in reason


def test_a_result_nested_past_the_recursion_limit_is_a_400(target: Target) -> None:
    response = _post(
        target, "/workflows/{run}/resolve", _token(target), "step=b&result=" + "[" * 8_000
    )
    assert response.status_code == 400 and "nested too deeply" in response.text
    assert flow_tracker.get_workflow(target.run).steps["b"].status == "failed"


@pytest.mark.parametrize("result", ["NaN", "1e999", "%7B%22a%22%3A-Infinity%7D"])
def test_a_result_that_python_reads_but_json_has_not_is_a_400(target: Target, result: str) -> None:
    response = _post(target, "/workflows/{run}/resolve", _token(target), f"step=b&result={result}")
    assert response.status_code == 400 and "must be JSON" in response.text
    assert flow_tracker.get_workflow(target.run).steps["b"].status == "failed"


def _refuse(store: Store, kind: str) -> None:
    """Send the database a value it refuses, as an action would: ``kind`` is the error."""
    probe = Store(store.url.render_as_string(hide_password=False))
    statement, value = {
        # Two gigabytes: past SQLite's longest string or blob ("string or blob too big").
        ("DataError", "sqlite"): ("SELECT zeroblob(:value)", 2_000_000_000),
        ("DataError", "postgresql"): ("SELECT :value", "a\x00b"),  # text holds no NUL
        # Not UTF-8: both drivers refuse to encode it.
        ("UnicodeEncodeError", "sqlite"): ("SELECT :value", chr(0xD800)),
        ("UnicodeEncodeError", "postgresql"): ("SELECT :value", chr(0xD800)),
    }[kind, probe.dialect]
    try:
        with probe.engine.connect() as conn:
            conn.execute(text(statement), {"value": value})
    finally:
        probe.dispose()


@pytest.mark.parametrize("refused", ["DataError", "UnicodeEncodeError"])
@pytest.mark.parametrize("on", ["page", "action", "api"])
def test_a_value_the_database_refuses_is_a_400_not_an_outage(
    target: Target,
    refused: str,
    on: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = target.client.app.state.dashboard.store  # type: ignore[attr-defined]

    def refuses(*args: Any, **kwargs: Any) -> Any:
        _refuse(store, refused)
        raise AssertionError("the database took the value")

    if on == "action":
        monkeypatch.setattr(manage, "cancel_workflow", refuses)
        response = _post(target, "/workflows/{run}/cancel", _token(target), "reason=x")
    else:
        monkeypatch.setattr(manage, "list_workflows", refuses)
        response = target.client.get("/workflows" if on == "page" else "/api/workflows")
    assert response.status_code == 400, response.text[:300]
    assert "refused a value" in response.text
    assert not [r for r in caplog.records if "unavailable" in r.getMessage()]


def test_a_requeue_notice_without_its_refused_count_is_shown(target: Target) -> None:
    response = target.client.get("/health?requeued=2")
    assert response.status_code == 200 and "2 sent." in response.text


HOSTILE_HEADERS = {
    "a referer that is no URL": [(b"referer", b"http://[bad")],
    "a referer with a bad port": [(b"referer", b"http://testserver:99999/")],
    "a length in superscript digits": [(b"origin", ORIGIN.encode()), (b"content-length", b"\xb2")],
    "a length of 5,000 digits": [(b"origin", ORIGIN.encode()), (b"content-length", b"9" * 5_000)],
    "a negative length": [(b"origin", ORIGIN.encode()), (b"content-length", b"-1")],
    "a user that is not UTF-8": [
        (b"origin", ORIGIN.encode()),
        (b"authorization", b"Basic " + base64.b64encode(b"\xff\xfe:pw")),
    ],
}


@pytest.mark.parametrize("headers", list(HOSTILE_HEADERS))
def test_hostile_headers_on_an_action_answer_4xx_or_are_done_never_5xx(
    target: Target, headers: str
) -> None:
    response = target.client.post(
        target.path("/workflows/{run}/retry"),
        content=f"step=b&csrf_token={_token(target)}".encode(),
        headers=[
            (b"content-type", b"application/x-www-form-urlencoded"),
            *HOSTILE_HEADERS[headers],
        ],
        follow_redirects=False,
    )
    assert response.status_code < 500, response.text[:300]
