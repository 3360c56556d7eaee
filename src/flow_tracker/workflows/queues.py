"""The import path RQ workflow steps had before they moved to the RQ module.

RQ stores a job's function by its dotted path: a step enqueued (or scheduled to
retry) by an older flow-tracker names ``flow_tracker.workflows.queues.rq_step``.
Kept so that such a step still runs on an upgraded worker instead of failing
to import and leaving its run waiting; new steps name
``flow_tracker.integrations.rq.workflow_step``.
"""

from __future__ import annotations

from flow_tracker.workflows.engine import execute_step

LEGACY_RQ_STEP_FUNCTION = "flow_tracker.workflows.queues.rq_step"


def rq_step(workflow: str, run_id: str, step: str, job_id: str) -> None:
    """Run one workflow step enqueued under the old path (as RQ's step job does)."""
    execute_step("rq", workflow, run_id, step, job_id)
