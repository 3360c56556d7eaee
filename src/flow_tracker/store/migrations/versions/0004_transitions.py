"""State history: every status change of a process.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flow_tracker.store.types import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flow_tracker_transitions",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("process_id", sa.Uuid, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("attempt", sa.Integer),
        sa.Column("reason", sa.Text),
    )
    op.create_index(
        "ix_flow_tracker_transitions_process", "flow_tracker_transitions", ["process_id", "at"]
    )


def downgrade() -> None:
    op.drop_index("ix_flow_tracker_transitions_process", "flow_tracker_transitions")
    op.drop_table("flow_tracker_transitions")
