"""Packaged migrations: create the schema, keep their own version table, run concurrently."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from sqlalchemy import inspect

from flow_tracker.store import migrate
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import VERSION_TABLE, metadata


def test_upgrade_creates_every_table_and_index_of_the_schema(database_url: str) -> None:
    store = Store(database_url)
    store.ensure_schema()
    inspector = inspect(store.engine)
    tables = set(inspector.get_table_names())
    assert {t.name for t in metadata.sorted_tables} | {VERSION_TABLE} <= tables
    for table in metadata.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        expected = {
            i.name
            for i in table.indexes
            if store.dialect == "postgresql" or i.name != "ix_flow_tracker_processes_metadata"
        }
        assert expected <= indexes, table.name
    with store.engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
    assert "alembic_version" not in tables  # the host app's own history is left alone
    store.dispose()


def test_head_revision_constant_matches_the_migration_scripts() -> None:
    assert migrate.head_revision() == migrate.HEAD_REVISION


def test_concurrent_first_use_from_several_processes_migrates_once(sqlite_url: str) -> None:
    script = textwrap.dedent(
        f"""
        import flow_tracker
        flow_tracker.configure(database_url={sqlite_url!r}, log_to_stdlib=False)
        with flow_tracker.track("first use"):
            pass
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE) for _ in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        assert b"internal error" not in err, err.decode()
    store = Store(sqlite_url)
    with store.engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.HEAD_REVISION
        count = conn.exec_driver_sql("SELECT count(*) FROM flow_tracker_processes").scalar_one()
    assert count == 4
    store.dispose()
