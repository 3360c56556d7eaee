"""Security: headers, CSRF and origin checks on the only action, auth on every route, read-only."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.web import create_app
from flow_tracker.web.security import CSRF_COOKIE
from tests.web.conftest import ORIGIN, PINGS, Sample

EVERY_ROUTE = [
    "/",
    "/processes",
    "/processes/0192f000-0000-7000-8000-000000000000",
    "/cleanup",
    "/health",
    "/api/processes",
    "/api/processes/0192f000-0000-7000-8000-000000000000",
    "/api/status/x",
    "/api/stats",
    "/api/health",
    "/api/openapi.json",
    "/static/app.css",
    "/no/such/route",
]


def _count(client: TestClient) -> int:
    return len(client.get("/api/processes?limit=200").json()["items"])


def _csrf_token(client: TestClient) -> str:
    page = client.get("/cleanup?days=0").text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the cleanup form carries a CSRF token"
    assert client.cookies.get(CSRF_COOKIE) == match.group(1)
    return match.group(1)


def test_every_response_carries_the_security_headers(client: TestClient) -> None:
    for path in EVERY_ROUTE:
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert headers["cache-control"] == "no-store", path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        assert headers["server-timing"].startswith("app;dur="), path


def test_pages_have_no_inline_script_or_style(client: TestClient, sample: Sample) -> None:
    wf = flow_tracker.workflow("security_pages")
    wf.step(name="a")(lambda context: 1)
    wf.step(name="b", depends_on=["a"])(lambda context, a: 1 / 0)
    run = wf.run().wait(30)
    for path in (
        "/",
        "/processes",
        f"/processes/{sample.imported}",
        "/cleanup?days=0",
        "/health",
        "/workflows",
        f"/workflows/{run.id}",
        "/workflows/analytics",
        f"/processes/{run.id}",
    ):
        html = client.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert " style=" not in html and "<style" not in html, path
        assert not re.search(r"\son[a-z]+=", html), path  # no inline event handlers


def test_csrf_cookie_is_strict_and_http_only(client: TestClient) -> None:
    cookie = client.get("/").headers["set-cookie"]
    assert f"{CSRF_COOKIE}=" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie


def test_cleanup_with_token_and_same_origin_deletes(client: TestClient) -> None:
    token = _csrf_token(client)
    before = _count(client)
    response = client.post(
        "/cleanup",
        data={"csrf_token": token, "days": "0", "confirm": "yes", "status": "completed"},
        headers={"origin": ORIGIN},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert "deleted=" in response.headers["location"]
    assert _count(client) == before - (PINGS + 1)  # the completed ones
    assert "Deleted 61 processes" in client.get(response.headers["location"]).text


@pytest.mark.parametrize(
    ("form", "headers"),
    [
        ({"days": "0", "confirm": "yes"}, {"origin": ORIGIN}),  # no token
        ({"days": "0", "confirm": "yes", "csrf_token": "x" * 43}, {"origin": ORIGIN}),  # wrong
        ({"days": "0", "confirm": "yes", "csrf_token": "TOKEN"}, {"origin": "http://evil.test"}),
        ({"days": "0", "confirm": "yes", "csrf_token": "TOKEN"}, {}),  # no origin, no referer
        (
            {"days": "0", "confirm": "yes", "csrf_token": "TOKEN"},
            {"referer": "http://evil.test/page"},
        ),
        (
            {"days": "0", "confirm": "yes", "csrf_token": "TOKEN"},
            {"origin": ORIGIN, "sec-fetch-site": "cross-site"},
        ),
    ],
    ids=["no-token", "wrong-token", "other-origin", "no-origin", "other-referer", "cross-site"],
)
def test_forged_cleanup_is_refused_and_changes_nothing(
    client: TestClient, form: dict[str, str], headers: dict[str, str]
) -> None:
    token = _csrf_token(client)
    form = {k: (token if v == "TOKEN" else v) for k, v in form.items()}
    before = _count(client)
    response = client.post("/cleanup", data=form, headers=headers, follow_redirects=False)
    assert response.status_code == 403
    assert _count(client) == before


def test_cleanup_needs_the_confirmation_box(client: TestClient) -> None:
    token = _csrf_token(client)
    before = _count(client)
    response = client.post(
        "/cleanup", data={"csrf_token": token, "days": "0"}, headers={"origin": ORIGIN}
    )
    assert response.status_code == 400
    assert _count(client) == before


def test_no_get_changes_data(client: TestClient) -> None:
    before = _count(client)
    client.get("/cleanup?days=0&confirm=yes&status=completed")
    client.get("/cleanup/run?days=0")
    assert _count(client) == before


@pytest.fixture
def guarded(sample: Sample) -> Iterator[dict[str, TestClient]]:
    """Apps with basic auth, with an auth hook, and read-only, on the sample data."""
    apps = {
        "basic": create_app(sample.url, basic_auth=("admin", "s3cret")),
        "hook": create_app(sample.url, auth=lambda request: request.headers.get("x-user") == "ok"),
        "read_only": create_app(sample.url, read_only=True),
    }
    clients = {name: TestClient(app, base_url=ORIGIN) for name, app in apps.items()}
    yield clients
    for app in apps.values():
        app.state.dashboard.store.dispose()


def test_every_route_answers_401_without_basic_auth(guarded: dict[str, TestClient]) -> None:
    client = guarded["basic"]
    for path in EVERY_ROUTE:
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Basic"), path
    assert client.post("/cleanup", data={}).status_code == 401
    assert client.post("/health/reap", data={}).status_code == 401
    assert client.post("/health/requeue", data={}).status_code == 401
    assert client.get("/", auth=("admin", "wrong")).status_code == 401
    assert client.get("/", auth=("root", "s3cret")).status_code == 401
    assert client.get("/", auth=("admin", "s3cret")).status_code == 200


def test_every_route_answers_403_when_the_auth_hook_says_no(
    guarded: dict[str, TestClient],
) -> None:
    client = guarded["hook"]
    for path in EVERY_ROUTE:
        assert client.get(path).status_code == 403, path
    assert client.post("/cleanup", data={}).status_code == 403
    assert client.post("/health/reap", data={}).status_code == 403
    assert client.get("/", headers={"x-user": "ok"}).status_code == 200


def test_async_auth_hook_is_awaited(sample: Sample) -> None:
    async def allow_admins(request: object) -> bool:
        return getattr(request, "headers", {}).get("x-role") == "admin"

    app = create_app(sample.url, auth=allow_admins)
    with TestClient(app, base_url=ORIGIN) as client:
        assert client.get("/processes").status_code == 403
        assert client.get("/processes", headers={"x-role": "admin"}).status_code == 200
    app.state.dashboard.store.dispose()


def test_read_only_hides_and_refuses_cleanup(guarded: dict[str, TestClient]) -> None:
    client = guarded["read_only"]
    overview = client.get("/").text
    assert 'href="/cleanup"' not in overview
    assert client.get("/cleanup").status_code == 403
    before = _count(client)
    cookie = client.get("/").cookies.get(CSRF_COOKIE) or client.cookies.get(CSRF_COOKIE)
    response = client.post(
        "/cleanup",
        data={"csrf_token": cookie or "", "days": "0", "confirm": "yes"},
        headers={"origin": ORIGIN},
    )
    assert response.status_code == 403
    assert _count(client) == before


def test_basic_auth_needs_both_parts() -> None:
    with pytest.raises(ValueError, match="basic_auth"):
        create_app("sqlite://", basic_auth=("admin", ""))
