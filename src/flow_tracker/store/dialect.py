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


def guarded_json(dialect: str, column: str, over: int, preview: int) -> str:
    """SQL for a JSON ``column`` read whole only when its text is at most ``over`` long.

    A larger value comes back as ``{"_truncated": true, "original_size": N,
    "preview": "<its first preview characters>"}``, the shape the writer gives an
    oversized document, built by the database: a page reading a run whose context
    holds a million keys parses a few kilobytes, not hundreds of megabytes.
    ``over`` and ``preview`` are flow-tracker's own numbers, never user input.
    """
    over, preview = int(over), int(preview)
    if dialect == "postgresql":
        size = f"octet_length({column}::text)"
        small = f"{size} <= {over}"
        big = (
            f"jsonb_build_object('_truncated', true, 'original_size', {size},"
            f" 'preview', left({column}::text, {preview}))"
        )
    else:
        size = f"length({column})"
        small = f"{size} <= {over}"
        big = (
            f"json_object('_truncated', json('true'), 'original_size', {size},"
            f" 'preview', substr({column}, 1, {preview}))"
        )
    return f"CASE WHEN {column} IS NULL OR {small} THEN {column} ELSE {big} END"
