"""The unit lane's promise: no database service, no worker (``make test-unit`` runs in seconds)."""

from __future__ import annotations

import pytest

# Fixtures that bring up a database; a test here that wants one belongs one folder up.
DATABASE_FIXTURES = frozenset({"database_url", "pg_server_url", "proxied_pg", "tracked"})


@pytest.fixture(autouse=True)
def _no_database_fixture(request: pytest.FixtureRequest) -> None:
    wanted = DATABASE_FIXTURES & set(request.fixturenames)
    if wanted:
        pytest.fail(f"tests/unit needs no database; move this test up (it uses {sorted(wanted)})")
