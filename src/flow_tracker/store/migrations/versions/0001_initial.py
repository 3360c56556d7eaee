"""Processes, flows, log entries and locks.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flow_tracker.store.types import UTCDateTime, json_type

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _error_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("error_class", sa.String(255)),
        sa.Column("error_message", sa.Text),
        sa.Column("error_traceback", sa.Text),
    ]


def upgrade() -> None:
    running = sa.text("status IN ('running', 'retrying')")
    op.create_table(
        "flow_tracker_processes",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metadata", json_type()),
        *_error_columns(),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("queued_at", UTCDateTime),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime),
        sa.Column("duration_ms", sa.Float),
        sa.Column("progress_current", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.Column("progress_total", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.Column("job_system", sa.String(32)),
        sa.Column("job_id", sa.String(255)),
        sa.Column("queue", sa.String(255)),
        sa.Column("job_args", json_type()),
        sa.Column("job_payload", json_type()),
        sa.Column("attempt", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("max_attempts", sa.Integer),
        sa.Column("parent_process_id", sa.Uuid),
        sa.Column("requeued_from_id", sa.Uuid),
        sa.Column("lost_count", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("worker", sa.String(255)),
        sa.Column("heartbeat_at", UTCDateTime),
        sa.Column("dropped_logs", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    p = "flow_tracker_processes"
    op.create_index("ix_flow_tracker_processes_created", p, ["created_at", "id"])
    op.create_index("ix_flow_tracker_processes_status_created", p, ["status", "created_at"])
    op.create_index("ix_flow_tracker_processes_category_created", p, ["category", "created_at"])
    op.create_index("ix_flow_tracker_processes_name_created", p, ["name", "created_at"])
    op.create_index("ix_flow_tracker_processes_job_id", p, ["job_id"])
    op.create_index("ix_flow_tracker_processes_parent", p, ["parent_process_id"])
    op.create_index("ix_flow_tracker_processes_finished", p, ["finished_at"])
    op.create_index(
        "ix_flow_tracker_processes_heartbeat",
        p,
        ["heartbeat_at"],
        postgresql_where=running,
        sqlite_where=running,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_flow_tracker_processes_metadata",
            p,
            ["metadata"],
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        )

    op.create_table(
        "flow_tracker_flows",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("process_id", sa.Uuid, nullable=False),
        sa.Column("parent_id", sa.Uuid),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metadata", json_type()),
        *_error_columns(),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("duration_ms", sa.Float),
        sa.Column("attempt", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("depth", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.create_index(
        "ix_flow_tracker_flows_process", "flow_tracker_flows", ["process_id", "position"]
    )
    op.create_index(
        "ix_flow_tracker_flows_name_started", "flow_tracker_flows", ["name", "started_at"]
    )

    op.create_table(
        "flow_tracker_log_entries",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("process_id", sa.Uuid, nullable=False),
        sa.Column("flow_id", sa.Uuid),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", json_type()),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_flow_tracker_log_entries_process",
        "flow_tracker_log_entries",
        ["process_id", "position"],
    )

    op.create_table(
        "flow_tracker_locks",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("process_id", sa.Uuid),
        sa.Column("fence", sa.BigInteger, nullable=False),
        sa.Column("acquired_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_flow_tracker_locks_expires", "flow_tracker_locks", ["expires_at"])


def downgrade() -> None:
    for table in (
        "flow_tracker_locks",
        "flow_tracker_log_entries",
        "flow_tracker_flows",
        "flow_tracker_processes",
    ):
        op.drop_table(table)
