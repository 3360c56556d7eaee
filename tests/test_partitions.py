"""PostgreSQL's time partitions: made ahead, rows in the right one, retention by dropping.

Also the migration of a populated database, and plans that touch only what they need.
"""

from __future__ import annotations

import itertools
import json
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from sqlalchemy import insert, select
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker import ids
from flow_tracker.store import migrate, partitions, queries
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import flows, log_entries, processes
from tests.conftest import PG_SERVER

pytestmark = pytest.mark.postgres
LOGS = "flow_tracker_log_entries"
FLOWS = "flow_tracker_flows"
_rng = random.Random(7)


def _id_at(moment: datetime) -> uuid.UUID:
    """A UUIDv7 made at ``moment`` (as a host with that clock would make it)."""
    ms = int(moment.timestamp() * 1000)
    return uuid.UUID(int=(ms << 80) | (0x7 << 76) | (0b10 << 62) | _rng.getrandbits(62))


@pytest.fixture
def fresh_url(pg_server_url: str) -> Iterator[str]:
    """A new, empty database of its own (the migration tests need one at an old revision)."""
    name = f"ft_part_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_SERVER.rsplit('/', 1)[0]}/{name}"
    flow_tracker.reset()
    with psycopg.connect(PG_SERVER, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _driver(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def _where(conn: Any, table: str) -> dict[str, int]:
    """Rows of ``table`` by the partition that holds them."""
    rows = conn.execute(f"SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1")
    return {name: int(n) for name, n in rows.fetchall()}


def _process(pid: uuid.UUID, created: datetime, status: str = "completed") -> dict[str, Any]:
    return {
        "id": pid,
        "name": "Import",
        "category": "jobs",
        "status": status,
        "created_at": created,
        "started_at": created,
        "finished_at": None if status == "running" else created + timedelta(seconds=1),
        "attempt": 1,
    }


def _log(pid: uuid.UUID, at: datetime, position: int) -> dict[str, Any]:
    return {
        "id": _id_at(at),
        "process_id": pid,
        "level": "info",
        "message": f"line {position}",
        "created_at": at,
        "position": position,
    }


def _flow(pid: uuid.UUID, at: datetime, position: int) -> dict[str, Any]:
    return {
        "id": _id_at(at),
        "process_id": pid,
        "name": "step",
        "status": "completed",
        "started_at": at,
        "finished_at": at,
        "attempt": 1,
        "position": position,
        "depth": 0,
    }


def _store_partitioned_since(url: str, start: datetime) -> Store:
    """A database at head whose daily partitions begin at ``start``, in the past.

    As a fleet's database looks after weeks of use.
    """
    store = Store(url)
    migrate.upgrade(store.engine, "0006")
    with _driver(url) as conn, conn.transaction():
        for table in partitions.TABLES:
            partitions.partition_table(conn, table, 24, start)
    migrate.upgrade(store.engine)  # 0007 finds them partitioned and leaves them
    store.keep_partitions(force=True)
    return store


def test_a_new_database_has_todays_and_the_next_partitions_and_a_default(fresh_url: str) -> None:
    store = Store(fresh_url)
    store.ensure_schema()
    with _driver(fresh_url) as conn:
        now = conn.execute("SELECT now()").fetchall()[0][0]
        for table in partitions.TABLES:
            assert partitions.is_partitioned(conn, table)
            found = partitions.partitions(conn, table)
            assert found[-1].default and found[-1].name == f"{table}_default"
            ranges = found[:-1]
            assert ranges[0].start is None  # the table as it was: the first partition
            for earlier, later in itertools.pairwise(ranges):
                assert earlier.end == later.start  # no gap, no overlap
                assert later.end is not None and later.start is not None
                assert later.end - later.start == timedelta(hours=24)
            assert ranges[-1].end is not None and ranges[-1].end >= now + partitions.AHEAD
        indexes = {
            name
            for (name,) in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = %s", (FLOWS,)
            ).fetchall()
        }
        assert {"ix_flow_tracker_flows_process", "ix_flow_tracker_flows_name_started"} <= indexes
    # Asked again within the hour, nothing more is done; forced, nothing is missing.
    assert store.keep_partitions() == []
    assert store.keep_partitions(force=True) == []
    store.dispose()


def test_rows_land_by_their_ids_time_and_a_later_partition_takes_its_rows_from_the_default(
    fresh_url: str,
) -> None:
    store = Store(fresh_url)
    store.ensure_schema()
    now = datetime.now(timezone.utc)
    pid = uuid.uuid4()
    rows = [_log(pid, now, 1), _log(pid, now + timedelta(days=9), 2)]
    rows.append(_log(pid, now - timedelta(days=400), 3))
    with store.engine.begin() as db:
        db.execute(insert(processes), [_process(pid, now)])
        db.execute(insert(log_entries), rows)
    with _driver(fresh_url) as conn:
        placed = _where(conn, LOGS)
        assert placed[f"{LOGS}_default"] == 1  # nine days ahead: no partition yet
        made = partitions.keep_ahead(conn, 24, now + timedelta(days=8))
        assert len(made) >= 8
        placed = _where(conn, LOGS)
    assert f"{LOGS}_default" not in placed  # moved into the partition made for it
    assert sum(placed.values()) == 3
    record = queries.get_process(store, pid)
    assert record is not None
    # A row made by a clock more than a day behind the process's creation is stored,
    # but a process page looks for its rows from a day before it was created only.
    assert [e.message for e in record.logs] == ["line 1", "line 2"]
    store.dispose()


def test_cleanup_drops_whole_partitions_and_deletes_rows_only_where_the_cutoff_falls(
    fresh_url: str,
) -> None:
    now = datetime.now(timezone.utc)
    store = _store_partitioned_since(fresh_url, now - timedelta(days=10))
    old, kept, running = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    procs = [
        _process(old, now - timedelta(days=6)),
        _process(kept, now - timedelta(days=1)),
        _process(running, now - timedelta(days=8), status="running"),
    ]
    logs, flow_rows = [], []
    for day in range(10):  # a log and a flow of the old process every day, ten days back
        at = now - timedelta(days=day, hours=1)
        logs.append(_log(old, at, day))
        flow_rows.append(_flow(old, at, day))
        logs.append(_log(running, at, 100 + day))
    logs.append(_log(kept, now - timedelta(hours=20), 1))
    with store.engine.begin() as db:
        db.execute(insert(processes), procs)
        db.execute(insert(log_entries), logs)
        db.execute(insert(flows), flow_rows)
    with _driver(fresh_url) as conn:
        before = partitions.partitions(conn, LOGS)
    flow_tracker.configure(database_url=fresh_url, log_to_stdlib=False)
    assert flow_tracker.cleanup(days=3) == 1  # the old process; the running one is kept
    cutoff = now - timedelta(days=3)
    with _driver(fresh_url) as conn:
        after = {p.name for p in partitions.partitions(conn, LOGS)}
        gone = {p.name for p in before if p.end is not None and p.end <= cutoff}
        assert gone and not gone & after  # dropped whole
        left = conn.execute(f"SELECT process_id, created_at FROM {LOGS}").fetchall()
        left_flows = conn.execute(f"SELECT count(*) FROM {FLOWS}").fetchall()[0][0]
    # Older than the cutoff: nothing, whoever it belonged to (a running process included).
    assert all(at >= cutoff - timedelta(seconds=1) for _pid, at in left)
    assert len([1 for pid, _at in left if pid == running]) == 3  # days 0, 1 and 2
    assert len([1 for pid, _at in left if pid == kept]) == 1
    # The deleted process's newer rows are kept by time: not shown, gone with their partition.
    assert len([1 for pid, _at in left if pid == old]) == 3 and left_flows == 3
    assert flow_tracker.get_process(old) is None
    store.dispose()


def test_cleanup_of_some_statuses_deletes_rows_and_drops_no_partition(fresh_url: str) -> None:
    now = datetime.now(timezone.utc)
    store = _store_partitioned_since(fresh_url, now - timedelta(days=6))
    failed, done = uuid.uuid4(), uuid.uuid4()
    with store.engine.begin() as db:
        db.execute(
            insert(processes),
            [
                _process(failed, now - timedelta(days=5), status="failed"),
                _process(done, now - timedelta(days=5)),
            ],
        )
        db.execute(
            insert(log_entries),
            [_log(failed, now - timedelta(days=5), 1), _log(done, now - timedelta(days=5), 1)],
        )
    with _driver(fresh_url) as conn:
        before = [p.name for p in partitions.partitions(conn, LOGS)]
    flow_tracker.configure(database_url=fresh_url, log_to_stdlib=False)
    assert flow_tracker.cleanup(days=3, statuses=["failed"]) == 1
    with _driver(fresh_url) as conn:
        assert [p.name for p in partitions.partitions(conn, LOGS)] == before
        owners = [pid for (pid,) in conn.execute(f"SELECT process_id FROM {LOGS}").fetchall()]
    assert owners == [done]
    store.dispose()


def test_migrating_a_populated_database_keeps_every_row_and_index_and_can_go_back(
    fresh_url: str,
) -> None:
    store = Store(fresh_url)
    migrate.upgrade(store.engine, "0006")
    now = datetime.now(timezone.utc)
    pid = uuid.uuid4()
    logs = [
        _log(pid, now - timedelta(days=d, minutes=k), d * 10 + k)
        for d in range(5)
        for k in range(4)
    ]
    logs.append(_log(pid, now + timedelta(days=30), 999))  # a host whose clock runs ahead
    flow_rows = [_flow(pid, now - timedelta(days=d), d) for d in range(5)]
    with store.engine.begin() as db:
        db.execute(insert(processes), [_process(pid, now - timedelta(days=5))])
        db.execute(insert(log_entries), logs)
        db.execute(insert(flows), flow_rows)

    def snapshot() -> tuple[list[Any], list[Any]]:
        with _driver(fresh_url) as conn:
            return (
                conn.execute(f"SELECT * FROM {LOGS} ORDER BY id").fetchall(),
                conn.execute(f"SELECT * FROM {FLOWS} ORDER BY id").fetchall(),
            )

    original = snapshot()
    migrate.upgrade(store.engine)
    assert snapshot() == original
    with _driver(fresh_url) as conn:
        placed = _where(conn, LOGS)
        first = [n for n in placed if "_before_" in n]
        assert len(first) == 1 and placed[first[0]] == 20  # the old table, as it was
        assert placed[f"{LOGS}_default"] == 1
        adopted = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s", (first[0],)
        ).fetchall()
        assert len(adopted) == 2  # its primary key and process index, not built again
    record = queries.get_process(store, pid)
    assert record is not None and len(record.logs) == 21 and len(record.flows) == 5

    migrate.downgrade(store.engine, "0006")
    assert snapshot() == original
    with _driver(fresh_url) as conn:
        assert not partitions.is_partitioned(conn, LOGS)
        indexes = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s", (LOGS,)
        ).fetchall()
        assert sorted(n for (n,) in indexes) == [
            "flow_tracker_log_entries_pkey",
            "ix_flow_tracker_log_entries_process",
        ]
    store.dispose()


