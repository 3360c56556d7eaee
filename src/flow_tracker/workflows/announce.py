"""Workflow events for subscribers: ``workflow.*`` and ``step.*`` (:mod:`flow_tracker.subscribers`).

Each is published by the interpreter that committed the change it announces,
right after the commit, so each happens once: ``workflow.failed`` by the worker
whose step end ended the run (or the reaper that ended a stalled one), a
manual action's by the process that did it. Nothing is read or built while no
one subscribes, and nothing here raises: an event that cannot be made is
logged and counted, and the step or the action goes on.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flow_tracker import runtime
from flow_tracker.redaction import clean_text, redact_text
from flow_tracker.status import RunState
from flow_tracker.store import workflows as stored
from flow_tracker.store.engine import Store
from flow_tracker.subscribers import BUS, Event

REASON_LIMIT = 500


def _publish(event: Event) -> None:
    event.setdefault("time", time.time())
    BUS.publish_event(event)


def _text(value: str | None) -> str | None:
    return None if value is None else clean_text(redact_text(str(value)))[:REASON_LIMIT]


def run_started(run_id: uuid.UUID, workflow: str, queue: str, steps: int) -> None:
    """``workflow.started``: a run was stored and its first steps handed to its queue."""
    if not BUS.active:
        return
    _publish(
        {
            "event": "workflow.started",
            "run_id": str(run_id),
            "workflow": workflow,
            "queue": queue,
            "status": RunState.RUNNING.value,
            "steps": steps,
        }
    )


def run_ended(store: Store, run_id: uuid.UUID, status: str | None, **extra: Any) -> None:
    """``workflow.completed``, ``workflow.failed`` or ``workflow.cancelled``, as ``status`` says.

    Args:
        store: where the run is, to read its name and its root-cause step.
        run_id: the run.
        status: the status the run ended with in the transaction just committed;
            None (it did not end there) publishes nothing.
        extra: more of the payload (a cancel's ``by``, ``reason``, ``cancelled_steps``).
    """
    if status is None or not BUS.active:
        return
    try:
        row = stored.ended_run(store, run_id)
        event: Event = {
            "event": f"workflow.{status}",
            "run_id": str(run_id),
            "workflow": None if row is None else row.name,
            "queue": None if row is None else row.queue,
            "status": status,
            "duration_ms": None,
            **extra,
        }
        if row is not None and row.created_at is not None and row.finished_at is not None:
            event["duration_ms"] = (row.finished_at - row.created_at).total_seconds() * 1000.0
        if status == RunState.FAILED.value:
            # The step that failed first: later failures may be its consequences.
            event["failed_step"] = None if row is None else row.failed_step
            event["error"] = (
                {"class": row.error_class, "message": row.error_message}
                if row is not None and row.error_class is not None
                else None
            )
        _publish(event)
    except Exception as exc:
        runtime.report_internal_error(exc, f"announcing the end of workflow run {run_id}")


def step_retrying(
    run_id: uuid.UUID,
    workflow: str | None,
    step: str,
    *,
    attempt: int | None,
    delay: float | None,
    error: tuple[str, str] | None,
    by: str | None = None,
    reason: str | None = None,
) -> None:
    """``step.retrying``: a step will run again, by its retry policy or retried by hand."""
    if not BUS.active:
        return
    _publish(
        {
            "event": "step.retrying",
            "run_id": str(run_id),
            "workflow": workflow,
            "step": step,
            "attempt": attempt,
            "delay_s": delay,
            "error": None if error is None else {"class": error[0], "message": error[1]},
            "by": by,
            "reason": _text(reason),
        }
    )


def step_resolved(
    store: Store, run_id: uuid.UUID, step: str, *, by: str, reason: str | None
) -> None:
    """``step.resolved``: a failed step was marked done by hand, so what waits on it goes on."""
    if not BUS.active:
        return
    try:
        row = stored.ended_run(store, run_id)
        _publish(
            {
                "event": "step.resolved",
                "run_id": str(run_id),
                "workflow": None if row is None else row.name,
                "step": step,
                "by": by,
                "reason": _text(reason),
            }
        )
    except Exception as exc:
        runtime.report_internal_error(exc, f"announcing the resolve of step {step}")
