"""Rollups count retried processes: the retry rate of jobs and workflow steps.

Rollup rows written before this revision count none (their processes' attempts
were not rolled up); the raw rows after the last rolled hour are counted as read.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flow_tracker_rollup_counts") as batch:
        batch.add_column(
            sa.Column("retried", sa.BigInteger, nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("flow_tracker_rollup_counts") as batch:
        batch.drop_column("retried")
