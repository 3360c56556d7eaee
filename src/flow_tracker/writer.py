"""The background writer: a buffer the job's thread appends to, stored in batches.

One daemon thread per interpreter takes what the job's threads append to an
in-memory buffer and stores it in batches.

The job's thread never waits on the database here. What it pays per event is a
tuple, a ``len`` and a ``deque.append``. The writer thread:

* wakes every ``flush_interval`` or as soon as a batch is full, and stores up to
  ``batch_size`` events per transaction (:class:`~flow_tracker.store.bulk.BatchWriter`);
* keeps a batch and retries it with exponential backoff while the database is
  away (connection errors, SQLite's "database is locked"), logging the outage
  once and the recovery once;
* isolates bad data: a batch the database refuses for any other reason is split
  in halves until the offending event is found, which alone is dropped and counted.

Memory is bounded: past ``capacity`` events debug logs are dropped, past 1.5x
every log, past 2x new flows too. Process events and the ends of flows already
kept are never dropped: they are few (bounded by the flows open at once) and
they carry final states, so a stored flow is never left "running". The caller
counts what was dropped on its process.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from flow_tracker import events as ev
from flow_tracker import relay
from flow_tracker.group_commit import GroupCommit, Request
from flow_tracker.sink import Stored
from flow_tracker.store.bulk import BatchWriter
from flow_tracker.store.engine import Store, display_url, error_line, is_transient
from flow_tracker.subscribers import BUS

internal_log = logging.getLogger("flow_tracker.internal")

BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 15.0
LEVEL_DEBUG_RANK = 10


class Writer:
    """Buffers events and stores them from a background thread (the database's ``Sink``).

    Args:
        store: the database to write to.
        batch_writer: turns a batch into statements for that database.
        capacity: events held at most before logs are dropped (see module docs).
        batch_size: events stored per transaction at most.
        flush_interval: seconds to wait for more events before storing what there is.
        on_error: called with every internal error (counted and logged by the runtime).
    """

    durable = True  # what it takes is stored: its processes get heartbeats

    def __init__(
        self,
        store: Store,
        batch_writer: BatchWriter,
        *,
        capacity: int,
        batch_size: int,
        flush_interval: float,
        on_error: Callable[[BaseException, str], None],
    ) -> None:
        self.store = store
        self.batch_writer = batch_writer
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.on_error = on_error
        self._init_runtime_state()

    def _init_runtime_state(self) -> None:
        # Counters describe this interpreter: a forked child starts from zero.
        self.dropped = 0
        self.rows_written = 0
        self.batches_written = 0
        self.poison_events = 0
        self.buffer: collections.deque[ev.Change] = collections.deque()
        self._log_limit = self.capacity
        self._any_log_limit = self.capacity + self.capacity // 2
        self._flow_limit = self.capacity * 2
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.healthy = True
        self._outage_since: float | None = None
        self._draining = False  # a batch has been taken from the buffer and not yet stored
        self._drain_lock = threading.Lock()  # one drainer at a time: the thread or a job's
        self._local = threading.local()  # write_now's statement builders, per thread
        self._relay: relay.RelayClient | None = None  # set in an RQ work-horse
        self.group = GroupCommit(self._store_group)  # threads writing at once share a commit

    # -- job's thread ---------------------------------------------------------

    def put(self, event: ev.Change) -> None:
        """Queue an event that must not be dropped (process events, ends of kept flows)."""
        self.buffer.append(event)
        if self._thread is None:
            self._start()
        # Event.set takes a lock and notifies even when the flag is set already: with
        # the writer behind, that was a quarter of a step's cost in the job's thread.
        if len(self.buffer) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def put_flow(self, event: ev.Change) -> bool:
        """Queue the start of a flow; False when the buffer was too full and it was dropped."""
        buffer = self.buffer
        n = len(buffer)
        if n >= self._flow_limit:
            self.dropped += 1
            return False
        buffer.append(event)
        if self._thread is None:
            self._start()
        if n == self.batch_size:
            self._wake.set()
        return True

    def put_log(self, event: ev.Change, rank: int) -> bool:
        """Queue a log event of level ``rank``; False when it was dropped for room."""
        buffer = self.buffer
        n = len(buffer)
        if n >= self._log_limit and (rank <= LEVEL_DEBUG_RANK or n >= self._any_log_limit):
            self.dropped += 1
            return False
        buffer.append(event)
        if self._thread is None:
            self._start()
        if n == self.batch_size:
            self._wake.set()
        return True

    def write_now(self, events: Sequence[ev.Change], copy_of: int | None = None) -> Stored:
        """Store ``events`` before returning, on the calling thread, in one transaction.

        For the few records that must be durable before something else happens (a
        job's row before its message is published, its running row before its
        code runs). While the database is known to be unreachable, or when this
        attempt finds it so, the events go to the buffer instead and are stored
        later: the caller is never held up for long (at most the connect timeout)
        and never gets an error.

        ``copy_of``: a process id; the same transaction looks for a process
        requeued from it, after the writes (see ``BatchWriter.store``).
        """
        if not self.healthy:
            for event in events:
                self.put(event)
            return Stored(False, None)
        request = Request(events, copy_of)
        self.group.submit(request)
        exc = request.error
        if exc is not None:
            if not is_transient(exc):
                self.on_error(exc, "storing a record at once")
            for event in events:
                self.put(event)  # published to subscribers when the writer takes them
            return Stored(False, None)
        BUS.publish(list(events))
        return Stored(request.stored, request.copy)

    def _store_group(self, take: Callable[[], list[Request]]) -> None:
        """Store the requests ``take()`` gives in one transaction; set each one's outcome.

        Called by :class:`GroupCommit` on the thread whose turn it is. Should the
        database refuse the group (one thread's bad record, not an outage), each
        request is stored alone so that one's error does not become the others'.
        """
        builder = self._builder()
        if self._relay is not None:  # an RQ work-horse: one thread, one request at a time
            for request in take():
                self._store_alone(builder, request)
            return
        self.store.ensure_schema()
        group: list[Request] = []

        def store_all(conn: Any) -> dict[int, uuid.UUID]:
            group[:] = take()
            events = [event for request in group for event in request.events]
            copies_of = [r.copy_of for r in group if r.copy_of is not None]
            rows, copies = builder.store(conn, events, copies_of=copies_of)
            self.rows_written += rows
            return copies

        try:
            found = self.store.write_connections.run(store_all)
        except Exception as exc:
            if is_transient(exc) or len(group) <= 1:
                raise
            for request in group:
                self._store_alone(builder, request)
            return
        for request in group:
            request.stored = True
            if request.copy_of is not None:
                request.copy = found.get(request.copy_of)

    def _store_alone(self, builder: BatchWriter, request: Request) -> None:
        try:
            rows, copies, request.stored = self._store(
                builder,
                request.events,
                () if request.copy_of is None else (request.copy_of,),
            )
        except Exception as exc:
            request.error = exc
            return
        self.rows_written += rows
        if request.copy_of is not None:
            request.copy = copies.get(request.copy_of)

    def _store(
        self, builder: BatchWriter, events: Sequence[ev.Change], copies_of: Sequence[int] = ()
    ) -> tuple[int, dict[int, uuid.UUID], bool]:
        """Store ``events`` in one transaction: (rows, requeued copies, stored now).

        In an RQ work-horse, through the worker that forked it (see
        :mod:`flow_tracker.relay`); "stored now" is False when the worker kept
        them for a database that is away.
        """
        client = self._relay
        if client is not None:
            try:
                return client.store(builder.prepare(events, copies_of=copies_of))
            except relay.RelayUnavailableError as exc:
                self._relay = None
                client.close()
                internal_log.warning("flow-tracker: %s; this process now writes on its own", exc)
        self.store.ensure_schema()
        rows, copies = self.store.write_connections.run(
            lambda conn: builder.store(conn, events, copies_of=copies_of)
        )
        return rows, copies, True

    def write_through(self, event: ev.Change, timeout: float) -> bool:
        """Store ``event`` and everything queued before it; wait up to ``timeout`` s.

        A job's final state. It is written on the calling thread, behind
        whatever is queued (the job's flows and logs), instead of being handed
        to the writer thread and waited for - unless the writer thread is
        storing at that moment: then it goes behind, in order, and the call
        waits for it. False when it could not be stored in time (the database
        is away); then the writer thread keeps it, and everything before it.
        """
        if timeout > 0 and self.healthy and threading.current_thread() is not self._thread:
            if not self.buffer and not self._draining:
                return self.write_now((event,)).stored
            # What is queued (the job's flows and logs, maybe other threads' too)
            # is stored here with the event, unless the writer thread is at it.
            if self._drain_lock.acquire(blocking=False):
                try:
                    self._draining = True
                    self.put(event)
                    # Up to this event only: what other threads queue after it is
                    # the writer thread's (this job is reported done sooner).
                    if self._drain_here(len(self.buffer)):
                        return True
                finally:
                    self._draining = False
                    self._drain_lock.release()
                return self.flush(timeout)  # the database failed: the writer retries
        self.put(event)
        return self.flush(timeout)

    def _drain_here(self, most: int) -> bool:
        """Store the buffer's first ``most`` items on the calling thread.

        False (nothing lost) on a database error.
        """
        buffer = self.buffer
        while buffer and most > 0:
            batch, markers = self._take_batch(buffer, most)
            most -= len(batch) + len(markers)
            if batch:
                # With the group: other threads' running rows and final states
                # written at this moment go in the same transaction.
                request = Request(batch, None)
                self.group.submit(request)
                exc = request.error
                if exc is not None:
                    # Back in front, in order, for the writer thread (which also
                    # tells the subscribers then, and isolates a refused event).
                    buffer.extendleft(reversed([*batch, *((ev.MARKER, m) for m in markers)]))
                    if is_transient(exc):
                        self._note_outage(exc)
                    self._wake.set()
                    return False
                self.batches_written += 1
                BUS.publish(batch)
            for marker in markers:
                marker.set()
        return True

    def _builder(self) -> BatchWriter:
        # A statement builder per calling thread: BatchWriter's caches are not shared.
        builder: BatchWriter | None = getattr(self._local, "builder", None)
        if builder is None:
            builder = BatchWriter(
                self.batch_writer.dialect,
                self.batch_writer.redactor,
                self.batch_writer.max_message_length,
            )
            # Start from the statements built so far (a warm-up's, inherited by a
            # forked work-horse): building them costs more than a job's first write.
            builder.adopt_statements(self.batch_writer)
            self._local.builder = builder
        return builder

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is stored; False on timeout or outage.

        Returns at once while the database is known to be unreachable: a job is
        never held back by the tracking database.
        """
        if not self.healthy or timeout <= 0:
            return False
        if not self.buffer and not self._draining:
            return True  # what this thread queued is stored already
        if threading.current_thread() is self._thread:
            return False
        done = threading.Event()
        self.put((ev.MARKER, done))
        self._wake.set()
        deadline = time.monotonic() + timeout
        while not done.wait(0.05):
            if not self.healthy or time.monotonic() >= deadline:
                return False
        return True

    # -- lifecycle ------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closing:
                return
            thread = threading.Thread(target=self._run, name="flow-tracker-writer", daemon=True)
            self._thread = thread
            thread.start()

    def close(self, timeout: float) -> None:
        """Store what is buffered (waiting up to ``timeout``) and stop the thread."""
        # Under the start lock: a record written by another thread may be starting
        # the writer right now, and a thread that is set but not started yet
        # cannot be joined. After this, none starts.
        with self._start_lock:
            thread = self._thread
            self._closing = True
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout if self.healthy else min(timeout, 1.0))

    def after_fork_in_child(self) -> None:
        """Forget the parent's thread, buffer and connections; start afresh when used.

        A child forked by a worker that relays (RQ's forking worker) sends its
        records to that worker instead of connecting itself.
        """
        self._init_runtime_state()
        self.store.after_fork()
        self._relay = relay.client_for_child()

    # -- writer thread --------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                self._drain()
                # Hourly at most: a worker that runs for weeks keeps partitions ahead.
                self.store.keep_partitions()
                if self._closing and not self.buffer:
                    return
        except BaseException as exc:  # pragma: no cover - last resort, keep the host alive
            self.on_error(exc, "writer thread stopped")
            self._thread = None

    def _drain(self) -> None:
        with self._drain_lock:  # not while a job's thread stores the buffer itself
            buffer = self.buffer
            self._draining = True
            try:
                self._drain_buffer(buffer)
            finally:
                self._draining = False

    def _take_batch(
        self, buffer: collections.deque[ev.Change], most: int | None = None
    ) -> tuple[list[ev.Change], list[threading.Event]]:
        batch: list[ev.Change] = []
        markers: list[threading.Event] = []
        popleft = buffer.popleft
        size = self.batch_size
        try:
            while len(batch) < size:
                if most is not None and len(batch) + len(markers) >= most:
                    break
                event = popleft()
                if event[0] == ev.MARKER:
                    markers.append(event[1])
                else:
                    batch.append(event)
        except IndexError:
            pass
        return batch, markers

    def _drain_buffer(self, buffer: collections.deque[ev.Change]) -> None:
        while buffer:
            batch, markers = self._take_batch(buffer)
            if batch:
                BUS.publish(batch)  # subscribers hear of it whether or not the database is up
                self._write_until_stored(batch)
            for marker in markers:
                marker.set()

    def _write_until_stored(self, batch: list[ev.Change]) -> None:
        delay = BACKOFF_START_S
        while True:
            try:
                self._write_isolating(batch)
            except Exception as exc:
                if not is_transient(exc):  # pragma: no cover - _write_isolating handles these
                    self.on_error(exc, "writing a batch")
                    return
                self._note_outage(exc)
                if self._closing:
                    self.dropped += len(batch)
                    return
                self._wake.wait(delay)
                self._wake.clear()
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self._note_recovery()
            return

    def _write_isolating(self, batch: list[ev.Change]) -> None:
        try:
            self._write(batch)
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(batch) == 1:
                self.poison_events += 1
                self.on_error(exc, f"dropped an event the database refused ({batch[0][0]})")
                return
            middle = len(batch) // 2
            self._write_isolating(batch[:middle])
            self._write_isolating(batch[middle:])

    def _write(self, batch: list[ev.Change]) -> None:
        rows, _, _ = self._store(self.batch_writer, batch)
        self.rows_written += rows
        self.batches_written += 1

    def _note_outage(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.healthy = False
            reason = error_line(exc)
            internal_log.error(
                "flow-tracker: cannot store to %s (%s); keeping up to %d events in memory "
                "and retrying. Jobs are not affected.",
                display_url(self.store.url),
                reason,
                self.capacity,
            )

    def _note_recovery(self) -> None:
        if self._outage_since is not None:
            lasted = time.monotonic() - self._outage_since
            self._outage_since = None
            self.healthy = True
            internal_log.warning(
                "flow-tracker: storing to %s again after %.1f s; %d events dropped so far",
                display_url(self.store.url),
                lasted,
                self.dropped,
            )

    def stats(self) -> dict[str, Any]:
        """Counters for health checks and benchmarks."""
        return {
            "buffered": len(self.buffer),
            "dropped": self.dropped,
            "rows_written": self.rows_written,
            "batches_written": self.batches_written,
            "poison_events": self.poison_events,
            "healthy": self.healthy,
        }
