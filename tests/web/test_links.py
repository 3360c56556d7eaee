"""Every link and redirect of a dashboard stays inside that dashboard, wherever it is mounted.

A host app with its own routes named ``health`` and ``processes`` and two
dashboards (a full one and a read-only one) beside them: Starlette resolves
``request.url_for`` from the outermost router, which gave the host's routes and
the first dashboard the links of every other.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.web import create_app
from flow_tracker.web.security import CSRF_COOKIE
from tests.web.conftest import ORIGIN, record_sample

WAIT = 30.0
FULL, READ_ONLY = "/ops", "/ro"

links_failing = flow_tracker.workflow("links_failing")


@links_failing.step()
def boom(context: Any) -> None:
    raise ValueError("no")


links_blocked = flow_tracker.workflow("links_blocked")
RELEASE = threading.Event()


@links_blocked.step()
def wait_for_release(context: Any) -> None:
    RELEASE.wait(WAIT)


@dataclass(frozen=True)
class Hosted:
    """The host app's client and the ids the pages show."""

    client: TestClient
    process_id: str
    failed_run: uuid.UUID
    running_run: uuid.UUID


def _links(html: str) -> list[str]:
    return [
        link.replace("&amp;", "&")
        for link in re.findall(r'(?:href|src|action)="([^"#?][^"]*)"', html)
    ]


@pytest.fixture
def hosted(tracked: str) -> Iterator[Hosted]:
    """A FastAPI app with its own ``health`` and ``processes`` routes and two dashboards."""
    imported, _, _ = record_sample()
    failed = links_failing.run(context={"n": 1})
    assert failed.wait(WAIT).status == "failed"
    RELEASE.clear()
    running = links_blocked.run(context={"n": 2})
    host = FastAPI()

    @host.get("/health", name="health")
    def host_health() -> dict[str, str]:
        return {"host": "health"}

    @host.get("/processes", name="processes")
    def host_processes() -> dict[str, str]:
        return {"host": "processes"}

    full = create_app(tracked, keep_statistics=False)
    read_only = create_app(tracked, keep_statistics=False, read_only=True)
    host.mount(FULL, full)
    host.mount(READ_ONLY, read_only)
    try:
        with TestClient(host, base_url=ORIGIN) as client:
            yield Hosted(client, imported, failed.id, running.id)
    finally:
        RELEASE.set()
        full.state.dashboard.store.dispose()
        read_only.state.dashboard.store.dispose()


def _pages(hosted: Hosted) -> list[str]:
    return [
        "/",
        "/processes",
        f"/processes/{hosted.process_id}",
        "/health",
        "/workflows",
        f"/workflows/{hosted.failed_run}",
        f"/workflows/{hosted.running_run}",
        "/workflows/definitions",
        "/workflows/analytics",
        f"/processes/{hosted.failed_run}",
    ]


@pytest.mark.parametrize("prefix", [FULL, READ_ONLY])
def test_every_link_of_each_dashboard_stays_under_its_own_prefix(
    hosted: Hosted, prefix: str
) -> None:
    seen: set[str] = set()
    for page in _pages(hosted):
        response = hosted.client.get(prefix + page)
        assert response.status_code == 200, page
        links = _links(response.text)
        assert links, page
        for link in links:
            assert link.startswith(prefix + "/"), (page, link)
        seen.update(links)
    # The links lead to this dashboard's pages, not the host's JSON.
    for link in sorted(link for link in seen if "/static/" not in link)[:60]:
        response = hosted.client.get(link)
        assert response.status_code in (200, 403, 405), link
        assert "host" not in response.text[:40], link


def test_the_full_dashboard_shows_its_actions_and_the_read_only_one_none(hosted: Hosted) -> None:
    for page in ("/health", f"/workflows/{hosted.failed_run}", f"/workflows/{hosted.running_run}"):
        full = hosted.client.get(FULL + page).text
        read_only = hosted.client.get(READ_ONLY + page).text
        assert 'method="post"' in full, page
        assert 'method="post"' not in read_only, page
    assert f'href="{FULL}/cleanup"' in hosted.client.get(FULL + "/").text
    assert "/cleanup" not in hosted.client.get(READ_ONLY + "/").text


def _post(client: TestClient, path: str, **form: str) -> Any:
    prefix = "/" + path.split("/")[1]
    client.get(prefix + "/")  # each dashboard's CSRF cookie has its own path
    token = client.cookies.get(CSRF_COOKIE, path=prefix + "/")
    assert token
    return client.post(
        path,
        data={"csrf_token": token, **form},
        headers={"origin": ORIGIN},
        follow_redirects=False,
    )


def test_every_redirect_of_an_action_stays_under_its_dashboards_prefix(hosted: Hosted) -> None:
    client = hosted.client
    reaped = _post(client, f"{FULL}/health/reap")
    assert reaped.status_code == 303 and reaped.headers["location"].startswith(f"{FULL}/health?")
    cleaned = _post(client, f"{FULL}/cleanup", days="3650", confirm="yes")
    assert cleaned.status_code == 303
    assert cleaned.headers["location"].startswith(f"{FULL}/cleanup?")
    retried = _post(client, f"{FULL}/workflows/{hosted.failed_run}/retry", step="boom")
    assert retried.status_code == 303
    assert retried.headers["location"].startswith(f"{FULL}/workflows/{hosted.failed_run}?")
    cancelled = _post(client, f"{FULL}/workflows/{hosted.running_run}/cancel", reason="links")
    assert cancelled.status_code == 303
    assert cancelled.headers["location"].startswith(f"{FULL}/workflows/{hosted.running_run}?")
    started = _post(
        client,
        f"{FULL}/workflows/definitions/start",
        namespace="default",
        name="links_failing",
        version="1",
        context="{}",
    )
    assert started.status_code == 303, started.text
    assert started.headers["location"].startswith(f"{FULL}/workflows/")
    api = client.post(
        f"{FULL}/api/workflows/default/links_failing/runs",
        json={"context": {}},
        headers={"origin": ORIGIN},
    )
    assert api.status_code == 201 and api.json()["url"].startswith(f"{FULL}/workflows/")
    # The read-only dashboard refuses the same actions, and redirects nowhere.
    refused = _post(client, f"{READ_ONLY}/health/reap")
    assert refused.status_code == 403 and "location" not in refused.headers


def test_links_keep_every_prefix_of_nested_mounts(tracked: str) -> None:
    record_sample()
    dashboard = create_app(tracked, keep_statistics=False)
    host = Starlette(routes=[Mount("/outer", routes=[Mount("/inner", app=dashboard)])])
    try:
        with TestClient(host, base_url=ORIGIN) as client:
            html = client.get("/outer/inner/processes").text
            links = _links(html)
            assert links and all(link.startswith("/outer/inner/") for link in links), links
            assert client.get(links[-1]).status_code == 200
    finally:
        dashboard.state.dashboard.store.dispose()
