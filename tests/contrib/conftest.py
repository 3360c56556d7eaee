"""A real Django project (settings, users, groups, sessions) with the dashboard mounted in it."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from flow_tracker import runtime
from flow_tracker.heartbeat import HEARTBEAT
from flow_tracker.store.clock import database_now
from flow_tracker.store.schema import processes
from tests.support.django_site import django_ready, make_users
from tests.web.conftest import Sample, record_sample


@pytest.fixture(scope="session")
def site_users(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Django set up once, its users of every kind logged in: their ``Cookie`` headers."""
    directory: Path = tmp_path_factory.mktemp("django")
    django_ready(directory)
    return make_users()


@pytest.fixture
def sample(tracked: str) -> Sample:
    """The dashboard tests' sample processes, on both backends."""
    imported, charged, running = record_sample()
    return Sample(tracked, imported, charged, running)


def silence(process_id: str) -> None:
    """The process's worker died two minutes ago: no heartbeat since (a reap marks it lost)."""
    HEARTBEAT.clear()
    with runtime.store().engine.begin() as conn:
        old = database_now(conn) - timedelta(minutes=2)
        conn.execute(
            update(processes)
            .where(processes.c.id == uuid.UUID(process_id))
            .values(heartbeat_at=old)
        )
