"""The database workflows use: the configured store with its schema, or a clear error.

The bottom of ``workflows/``: starting, running, reading and acting on runs all
ask here, so none of them reaches into another for it.
"""

from __future__ import annotations

from flow_tracker import config, runtime
from flow_tracker.errors import DatabaseUnavailableError, UsageError
from flow_tracker.store.engine import Store, error_line, is_transient


def workflow_store() -> Store:
    """The configured store, its schema made; a clear error when it cannot be used.

    Raises:
        UsageError: tracking is disabled (workflows need the database).
        DatabaseUnavailableError: the database cannot be reached.
    """
    settings = config.current()
    if not settings.enabled:
        raise UsageError("flow-tracker is disabled (enabled=False): workflows need its database")
    store = runtime.store()
    try:
        store.ensure_schema()
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise unavailable(exc, "workflows") from exc
    return store


def unavailable(exc: BaseException, doing: str) -> DatabaseUnavailableError:
    """The error a workflow action raises when the database could not be reached."""
    return DatabaseUnavailableError(f"{doing}: the database is unavailable: {error_line(exc)}")
