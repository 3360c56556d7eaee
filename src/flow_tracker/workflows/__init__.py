"""Workflows: DAGs of steps with retries, resume from failure and manual resolve.

A run is a process (category ``workflows``); each step is its child process and
an ordinary job of the queue the team already runs (Celery, RQ, Dramatiq, or an
in-process pool). The run's state lives in the application's database, so a
step's end and its children's readiness are decided in one transaction, and a
run survives any worker.

* :mod:`.definition` - declaring workflows and steps (checked as they are declared);
* :mod:`.retry` - a step's :class:`RetryPolicy`, the one place that decides a retry;
* :mod:`.definitions` - definitions recorded by every declaring process, listed;
* :mod:`.starting` - starting a run from a declaration or a stored definition;
* :mod:`.engine` - sending steps, running a step in a worker, recovery;
* :mod:`.threads` - the in-process pool;
* :mod:`.status` and :mod:`.manage` - reading runs and acting on them by hand;
* :mod:`flow_tracker.store.workflows` - every statement they use.
"""

from flow_tracker.workflows.definition import StepSpec, Workflow, workflow
from flow_tracker.workflows.definitions import WorkflowDefinition, list_workflow_definitions
from flow_tracker.workflows.manage import (
    cancel_workflow,
    get_workflow,
    list_workflows,
    resolve_step,
    retry_failed_steps,
    retry_step,
    workflow_diagram,
)
from flow_tracker.workflows.retry import RetryPolicy
from flow_tracker.workflows.starting import StartedRun, start_workflow
from flow_tracker.workflows.status import StepStatus, WorkflowRun, WorkflowStatus

# The in-process pool registers itself as the ``threads`` queue as it is imported.
from flow_tracker.workflows import threads as _threads  # noqa: F401  isort: skip

__all__ = [
    "RetryPolicy",
    "StartedRun",
    "StepSpec",
    "StepStatus",
    "Workflow",
    "WorkflowDefinition",
    "WorkflowRun",
    "WorkflowStatus",
    "cancel_workflow",
    "get_workflow",
    "list_workflow_definitions",
    "list_workflows",
    "resolve_step",
    "retry_failed_steps",
    "retry_step",
    "start_workflow",
    "workflow",
    "workflow_diagram",
]
