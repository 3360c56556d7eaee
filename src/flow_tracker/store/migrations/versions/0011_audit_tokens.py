"""Who may do what: the audit log and API tokens.

* ``flow_tracker_audit``: one row per action, allowed, refused or failed, with
  who, how they got in, from where, what and the outcome (never a payload
  value); indexed by time, by actor and by action for the audit page's filters
  and the retention's delete;
* ``flow_tracker_api_tokens``: one row per token, its secret kept as a SHA-256
  only; a token's name is unique among the tokens not revoked.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flow_tracker.store.types import UTCDateTime, json_type

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ACTIVE = "revoked_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "flow_tracker_audit",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("via", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", json_type()),
        sa.Column("client", sa.String(255)),
        sa.Column("request_id", sa.String(64)),
        sa.Column("times", sa.Integer, nullable=False, server_default=sa.text("1")),
    )
    op.create_index("ix_flow_tracker_audit_at", "flow_tracker_audit", ["at"])
    op.create_index("ix_flow_tracker_audit_actor", "flow_tracker_audit", ["actor", "at"])
    op.create_index("ix_flow_tracker_audit_action", "flow_tracker_audit", ["action", "at"])
    op.create_table(
        "flow_tracker_api_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(255)),
        sa.Column("expires_at", UTCDateTime),
        sa.Column("last_used_at", UTCDateTime),
        sa.Column("revoked_at", UTCDateTime),
        sa.Column("revoked_by", sa.String(255)),
    )
    op.create_index(
        "ux_flow_tracker_api_tokens_name",
        "flow_tracker_api_tokens",
        ["name"],
        unique=True,
        postgresql_where=sa.text(_ACTIVE),
        sqlite_where=sa.text(_ACTIVE),
    )


def downgrade() -> None:
    op.drop_index("ux_flow_tracker_api_tokens_name", "flow_tracker_api_tokens")
    op.drop_table("flow_tracker_api_tokens")
    op.drop_index("ix_flow_tracker_audit_action", "flow_tracker_audit")
    op.drop_index("ix_flow_tracker_audit_actor", "flow_tracker_audit")
    op.drop_index("ix_flow_tracker_audit_at", "flow_tracker_audit")
    op.drop_table("flow_tracker_audit")
