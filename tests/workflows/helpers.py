"""What the workflow tests share."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import datetime, timezone

import flow_tracker
from flow_tracker import ProcessRecord
from flow_tracker.workflows import threads


class Calls:
    """How often each step ran (thread-safe: the pool runs steps on several threads)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def hit(self, name: str) -> int:
        """Count one more call of ``name``; return how many there were."""
        with self._lock:
            self.counts[name] += 1
            return self.counts[name]


def waited_for(run: flow_tracker.WorkflowRun, seconds: float) -> flow_tracker.WorkflowStatus:
    """The run's status once it has ended; an error saying what it still waited for if not.

    The error lists every step that has not ended (its status, attempts and next
    attempt) and what this process's ``threads`` pool still holds, so that a run
    found still running on a busy machine says whether a step was lost or slow.
    """
    try:
        return run.wait(seconds)
    except TimeoutError as exc:
        status = flow_tracker.get_workflow(run.id)
        ended = {"completed", "failed", "skipped", "resolved", "cancelled"}
        open_steps = [
            f"{s.name}: {s.status} after {s.attempts} attempts"
            + (f", next at {s.next_attempt_at:%H:%M:%S.%f}" if s.next_attempt_at else "")
            + (f", blocked by {s.blocked_by}" if s.blocked_by else "")
            for s in status.steps.values()
            if s.status not in ended
        ]
        raise AssertionError(
            f"{exc}; at {datetime.now(timezone.utc):%H:%M:%S.%f} it waited for "
            f"{'; '.join(open_steps) or 'no step (every step ended)'}; "
            f"pool: {threads.describe()}"
        ) from None


def process(process_id: uuid.UUID | None) -> ProcessRecord:
    """The stored process (flows, logs, history), which must exist."""
    assert process_id is not None, "the step has no process"
    record = flow_tracker.get_process(process_id)
    assert record is not None, f"no process {process_id}"
    return record
