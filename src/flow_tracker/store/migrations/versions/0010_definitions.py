"""Starting workflows from outside the code: definitions, versions, idempotency keys, tags.

* ``flow_tracker_workflow_definitions``: one row per (namespace, name, version)
  that any process declared, with its DAG snapshot, so the dashboard, the API
  and the CLI list and start workflows they never imported;
* runs keep the namespace and version they were started with (existing runs are
  ``default`` / ``1``, what a workflow declared without them is), their tags and
  their idempotency key; a unique index on (namespace, name, key) is what makes
  a repeated start return the existing run, whoever races for it;
* ``flow_tracker_workflow_run_tags``: one row per tag of a run, indexed by
  (key, value, created_at) so the run list filtered by a tag reads its page in
  index order, however many runs carry the tag.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-11
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flow_tracker.store.types import UTCDateTime, json_type

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_HAS_KEY = "idempotency_key IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "flow_tracker_workflow_definitions",
        sa.Column("namespace", sa.String(120), primary_key=True),
        sa.Column("name", sa.String(120), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("description", sa.Text),
        sa.Column("dag", json_type(), nullable=False),
        sa.Column("queue", sa.String(32), nullable=False),
        sa.Column("queue_name", sa.String(255), nullable=False),
        sa.Column("module", sa.String(255)),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
    )
    with op.batch_alter_table("flow_tracker_workflow_runs") as batch:
        batch.add_column(
            sa.Column("namespace", sa.String(120), nullable=False, server_default="default")
        )
        batch.add_column(sa.Column("version", sa.String(64), nullable=False, server_default="1"))
        batch.add_column(sa.Column("idempotency_key", sa.String(255)))
        batch.add_column(sa.Column("tags", json_type()))
    op.create_index(
        "ux_flow_tracker_workflow_runs_idempotency",
        "flow_tracker_workflow_runs",
        ["namespace", "name", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text(_HAS_KEY),
        sqlite_where=sa.text(_HAS_KEY),
    )
    op.create_table(
        "flow_tracker_workflow_run_tags",
        sa.Column("run_id", sa.Uuid, primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ix_flow_tracker_workflow_run_tags_lookup",
        "flow_tracker_workflow_run_tags",
        ["key", "value", "created_at", "run_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_flow_tracker_workflow_run_tags_lookup", "flow_tracker_workflow_run_tags")
    op.drop_table("flow_tracker_workflow_run_tags")
    op.drop_index("ux_flow_tracker_workflow_runs_idempotency", "flow_tracker_workflow_runs")
    with op.batch_alter_table("flow_tracker_workflow_runs") as batch:
        batch.drop_column("tags")
        batch.drop_column("idempotency_key")
        batch.drop_column("version")
        batch.drop_column("namespace")
    op.drop_table("flow_tracker_workflow_definitions")
