"""Dashboard statistics: hourly and daily rollups, shared state, flows by finish time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flow_tracker.store.types import UTCDateTime, int_list_type

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _name_search_index() -> None:
    # Text search in process names ("name contains …") uses a trigram index where the
    # pg_trgm extension can be had; without it the search still works, by scanning.
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    savepoint = bind.begin_nested()
    try:
        bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        bind.exec_driver_sql(
            "CREATE INDEX IF NOT EXISTS ix_flow_tracker_processes_name_trgm "
            "ON flow_tracker_processes USING gin (name gin_trgm_ops)"
        )
    except sa.exc.DBAPIError:
        savepoint.rollback()
    else:
        savepoint.commit()


def upgrade() -> None:
    op.create_index("ix_flow_tracker_flows_finished", "flow_tracker_flows", ["finished_at"])
    _name_search_index()
    op.create_table(
        "flow_tracker_rollup_counts",
        sa.Column("grain", sa.String(1), primary_key=True),
        sa.Column("bucket_start", UTCDateTime, primary_key=True),
        sa.Column("kind", sa.String(1), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("category", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("duration_ms_sum", sa.Float, nullable=False),
    )
    op.create_table(
        "flow_tracker_rollup_durations",
        sa.Column("grain", sa.String(1), primary_key=True),
        sa.Column("bucket_start", UTCDateTime, primary_key=True),
        sa.Column("kind", sa.String(1), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("first_bucket", sa.SmallInteger, nullable=False),
        sa.Column("counts", int_list_type(), nullable=False),
    )
    op.create_table(
        "flow_tracker_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_flow_tracker_processes_name_trgm")
    op.drop_table("flow_tracker_state")
    op.drop_table("flow_tracker_rollup_durations")
    op.drop_table("flow_tracker_rollup_counts")
    op.drop_index("ix_flow_tracker_flows_finished", "flow_tracker_flows")
