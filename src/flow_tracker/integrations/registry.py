"""How :func:`flow_tracker.requeue` and :func:`flow_tracker.reap` reach each job queue.

Each integration's ``install`` registers a function that enqueues a job again
from the payload it stored at the first enqueue, under a given job id; and,
where the queue can answer it, a probe that says which jobs the broker still
holds (a job taken by a worker that died before it could mark the job running
is in neither the broker nor a running row: the probe lets the reaper find it).
Kept apart from the integrations so that reaping never imports a queue library
that is not installed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Requeuer = Callable[[Mapping[str, Any], str], None]
Probe = Callable[[Sequence[tuple[str, str | None, Mapping[str, Any] | None]]], set[str]]
"""Given ``(job id, queue, stored payload)``, the job ids not proven dropped by a dead worker."""

_lock = threading.Lock()
_requeuers: dict[str, Requeuer] = {}
_probes: dict[str, Probe] = {}


def register_requeuer(job_system: str, send: Requeuer) -> None:
    """Let :func:`flow_tracker.requeue` enqueue ``job_system``'s jobs: ``send(payload, job_id)``."""
    with _lock:
        _requeuers[job_system] = send


def requeuer_for(job_system: str) -> Requeuer | None:
    """The registered requeuer of ``job_system``, if its integration is installed here."""
    return _requeuers.get(job_system)


def requeue_systems() -> set[str]:
    """The job systems whose jobs this interpreter can enqueue again."""
    return set(_requeuers)


def register_probe(job_system: str, pending: Probe) -> None:
    """Let the reaper ask ``pending([(job_id, queue, payload), ...])`` what is not dropped."""
    with _lock:
        _probes[job_system] = pending


def probes() -> dict[str, Probe]:
    """The registered probes, by job system."""
    return dict(_probes)
