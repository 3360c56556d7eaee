"""Processes (:class:`Tracker`), nested flows (:class:`Flow`) and their logs.

The innermost running process or flow of the current context is kept in one
:class:`~contextvars.ContextVar`, so asyncio tasks started inside a process
belong to it, two processes running at once in one interpreter never mix, and
threads join in through :func:`bind`.

Everything here runs in the user's thread, so it only builds small tuples and
hands them to its sink (:mod:`flow_tracker.sink`): the background writer
(:mod:`flow_tracker.writer`), or a list in memory for a test. It never
raises into user code except for misuse (an unknown level, a bad category),
and it never changes the user's result or exception.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from flow_tracker import config, heartbeat, job_systems, runtime
from flow_tracker import events as ev
from flow_tracker.errors import Skipped, UsageError
from flow_tracker.ids import new_id, new_id_int
from flow_tracker.levels import LEVELS, resolve_level
from flow_tracker.progress import Progress
from flow_tracker.sink import Sink
from flow_tracker.status import Status

_now = time.time
ATTEMPT_POSITION_SHIFT = 40
stdlib_logger = logging.getLogger("flow_tracker")

CURRENT_NODE: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "flow_tracker_current", default=None
)
_hostname: str | None = None


def _host() -> str:
    global _hostname
    if _hostname is None:
        _hostname = socket.gethostname()
    return _hostname


def describe_error(exc: BaseException) -> ev.ErrorTuple:
    """Return ``(class name, message, traceback)`` of an exception, never raising."""
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    try:
        message = str(exc)
    except Exception:
        message = f"<str() of {name} failed>"
    try:
        trace = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
    except Exception:
        trace = None
    return name, message, trace


# The core's own control flow; a queue's (Celery's Retry, Dramatiq's Retry, ...) is
# registered with its JobSystem and asked for in outcome_of.
CONTROL_FLOW: dict[type[BaseException], Status] = {Skipped: Status.SKIPPED}


def outcome_of(exc: BaseException | None) -> tuple[Status, ev.ErrorTuple | None]:
    """The status a block ends with, given the exception leaving it (if any)."""
    if exc is None:
        return Status.COMPLETED, None
    for exc_type, status in CONTROL_FLOW.items():
        if isinstance(exc, exc_type):
            return status, describe_error(exc)
    queue_status = job_systems.control_flow_status(exc)
    if queue_status is not None:
        return queue_status, describe_error(exc)
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, GeneratorExit)):
        return Status.CANCELLED, describe_error(exc)
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return Status.COMPLETED, None
    return Status.FAILED, describe_error(exc)


def _copy_data(data: object) -> object:
    # A shallow copy, so that a dict the caller changes after logging is stored
    # as it was when logged. The writer scrubs and serialises it later.
    if type(data) is dict:
        return data.copy()
    if type(data) is list:
        return list(data)
    return data


# A status's stored text: Enum's ``.value`` is a property, dearer than a lookup, and
# every flow's end reads it.
_STATUS_TEXT = {status: status.value for status in Status}

# The logging numbers of the level methods' entries, from the one table of levels.
_DEBUG_RANK = LEVELS["debug"][1]
_INFO_RANK = LEVELS["info"][1]
_WARNING_RANK = LEVELS["warning"][1]
_ERROR_RANK = LEVELS["error"][1]
_CRITICAL_RANK = LEVELS["critical"][1]


class _Node:
    """What processes and flows share: logging and opening child flows."""

    __slots__ = ()
    _tracker: Tracker
    _flow_id: int | None
    _depth: int

    def log(self, message: object, level: str = "info", data: object = None) -> None:
        """Write a log entry here.

        Args:
            message: the text (anything else is stored as its ``str()``).
            level: debug, info, warning (or warn), error or critical.
            data: any value; stored as JSON, redacted, non-JSON values as their repr.

        Raises:
            UsageError: the level is unknown.
        """
        name, rank = LEVELS.get(level) or resolve_level(level)
        self._log(name, rank, message, data)

    def _log(self, name: str, rank: int, message: object, data: object) -> None:
        # The body of every log call, the level already resolved: a job's thread
        # pays for each line here, so the level methods come straight in.
        tracker = self._tracker
        event = (
            ev.LOG,
            new_id_int(),
            tracker._id_int,
            self._flow_id,
            name,
            message,
            None if data is None else data.copy() if type(data) is dict else _copy_data(data),
            _now(),
            next(tracker._positions),
        )
        if not tracker._writer.put_log(event, rank):
            tracker._dropped += 1
        if tracker._mirror and stdlib_logger.isEnabledFor(rank):
            _mirror(tracker, rank, message, data)

    def debug(self, message: object, data: object = None) -> None:
        """Write a debug log entry."""
        self._log("debug", _DEBUG_RANK, message, data)

    def info(self, message: object, data: object = None) -> None:
        """Write an info log entry."""
        self._log("info", _INFO_RANK, message, data)

    def warning(self, message: object, data: object = None) -> None:
        """Write a warning log entry."""
        self._log("warning", _WARNING_RANK, message, data)

    warn = warning

    def error(self, message: object, data: object = None) -> None:
        """Write an error log entry."""
        self._log("error", _ERROR_RANK, message, data)

    def critical(self, message: object, data: object = None) -> None:
        """Write a critical log entry."""
        self._log("critical", _CRITICAL_RANK, message, data)

    def flow(self, name: str, metadata: Mapping[str, Any] | None = None) -> Flow:
        """A child flow, to use as ``with node.flow("name") as flow:`` (or ``async with``).

        Raises:
            UsageError: ``name`` is not a non-empty string.
        """
        if type(name) is not str or not name:
            check_name(name, "flow")
        return Flow(self._tracker, self._flow_id, self._depth + 1, name, metadata)

    @property
    def process_id(self) -> uuid.UUID:
        """The UUID of the process this belongs to."""
        return self._tracker._process_id

    @property
    def progress(self) -> Progress:
        """The progress of the process this belongs to."""
        return self._tracker._progress


# Called on the job's thread as each process begins (the OpenTelemetry exporter
# notes the span current there). Once per process, never per step.
BEGIN_HOOKS: list[Callable[[Tracker], None]] = []


def check_name(name: object, what: str) -> None:
    """Raise :class:`UsageError` unless ``name`` is a non-empty string (str subclasses too)."""
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"a {what} needs a non-empty name, got {name!r}")


def _mirror(tracker: Tracker, rank: int, message: object, data: object) -> None:
    # The logging module's handlers ship records elsewhere (files, log services):
    # they get the redacted message and data, as stored. Only paid when a handler
    # listens at this level (the root logger starts at WARNING).
    try:
        redactor = runtime.redactor()
        stdlib_logger.log(
            rank,
            "[%s] %s",
            tracker.name,
            redactor.text(message, tracker._settings.max_message_length),
            extra={
                "flow_tracker_process_id": str(tracker._process_id),
                "flow_tracker_data": None if data is None else redactor.scrub(data),
            },
        )
    except Exception as exc:  # a broken handler of the host app must not break the job
        runtime.report_internal_error(exc, "mirroring a log to the logging module")


class Flow(_Node):
    """One step inside a process; flows nest to any depth.

    Use it as a context manager (``with`` or ``async with``). An exception leaving
    the block marks the flow ``failed`` with the error, and goes on unchanged.
    """

    __slots__ = (
        "_depth",
        "_finished",
        "_flow_id",
        "_kept",
        "_metadata",
        "_parent_id",
        "_started",
        "_token",
        "_tracker",
        "name",
        "status",
    )

    def __init__(
        self,
        tracker: Tracker,
        parent_id: int | None,
        depth: int,
        name: str,
        metadata: Mapping[str, Any] | None,
    ) -> None:
        self._tracker = tracker
        self._flow_id = new_id_int()
        self._parent_id = parent_id
        self._depth = depth
        self.name = name
        self._metadata = dict(metadata) if metadata else None
        self._started = 0.0
        self._token: contextvars.Token[_Node | None] | None = None
        self._finished = False
        self._kept = False
        self.status = Status.RUNNING

    @property
    def flow_id(self) -> uuid.UUID:
        """The UUID of the flow."""
        return uuid.UUID(int=self._flow_id)

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the flow's metadata."""
        return dict(self._metadata or {})

    def __enter__(self) -> Flow:
        started = _now()
        self._started = started
        tracker = self._tracker
        self._token = CURRENT_NODE.set(self)
        event = (
            ev.FLOW_START,
            self._flow_id,
            tracker._id_int,
            self._parent_id,
            self.name,
            self._metadata,
            started,
            next(tracker._positions),
            self._depth,
            tracker._attempt,
        )
        # A flow whose start was kept always gets its end stored (see _finish);
        # under memory pressure whole flows are dropped, never just their end.
        self._kept = tracker._writer.put_flow(event)
        if not self._kept:
            tracker._dropped += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token = self._token
        if token is not None:
            self._token = None
            try:
                CURRENT_NODE.reset(token)
            except ValueError:  # ended in another context than it began
                reset_current(token, self)
        if not self._finished:
            status, error = (Status.COMPLETED, None) if exc is None else outcome_of(exc)
            self._finish(status, error)

    async def __aenter__(self) -> Flow:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def complete(self, error: BaseException | None = None) -> None:
        """End the flow now (``failed`` with ``error`` if given); later ends are ignored."""
        if self._finished:
            return
        try:
            status, described = outcome_of(error)
            self._finish(status, described)
        except Exception as exc:
            runtime.report_internal_error(exc, "completing a flow")

    def _finish(self, status: Status, error: ev.ErrorTuple | None) -> None:
        self._finished = True
        self.status = status
        finished = _now()
        started = self._started or finished
        event = (
            ev.FLOW_END,
            self._flow_id,
            _STATUS_TEXT[status],
            finished,
            (finished - started) * 1000.0,
            error,
            None,
        )
        if self._kept:
            self._tracker._writer.put(event)

    def update_metadata(self, **values: Any) -> None:
        """Merge ``values`` into the flow's metadata."""
        self._metadata = {**(self._metadata or {}), **values}
        if self._kept:
            self._tracker._writer.put((ev.FLOW_UPDATE, self._flow_id, self._metadata))

    def __repr__(self) -> str:
        return f"<Flow {self.name!r} {self.status.value}>"


