"""``from_scopes()``: a FastAPI host's own authentication decides who may do what.

The host's ``AuthenticationMiddleware`` grants scopes; those that are the
dashboard's permissions make the principal, the host's others are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from sqlalchemy import select
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
)
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker import runtime
from flow_tracker.store.schema import audit_log
from flow_tracker.web import ROLES, create_app, from_scopes
from flow_tracker.web.security import CSRF_COOKIE, CSRF_FIELD
from tests.contrib.conftest import silence
from tests.web.conftest import Sample

ORIGIN = "http://testserver"


class Badge(BaseUser):
    """A host app's user known by an id alone (no display name)."""

    def __init__(self, badge: str) -> None:
        self.badge = badge

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return ""

    @property
    def identity(self) -> str:
        return self.badge


class HeaderUsers(AuthenticationBackend):
    """The host app's login, shortened: ``x-user`` names the user, ``x-scopes`` their scopes."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        name = conn.headers.get("x-user")
        if name is None:
            return None
        scopes = conn.headers.get("x-scopes", "").split()
        user: BaseUser = Badge(name[1:]) if name.startswith("#") else SimpleUser(name)
        return AuthCredentials(scopes), user


def _host(sample: Sample, login_url: str | None = None) -> tuple[FastAPI, TestClient]:
    host = FastAPI()

    @host.get("/")
    def home() -> dict[str, str]:
        return {"app": "host"}

    host.mount("/jobs", create_app(sample.url, auth=from_scopes(login_url=login_url)))
    host.add_middleware(AuthenticationMiddleware, backend=HeaderUsers())
    return host, TestClient(host, base_url=ORIGIN, follow_redirects=False)


@pytest.fixture
def host(sample: Sample) -> Iterator[TestClient]:
    """A FastAPI app with its own authentication and the dashboard at ``/jobs``."""
    _, client = _host(sample)
    yield client
    client.close()


def _as(name: str, *scopes: str) -> dict[str, str]:
    return {"x-user": name, "x-scopes": " ".join(scopes)}


def _reap(client: TestClient, headers: dict[str, str], action: str = "reap", **form: str) -> int:
    """POST an action with the dashboard's CSRF cookie and field; the status it answers."""
    page = client.get("/jobs/health", headers=headers)
    assert page.status_code == 200
    token = client.cookies[CSRF_COOKIE]  # set by this page or an earlier one
    response = client.post(
        f"/jobs/health/{action}",
        data={CSRF_FIELD: token, **form},
        headers={**headers, "origin": ORIGIN, "cookie": f"{CSRF_COOKIE}={token}"},
    )
    status: int = response.status_code
    return status


def test_an_operators_scopes_make_an_operator(host: TestClient, sample: Sample) -> None:
    ana = _as("ana", "authenticated", "billing:write", *sorted(ROLES["operator"]))
    assert host.get("/jobs/processes", headers=ana).status_code == 200
    silence(sample.running)
    assert _reap(host, ana) == 303
    record = flow_tracker.get_process(sample.running)
    assert record is not None and record.status.value == "lost"
    assert host.get("/jobs/cleanup", headers=ana).status_code == 403  # history:delete: admin's
    with runtime.store().engine.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.actor, audit_log.c.role, audit_log.c.via).where(
                audit_log.c.action == "jobs:reap", audit_log.c.outcome == "allowed"
            )
        ).all()
    assert [tuple(row) for row in rows] == [("ana", "operator", "hook")]


def test_a_hand_picked_set_of_scopes_allows_exactly_those(host: TestClient, sample: Sample) -> None:
    bo = _as("bo", "runs:read", "jobs:reap")
    assert _reap(host, bo) == 303
    assert _reap(host, bo, "requeue", all="lost") == 403


def test_a_user_with_only_the_hosts_own_scopes_is_forbidden(host: TestClient) -> None:
    # "job:requeue" is a typo of ours, "admin" a word of the host's: neither grants anything.
    cy = _as("cy", "authenticated", "admin", "job:requeue", "billing:write")
    assert host.get("/jobs/", headers=cy).status_code == 403
    assert host.get("/jobs/api/processes", headers=cy).status_code == 403
    assert host.get("/", headers=cy).json() == {"app": "host"}


def test_a_visitor_who_is_not_logged_in_is_forbidden_or_sent_to_log_in(
    host: TestClient, sample: Sample
) -> None:
    assert host.get("/jobs/processes").status_code == 403
    _, client = _host(sample, login_url="/login")
    response = client.get("/jobs/processes?status=failed")
    assert response.status_code == 302
    assert response.headers["location"] == "/login?next=/jobs/processes%3Fstatus%3Dfailed"
    _, keeps_query = _host(sample, login_url="/auth?provider=sso")
    assert keeps_query.get("/jobs/").headers["location"] == "/auth?provider=sso&next=/jobs/"


def test_the_login_link_never_points_at_another_site(sample: Sample) -> None:
    # Served at the root, a path of two slashes would make next=//evil.example/x:
    # a host login page that follows next blindly would leave the site.
    app = create_app(sample.url, auth=from_scopes(login_url="/login"))
    app.add_middleware(AuthenticationMiddleware, backend=HeaderUsers())
    client = TestClient(app, base_url=ORIGIN, follow_redirects=False)
    response = client.get(ORIGIN + "//evil.example/x")
    assert response.status_code == 302
    assert response.headers["location"] == "/login?next=/evil.example/x"


def test_a_user_without_a_display_name_is_named_by_identity(
    host: TestClient, sample: Sample
) -> None:
    silence(sample.running)
    assert _reap(host, _as("#badge-7", *sorted(ROLES["operator"]))) == 303
    with runtime.store().engine.connect() as conn:
        actors = conn.execute(
            select(audit_log.c.actor).where(audit_log.c.action == "jobs:reap")
        ).scalars()
        assert list(actors) == ["badge-7"]


def test_without_the_hosts_authentication_middleware_it_says_what_is_missing(
    sample: Sample, caplog: pytest.LogCaptureFixture
) -> None:
    host = FastAPI()
    host.mount("/jobs", create_app(sample.url, auth=from_scopes()))
    with caplog.at_level(logging.ERROR, logger="flow_tracker.web"):
        assert TestClient(host).get("/jobs/").status_code == 403
    assert "AuthenticationMiddleware" in caplog.text
