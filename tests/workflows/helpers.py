"""What the workflow tests share."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import flow_tracker
from flow_tracker import ProcessRecord


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


def process(process_id: uuid.UUID | None) -> ProcessRecord:
    """The stored process (flows, logs, history), which must exist."""
    assert process_id is not None, "the step has no process"
    record = flow_tracker.get_process(process_id)
    assert record is not None, f"no process {process_id}"
    return record
