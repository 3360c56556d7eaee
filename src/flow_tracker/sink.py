"""What a process records into: the :class:`Sink` protocol, and an in-memory sink.

A :class:`~flow_tracker.tracker.Tracker` hands every change it makes (the tuples
of :mod:`flow_tracker.events`) to its sink and never asks what the sink is. The
background :class:`~flow_tracker.writer.Writer` is the sink that stores them in
the database; :class:`MemorySink` keeps them in a list, for the warm-up of a
worker (which rehearses a job's statements) and for
:func:`flow_tracker.testing.capture`.

Only :attr:`Sink.durable` tells them apart: a process recorded into a sink that
stores nothing gets no heartbeats and runs no start hooks, as there is no row
for either to be about.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from flow_tracker import events as ev


class Stored(NamedTuple):
    """What :meth:`Sink.write_now` did."""

    stored: bool  # False: buffered, to be stored later (or never, by a sink that stores nothing)
    requeued_copy: uuid.UUID | None  # found by ``copy_of``


class Sink(Protocol):
    """What a tracker writes to: the methods :mod:`flow_tracker.tracker` calls.

    The per-event methods (:meth:`put_log`, :meth:`put_flow`, :meth:`put`) are on
    the job's hot path: they must only append, never wait or raise.
    """

    durable: bool
    """True when what it takes ends up in the database (heartbeats and start hooks follow)."""

    healthy: bool
    """False while it cannot store (the database is away): nobody waits for it then."""

    def put(self, event: ev.Change) -> None:
        """Take an event that must not be dropped (process events, ends of kept flows)."""

    def put_flow(self, event: ev.Change) -> bool:
        """Take the start of a flow; False when it was dropped for room."""

    def put_log(self, event: ev.Change, rank: int) -> bool:
        """Take a log event of level ``rank``; False when it was dropped for room."""

    def write_now(self, events: Sequence[ev.Change], copy_of: int | None = None) -> Stored:
        """Store ``events`` before returning, where it stores at all (a job's running row)."""

    def write_through(self, event: ev.Change, timeout: float) -> bool:
        """Store ``event`` and all taken before it, waiting up to ``timeout`` s (a job's end)."""

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until everything taken so far is stored."""


class MemorySink:
    """A :class:`Sink` that keeps every event in :attr:`events`, in order, and stores nothing.

    A process's threads (see :func:`flow_tracker.bind`) may record at once:
    appending to, extending and copying a list are each atomic.
    """

    durable = False
    healthy = True

    def __init__(self) -> None:
        self.events: list[ev.Change] = []

    def put(self, event: ev.Change) -> None:
        """Keep ``event``."""
        self.events.append(event)

    def put_flow(self, event: ev.Change) -> bool:
        """Keep the start of a flow; never drops one."""
        self.events.append(event)
        return True

    def put_log(self, event: ev.Change, rank: int) -> bool:
        """Keep a log event, whatever its level."""
        self.events.append(event)
        return True

    def write_now(self, events: Sequence[ev.Change], copy_of: int | None = None) -> Stored:
        """Keep ``events``: nothing is stored, so no requeued copy can be found."""
        self.events.extend(events)
        return Stored(False, None)

    def write_through(self, event: ev.Change, timeout: float) -> bool:
        """Keep ``event``; it is as final as it gets at once."""
        self.events.append(event)
        return True

    def flush(self, timeout: float) -> bool:
        """Return True: nothing is waiting."""
        return True

    def snapshot(self) -> list[ev.Change]:
        """A copy of the events kept so far."""
        return list(self.events)
