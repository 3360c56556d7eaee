"""Delivery: the outbox of requests to publish (steps to send, lost jobs to enqueue again).

A manual action made where the queue's integration is not installed (the
dashboard, the CLI, a script) writes its request here in the transaction of
its state change; a live worker of that queue publishes it and marks it sent.
A partial index of pending rows by system and due time answers the workers'
poll in one probe, whatever the number of rows sent before.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flow_tracker.store.types import UTCDateTime, json_type

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_PENDING = "status = 'pending'"


def upgrade() -> None:
    op.create_table(
        "flow_tracker_outbox",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("job_system", sa.String(32), nullable=False),
        sa.Column("workflow", sa.String(255)),
        sa.Column("target_id", sa.Uuid, nullable=False),
        sa.Column("payload", json_type(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("next_try_at", UTCDateTime, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("sent_by", sa.String(255)),
    )
    op.create_index(
        "ix_flow_tracker_outbox_pending",
        "flow_tracker_outbox",
        ["job_system", "next_try_at"],
        postgresql_where=sa.text(_PENDING),
        sqlite_where=sa.text(_PENDING),
    )
    op.create_index("ix_flow_tracker_outbox_target", "flow_tracker_outbox", ["target_id"])


def downgrade() -> None:
    op.drop_index("ix_flow_tracker_outbox_target", "flow_tracker_outbox")
    op.drop_index("ix_flow_tracker_outbox_pending", "flow_tracker_outbox")
    op.drop_table("flow_tracker_outbox")
