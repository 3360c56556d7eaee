"""Lifecycle events for subscribers: ``flow_tracker.on(name, callback)`` and :class:`Subscriber`.

One stream feeds every observer (your callbacks, the OpenTelemetry and
Prometheus exporters): the records the background writer takes from its
buffer, published *before* they are stored (so an alert on ``process.failed``
does not wait for, or depend on, the tracking database). Nothing of this runs
on the job's thread: the writer hands its batch over (a deque extend, and
nothing at all while no one subscribes), and one dispatcher thread per
interpreter turns the records into event dicts and calls the subscribers.

A callback that raises is logged and counted (:attr:`Bus.failed_callbacks`),
never raised into a job. Slow callbacks delay later events, not jobs: past
:data:`MAX_PENDING` waiting records, new ones are dropped and counted.

:data:`CATALOG` lists every event with its payload; ``flow-tracker events``
prints it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flow_tracker import events as ev
from flow_tracker import ids
from flow_tracker.errors import UsageError

Event = dict[str, Any]
Callback = Callable[[Event], object]
MAX_PENDING = 100_000
# Processes and flows whose start was seen, kept to fill the payload of their end.
MAX_OPEN = 100_000
FINAL_PROCESS = frozenset({"completed", "failed", "skipped", "cancelled", "lost"})
logger = logging.getLogger("flow_tracker.subscribers")

_PROCESS_KEYS = (
    "process_id, name, category, status, time, job_system, job_id, queue, attempt, "
    "parent_process_id, metadata"
)


_RUN_KEYS = "run_id, workflow, queue, status, time"


@dataclass(frozen=True)
class EventSpec:
    """One entry of the catalog: what the event means and what its payload holds."""

    name: str
    description: str
    payload: str


CATALOG: dict[str, EventSpec] = {
    spec.name: spec
    for spec in (
        EventSpec("process.queued", "a job was stored before its message went out", _PROCESS_KEYS),
        EventSpec("process.started", "a process (or a job's attempt) began", _PROCESS_KEYS),
        EventSpec("process.completed", "a process ended well", f"{_PROCESS_KEYS}, duration_ms"),
        EventSpec(
            "process.failed",
            "a process ended with an error (a job: its retries are exhausted)",
            f"{_PROCESS_KEYS}, duration_ms, dropped_logs (when any), "
            "error {class, message, traceback}",
        ),
        EventSpec(
            "process.retrying",
            "a job's attempt failed and the queue will run it again",
            f"{_PROCESS_KEYS}, duration_ms, error",
        ),
        EventSpec(
            "process.skipped",
            "a process stood down (a held critical section, a requeued copy, Celery Ignore)",
            f"{_PROCESS_KEYS}, duration_ms, reason",
        ),
        EventSpec(
            "process.cancelled",
            "a process was cancelled (asyncio, KeyboardInterrupt, Celery Reject)",
            f"{_PROCESS_KEYS}, duration_ms",
        ),
        EventSpec(
            "process.lost",
            "the reaper found a process whose worker died (in the reaper's interpreter)",
            "process_id, name, category, status, time, reason, job_system, job_id, queue, attempt",
        ),
        EventSpec(
            "process.requeued",
            "flow_tracker.requeue sent a lost or failed job again (in the requeuing interpreter)",
            "process_id, status, time, new_process_id, job_id",
        ),
        EventSpec(
            "process.progress",
            "a process reported progress (at most every progress_interval)",
            "process_id, name, category, time, current, total",
        ),
        EventSpec(
            "flow.started",
            "a flow began",
            "process_id, name (the process's), flow_id, flow_name, parent_flow_id, depth, "
            "attempt, time, metadata",
        ),
        EventSpec(
            "flow.completed",
            "a flow ended well",
            "process_id, name, flow_id, flow_name, parent_flow_id, depth, time, started_at, "
            "duration_ms",
        ),
        EventSpec(
            "flow.failed",
            "a flow ended with an error",
            "as flow.completed, and error {class, message, traceback}",
        ),
        EventSpec(
            "flow.skipped", "a flow ended by a skip (a held critical section)", "as flow.completed"
        ),
        EventSpec("flow.cancelled", "a flow ended by cancellation", "as flow.completed, and error"),
        EventSpec(
            "log.written",
            "a log entry was written",
            "process_id, name, flow_id, flow_name, level, message, data, time",
        ),
        EventSpec(
            "workflow.started",
            "a workflow run was stored and its first steps handed to its queue "
            "(in the starting interpreter)",
            _RUN_KEYS + ", steps (how many)",
        ),
        EventSpec(
            "workflow.completed",
            "a run ended with every step done (in the interpreter that stored its last end)",
            _RUN_KEYS + ", duration_ms",
        ),
        EventSpec(
            "workflow.failed",
            "a run ended with a step failed for good, once per failure of the run (in the "
            "interpreter that stored its last end, or the reaper's)",
            _RUN_KEYS + ", duration_ms, failed_step (the root cause: the step that failed "
            "first), error {class, message} (that step's)",
        ),
        EventSpec(
            "workflow.cancelled",
            "a run was cancelled (in the cancelling interpreter)",
            _RUN_KEYS + ", duration_ms, by, reason, cancelled_steps",
        ),
        EventSpec(
            "step.retrying",
            "a step will run again: its attempt failed and its policy retries it (by: None), "
            "or it was retried by hand",
            "run_id, workflow, step, time, attempt (the attempt that ended; None by hand), "
            "delay_s, error {class, message} (None by hand), by, reason",
        ),
        EventSpec(
            "step.resolved",
            "a failed step was marked done by hand (in the resolving interpreter)",
            "run_id, workflow, step, time, by, reason",
        ),
    )
}


class Subscriber:
    """Base class for subscribers: override the ``on_*`` hooks you need (all no-ops).

    ``on_process_failed`` gets ``process.failed`` and so on (dots become
    underscores); :meth:`on_event` gets every event first. Register an instance
    with :func:`subscribe`.
    """

    def on_event(self, event: Event) -> None:
        """Called with every event, before its own hook."""

    def on_process_queued(self, event: Event) -> None:
        """A job was stored as queued."""

    def on_process_started(self, event: Event) -> None:
        """A process (or a job's attempt) began."""

    def on_process_completed(self, event: Event) -> None:
        """A process ended well."""

    def on_process_failed(self, event: Event) -> None:
        """A process ended with an error."""

    def on_process_retrying(self, event: Event) -> None:
        """A job's attempt failed; it will run again."""

    def on_process_skipped(self, event: Event) -> None:
        """A process stood down."""

    def on_process_cancelled(self, event: Event) -> None:
        """A process was cancelled."""

    def on_process_lost(self, event: Event) -> None:
        """The reaper marked a process lost."""

    def on_process_requeued(self, event: Event) -> None:
        """A lost or failed job was sent again."""

    def on_process_progress(self, event: Event) -> None:
        """A process reported progress."""

    def on_flow_started(self, event: Event) -> None:
        """A flow began."""

    def on_flow_completed(self, event: Event) -> None:
        """A flow ended well."""

    def on_flow_failed(self, event: Event) -> None:
        """A flow ended with an error."""

    def on_flow_skipped(self, event: Event) -> None:
        """A flow ended by a skip."""

    def on_flow_cancelled(self, event: Event) -> None:
        """A flow was cancelled."""

    def on_log_written(self, event: Event) -> None:
        """A log entry was written."""

    def on_workflow_started(self, event: Event) -> None:
        """A workflow run started."""

    def on_workflow_completed(self, event: Event) -> None:
        """A workflow run ended with every step done."""

    def on_workflow_failed(self, event: Event) -> None:
        """A workflow run ended with a step failed (``failed_step``: the root cause)."""

    def on_workflow_cancelled(self, event: Event) -> None:
        """A workflow run was cancelled."""

    def on_step_retrying(self, event: Event) -> None:
        """A workflow step will run again."""

    def on_step_resolved(self, event: Event) -> None:
        """A failed workflow step was resolved by hand."""


class Subscription:
    """What :func:`on` and :func:`subscribe` return: :meth:`cancel` stops the deliveries."""

    def __init__(self, bus: Bus, pattern: str, callback: Callback) -> None:
        self._bus = bus
        self.pattern = pattern
        self.callback = callback

    def matches(self, name: str) -> bool:
        """Whether an event of this name goes to the callback."""
        pattern = self.pattern
        if pattern == "*" or pattern == name:
            return True
        return pattern.endswith(".*") and name.startswith(pattern[:-1])

    def cancel(self) -> None:
        """Stop delivering events to the callback; calling it again changes nothing."""
        self._bus._remove(self)

    def __repr__(self) -> str:
        return f"<Subscription {self.pattern!r} -> {self.callback!r}>"


def _check_pattern(pattern: object) -> str:
    if not isinstance(pattern, str):
        raise UsageError(f"an event name must be a string, not {pattern!r}")
    if pattern == "*" or pattern in CATALOG:
        return pattern
    if pattern.endswith(".*") and any(name.startswith(pattern[:-1]) for name in CATALOG):
        return pattern
    known = ", ".join(CATALOG)
    raise UsageError(
        f"unknown event {pattern!r}; use one of {known}, a prefix such as 'process.*', or '*'"
    )


class _Translator:
    """Turns the writer's records into event dicts, remembering what their ends need.

    It runs for every record while anyone subscribes, on the dispatcher thread
    that shares the interpreter with the jobs: ids are turned into text once
    (a flow's when it starts) and each event is one dict built once.
    """

    def __init__(self) -> None:
        self.processes: collections.OrderedDict[int, Event] = collections.OrderedDict()
        # flow id -> (its id as text, name, process id, parent id, started at, depth)
        self.flows: collections.OrderedDict[int, tuple[str, str, int, int | None, float, int]] = (
            collections.OrderedDict()
        )

    def event_of(self, record: ev.Change) -> Event | None:
        """The event a record makes, or None (a flow's metadata update, a marker)."""
        kind = record[0]
        if kind == ev.LOG:
            _, _log_id, process_id, flow_id, level, message, data, created, _position = record
            opened = self.flows.get(flow_id) if flow_id is not None else None
            return {
                **self._process_part(process_id),
                "event": "log.written",
                "time": created,
                "flow_id": opened[0] if opened else _uuid(flow_id),
                "flow_name": opened[1] if opened else None,
                "level": level,
                "message": message if isinstance(message, str) else _safe_str(message),
                "data": data,
            }
        if kind == ev.FLOW_START:
            _, flow_id, process_id, parent_id, name, meta, started, _pos, depth, attempt = record
            flow_text = ids.to_text(flow_id)
            parent = self.flows.get(parent_id) if parent_id is not None else None
            self._remember(
                self.flows, flow_id, (flow_text, name, process_id, parent_id, started, depth)
            )
            return {
                **self._process_part(process_id),
                "event": "flow.started",
                "time": started,
                "flow_id": flow_text,
                "flow_name": name,
                "parent_flow_id": parent[0] if parent else _uuid(parent_id),
                "depth": depth,
                "attempt": attempt,
                "metadata": meta or {},
            }
        if kind == ev.FLOW_END:
            _, flow_id, status, finished, duration, error, _meta = record
            opened = self.flows.pop(flow_id, None)
            if opened is None:
                ended_id = _uuid(flow_id)
                name, parent_id, started, depth = "", None, finished, 0
                event: Event = {}
            else:
                ended_id, name, process_id, parent_id, started, depth = opened
                event = dict(self._process_part(process_id))
            parent = self.flows.get(parent_id) if parent_id is not None else None
            event.update(
                event=f"flow.{status}",
                time=finished,
                flow_id=ended_id,
                flow_name=name,
                parent_flow_id=parent[0] if parent else _uuid(parent_id),
                depth=depth,
                started_at=started,
                duration_ms=duration,
            )
            if error is not None:
                event["error"] = _error(error)
            return event
        if kind == ev.PROCESS_START:
            _, process_id, row = record
            known = {
                "process_id": ids.to_text(process_id),
                "name": row.get("name"),
                "category": row.get("category"),
                "job_system": row.get("job_system"),
                "job_id": row.get("job_id"),
                "queue": row.get("queue"),
                "attempt": row.get("attempt", 1),
                "parent_process_id": _uuid(row.get("parent_process_id")),
                "metadata": row.get("metadata") or {},
                "started_at": row.get("started_at"),
            }
            self._remember(self.processes, process_id, known)
            status = row.get("status", "running")
            return {
                **known,
                "event": "process.queued" if status == "queued" else "process.started",
                "status": status,
                "time": row.get("started_at") or row.get("created_at") or time.time(),
            }
        if kind == ev.PROCESS_UPDATE:
            _, process_id, fields = record
            status = fields.get("status")
            if status is None:
                if "progress_current" not in fields:
                    return None
                return {
                    **self._process_part(process_id),
                    "event": "process.progress",
                    "time": fields.get("updated_at") or time.time(),
                    "current": fields.get("progress_current"),
                    "total": fields.get("progress_total"),
                }
            event = dict(self._process_part(process_id))
            if status in FINAL_PROCESS or status == "retrying":
                self.processes.pop(process_id, None)
            event.update(
                event=f"process.{status}",
                status=status,
                time=fields.get("finished_at") or fields.get("updated_at") or time.time(),
                duration_ms=fields.get("duration_ms"),
            )
            if ev.ENDED_ATTEMPT in fields:
                event["attempt"] = fields[ev.ENDED_ATTEMPT]
            if fields.get("error") is not None:
                event["error"] = _error(fields["error"])
            if fields.get(ev.TRANSITION_REASON) is not None:
                event["reason"] = fields[ev.TRANSITION_REASON]
            if fields.get("dropped_logs"):
                event["dropped_logs"] = fields["dropped_logs"]
            return event
        return None

    def _process_part(self, process_id: int) -> Event:
        """What is known of the process (its id at least): kept, so copy it to change it."""
        known = self.processes.get(process_id)
        if known is None:
            return {"process_id": ids.to_text(process_id)}
        return known

    @staticmethod
    def _remember(table: collections.OrderedDict[int, Any], key: int, value: Any) -> None:
        table[key] = value
        if len(table) > MAX_OPEN:  # ends never seen (a crash): forget the oldest
            table.popitem(last=False)


def _uuid(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return ids.to_text(value)
    return str(value)


def _error(error: ev.ErrorTuple) -> dict[str, Any]:
    cls, message, trace = error
    return {"class": cls, "message": message, "traceback": trace}


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


class Bus:
    """The dispatcher: records in, event dicts out to every matching subscription."""

    def __init__(self) -> None:
        self._subscriptions: tuple[Subscription, ...] = ()
        self._lock = threading.Lock()
        self.active = False
        """True while anyone subscribes; the writer publishes nothing otherwise."""
        self.failed_callbacks = 0
        """Callbacks that raised (each logged)."""
        self.dropped = 0
        """Records not delivered because subscribers fell :data:`MAX_PENDING` behind."""
        self.delivered = 0
        self._reset_runtime_state()

    def _reset_runtime_state(self) -> None:
        # Records, events made elsewhere, and drain markers (set once reached).
        self._pending: collections.deque[ev.Change | Event | threading.Event] = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._translator = _Translator()

    # -- subscribing ------------------------------------------------------------

    def add(self, pattern: str, callback: Callback) -> Subscription:
        """Subscribe ``callback`` to events matching ``pattern`` (see :func:`on`)."""
        if not callable(callback):
            raise UsageError(f"a subscriber callback must be callable, not {callback!r}")
        subscription = Subscription(self, _check_pattern(pattern), callback)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)
            self.active = True
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
            self.active = bool(self._subscriptions)

    def clear(self) -> None:
        """Drop every subscription (tests, ``flow_tracker.reset``)."""
        with self._lock:
            self._subscriptions = ()
            self.active = False

    # -- publishing -------------------------------------------------------------

    def publish(self, records: list[ev.Change]) -> None:
        """Hand the writer's records over (called on the writer thread; cheap)."""
        if not self.active or not records:
            return
        if len(self._pending) + len(records) > MAX_PENDING:
            self.dropped += len(records)
            return
        self._hand_over(records)

    def publish_event(self, event: Event) -> None:
        """Hand over an event made elsewhere (the reaper, requeue)."""
        if self.active:
            self._hand_over([event])

    def drain(self, timeout: float) -> bool:
        """Wait until every event handed over so far went to its subscribers."""
        if not self.active or threading.current_thread() is self._thread:
            return not self._pending
        reached = threading.Event()
        self._hand_over([reached])  # the dispatcher sets it once all before it went out
        return reached.wait(timeout)

    def _hand_over(self, items: list[Any]) -> None:
        self._pending.extend(items)
        self._start()
        self._wake.set()

    # -- dispatching ------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(
                        target=self._run, name="flow-tracker-events", daemon=True
                    )
                    self._thread = thread
                    thread.start()

    def _run(self) -> None:
        # The runtime imports this module (through the writer): imported once running.
        from flow_tracker import runtime

        pending = self._pending
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            while pending:
                try:
                    record = pending.popleft()
                except IndexError:
                    break
                if isinstance(record, threading.Event):
                    record.set()
                    continue
                try:
                    event = (
                        record if isinstance(record, dict) else self._translator.event_of(record)
                    )
                    if event is not None:
                        # Subscribers, the OpenTelemetry spans and the metrics see what
                        # is stored: redacted, here on this thread, never the job's.
                        self.deliver(runtime.redactor().redact_event(event))
                except Exception as exc:  # a record we cannot read: never stop the thread
                    self._report(exc, "translating a record")

    def deliver(self, event: Event) -> None:
        """Call every subscription matching ``event["event"]`` (on this thread)."""
        name = event["event"]
        for subscription in self._subscriptions:
            if subscription.matches(name):
                try:
                    subscription.callback(event)
                except Exception as exc:
                    self.failed_callbacks += 1
                    self._report(exc, f"subscriber {subscription.callback!r} on {name}")
        self.delivered += 1

    def _report(self, exc: Exception, where: str) -> None:
        with contextlib.suppress(Exception):  # a broken logging set-up must not stop events
            logger.warning(
                "flow-tracker: %s failed: %s: %s", where, type(exc).__name__, exc, exc_info=exc
            )

    def after_fork_in_child(self) -> None:
        """The parent's thread and pending records stay behind; subscriptions are kept."""
        self._reset_runtime_state()


