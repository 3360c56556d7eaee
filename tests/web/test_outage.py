"""One error policy: with the tracking database gone, every route answers 503, never 500.

The database is PostgreSQL behind a TCP proxy that the test stops, as a server
restart or a network cut would look to the dashboard.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.web import create_app
from tests.support.proxy import TcpProxy
from tests.web.conftest import ORIGIN

PAGES = ["/", "/processes", "/health", "/cleanup?days=3"]
API = ["/api/processes", "/api/stats", "/api/health", "/api/status/some-job"]
ACTIONS = {
    "/cleanup": {"days": "0", "confirm": "yes"},
    "/health/reap": {},
    "/health/requeue": {"all": "lost"},
}


@pytest.fixture
def cut_client(pg_server_url: str) -> Iterator[tuple[TestClient, TcpProxy]]:
    url = make_url(pg_server_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    through = url.set(port=proxy.port).render_as_string(hide_password=False)
    flow_tracker.configure(database_url=through, log_to_stdlib=False)
    with flow_tracker.track("before the outage"):
        pass
    flow_tracker.flush()
    app = create_app(through, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN) as client:
        yield client, proxy
    proxy.stop()
    app.state.dashboard.store.dispose()
    flow_tracker.reset()


def test_every_page_api_call_and_action_answers_503_while_the_database_is_away(
    cut_client: tuple[TestClient, TcpProxy],
) -> None:
    client, proxy = cut_client
    page = client.get("/cleanup?days=0")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    proxy.stop()
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 503, (path, response.status_code)
        assert "The tracking database is not answering" in response.text
        assert str(proxy.port) not in response.text  # no host or port for the reader
    for path in API:
        response = client.get(path)
        assert response.status_code == 503, (path, response.status_code)
        assert response.json()["status"] == 503
        assert str(proxy.port) not in response.text
    for path, form in ACTIONS.items():
        response = client.post(
            path, data={**form, "csrf_token": token.group(1)}, headers={"origin": ORIGIN}
        )
        assert response.status_code == 503, (path, response.status_code, response.text[:300])
    proxy.start()
    assert client.get("/processes").status_code == 200  # and back once it returns
