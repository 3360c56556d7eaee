"""Test what your jobs record, with no database: :func:`capture`.

::

    from flow_tracker import Status
    from flow_tracker.testing import capture

    def test_the_welcome_email_says_whom_it_went_to():
        with capture() as captured:
            send_welcome_email(42)  # your code: track(), flow(), log(), current()...
        process = captured.process("send_welcome_email")
        assert process.status is Status.COMPLETED
        assert process.flow("send").logs[0].message == "Sending to user 42"
        assert captured.logs(level="error") == []

Inside the block every process started in this interpreter records into memory
instead of the database: :func:`flow_tracker.track` blocks and decorators,
:func:`flow_tracker.start`, :func:`flow_tracker.flow`, :func:`flow_tracker.log`
and :func:`flow_tracker.current` work as in production. What was recorded comes
back as frozen records (:class:`CapturedProcess`, :class:`CapturedFlow`,
:class:`CapturedLog`). A queue's job function called directly runs no queue
hooks, so nothing opens its process: :func:`run_job` runs it as a worker would.

The settings in force and the writer are left alone: nothing is stored, no
connection is opened, and when the block ends (normally or by an exception) the
settings are what they were, whatever was configured before. What needs the
database itself (critical sections, workflows, :func:`flow_tracker.get_process`)
still uses the configured one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any, TypeVar

from flow_tracker import config, jobs, runtime
from flow_tracker import events as ev
from flow_tracker.levels import LEVELS, resolve_level
from flow_tracker.records import ErrorInfo
from flow_tracker.sink import MemorySink
from flow_tracker.status import Status

R = TypeVar("R")
JOB_SYSTEM = "testing"  # the job system of processes run by run_job

__all__ = [
    "JOB_SYSTEM",
    "Captured",
    "CapturedFlow",
    "CapturedLog",
    "CapturedProcess",
    "capture",
    "run_job",
]


@dataclasses.dataclass(frozen=True)
class CapturedLog:
    """One log entry, as the code wrote it (before redaction and size limits)."""

    id: uuid.UUID
    process_id: uuid.UUID
    flow_id: uuid.UUID | None  # None: written on the process itself
    level: str  # debug, info, warning, error or critical ("warn" is "warning")
    message: str
    data: Any  # a shallow copy of what was passed, taken when it was logged
    created_at: datetime
    position: int  # orders the entries of a process


@dataclasses.dataclass(frozen=True)
class CapturedFlow:
    """One flow, with its child flows and its own log entries, in the order written."""

    id: uuid.UUID
    process_id: uuid.UUID
    parent_id: uuid.UUID | None  # None: a top-level flow of its process
    name: str
    status: Status  # ``running`` if its block had not ended
    metadata: dict[str, Any]
    error: ErrorInfo | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None
    attempt: int
    depth: int  # 0 for a top-level flow
    children: tuple[CapturedFlow, ...] = ()
    logs: tuple[CapturedLog, ...] = ()

    def walk(self) -> Iterator[CapturedFlow]:
        """Yield this flow and every flow below it, depth first, in order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def flow(self, name: str) -> CapturedFlow:
        """The first flow called ``name`` below this one (depth first).

        Raises:
            LookupError: there is none (the message lists the names there are).
        """
        return _find(name, list(self.walk())[1:], f"flow {self.name!r}")

    def all_logs(self) -> list[CapturedLog]:
        """Every log entry of this flow and the flows below it, in the order written."""
        return sorted((e for flow in self.walk() for e in flow.logs), key=_position)


@dataclasses.dataclass(frozen=True)
class CapturedProcess:
    """One process (a ``track`` block or decorated call, a ``start``, a job) and its tree."""

    id: uuid.UUID
    name: str
    category: str
    status: Status  # ``running`` if it had not ended
    metadata: dict[str, Any]
    error: ErrorInfo | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    progress_current: float
    progress_total: float
    attempt: int
    parent_process_id: uuid.UUID | None  # the process it was started inside, if any
    job_system: str | None  # set for jobs (see run_job)
    job_id: str | None
    flows: tuple[CapturedFlow, ...] = ()  # the top-level flows, each with its subtree
    logs: tuple[CapturedLog, ...] = ()  # the entries written on the process, outside flows

    def all_flows(self) -> Iterator[CapturedFlow]:
        """Yield every flow of the process, depth first, in order."""
        for flow in self.flows:
            yield from flow.walk()

    def flow(self, name: str) -> CapturedFlow:
        """The first flow called ``name`` anywhere in the process (depth first).

        Raises:
            LookupError: there is none (the message lists the names there are).
        """
        return _find(name, list(self.all_flows()), f"process {self.name!r}")

    def all_logs(self) -> list[CapturedLog]:
        """Every log entry of the process, flows included, in the order written."""
        entries = list(self.logs)
        for flow in self.all_flows():
            entries.extend(flow.logs)
        return sorted(entries, key=_position)


