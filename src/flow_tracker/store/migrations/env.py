"""Alembic environment for flow-tracker's packaged migrations."""

from __future__ import annotations

from alembic import context

from flow_tracker.store.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("flow-tracker migrations run through flow_tracker.store.migrate")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
