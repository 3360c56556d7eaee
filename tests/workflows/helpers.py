"""What the workflow tests share."""

from __future__ import annotations

import uuid

import flow_tracker
from flow_tracker import ProcessRecord


def process(process_id: uuid.UUID | None) -> ProcessRecord:
    """The stored process (flows, logs, history), which must exist."""
    assert process_id is not None, "the step has no process"
    record = flow_tracker.get_process(process_id)
    assert record is not None, f"no process {process_id}"
    return record
