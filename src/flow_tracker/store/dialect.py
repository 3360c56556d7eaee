"""SQL that differs between PostgreSQL and SQLite, beyond what SQLAlchemy hides.

The connection settings live in :mod:`flow_tracker.store.engine`, the database's
clock in :mod:`flow_tracker.store.clock`, bulk writes in :mod:`flow_tracker.store.bulk`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite


def insert_for(dialect: str) -> Callable[..., Any]:
    """The ``INSERT`` construct of ``dialect`` that knows ``ON CONFLICT`` (an upsert)."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert
