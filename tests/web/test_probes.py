"""``/health/live`` and ``/health/ready``: probes an orchestrator can point at the dashboard."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from starlette.testclient import TestClient

from flow_tracker.store.engine import Store
from flow_tracker.store.migrate import HEAD_REVISION
from flow_tracker.store.schema import VERSION_TABLE
from flow_tracker.web import create_app
from tests.support.proxy import TcpProxy
from tests.web.conftest import ORIGIN


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def migrated(database_url: str) -> str:
    """A tracking database at the package's head revision, on both backends."""
    store = Store(database_url)
    store.ensure_schema()
    store.dispose()
    return database_url


def _client(url: str, **options: object) -> Iterator[TestClient]:
    app = create_app(url, keep_statistics=False, **options)  # type: ignore[arg-type]
    with TestClient(app, base_url=ORIGIN) as client:
        yield client
    app.state.dashboard.store.dispose()


@pytest.fixture
def board(migrated: str) -> Iterator[TestClient]:
    yield from _client(migrated)


def test_ready_and_live_answer_200_on_a_database_at_head(board: TestClient) -> None:
    assert board.get("/health/live").json() == {"live": True}
    ready = board.get("/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def test_a_database_on_a_closed_port_is_not_ready_but_the_app_is_live() -> None:
    url = f"postgresql+psycopg://flow:secret-pw@127.0.0.1:{_closed_port()}/tracker"
    for client in _client(url):
        live = client.get("/health/live")
        assert live.status_code == 200 and live.json() == {"live": True}
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "reason": "the database does not answer"}
        # The reason reveals nothing of where the database is or who logs in.
        assert "127.0.0.1" not in ready.text and "secret-pw" not in ready.text


def test_a_database_that_stops_makes_ready_fail_until_it_is_back(
    proxied_pg: tuple[str, TcpProxy],
) -> None:
    url, proxy = proxied_pg
    for client in _client(url):
        assert client.get("/health/ready").status_code == 200
        proxy.stop()
        assert client.get("/health/ready").status_code == 503
        assert client.get("/health/live").status_code == 200
        proxy.start()
        deadline = time.monotonic() + 30
        # The pool may hand out a connection that died with the proxy first.
        while client.get("/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/health/ready").status_code == 200


def test_a_schema_behind_head_is_not_ready_and_names_both_revisions(migrated: str) -> None:
    store = Store(migrated)
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0007'"))
    try:
        for client in _client(migrated):
            ready = client.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json() == {
                "ready": False,
                "reason": f"the schema is at revision 0007, this version needs {HEAD_REVISION}",
            }
    finally:
        with store.engine.begin() as conn:
            conn.execute(
                text(f"UPDATE {VERSION_TABLE} SET version_num = :head"), {"head": HEAD_REVISION}
            )
        store.dispose()


def test_a_database_flow_tracker_never_migrated_is_not_ready(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    for client in _client(url):
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert "no flow-tracker schema" in ready.json()["reason"]


def test_the_ready_probe_does_not_migrate_the_database(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    for client in _client(url):
        client.get("/health/ready")
    store = Store(url, auto_migrate=False)
    with store.engine.connect() as conn:
        tables = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert tables.fetchall() == []
    store.dispose()


def test_probes_need_no_credentials_while_everything_else_still_does(migrated: str) -> None:
    for client in _client(migrated, basic_auth=("ops", "pw"), auth=lambda request: False):
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code == 200
        assert client.get("/api/health").status_code == 401
        assert client.get("/").status_code == 401
        # Only GETs of exactly these two paths pass.
        assert client.post("/health/ready").status_code == 401
        assert client.get("/health/ready/x").status_code == 401
        assert client.get("/health").status_code == 401


def test_probes_answer_an_orchestrator_that_sends_the_pod_address_as_host(migrated: str) -> None:
    for client in _client(migrated, allowed_hosts=["dashboard.example.com"]):
        headers = {"host": "10.1.2.3:8000"}
        assert client.get("/health/ready", headers=headers).status_code == 200
        assert client.get("/health/live", headers=headers).status_code == 200
        assert client.get("/api/health", headers=headers).status_code == 400


def test_a_host_that_asks_for_it_gets_probes_checked_like_every_route(migrated: str) -> None:
    for client in _client(migrated, basic_auth=("ops", "pw"), public_probes=False):
        assert client.get("/health/live").status_code == 401
        assert client.get("/health/ready", auth=("ops", "pw")).status_code == 200


def test_probes_answer_under_the_prefix_the_app_is_mounted_at(migrated: str) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    dashboard = create_app(migrated, keep_statistics=False, basic_auth=("ops", "pw"))
    host = Starlette(routes=[Mount("/jobs", app=dashboard)])
    with TestClient(host, base_url=ORIGIN) as client:
        assert client.get("/jobs/health/ready").json() == {"ready": True}
        assert client.get("/jobs/health/live").status_code == 200
        assert client.get("/jobs/").status_code == 401
    dashboard.state.dashboard.store.dispose()