class Captured:
    """What the processes started inside a :func:`capture` block recorded.

    Read it inside the block or after it: each read reflects what was recorded
    so far (a process still running shows as ``running``).
    """

    def __init__(self, sink: MemorySink) -> None:
        self._sink = sink
        self._built: tuple[int, tuple[CapturedProcess, ...], tuple[CapturedLog, ...]] = (
            -1,
            (),
            (),
        )

    @property
    def events(self) -> list[ev.Change]:
        """The raw changes recorded, in order (see :mod:`flow_tracker.events`)."""
        return self._sink.snapshot()

    @property
    def processes(self) -> tuple[CapturedProcess, ...]:
        """Every process recorded, in the order they started."""
        return self._build()[0]

    def process(self, name: str | None = None) -> CapturedProcess:
        """The one process called ``name`` (without a name: the one process recorded).

        Raises:
            LookupError: none, or more than one, matches.
        """
        found = [p for p in self.processes if name is None or p.name == name]
        if len(found) != 1:
            what = "process" if name is None else f"process called {name!r}"
            names = [p.name for p in self.processes]
            raise LookupError(f"{len(found)} {what} recorded, not 1; recorded: {names}")
        return found[0]

    def flows(self, name: str | None = None) -> list[CapturedFlow]:
        """Every flow of every process (depth first), or those called ``name``."""
        return [
            flow
            for process in self.processes
            for flow in process.all_flows()
            if name is None or flow.name == name
        ]

    def logs(self, level: str | None = None) -> list[CapturedLog]:
        """Every log entry recorded, in the order written; only those at ``level`` if given.

        Raises:
            UsageError: ``level`` is not a known level.
        """
        entries = self._build()[1]
        if level is None:
            return list(entries)
        wanted = (LEVELS.get(level) or resolve_level(level))[0]
        return [entry for entry in entries if entry.level == wanted]

    def messages(self, level: str | None = None) -> list[str]:
        """The messages of :meth:`logs`, for short assertions."""
        return [entry.message for entry in self.logs(level)]

    def _build(self) -> tuple[tuple[CapturedProcess, ...], tuple[CapturedLog, ...]]:
        events = self._sink.snapshot()
        count, processes, logs = self._built
        if count != len(events):
            processes, logs = _rebuild(events)
            self._built = (len(events), processes, logs)
        return processes, logs


@contextlib.contextmanager
def capture() -> Iterator[Captured]:
    """Record every process started inside the block into memory; yield what they record.

    Tracking is on inside the block even where the settings turn it off, the
    logging mirror is off, and progress is recorded at every change (no
    throttling), so that what a test reads does not depend on timing. The
    process category defaults to the ``default_category`` in force. Blocks nest:
    an inner one captures on its own until it ends.

    It is global to the interpreter, as the settings are: processes other
    threads start meanwhile are captured too.
    """
    before = config.in_force()
    base = before if before is not None else config.settings_from_env()
    settings = dataclasses.replace(base, enabled=True, log_to_stdlib=False, progress_interval=0.0)
    sink = MemorySink()
    config.replace(settings)
    previous = runtime.capture_into(sink)
    try:
        yield Captured(sink)
    finally:
        runtime.capture_into(previous)
        config.replace(before)


