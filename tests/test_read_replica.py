"""The dashboard on a real hot standby: it reads what the primary stored, and writes nothing.

A private primary and its streaming standby are started for the test
(:mod:`tests.support.standby`); jobs, logs and a workflow are recorded on the
primary and the reaper keeps its rollups there, as ``flow-tracker reap --every``
would; then a read-only dashboard pointed at the standby shows all of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.store import queries
from flow_tracker.store.engine import Store
from flow_tracker.web import create_app, statistics
from tests.conftest import _service_missing
from tests.support.standby import NoServerPrograms, Pair, primary_and_standby

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
REPLAY_WAIT_S = 120.0


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    try:
        with primary_and_standby() as started:
            yield started
    except NoServerPrograms as exc:
        _service_missing(str(exc))


def _wait_replayed(pair: Pair) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    with psycopg.connect(pair.primary, autocommit=True) as primary:
        target = primary.execute("SELECT pg_current_wal_lsn()").fetchall()[0][0]
    deadline = time.monotonic() + REPLAY_WAIT_S
    with psycopg.connect(pair.standby, autocommit=True) as standby:
        while True:
            behind = standby.execute(
                "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())", (target,)
            ).fetchall()[0][0]
            if behind <= 0:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"the standby was still {behind} bytes of WAL behind after 120 s")
            time.sleep(0.05)


def _record_on_primary(url: str) -> tuple[str, str, str]:
    """A completed job with logs, a failed one, and a workflow run; their ids."""
    flow_tracker.configure(database_url=url, log_to_stdlib=False)
    with flow_tracker.track("ImportOrders", metadata={"shop": "<b>north</b>"}) as job:
        with job.flow("download") as flow:
            flow.log("fetched 120 orders from the replica test")
    with pytest.raises(ValueError, match="declined"), flow_tracker.track("ChargeCards") as failed:
        raise ValueError("card declined")
    wf = flow_tracker.workflow("replica_order", queue="threads")

    @wf.step()
    def fetch(context: dict[str, object]) -> int:
        return 3

    @wf.step(depends_on=[fetch])
    def pack(context: dict[str, object], fetch: int) -> int:
        return fetch * 2

    run = wf.run(context={"order": 7})
    outcome = run.wait(60)
    failure = outcome.steps[outcome.failed_step] if outcome.failed_step else None
    assert outcome.status == "completed", failure
    assert flow_tracker.flush(timeout=60)
    flow_tracker.reap()  # the reaper keeps the partitions and rollups on the primary
    flow_tracker.reset()
    return str(job.process_id), str(failed.process_id), str(run.id)


def test_a_dashboard_on_a_hot_standby_shows_what_the_primary_stored(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    job_id, failed_id, run_id = _record_on_primary(pair.primary)
    _wait_replayed(pair)
    with psycopg.connect(pair.standby, autocommit=True) as standby:
        assert standby.execute("SELECT pg_is_in_recovery()").fetchall()[0][0] is True
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            standby.execute("CREATE TABLE refused (id int)")

    caplog.set_level(logging.DEBUG, logger="flow_tracker")
    reader = Store(pair.standby)
    reader.ensure_schema()  # at head already: nothing to write, nothing raised
    assert reader.keep_partitions(force=True) == []  # made ahead on the primary, replicated
    # Hours not rolled up yet make a refresh write: the standby refuses it, quietly,
    # and the pages read the rollups the primary keeps.
    later = queries.database_time(reader) + timedelta(hours=3)
    statistics.refresh_rollups(reader, later)
    assert any("read-only server" in r.getMessage() for r in caplog.records)
    reader.dispose()

    app = create_app(pair.standby, read_only=True)
    try:
        with TestClient(app) as client:
            pages = {
                "/": "ImportOrders",
                "/processes": "ChargeCards",
                f"/processes/{job_id}": "fetched 120 orders from the replica test",
                f"/processes/{failed_id}": "card declined",
                "/processes?q=ImportOrders": "ImportOrders",
                "/workflows": "replica_order",
                f"/workflows/{run_id}": "pack",
                "/workflows/analytics?window=24h": "replica_order",
                "/health": "lost",
            }
            for path, expected in pages.items():
                response = client.get(path)
                assert response.status_code == 200, (path, response.text[:300])
                assert expected in response.text, (path, expected)
            shown = client.get(f"/processes/{job_id}").text
            assert "<b>north</b>" not in shown  # metadata escaped there as everywhere
            items = client.get("/api/processes").json()["items"]
            assert {p["name"] for p in items} >= {"ImportOrders", "ChargeCards"}
            assert client.get(f"/api/workflows/{run_id}").json()["status"] == "completed"
            # Read-only: the clean-up is not offered, and an action posted anyway is
            # refused as such (before its CSRF token is even looked at).
            cleanup = client.get("/cleanup")
            assert cleanup.status_code == 403 and "read-only" in cleanup.text
            reap = client.post("/health/reap")
            assert reap.status_code == 403 and "read-only" in reap.text
    finally:
        app.state.dashboard.store.dispose()
    # Refused writes (the rollups) are expected on a replica: nothing above DEBUG.
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