def _relations(plan: Any) -> set[str]:
    """Every table a JSON plan reads, with the scan used on it."""
    found: set[str] = set()
    stack = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "Relation Name" in node:
                found.add(f"{node['Relation Name']}:{node['Node Type']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def test_a_process_page_and_a_search_in_time_read_only_their_partitions(fresh_url: str) -> None:
    now = datetime.now(timezone.utc)
    store = _store_partitioned_since(fresh_url, now - timedelta(days=20))
    flow_tracker.configure(database_url=fresh_url, log_to_stdlib=False)
    with flow_tracker.track("Report") as proc:
        proc.log("needle in the haystack")
    flow_tracker.flush()
    record = flow_tracker.get_process(proc.process_id)
    assert record is not None and record.logs[0].message == "needle in the haystack"
    with store.engine.connect() as db:
        read = select(log_entries).where(
            log_entries.c.process_id == proc.process_id,
            *queries._made_since(store, log_entries, record.created_at),
        )
        sql = str(read.compile(db, compile_kwargs={"literal_binds": True}))
        plan = db.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}").scalar_one()
    with _driver(fresh_url) as conn:
        total = len(partitions.partitions(conn, LOGS))
    read_from = _relations(plan)
    # Yesterday's, today's, the ones ahead and the default: not the twenty days before.
    assert 2 <= len(read_from) <= 6 < total, read_from
    assert all(":Index" in r or ":Bitmap Heap Scan" in r for r in read_from), read_from
    found = flow_tracker.list_processes(search="needle", since=now - timedelta(hours=1))
    assert [p.id for p in found] == [proc.process_id]
    # The search's scan of messages, bounded as a search "since an hour ago" bounds it.
    with store.engine.connect() as db:
        scan = select(log_entries.c.process_id).where(
            log_entries.c.message.ilike("%needle%"),
            log_entries.c.id >= ids.id_floor(now - timedelta(hours=1)),
        )
        sql = str(scan.compile(db, compile_kwargs={"literal_binds": True}))
        plan = db.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}").scalar_one()
    scanned = _relations(plan)
    assert 1 <= len(scanned) <= 5 < total, scanned  # today's, the ones ahead, the default
    store.dispose()


