"""Probes for orchestrators: ``GET /health/live`` and ``GET /health/ready``.

* live: the app answers. No database: a liveness probe that fails when the
  database is away would restart every dashboard pod during an outage, which
  fixes nothing.
* ready: the database answers and its schema is at the revision this version
  of flow-tracker ships (:data:`~flow_tracker.store.migrate.HEAD_REVISION`).
  Otherwise 503 with a short reason. The probe never migrates: a probe that
  changes a database is a surprise, and an upgrade may outlast the probe's own
  timeout (run ``flow-tracker db upgrade`` before the rollout instead).

Both carry no data, so they need no credentials and pass the ``Host`` check
(see :mod:`flow_tracker.web.security`): Kubernetes probes send neither a
password nor the dashboard's host name. The reason of a 503 names what is
wrong, never the database's address or the driver's message; those go to the
server's log.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flow_tracker.store.engine import Store, TimeBudgetSpentError, error_line
from flow_tracker.store.migrate import HEAD_REVISION, answering_revision
from flow_tracker.web.context import dashboard_of

logger = logging.getLogger("flow_tracker.web")

PROBE_PATHS = frozenset({"/health/live", "/health/ready"})


def live(request: Request) -> Response:
    """``GET /health/live``: 200 while the app answers requests."""
    return JSONResponse({"live": True})


def not_ready_reason(store: Store) -> str | None:
    """Why the dashboard cannot serve now (None: it can).

    Args:
        store: the dashboard's database.

    Returns:
        A short reason without addresses or driver messages, or None.
    """
    try:
        revision = answering_revision(store)
    except (DBAPIError, PoolTimeout, TimeBudgetSpentError) as exc:
        logger.info("flow-tracker: not ready: the database does not answer: %s", error_line(exc))
        return "the database does not answer"
    if revision is None:
        return "the database has no flow-tracker schema (run: flow-tracker db upgrade)"
    if revision != HEAD_REVISION:
        return f"the schema is at revision {revision}, this version needs {HEAD_REVISION}"
    return None


async def ready(request: Request) -> Response:
    """``GET /health/ready``: 200 when the database answers at the expected schema, else 503."""
    store = dashboard_of(request).store
    reason = await run_in_threadpool(not_ready_reason, store)
    if reason is None:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False, "reason": reason}, status_code=503)
