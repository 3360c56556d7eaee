"""Shared fixtures: a tracking database on SQLite and on PostgreSQL for every store test.

PostgreSQL tests use a database created for this test run on 127.0.0.1:5432
(``FLOW_TRACKER_TEST_PG`` overrides the server URL). Without a server they skip
with the reason, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

import flow_tracker
from flow_tracker import heartbeat, runtime, tracker
from flow_tracker.store import schema
from flow_tracker.store.engine import Store
from flow_tracker.web import statistics_keeper
from flow_tracker.workflows import definitions, threads
from tests.support.proxy import TcpProxy

PG_SERVER = os.environ.get("FLOW_TRACKER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# Every table of the schema, so that a new one is emptied between tests too.
TABLES = tuple(table.name for table in reversed(schema.metadata.sorted_tables))


def _service_missing(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: service-backed tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test run, dropped at the end."""
    name = f"flow_tracker_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        admin = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _service_missing(f"PostgreSQL not reachable at {PG_SERVER}: {exc}".strip())
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_SERVER.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    flow_tracker.reset()
    with psycopg.connect(PG_SERVER, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty tracking database, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tracker.db'}"
        return
    url: str = request.getfixturevalue("pg_server_url")
    _truncate(url)
    yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The URL of an empty SQLite tracking database."""
    return f"sqlite:///{tmp_path / 'tracker.db'}"


def _truncate(url: str) -> None:
    store = Store(url)
    store.ensure_schema()
    with store.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)}"))
    store.dispose()


@pytest.fixture
def proxied_pg(pg_server_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """The test database reached through a proxy the test can stop and start."""
    url = make_url(pg_server_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    store = Store(pg_server_url)
    store.ensure_schema()
    store.dispose()
    yield url.set(port=proxy.port).render_as_string(hide_password=False), proxy
    proxy.stop()


@pytest.fixture
def tracked(database_url: str) -> Iterator[str]:
    """flow-tracker configured on ``database_url`` (both backends) for the test."""
    flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
    yield database_url
    flow_tracker.reset()


@pytest.fixture(autouse=True)
def _fresh_runtime() -> Iterator[None]:
    token = tracker.CURRENT_NODE.set(None)
    yield
    tracker.CURRENT_NODE.reset(token)
    threads.wait_idle(10.0)  # a test's workflow steps end before its database goes
    # Definitions recorded in the background go into this test's database, not the
    # next one's (PostgreSQL's is the same database, emptied between tests).
    definitions.wait_recorded(30.0)
    heartbeat.HEARTBEAT.clear()  # processes a test left running are not stamped later
    runtime.shutdown(timeout=2.0)
    statistics_keeper.stop_all()  # a dashboard's background thread must not outlive its test
    flow_tracker.config.reset()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the PostgreSQL server directly ``postgres``.

    Tests on the ``database_url`` fixture get the mark from its parameter; this
    covers those that ask for ``pg_server_url`` itself (a proxy in front of it...).
    """
    for item in items:
        if "pg_server_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
