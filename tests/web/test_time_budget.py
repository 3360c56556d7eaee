"""No request holds the database for long: every dashboard query runs under a time budget.

PostgreSQL cancels a statement past ``statement_timeout``; SQLite has no timeout,
so a progress handler interrupts it. A search that runs out of budget answers
"too broad" (400, page and API), never a 500 or a minutes-long wait.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker import runtime
from flow_tracker.store.bulk import insert_rows
from flow_tracker.store.engine import Store, is_timeout
from flow_tracker.web import create_app
from flow_tracker.web.errors import TOO_BROAD
from tests.web.conftest import ORIGIN

SLOW_SQL = {
    # Each runs for seconds; the budget is a twentieth of a second.
    "postgresql": "SELECT pg_sleep(3)",
    "sqlite": (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000000) "
        "SELECT count(*) FROM n"
    ),
}


def test_a_statement_past_the_budget_is_cancelled(database_url: str) -> None:
    store = Store(database_url, reader=True, statement_timeout=0.05)
    # Uncancelled, each statement would finish and raise nothing: the raise is the proof.
    with pytest.raises(OperationalError) as caught, store.engine.connect() as conn:
        conn.execute(text(SLOW_SQL[store.dialect])).all()
    assert is_timeout(caught.value)
    with store.engine.connect() as conn:  # the connection is usable afterwards
        assert conn.execute(text("SELECT 1")).scalar() == 1
    store.dispose()


def _many_logs(count: int) -> None:
    """One process with ``count`` log entries, written straight into the tables."""
    with flow_tracker.track("chatty") as tracker:
        pass
    flow_tracker.flush()
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    rows = [
        {
            "id": uuid.uuid4(),
            "process_id": tracker.process_id,
            "level": "info",
            "message": f"line {n} of a long and boring log",
            "created_at": start,
            "position": n,
        }
        for n in range(count)
    ]
    insert_rows(runtime.store(), [], [], rows)


def test_a_search_past_the_budget_answers_too_broad_on_the_page_and_the_api(
    tracked: str,
) -> None:
    _many_logs(60_000)
    # A millisecond: scanning 60,000 messages takes longer on any machine.
    app = create_app(tracked, keep_statistics=False, query_timeout=0.001)
    query = "q=zzzz-not-there&since=2000-01-01&order=oldest"
    with TestClient(app, base_url=ORIGIN) as client:
        page = client.get(f"/processes?{query}")
        api = client.get(f"/api/processes?{query}")
    assert page.status_code == 400 and "too broad" in page.text
    assert api.status_code == 400 and api.json() == {"error": TOO_BROAD, "status": 400}
    app.state.dashboard.store.dispose()


def test_a_search_within_the_budget_finds_names_and_messages_in_both_orders(
    tracked: str,
) -> None:
    with flow_tracker.track("first") as first:
        first.info("needle in the first")
    with flow_tracker.track("needle by name"):
        pass
    with flow_tracker.track("third") as third:
        third.info("no match here")
    flow_tracker.flush()
    app = create_app(tracked, keep_statistics=False)
    with TestClient(app, base_url=ORIGIN) as client:
        for order, expected in (
            ("newest", ["needle by name", "first"]),
            ("oldest", ["first", "needle by name"]),
        ):
            found = client.get(f"/api/processes?q=needle&since=2000-01-01&order={order}").json()
            assert [p["name"] for p in found["items"]] == expected
    app.state.dashboard.store.dispose()


def test_searches_beyond_the_slots_are_asked_to_come_back_and_other_pages_still_answer(
    tracked: str,
) -> None:
    from flow_tracker.web.context import SEARCH_SLOTS

    app = create_app(tracked, keep_statistics=False)
    slots = app.state.dashboard.search_slots
    for _ in range(SEARCH_SLOTS):  # as if that many broad searches were running
        assert slots.acquire(timeout=1)
    try:
        with TestClient(app, base_url=ORIGIN) as client:
            busy = client.get("/api/processes?q=anything")
            page = client.get("/processes?q=anything")
            plain = client.get("/processes")
    finally:
        for _ in range(SEARCH_SLOTS):
            slots.release()
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    assert "try again" in busy.json()["error"]
    assert page.status_code == 503 and "try again" in page.text
    assert plain.status_code == 200
    app.state.dashboard.store.dispose()
