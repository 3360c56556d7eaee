"""How :func:`flow_tracker.requeue` reaches each job queue.

Each integration's ``install`` registers a function that enqueues a job again
from the payload it stored at the first enqueue, under a given job id. Kept
apart from the integrations so that requeueing never imports a queue library
that is not installed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

Requeuer = Callable[[Mapping[str, Any], str], None]

_lock = threading.Lock()
_requeuers: dict[str, Requeuer] = {}


def register_requeuer(job_system: str, send: Requeuer) -> None:
    """Let :func:`flow_tracker.requeue` enqueue ``job_system``'s jobs: ``send(payload, job_id)``."""
    with _lock:
        _requeuers[job_system] = send


def requeuer_for(job_system: str) -> Requeuer | None:
    """The registered requeuer of ``job_system``, if its integration is installed here."""
    return _requeuers.get(job_system)
