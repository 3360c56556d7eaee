"""PostgreSQL: the log-entry and flow tables partitioned by time (their UUIDv7 ids).

No row is copied: each table becomes the first partition of a new partitioned
table of the same name (one scan checks its ids), then the partitions of the
next days are attached; see :mod:`flow_tracker.store.partitions`. The lock it
holds while it runs blocks writes to these tables for the time of that scan;
writers keep their rows in memory and store them after. SQLite is left as it is.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from typing import Any

from alembic import op

from flow_tracker import config
from flow_tracker.store import partitions

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    conn: Any = bind.connection.driver_connection
    now = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    hours = config.current().partition_hours
    for table in partitions.TABLES:
        partitions.partition_table(conn, table, hours, now)
    partitions.keep_ahead(conn, hours, now)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    conn: Any = bind.connection.driver_connection
    for table in partitions.TABLES:
        partitions.unpartition_table(conn, table)
