"""Recovery: find the re-enqueued run of a lost or failed job.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ONLY_REQUEUED = "requeued_from_id IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_flow_tracker_processes_requeued_from",
        "flow_tracker_processes",
        ["requeued_from_id"],
        postgresql_where=sa.text(_ONLY_REQUEUED),
        sqlite_where=sa.text(_ONLY_REQUEUED),
    )


def downgrade() -> None:
    op.drop_index("ix_flow_tracker_processes_requeued_from", "flow_tracker_processes")