def test_a_read_only_server_serves_the_dashboard_and_is_left_unwritten_quietly(
    fresh_url: str,
) -> None:
    Store(fresh_url).ensure_schema()
    flow_tracker.configure(database_url=fresh_url, log_to_stdlib=False)
    with flow_tracker.track("Nightly", metadata={"rows": 3}) as proc:
        proc.log("imported")
    flow_tracker.flush()
    flow_tracker.reset()
    # What a hot standby answers to any write: "cannot execute … in a read-only transaction".
    replica = f"{fresh_url}?options=-c%20default_transaction_read_only%3Don"
    reader = Store(replica)
    reader.ensure_schema()  # at head already: nothing to write
    assert reader.keep_partitions(force=True) == []  # refused quietly, not raised
    from flow_tracker.web import create_app

    app = create_app(replica, read_only=True)
    with TestClient(app) as client:
        for path in ["/", "/processes", f"/processes/{proc.process_id}", "/workflows", "/health"]:
            response = client.get(path)
            assert response.status_code == 200, (path, response.text[:300])
        assert "imported" in client.get(f"/processes/{proc.process_id}").text
        assert json.loads(client.get("/api/processes").text)["items"][0]["name"] == "Nightly"
    app.state.dashboard.store.dispose()
    reader.dispose()


def test_the_cli_takes_the_tables_back_to_unpartitioned_and_up_again(fresh_url: str) -> None:
    from click.testing import CliRunner

    from flow_tracker.cli import main

    runner = CliRunner()
    up = runner.invoke(main, ["db", "upgrade", "--database-url", fresh_url])
    assert up.exit_code == 0, up.output
    down = runner.invoke(main, ["db", "downgrade", "0006", "--database-url", fresh_url])
    assert down.exit_code == 0 and "is at revision 0006" in down.output, down.output
    with _driver(fresh_url) as conn:
        assert not any(partitions.is_partitioned(conn, t) for t in partitions.TABLES)
    again = runner.invoke(main, ["db", "upgrade", "--database-url", fresh_url])
    assert again.exit_code == 0 and f"is at revision {migrate.HEAD_REVISION}" in again.output, (
        again.output
    )
    with _driver(fresh_url) as conn:
        assert all(partitions.is_partitioned(conn, t) for t in partitions.TABLES)
