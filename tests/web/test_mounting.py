"""The dashboard mounted in a FastAPI app and in a Flask app, with links that keep the prefix."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from a2wsgi import ASGIMiddleware
from fastapi import FastAPI
from flask import Flask
from starlette.testclient import TestClient
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import make_server

from flow_tracker.web import create_app
from tests.web.conftest import Sample

PREFIX = "/tracker"


def _links(html: str) -> list[str]:
    return re.findall(r'(?:href|src|action)="(/[^"]*)"', html)


def _check_links_keep_prefix(fetch: Callable[[str], Any], sample: Sample) -> None:
    for page in ("/", "/processes", f"/processes/{sample.imported}", "/cleanup"):
        response = fetch(PREFIX + page)
        assert response.status_code == 200, page
        links = _links(response.text)
        assert links, page
        for link in links:
            assert link.startswith(PREFIX + "/"), (page, link)
    # Every distinct link of the list page leads somewhere.
    for link in sorted(set(_links(fetch(PREFIX + "/processes").text)))[:40]:
        assert fetch(link.replace("&amp;", "&")).status_code == 200, link


def test_mounted_in_fastapi_under_a_prefix(sample: Sample) -> None:
    host = FastAPI()

    @host.get("/")
    def home() -> dict[str, str]:
        return {"app": "host"}

    dashboard = create_app(sample.url)
    host.mount(PREFIX, dashboard)
    with TestClient(host) as client:
        assert client.get("/").json() == {"app": "host"}
        _check_links_keep_prefix(client.get, sample)
        doc = client.get(PREFIX + "/api/openapi.json").json()
        assert doc["servers"] == [{"url": PREFIX}]
        assert client.get(f"{PREFIX}/api/status/{sample.charged}").json()["status"] == "failed"
    dashboard.state.dashboard.store.dispose()


@pytest.fixture
def flask_server(sample: Sample) -> Iterator[str]:
    """A Flask app with the dashboard under /tracker, served over real HTTP by werkzeug."""
    flask_app = Flask("host")

    @flask_app.get("/")
    def home() -> str:
        return "flask host"

    dashboard = create_app(sample.url)
    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app,
        {PREFIX: ASGIMiddleware(dashboard)},  # type: ignore[arg-type,dict-item]
    )
    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    dashboard.state.dashboard.store.dispose()


def test_mounted_in_flask_through_an_asgi_to_wsgi_adapter(
    flask_server: str, sample: Sample
) -> None:
    with httpx.Client(base_url=flask_server, timeout=30) as client:
        assert client.get("/").text == "flask host"
        _check_links_keep_prefix(client.get, sample)
        # The action works through the adapter too: token from the page, same origin.
        form = client.get(PREFIX + "/cleanup?days=0&status=failed").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token
        response = client.post(
            PREFIX + "/cleanup",
            data={"csrf_token": token.group(1), "days": "0", "status": "failed", "confirm": "yes"},
            headers={"origin": flask_server},
        )
        assert response.status_code == 303
        assert response.headers["location"].startswith(PREFIX + "/cleanup?")
        assert client.get(f"{PREFIX}/api/status/{sample.charged}").status_code == 404
