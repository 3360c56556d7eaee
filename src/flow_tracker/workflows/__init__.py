"""Workflows: DAGs of steps with retries, resume from failure and manual resolve (DESIGN §9).

A run is a process (category ``workflows``); each step is its child process and
an ordinary job of the queue the team already runs (Celery, RQ, Dramatiq, or an
in-process pool). The run's state lives in the application's database, so a
step's end and its children's readiness are decided in one transaction, and a
run survives any worker.

* :mod:`.definition` - declaring workflows and steps (checked as they are declared);
* :mod:`.engine` - starting runs, running a step in a worker, recovery;
* :mod:`.threads` - the in-process pool;
* :mod:`.status` and :mod:`.manage` - reading runs and acting on them by hand;
* :mod:`flow_tracker.store.workflows` - every statement they use.
"""

from flow_tracker.workflows.definition import StepSpec, Workflow, workflow
from flow_tracker.workflows.manage import (
    cancel_workflow,
    get_workflow,
    list_workflows,
    resolve_step,
    retry_step,
    workflow_diagram,
)
from flow_tracker.workflows.status import StepStatus, WorkflowRun, WorkflowStatus

__all__ = [
    "StepSpec",
    "StepStatus",
    "Workflow",
    "WorkflowRun",
    "WorkflowStatus",
    "cancel_workflow",
    "get_workflow",
    "list_workflows",
    "resolve_step",
    "retry_step",
    "workflow",
    "workflow_diagram",
]
