"""Compare: find the last completed run of a name before a moment in one index probe.

A partial index of completed processes by (name, started_at, id). Without it the
baseline of ``flow_tracker.compare`` walked a name's runs newest first through
``(name, created_at)`` and skipped every failed one, a scan when a job has
failed for weeks. The build reads the processes table once and blocks writes to
it meanwhile (writers keep their rows in memory and store them after).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ONLY_COMPLETED = "status = 'completed'"


def upgrade() -> None:
    op.create_index(
        "ix_flow_tracker_processes_completed_name_started",
        "flow_tracker_processes",
        ["name", "started_at", "id"],
        postgresql_where=sa.text(_ONLY_COMPLETED),
        sqlite_where=sa.text(_ONLY_COMPLETED),
    )


def downgrade() -> None:
    op.drop_index("ix_flow_tracker_processes_completed_name_started", "flow_tracker_processes")
