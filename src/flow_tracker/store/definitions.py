"""How workflow definitions are stored: one row per (namespace, name, version) ever declared.

Every process that declares a workflow writes its row once (an upsert: the first
writer sets ``first_seen``, every later one moves ``last_seen`` and refreshes the
snapshot, queue and module to what the newest declaring process runs). Pages,
the API and the CLI read them without importing user code.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, func, literal_column, select

from flow_tracker.store.dialect import insert_for
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import workflow_definitions

LIST_LIMIT = 10_000  # the definitions a list reads at most (a page shows them all)


def record(store: Store, definition: Mapping[str, Any]) -> None:
    """Insert the definition, or move its ``last_seen`` and refresh what it declares.

    ``definition``: ``namespace``, ``name``, ``version``, ``description``, ``dag``,
    ``queue``, ``queue_name`` and ``module``.
    """
    now = datetime.now(timezone.utc)
    values = {**definition, "first_seen": now, "last_seen": now}
    statement = insert_for(store.dialect)(workflow_definitions).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["namespace", "name", "version"],
        set_={
            "description": statement.excluded.description,
            "dag": statement.excluded.dag,
            "queue": statement.excluded.queue,
            "queue_name": statement.excluded.queue_name,
            "module": statement.excluded.module,
            "last_seen": statement.excluded.last_seen,
        },
    )
    with store.begin_write() as conn:
        conn.execute(statement)


def list_all(store: Store, *, limit: int = LIST_LIMIT) -> list[Any]:
    """Every stored definition, by namespace and name (versions in any order)."""
    d = workflow_definitions.c
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                select(workflow_definitions).order_by(d.namespace, d.name, d.version).limit(limit)
            ).all()
        )


def versions_of(store: Store, namespace: str, name: str) -> list[Any]:
    """The stored definitions of one workflow, every version."""
    d = workflow_definitions.c
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                select(workflow_definitions).where(and_(d.namespace == namespace, d.name == name))
            ).all()
        )


def summaries(store: Store, *, limit: int = LIST_LIMIT) -> list[Any]:
    """Every definition without its DAG: what the definitions page lists, with a step count.

    The count is read by the database from the stored JSON: parsing a thousand
    DAGs in Python would be most of the page's time.
    """
    d = workflow_definitions.c
    if store.dialect == "postgresql":
        steps = func.jsonb_array_length(d.dag["steps"])
    else:
        steps = func.json_array_length(d.dag, literal_column("'$.steps'"))
    query = (
        select(
            d.namespace,
            d.name,
            d.version,
            d.description,
            d.queue,
            d.queue_name,
            d.module,
            d.first_seen,
            d.last_seen,
            steps.label("steps"),
        )
        .order_by(d.namespace, d.name, d.version)
        .limit(limit)
    )
    with store.engine.connect() as conn:
        return list(conn.execute(query).all())
