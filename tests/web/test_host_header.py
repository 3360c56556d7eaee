"""The ``Host`` check reads a header strictly: no odd spelling passes as an allowed host.

``[::1]<anything>`` passed as ``::1``, and ``localhost..`` or ``127.0.0.1.`` as
the loopback names. A bracketed IPv6 address may only be followed by ``:port``;
one final dot on a DNS name is its fully qualified spelling, the same host
(``localhost.`` is ``localhost``), and nothing more: two dots name nothing, and an
IP address has no final dot.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from flow_tracker.web import create_app
from flow_tracker.web.security import serving_hosts
from tests.web.conftest import Sample

SAME_HOSTS = [
    "localhost",
    "localhost:8000",
    "LocalHost:8000",
    "localhost.",  # fully qualified: the same host
    "localhost.:8000",
    "127.0.0.1",
    "127.0.0.1:8000",
    "[::1]",
    "[::1]:8000",
    "[0:0:0:0:0:0:0:1]:8000",  # ::1, spelled out
]
REFUSED_HOSTS = [
    "[::1]evil.example",
    "[::1].evil.example:8000",
    "[::1]:8000evil",
    "[::1]:8000:80",
    "[::1]:",
    "[::1",
    "[::1]]",
    "[::1%25lo]:8000",
    "[::1%lo]",
    "[localhost]:8000",
    "::1",
    "localhost..",
    "localhost..:8000",
    ".localhost",
    "127.0.0.1.",
    "127.0.0.1.:8000",
    "127.1",
    "0x7f.0.0.1",
    "127.000.000.001",
    "localhost:80:80",
    "localhost:abc",
    "localhost:",
    "localhost:999999",
    "localhost:65536",
    "[::1]:65536",
    "local host",
    "localhost%00",
    "localhost/evil",
    "localhost@evil.example",
    "attacker.example",
    "attacker.example.",
    "localhost.attacker.example",
    "",
]


@pytest.fixture
def local(sample: Sample) -> Iterator[TestClient]:
    """The dashboard as ``flow-tracker serve --host 127.0.0.1`` checks hosts."""
    app = create_app(sample.url, allowed_hosts=serving_hosts("127.0.0.1"))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield client
    app.state.dashboard.store.dispose()


def test_each_spelling_of_an_allowed_host_is_answered(local: TestClient) -> None:
    for host in SAME_HOSTS:
        assert local.get("/api/health", headers={"host": host}).status_code in (200, 503), host


def test_a_host_header_that_is_not_exactly_an_allowed_host_is_refused(
    local: TestClient,
) -> None:
    for host in REFUSED_HOSTS:
        response = local.get("/api/health", headers={"host": host})
        assert response.status_code == 400 and response.text == "unknown host", host


def test_a_trailing_dot_matches_the_allowed_names_and_patterns_and_nothing_else(
    sample: Sample,
) -> None:
    app = create_app(sample.url, allowed_hosts=["jobs.internal.", "*.example.com", "[::1]"])
    with TestClient(app, base_url="http://jobs.internal") as client:
        for host in ("jobs.internal", "jobs.internal.", "a.example.com.", "[::1]:80"):
            assert client.get("/api/health", headers={"host": host}).status_code != 400, host
        for host in ("jobs.internal..", "example.com.", "a.example.com..", "evil-example.com."):
            assert client.get("/api/health", headers={"host": host}).status_code == 400, host
    app.state.dashboard.store.dispose()
