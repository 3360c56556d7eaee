"""flow-tracker: see what your background jobs and service processes actually did.

Every run is a *process*, the steps inside it are nested *flows*, and the
*log entries* written along the way are kept with them, in the application's
own SQL database::

    import flow_tracker

    with flow_tracker.track("MyProcess", category="services", metadata={"user_id": 123}) as t:
        t.log("Starting process")
        with t.flow("validate_input") as flow:
            flow.log("Validating...")

Importing this package defines names and does nothing else: no connection,
no thread, no I/O until the first process is recorded.
"""

from __future__ import annotations

from typing import Any

from flow_tracker import config as _config
from flow_tracker import recovery
from flow_tracker import runtime as _runtime
from flow_tracker import subscribers as _subscribers
from flow_tracker.comparison import Comparison, compare
from flow_tracker.config import Settings
from flow_tracker.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    FlowTrackerError,
    LockConflictError,
    NotFoundError,
    Skipped,
    StepTimeout,
    UsageError,
)
from flow_tracker.locks import Lease, exclusive
from flow_tracker.nulls import NullFlow, NullTracker
from flow_tracker.progress import Progress
from flow_tracker.reading import batch_status, cleanup, get_process, get_status, list_processes
from flow_tracker.recording import (
    bind,
    bind_async,
    current,
    current_flow,
    flow,
    log,
    start,
    track,
)
from flow_tracker.records import (
    ErrorInfo,
    FlowRecord,
    LogEntryRecord,
    Page,
    ProcessRecord,
    Transition,
)
from flow_tracker.recovery import Health, ReapResult, RequeueResult, health, reap, requeue
from flow_tracker.retry_after import RetryAfter, retry_after
from flow_tracker.runtime import flush
from flow_tracker.status import BatchStatus, JobStatus, Status
from flow_tracker.store.engine import Store
from flow_tracker.subscribers import Subscriber, Subscription, on, subscribe
from flow_tracker.tracker import Flow, Tracker
from flow_tracker.workflows import (
    RetryPolicy,
    StepStatus,
    Workflow,
    WorkflowDefinition,
    WorkflowRun,
    WorkflowStatus,
    cancel_workflow,
    get_workflow,
    list_workflow_definitions,
    list_workflows,
    resolve_step,
    retry_failed_steps,
    retry_step,
    start_workflow,
    workflow,
    workflow_diagram,
)

__version__ = "0.1.0"


def configure(*, verify: bool = True, **options: Any) -> Settings:
    """Set flow-tracker's settings; every option not given comes from the environment or default.

    Args:
        verify: connect once now, so that a wrong URL or an unreachable server is one
            clear error at start-up rather than a stream of warnings later. Pass False
            to start while the database may be down (recording then waits for it in
            the background; jobs are never affected).
        **options: any field of :class:`Settings` (``database_url``, ``enabled``,
            ``retention_days``, ``default_category``, ``log_to_stdlib``,
            ``heartbeat_interval``, ``lost_after``, ...).

    Returns:
        The settings now in force.

    Raises:
        ConfigurationError: an unknown option, a bad value or a malformed URL.
        DatabaseUnavailableError: ``verify`` is on and the database cannot be reached.
    """
    settings = _config.build(**options)
    if settings.enabled:
        store = Store(settings.database_url, auto_migrate=settings.auto_migrate)
        if verify:
            try:
                store.check_connection()
            finally:
                store.dispose()
    _runtime.shutdown()
    _config.replace(settings)
    return settings


def reset() -> None:
    """Store what is buffered, then forget configured settings (mainly for tests)."""
    _runtime.shutdown()
    _config.reset()
    _subscribers.BUS.clear()


__all__ = [
    "BatchStatus",
    "Comparison",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "ErrorInfo",
    "Flow",
    "FlowRecord",
    "FlowTrackerError",
    "Health",
    "JobStatus",
    "Lease",
    "LockConflictError",
    "LogEntryRecord",
    "NotFoundError",
    "NullFlow",
    "NullTracker",
    "Page",
    "ProcessRecord",
    "Progress",
    "ReapResult",
    "RequeueResult",
    "RetryAfter",
    "RetryPolicy",
    "Settings",
    "Skipped",
    "Status",
    "StepStatus",
    "StepTimeout",
    "Subscriber",
    "Subscription",
    "Tracker",
    "Transition",
    "UsageError",
    "Workflow",
    "WorkflowDefinition",
    "WorkflowRun",
    "WorkflowStatus",
    "__version__",
    "batch_status",
    "bind",
    "bind_async",
    "cancel_workflow",
    "cleanup",
    "compare",
    "configure",
    "current",
    "current_flow",
    "exclusive",
    "flow",
    "flush",
    "get_process",
    "get_status",
    "get_workflow",
    "health",
    "list_processes",
    "list_workflow_definitions",
    "list_workflows",
    "log",
    "on",
    "reap",
    "recovery",
    "requeue",
    "reset",
    "resolve_step",
    "retry_after",
    "retry_failed_steps",
    "retry_step",
    "start",
    "start_workflow",
    "subscribe",
    "track",
    "workflow",
    "workflow_diagram",
]
