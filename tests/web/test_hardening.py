"""The attack pass, kept as tests: host check, auth hook errors, bodies, headers, odd input.

Each test here failed before the fix it pins.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.types import Message

import flow_tracker
from flow_tracker.web import create_app
from flow_tracker.web.security import SECURITY_HEADERS, serving_hosts
from tests.web.conftest import ORIGIN, Sample

# -- DNS rebinding: the Host header ------------------------------------------------------


def test_a_host_not_allowed_gets_400_before_any_route(sample: Sample) -> None:
    app = create_app(sample.url, allowed_hosts=serving_hosts("127.0.0.1"))
    with TestClient(app, base_url="http://127.0.0.1:8000") as local:
        assert local.get("/processes").status_code == 200
        assert local.get("/processes", headers={"host": "localhost:8000"}).status_code == 200
        assert local.get("/processes", headers={"host": "[::1]:8000"}).status_code == 200
        rebound = local.get("/health", headers={"host": "attacker.example:8000"})
        assert rebound.status_code == 400
        assert "csrf_token" not in rebound.text  # no token to steal
        # The rebinding page is same-origin with itself: Origin matches its Host.
        posted = local.post(
            "/cleanup",
            data={"days": "0", "confirm": "yes", "csrf_token": "x" * 43},
            headers={"host": "attacker.example:8000", "origin": "http://attacker.example:8000"},
        )
        assert posted.status_code == 400
        assert (
            posted.headers["content-security-policy"] == SECURITY_HEADERS["content-security-policy"]
        )


def test_serve_answers_to_loopback_its_host_and_the_extra_names() -> None:
    assert serving_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "::1", "127.0.0.1"]
    assert "jobs.internal" in serving_hosts("0.0.0.0", ["jobs.internal"])
    assert "0.0.0.0" not in serving_hosts("0.0.0.0")


def test_a_wildcard_allows_subdomains_only(sample: Sample) -> None:
    app = create_app(sample.url, allowed_hosts=["*.example.com"])
    with TestClient(app, base_url="http://jobs.example.com") as client:
        assert client.get("/api/health").status_code in (200, 503)
        assert client.get("/", headers={"host": "example.com.evil"}).status_code == 400


# -- authentication ---------------------------------------------------------------------


def test_an_auth_hook_that_raises_answers_403_and_is_logged_once(
    sample: Sample, caplog: pytest.LogCaptureFixture
) -> None:
    def staff_only(request: Any) -> bool:
        return bool(request.user.is_staff)  # no AuthenticationMiddleware: raises

    app = create_app(sample.url, auth=staff_only)
    with caplog.at_level(logging.ERROR, logger="flow_tracker.web"):
        with TestClient(app, base_url=ORIGIN) as client:
            assert client.get("/").status_code == 403
            assert client.get("/api/processes").status_code == 403
    raised = [r for r in caplog.records if "auth hook raised" in r.getMessage()]
    assert len(raised) == 1


def test_a_websocket_is_refused_instead_of_skipping_authentication(sample: Sample) -> None:
    app = create_app(sample.url, auth=lambda request: False)
    sent: list[dict[str, Any]] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    scope = {"type": "websocket", "path": "/", "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]


# -- request bodies ---------------------------------------------------------------------


def test_a_post_declaring_a_huge_body_is_refused_before_it_is_read(client: TestClient) -> None:
    response = client.post(
        "/cleanup",
        content=b"days=0",
        headers={"origin": ORIGIN, "content-length": str(64 * 1024 * 1024)},
    )
    assert response.status_code == 413


def test_a_chunked_body_is_read_only_up_to_the_limit(client: TestClient) -> None:
    def chunks() -> Any:
        for _ in range(1024):  # 1 MiB in 1 KiB chunks, no Content-Length
            yield b"x" * 1024

    response = client.post("/health/reap", content=chunks(), headers={"origin": ORIGIN})
    assert response.status_code == 413


# -- every status carries the headers ---------------------------------------------------


def test_an_internal_error_answers_500_with_the_security_headers(
    sample: Sample, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flow_tracker.store import queries

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(queries, "list_processes", broken)
    app = create_app(sample.url)
    with TestClient(app, base_url=ORIGIN, raise_server_exceptions=False) as client:
        response = client.get("/api/processes")
    assert response.status_code == 500
    assert "a bug" not in response.text and "Traceback" not in response.text
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value


# -- no client mistake is a 5xx -----------------------------------------------------------


def _cursor(stamp: str) -> str:
    raw = f"{stamp}|{uuid.uuid4().hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_PARAMETERS = [
    "since=0001-01-01T00:00:00%2B14:00",
    "until=9999-12-31T23:59:59-14:00",
    f"cursor={_cursor('0001-01-01T00:00:00+14:00')}",
    "cursor=not-a-cursor",
    "meta=a=99999999999999999999999",
    "meta=a=NaN",
    "meta=a=Infinity",
    "meta=a=-Infinity",
    "meta=a=1e999",
    'meta=a="%5Cu0000"',
    'meta=a="%5Cud800"',
    "status=bogus",
]
HARMLESS_PARAMETERS = ["q=%00", "name=a%00b", "limit=-5", "limit=99999999999999999999"]


def test_a_bad_parameter_is_a_400_with_the_reason_on_page_and_api(client: TestClient) -> None:
    for query in BAD_PARAMETERS:  # one database and app for the whole corpus
        page = client.get(f"/processes?{query}")
        api = client.get(f"/api/processes?{query}")
        assert page.status_code == 400, (query, page.status_code)
        assert api.status_code == 400, (query, api.status_code, api.text[:200])
        assert api.json()["error"], query
        for body in (page.text, api.text):
            assert "Traceback" not in body and "psycopg" not in body and "sqlite3" not in body


def test_odd_but_harmless_parameters_answer_200(client: TestClient) -> None:
    for query in HARMLESS_PARAMETERS:
        assert client.get(f"/processes?{query}").status_code == 200, query
        assert client.get(f"/api/processes?{query}").status_code == 200, query


def test_infinite_progress_is_refused_at_the_call(tracked: str) -> None:
    tracker = flow_tracker.start("infinite")
    for bad in (float("inf"), float("nan"), float("-inf")):
        with pytest.raises(flow_tracker.UsageError, match="finite number"):
            tracker.progress.total = bad
        with pytest.raises(flow_tracker.UsageError, match="finite number"):
            tracker.progress.increment(bad)
    tracker.complete()


def test_no_redirect_reflects_the_host_header(client: TestClient) -> None:
    response = client.get(
        "/processes/", headers={"host": "attacker.example"}, follow_redirects=False
    )
    assert response.status_code == 404
    assert "attacker.example" not in response.headers.get("location", "")
    assert "attacker.example" not in response.text
