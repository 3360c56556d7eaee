"""API tokens over HTTP: accepted on ``/api/*`` and ``/metrics`` with their role, nowhere else.

The dashboard under test lets nobody in by its own hook: a token is the only
way in, so every answer here is the token's doing. A bad, expired or revoked
token is a 401 that names the Bearer scheme; a hostile ``Authorization`` header
is refused the same way, never a 5xx. Both databases.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update
from starlette.requests import Request
from starlette.testclient import TestClient

from flow_tracker.store import tokens
from flow_tracker.store.clock import now_sql
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import api_tokens, audit_log
from flow_tracker.web import create_app
from tests.web.conftest import ORIGIN, Sample


def nobody(request: Request) -> bool:
    """The host app's hook: lets no one in (so only a token can)."""
    return False


@pytest.fixture
def store(sample: Sample) -> Iterator[Store]:
    """The sample database, to make tokens on and read rows back."""
    made = Store(sample.url)
    yield made
    made.dispose()


@pytest.fixture
def api(sample: Sample) -> Iterator[TestClient]:
    """The dashboard behind a hook that refuses everyone."""
    app = create_app(sample.url, auth=nobody)
    with TestClient(app, base_url=ORIGIN, raise_server_exceptions=False) as client:
        yield client
    app.state.dashboard.store.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_token_refused(answer: httpx.Response) -> None:
    assert answer.status_code == 401, f"{answer.status_code}: {answer.text[:200]}"
    challenges = answer.headers.get_list("www-authenticate")
    assert any(c.lower().startswith("bearer") for c in challenges), challenges


def test_without_a_token_the_hook_refuses(api: TestClient) -> None:
    assert api.get("/api/processes").status_code == 403


def test_a_viewer_token_reads_the_api_and_the_metrics(
    api: TestClient, store: Store, sample: Sample
) -> None:
    token = tokens.create(store, name="grafana", role="viewer").token
    listed = api.get("/api/processes?name=ChargeCard", headers=bearer(token))
    assert listed.status_code == 200, listed.text
    assert [item["id"] for item in listed.json()["items"]] == [sample.charged]
    assert api.get(f"/api/processes/{sample.imported}", headers=bearer(token)).status_code == 200
    metrics = api.get("/metrics", headers=bearer(token))
    assert metrics.status_code == 200 and "flow_tracker" in metrics.text


def test_a_viewer_token_cannot_act_and_an_operator_token_can(api: TestClient, store: Store) -> None:
    viewer = tokens.create(store, name="ci-read", role="viewer").token
    operator = tokens.create(store, name="ci-ops", role="operator").token
    path = f"/api/workflows/{uuid.uuid4()}/retry-failed"
    refused = api.post(path, json={"reason": "x"}, headers=bearer(viewer))
    assert refused.status_code == 403, refused.text
    # Let through to the handler, which knows no such run: permission was granted.
    passed = api.post(path, json={"reason": "x"}, headers=bearer(operator))
    assert passed.status_code == 404, passed.text


def test_payloads_follow_the_tokens_role(api: TestClient, store: Store, sample: Sample) -> None:
    viewer = tokens.create(store, name="v", role="viewer").token
    reader = tokens.create(store, name="r", role="reader").token
    path = f"/api/processes/{sample.imported}"
    as_viewer = api.get(path, headers=bearer(viewer))
    as_reader = api.get(path, headers=bearer(reader))
    assert as_viewer.status_code == as_reader.status_code == 200
    assert as_reader.json()["metadata"]["tenant"] == "acme"
    assert "acme" not in as_viewer.text and as_viewer.json()["metadata"]["tenant"] != "acme"


def test_a_token_is_not_accepted_on_pages(api: TestClient, store: Store) -> None:
    token = tokens.create(store, name="ops", role="operator").token
    for path in ("/", "/processes", "/health", "/workflows", "/cleanup"):
        answer = api.get(path, headers=bearer(token))
        assert answer.status_code in (401, 403), f"{path}: {answer.status_code}"
        assert "ImportOrders" not in answer.text


@pytest.mark.parametrize("path", ["/api/processes", "/metrics"])
def test_bad_expired_and_revoked_tokens_are_401_with_a_bearer_challenge(
    api: TestClient, store: Store, path: str
) -> None:
    good = tokens.create(store, name="ci", role="viewer").token
    _, token_id, secret = good.split("_", 2)
    flipped = ("A" if secret[0] != "A" else "B") + secret[1:]
    for bad in (f"ft_{token_id}_{flipped}", f"ft_zzzzzzzzzzzz_{secret}", "ft_", "ft__"):
        assert_token_refused(api.get(path, headers=bearer(bad)))

    expiring = tokens.create(store, name="short", role="viewer", expires_in=timedelta(hours=1))
    assert api.get(path, headers=bearer(expiring.token)).status_code == 200
    with store.engine.begin() as conn:
        conn.execute(
            update(api_tokens)
            .where(api_tokens.c.name == "short")
            .values(expires_at=now_sql(store.dialect, -1.0))
        )
    assert_token_refused(api.get(path, headers=bearer(expiring.token)))

    assert api.get(path, headers=bearer(good)).status_code == 200
    assert tokens.revoke(store, "ci")
    assert_token_refused(api.get(path, headers=bearer(good)))  # the very next request


@pytest.mark.parametrize(
    "header",
    [
        b"Bearer ft_" + b"a" * 10_000,
        b"Bearer ft_abcdefghijkl_" + "é".encode() * 43,
        b"Bearer ft_abcdefghijkl_\xff\xfe" + b"s" * 41,
        b"Bearer ft_abcdefghijkl_" + b"\x01" * 43,
        b"Bearer ft_<script>alert(1)</script>",
    ],
    ids=["len-10000", "non-ascii", "not-utf8", "control", "script"],
)
def test_hostile_authorization_headers_are_refused_cleanly(
    api: TestClient, store: Store, header: bytes
) -> None:
    tokens.create(store, name="ci", role="viewer")
    answer = api.get("/api/processes", headers={"Authorization": header})
    assert answer.status_code == 401, answer.text[:200]
    assert "<script>" not in answer.text


def test_a_tokens_use_is_stored_and_its_refusals_audited_under_its_name(
    api: TestClient, store: Store
) -> None:
    token = tokens.create(store, name="ci", role="viewer").token
    assert tokens.list_tokens(store)[0].last_used_at is None
    assert api.get("/api/processes", headers=bearer(token)).status_code == 200
    assert tokens.list_tokens(store)[0].last_used_at is not None
    path = f"/api/workflows/{uuid.uuid4()}/retry-failed"
    assert api.post(path, json={}, headers=bearer(token)).status_code == 403
    with store.engine.connect() as conn:
        refused = conn.execute(
            select(audit_log.c.actor, audit_log.c.role, audit_log.c.via).where(
                audit_log.c.outcome == "refused"
            )
        ).all()
    assert [tuple(row) for row in refused] == [("ci", "viewer", "token:ci")]