class Tracker(_Node):
    """One tracked process: a job run, a service call, a script.

    Made by :func:`track` (block or decorator) or :func:`start` (ended by
    :meth:`complete`). Log to it, open flows on it, set its progress and metadata.
    """

    __slots__ = (
        "__weakref__",
        "_attempt",
        "_dropped",
        "_finished",
        "_id_int",
        "_metadata",
        "_mirror",
        "_positions",
        "_process_id",
        "_progress",
        "_settings",
        "_skip_reason",
        "_started",
        "_status",
        "_token",
        "_writer",
        "category",
        "name",
    )
    _flow_id = None
    _depth = -1

    def __init__(
        self,
        name: str,
        *,
        category: str,
        metadata: Mapping[str, Any] | None,
        settings: config.Settings,
        writer: Sink,
        process_id: uuid.UUID | None = None,
        attempt: int = 1,
    ) -> None:
        self.name = name
        self.category = category
        self._process_id = process_id or new_id()
        self._id_int = self._process_id.int
        self._metadata: dict[str, Any] = dict(metadata) if metadata else {}
        self._settings = settings
        self._writer = writer
        self._mirror = settings.log_to_stdlib
        # Positions order flows and logs within the process; each attempt of a job
        # gets its own range, so a retry's entries sort after the previous attempt's.
        self._positions = itertools.count((attempt - 1) << ATTEMPT_POSITION_SHIFT)
        self._attempt = attempt
        self._dropped = 0
        self._finished = False
        self._status = Status.RUNNING
        self._started = 0.0
        self._token: contextvars.Token[_Node | None] | None = None
        self._skip_reason: str | None = None
        self._progress = Progress(self._emit_progress, settings.progress_interval)

    @property
    def _tracker(self) -> Tracker:  # type: ignore[override]
        return self

    @property
    def status(self) -> Status:
        """The process's status as this interpreter knows it."""
        return self._status

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the process's metadata."""
        return dict(self._metadata)

    @property
    def attempt(self) -> int:
        """Which attempt of the job this is (1 for the first run)."""
        return self._attempt

    def _begin(
        self,
        parent: _Node | None,
        extra: Mapping[str, Any] | None = None,
        durable: bool = False,
        copies: list[uuid.UUID] | None = None,
        started_at: float | None = None,
    ) -> None:
        """Store the process as running and make it the current one of this context.

        ``durable`` stores the running row before returning (a queued job: if its
        worker dies a moment later, the row already says where it ran, and the
        reaper can find it), instead of leaving it to the background writer.
        ``copies`` (with ``durable``) gets the id of a process requeued from this
        one, looked for in that write's transaction (see ``Writer.write_now``).
        ``started_at`` (epoch seconds): when it started, if another write said so
        already (a workflow step's claim), so that both say the same.
        """
        started = _now() if started_at is None else started_at
        self._started = started
        row: dict[str, Any] = {
            "name": self.name,
            "category": self.category,
            "status": Status.RUNNING.value,
            "metadata": self._metadata,
            "created_at": started,
            "started_at": started,
            "updated_at": started,
            "heartbeat_at": started,
            "host": _host(),
            "pid": os.getpid(),
            "attempt": self._attempt,
        }
        if parent is not None and isinstance(parent._tracker, Tracker):
            row["parent_process_id"] = parent._tracker._id_int
        if extra:
            row.update(extra)
        event = (ev.PROCESS_START, self._id_int, row)
        # A sink that stores nothing (a warm-up's rehearsal, a test's capture) has
        # no row for start hooks or heartbeats to be about.
        stored_rows = self._writer.durable
        if BEGIN_HOOKS and stored_rows:  # before subscribers hear of it
            for hook in BEGIN_HOOKS:
                try:
                    hook(self)
                except Exception as exc:
                    runtime.report_internal_error(exc, "running a process start hook")
        if durable:
            # Buffered instead while the database is away.
            copy_of = self._id_int if copies is not None else None
            stored = self._writer.write_now((event,), copy_of)
            if copies is not None and stored.requeued_copy is not None:
                copies.append(stored.requeued_copy)
        else:
            self._writer.put(event)
        if stored_rows:
            heartbeat.add_process(self._id_int)
        self._token = CURRENT_NODE.set(self)

    def _emit_progress(self, current: float, total: float) -> None:
        self._writer.put(
            (
                ev.PROCESS_UPDATE,
                self._id_int,
                {"progress_current": current, "progress_total": total, "updated_at": _now()},
            )
        )

    def update_metadata(self, **values: Any) -> None:
        """Merge ``values`` into the process's metadata."""
        self._metadata = {**self._metadata, **values}
        self._writer.put(
            (ev.PROCESS_UPDATE, self._id_int, {"metadata": self._metadata, "updated_at": _now()})
        )

    def skip(self, reason: str) -> None:
        """Make the process end ``skipped`` (with ``reason`` in its metadata) unless it fails.

        Used by ``exclusive(..., on_conflict="skip")``; the process goes on until its
        block or job ends.
        """
        self._skip_reason = str(reason)
        self.update_metadata(skip_reason=self._skip_reason)

    def complete(
        self,
        error: BaseException | None = None,
        *,
        status: Status | str | None = None,
        wait: bool = True,
        finished_at: float | None = None,
    ) -> None:
        """End the process: ``completed``, or ``failed`` with ``error``; later ends are ignored.

        Args:
            error: the exception the process ended with, if any.
            status: another end state to record (``cancelled``, ``skipped``, ...).
            wait: wait (up to ``completion_timeout``) until the final state is stored;
                never done while the database is unreachable.
            finished_at: when it ended (epoch seconds), if another write stored that
                already (a workflow step's end); default now.

        Raises:
            UsageError: ``status`` is not a known status.
        """
        try:
            chosen = None if status is None else Status(status)
        except ValueError:
            raise UsageError(f"unknown status {status!r}") from None
        if self._finished:
            return
        try:
            end, described = outcome_of(error)
            end = chosen or end
            if end is Status.COMPLETED and self._skip_reason is not None:
                end = Status.SKIPPED  # a job queue says it succeeded: it returned after a skip
            event = self._end(end, described, finished_at)
        except Exception as exc:
            runtime.report_internal_error(exc, "completing a process")
            return
        timeout = self._settings.completion_timeout
        if wait and timeout > 0:
            self._writer.write_through(event, timeout)
        else:
            self._writer.put(event)

    def _end(
        self, status: Status, error: ev.ErrorTuple | None, finished_at: float | None = None
    ) -> ev.Change:
        """Mark the process ended and return the event that stores its end."""
        self._finished = True
        heartbeat.remove_process(self._id_int)
        self._status = status
        finished = _now() if finished_at is None else finished_at
        fields: dict[str, Any] = {
            "status": status.value,
            "finished_at": finished,
            "updated_at": finished,
            "duration_ms": (finished - (self._started or finished)) * 1000.0,
            "error": error,
            "progress_current": self._progress.current,
            "progress_total": self._progress.total,
            "dropped_logs": self._dropped,
            ev.ENDED_ATTEMPT: self._attempt,
        }
        if status is Status.SKIPPED and self._skip_reason is not None:
            fields[ev.TRANSITION_REASON] = self._skip_reason
        token = self._token
        if token is not None:
            self._token = None
            reset_current(token, self)
        return (ev.PROCESS_UPDATE, self._id_int, fields)

    def __repr__(self) -> str:
        return f"<Tracker {self.name!r} {self._status.value} {self._process_id}>"


def reset_current(token: contextvars.Token[Any], node: object) -> None:
    """Restore the context as it was before ``node`` became current, where possible."""
    try:
        CURRENT_NODE.reset(token)
    except ValueError:
        # The block ended in another context than it began (a generator, a task
        # handed over): put the previous node back by hand if ``node`` is current.
        if CURRENT_NODE.get() is node:
            CURRENT_NODE.set(token.old_value if token.old_value is not token.MISSING else None)