BUS = Bus()
os.register_at_fork(after_in_child=BUS.after_fork_in_child)


def on(event_name: str, callback: Callback) -> Subscription:
    """Call ``callback(event)`` for every event of that name, off the job's thread.

    ::

        flow_tracker.on("process.failed", lambda e: alert(f"{e['name']} failed: {e['error']}"))

    Args:
        event_name: a name of :data:`CATALOG` (``flow-tracker events`` lists them),
            a prefix such as ``"process.*"``, or ``"*"`` for every event.
        callback: gets the event as a dict; what it raises is logged and counted.

    Raises:
        UsageError: an unknown event name, or a callback that is not callable.
    """
    return BUS.add(event_name, callback)


def subscribe(subscriber: Subscriber) -> Subscription:
    """Deliver every event to ``subscriber``'s ``on_event`` and matching ``on_*`` hook."""
    if not isinstance(subscriber, Subscriber):
        raise UsageError(f"subscribe() takes a flow_tracker.Subscriber, not {subscriber!r}")

    def dispatch(event: Event) -> None:
        subscriber.on_event(event)
        hook = getattr(subscriber, "on_" + event["event"].replace(".", "_"), None)
        if hook is not None:
            hook(event)

    return BUS.add("*", dispatch)


def describe_catalog() -> list[Mapping[str, str]]:
    """The catalog as rows (name, description, payload), for the CLI and docs."""
    return [
        {"name": s.name, "description": s.description, "payload": s.payload}
        for s in CATALOG.values()
    ]
