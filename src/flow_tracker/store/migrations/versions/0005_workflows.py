"""Workflows: runs with their DAG and context, and the state of each step.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flow_tracker.store.types import UTCDateTime, json_type

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flow_tracker_workflow_runs",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(32), nullable=False),
        sa.Column("module", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dag", json_type(), nullable=False),
        sa.Column("context", json_type()),
        sa.Column("failed_step", sa.String(255)),
        sa.Column("active", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ix_flow_tracker_workflow_runs_created", "flow_tracker_workflow_runs", ["created_at", "id"]
    )
    op.create_index(
        "ix_flow_tracker_workflow_runs_name_created",
        "flow_tracker_workflow_runs",
        ["name", "created_at"],
    )
    op.create_index(
        "ix_flow_tracker_workflow_runs_status_created",
        "flow_tracker_workflow_runs",
        ["status", "created_at"],
    )
    op.create_table(
        "flow_tracker_workflow_steps",
        sa.Column("run_id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("waiting", sa.Integer, nullable=False),
        sa.Column("parents", json_type(), nullable=False),
        sa.Column("children", json_type(), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("process_id", sa.Uuid),
        sa.Column("job_id", sa.String(255)),
        sa.Column("result", json_type()),
        sa.Column("error_class", sa.String(255)),
        sa.Column("error_message", sa.Text),
        sa.Column("queue_name", sa.String(255), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime),
        sa.Column("queued_at", UTCDateTime),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ix_flow_tracker_workflow_steps_process", "flow_tracker_workflow_steps", ["process_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_flow_tracker_workflow_steps_process", "flow_tracker_workflow_steps")
    op.drop_table("flow_tracker_workflow_steps")
    for index in ("created", "name_created", "status_created"):
        op.drop_index(f"ix_flow_tracker_workflow_runs_{index}", "flow_tracker_workflow_runs")
    op.drop_table("flow_tracker_workflow_runs")
