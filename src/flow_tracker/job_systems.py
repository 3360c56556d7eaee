"""The registry of job queues: everything the core asks a queue for, by the queue's name.

Each queue module (``flow_tracker.integrations.celery``, ``rq``, ``dramatiq``,
``arq``, ``huey``, or a team's own) registers one :class:`JobSystem` from its
``install`` and nothing else needs editing to add a queue: recovery asks it to
requeue a lost job and to probe the broker, the tracker asks which of its
exceptions are control flow (a retry is not a failure), workflows ask it to
send a step, and the outbox's delivery thread asks which queues this process
can publish to. A process that has not installed a queue (a dashboard, a CLI)
simply finds no record for it: what it cannot send waits in the outbox for a
worker that can.

The registry never imports a queue library; the modules that do import it.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flow_tracker.status import Status

if TYPE_CHECKING:
    from flow_tracker.store.workflows import Dispatch

Requeuer = Callable[[Mapping[str, Any], str], None]
"""``requeue(payload, job_id)``: enqueue a lost job again from the payload of its first enqueue."""

Probe = Callable[[Sequence[tuple[str, str | None, Mapping[str, Any] | None]]], set[str]]
"""Given ``(job id, queue, stored payload)``, the job ids not proven dropped by a dead worker."""

StepSender = Callable[["Dispatch"], None]
"""``send_step(dispatch)``: hand one workflow step to the broker, ``dispatch.delay`` s later."""

Listener = Callable[["JobSystem"], None]


@dataclass(frozen=True)
class JobSystem:
    """One job queue as the core sees it; registered by the queue's module.

    Attributes:
        name: the job system's name, as stored on every process row (``"celery"``).
        default_queue: the broker queue a workflow's steps go to unless it names one.
        requeue: enqueues a lost job again under a given job id (``flow_tracker.requeue``).
        probe: says which jobs the broker still holds, so the reaper finds a job taken
            by a worker that died before it could mark the job running.
        control_flow: the queue's exceptions that end a job with another status than
            ``failed`` (Celery's ``Retry`` is ``retrying``).
        send_step: sends a workflow step through this queue; a process with it is a
            live worker of the queue and delivers the outbox's requests for it.
        declare_queue: called with every broker queue steps use, declared or to come
            (Dramatiq's worker consumes only the queues declared on its broker).
        time_limits: the queue's own errors for a job past its time limit; a step
            stopped by one is stored as :class:`~flow_tracker.StepTimeout`.
    """

    name: str
    default_queue: str = "default"
    requeue: Requeuer | None = None
    probe: Probe | None = None
    control_flow: Mapping[type[BaseException], Status] = field(default_factory=dict)
    send_step: StepSender | None = None
    declare_queue: Callable[[str], None] | None = None
    time_limits: tuple[type[BaseException], ...] = ()


_lock = threading.Lock()
_systems: dict[str, JobSystem] = {}
_queues_used: dict[str, set[str]] = {}
_listeners: list[Listener] = []


def register(system: JobSystem) -> None:
    """Make ``system`` the record of its queue in this interpreter (a later one replaces it).

    Called by the queue module's ``install``; calling it again with the same
    record changes nothing. Every broker queue steps already use is declared.
    """
    if not system.name or not isinstance(system.name, str):
        raise ValueError(f"a job system needs a name, not {system.name!r}")
    with _lock:
        _systems[system.name] = system
        used = sorted(_queues_used.get(system.name, ()))
        listeners = list(_listeners)
    _announce(system, used, listeners)


def _announce(system: JobSystem, used: list[str], listeners: list[Listener]) -> None:
    """Declare the broker queues steps already use, then tell the listeners (no lock held)."""
    if system.declare_queue is not None:
        for queue_name in used:
            system.declare_queue(queue_name)
    for listener in listeners:
        listener(system)


def update(name: str, **changes: Any) -> JobSystem:
    """Register ``name``'s record with ``changes`` (a new record if there was none)."""
    with _lock:  # read and replace at once: a concurrent install is not lost
        current = _systems.get(name) or JobSystem(name)
        system = dataclasses.replace(current, **changes)
        _systems[name] = system
        used = sorted(_queues_used.get(name, ()))
        listeners = list(_listeners)
    _announce(system, used, listeners)
    return system


def unregister(name: str) -> None:
    """Forget ``name``'s record (tests; a process that uninstalls a queue)."""
    with _lock:
        _systems.pop(name, None)


def get(name: str) -> JobSystem | None:
    """The record of ``name`` in this interpreter, if its queue module is installed here."""
    return _systems.get(name)


def registered() -> list[JobSystem]:
    """Every record registered in this interpreter."""
    return list(_systems.values())


def on_register(listener: Listener) -> None:
    """Call ``listener(system)`` after each registration (the workflow engine listens)."""
    with _lock:
        _listeners.append(listener)


def queue_used(system: str, queue_name: str) -> None:
    """Note that steps of ``system`` use ``queue_name``: declared now if the queue asks for it."""
    with _lock:
        used = _queues_used.setdefault(system, set())
        if queue_name in used:
            return
        used.add(queue_name)
        record = _systems.get(system)
    if record is not None and record.declare_queue is not None:
        record.declare_queue(queue_name)


def requeuer_for(name: str) -> Requeuer | None:
    """How ``name``'s lost jobs are enqueued again here, if its queue is installed."""
    system = _systems.get(name)
    return system.requeue if system is not None else None


def requeue_systems() -> set[str]:
    """The job systems whose jobs this interpreter can enqueue again."""
    return {s.name for s in registered() if s.requeue is not None}


def probes() -> dict[str, Probe]:
    """The registered probes, by job system."""
    return {s.name: s.probe for s in registered() if s.probe is not None}


def step_sender(name: str) -> StepSender | None:
    """How ``name``'s workflow steps are sent here, if its queue is installed."""
    system = _systems.get(name)
    return system.send_step if system is not None else None


def control_flow_status(exc: BaseException) -> Status | None:
    """The status a job left by ``exc`` ends with, when a queue registered its type."""
    for system in registered():
        for exc_type, status in system.control_flow.items():
            if isinstance(exc, exc_type):
                return status
    return None


def check_version(library: str, version: str, minimum: tuple[int, ...]) -> None:
    """Raise :class:`ImportError` when ``library``'s ``version`` is older than ``minimum``.

    The one version check every queue module's ``install`` makes; a version that
    does not parse (a local build) is let through.
    """
    parts: list[int] = []
    for piece in version.split(".")[: len(minimum)]:
        digits = re.match(r"\d+", piece)  # "0rc1" is 0
        if digits is None:
            return
        parts.append(int(digits.group()))
    if tuple(parts) < minimum:
        raise ImportError(
            f"flow-tracker needs {library} >= {'.'.join(map(str, minimum))}, found {version}"
        )