def run_job(job: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """Call a queue's job function (Celery task, RQ function, Dramatiq actor) as a worker would.

    Calling a job directly runs none of its queue's hooks, so no process opens
    for it. This opens the job's process first, runs the job inside it and ends
    it ``completed``, ``failed`` (the exception then goes on unchanged) or
    ``skipped``; its job system is :data:`JOB_SYSTEM`. The process is named as
    its queue names it: the Celery task's or the Dramatiq actor's name, else the
    function's dotted path (as RQ does). Returns what the job returned.
    """
    tracker = jobs.start_job(
        job_system=JOB_SYSTEM,
        job_id=uuid.uuid4().hex,
        name=_job_name(job),
        queue=None,
        attempt=1,
    )
    body = jobs.job_body(job)
    try:
        result = body(*args, **kwargs)
    except BaseException as exc:
        tracker.complete(exc)
        raise
    tracker.complete()
    return result


def _job_name(job: Callable[..., Any]) -> str:
    for attribute in ("name", "actor_name"):  # Celery's task, Dramatiq's actor
        value = getattr(job, attribute, None)
        if isinstance(value, str) and value:
            return value
    module = getattr(job, "__module__", None)
    qualified = getattr(job, "__qualname__", None) or repr(job)
    return f"{module}.{qualified}" if module else qualified


def _position(entry: CapturedLog) -> int:
    return entry.position


def _find(name: str, flows: list[CapturedFlow], where: str) -> CapturedFlow:
    for flow in flows:
        if flow.name == name:
            return flow
    raise LookupError(f"no flow {name!r} in {where}; flows there: {[f.name for f in flows]}")


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def _error(value: ev.ErrorTuple | None) -> ErrorInfo | None:
    return None if value is None else ErrorInfo(value[0], value[1], value[2])


def _rebuild(
    events: list[ev.Change],
) -> tuple[tuple[CapturedProcess, ...], tuple[CapturedLog, ...]]:
    """Replay ``events`` as the database would store them, into records."""
    rows: dict[int, dict[str, Any]] = {}
    flows: dict[int, dict[str, Any]] = {}
    logs: list[CapturedLog] = []
    for event in events:
        kind = event[0]
        if kind == ev.PROCESS_START or kind == ev.PROCESS_UPDATE:
            rows.setdefault(event[1], {}).update(event[2])
        elif kind == ev.FLOW_START:
            _, flow_id, process_id, parent_id, name, metadata, started, _, depth, attempt = event
            flows[flow_id] = {
                "process_id": process_id,
                "parent_id": parent_id,
                "name": name,
                "metadata": dict(metadata or {}),
                "started_at": started,
                "depth": depth,
                "attempt": attempt,
                "status": Status.RUNNING.value,
            }
        elif kind == ev.FLOW_END and event[1] in flows:
            _, flow_id, status, finished, duration, error, metadata = event
            flow = flows[flow_id]
            flow.update(status=status, finished_at=finished, duration_ms=duration, error=error)
            if metadata is not None:
                flow["metadata"] = dict(metadata)
        elif kind == ev.FLOW_UPDATE and event[1] in flows:
            flows[event[1]]["metadata"] = dict(event[2] or {})
        elif kind == ev.LOG:
            _, log_id, process_id, flow_id, level, message, data, created, position = event
            logs.append(
                CapturedLog(
                    id=uuid.UUID(int=log_id),
                    process_id=uuid.UUID(int=process_id),
                    flow_id=None if flow_id is None else uuid.UUID(int=flow_id),
                    level=level,
                    message=str(message),
                    data=data,
                    created_at=datetime.fromtimestamp(created, timezone.utc),
                    position=position,
                )
            )
    logs_of: dict[int, list[CapturedLog]] = {}  # by flow
    own_logs: dict[int, list[CapturedLog]] = {}  # by process, outside flows
    for entry in logs:
        if entry.flow_id is None:
            own_logs.setdefault(entry.process_id.int, []).append(entry)
        else:
            logs_of.setdefault(entry.flow_id.int, []).append(entry)
    children: dict[int, list[int]] = {}
    top_flows: dict[int, list[int]] = {}  # by process
    for flow_id, flow in flows.items():
        if flow["parent_id"] is None:
            top_flows.setdefault(flow["process_id"], []).append(flow_id)
        else:
            children.setdefault(flow["parent_id"], []).append(flow_id)
    processes = tuple(
        _process(
            process_id,
            row,
            [_flow(flow_id, flows, children, logs_of) for flow_id in top_flows.get(process_id, [])],
            own_logs.get(process_id, []),
        )
        for process_id, row in rows.items()
    )
    return processes, tuple(logs)


def _flow(
    flow_id: int,
    flows: dict[int, dict[str, Any]],
    children: dict[int, list[int]],
    logs_of: dict[int, list[CapturedLog]],
) -> CapturedFlow:
    flow = flows[flow_id]
    return CapturedFlow(
        id=uuid.UUID(int=flow_id),
        process_id=uuid.UUID(int=flow["process_id"]),
        parent_id=None if flow["parent_id"] is None else uuid.UUID(int=flow["parent_id"]),
        name=flow["name"],
        status=Status(flow["status"]),
        metadata=flow["metadata"],
        error=_error(flow.get("error")),
        started_at=datetime.fromtimestamp(flow["started_at"], timezone.utc),
        finished_at=_time(flow.get("finished_at")),
        duration_ms=flow.get("duration_ms"),
        attempt=flow["attempt"],
        depth=flow["depth"],
        children=tuple(
            _flow(child, flows, children, logs_of) for child in children.get(flow_id, [])
        ),
        logs=tuple(logs_of.get(flow_id, [])),
    )


def _process(
    process_id: int, row: dict[str, Any], flows: list[CapturedFlow], logs: list[CapturedLog]
) -> CapturedProcess:
    parent = row.get("parent_process_id")
    return CapturedProcess(
        id=uuid.UUID(int=process_id),
        name=str(row.get("name", "")),
        category=str(row.get("category", "")),
        status=Status(row.get("status", Status.RUNNING.value)),
        metadata=dict(row.get("metadata") or {}),
        error=_error(row.get("error")),
        started_at=_time(row.get("started_at")),
        finished_at=_time(row.get("finished_at")),
        duration_ms=row.get("duration_ms"),
        progress_current=float(row.get("progress_current") or 0.0),
        progress_total=float(row.get("progress_total") or 0.0),
        attempt=int(row.get("attempt") or 1),
        parent_process_id=None if parent is None else uuid.UUID(int=parent),
        job_system=row.get("job_system"),
        job_id=row.get("job_id"),
        flows=tuple(flows),
        logs=tuple(logs),
    )
