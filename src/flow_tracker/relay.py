"""An RQ work-horse's records, stored by the worker that forked it.

RQ's forking ``Worker`` runs each job in a new process, a *work-horse*, that
ends with ``os._exit``. A work-horse writing to the database itself must open a
connection for its one job: measured at ~10 ms a job (connecting, and a new
server process with cold caches), more than everything else tracking costs.

Instead the worker opens a socket pair before each fork. The work-horse turns
its batches into statements and plain values (``BatchWriter.prepare``) and sends
them to the worker, whose relay thread executes them on its own kept
connection and answers. The work-horse waits for that answer wherever it would
have waited for the database (its running row before the job's code, its final
state before the job is reported done), so the guarantees are unchanged, and
the look-up for a requeued copy still happens in the database.

While the database is away the worker keeps what its work-horses sent (up to
:data:`MAX_KEPT` batches) and stores it, in order, once the database is back:
a work-horse's records no longer die with it at ``os._exit``. If the relay
itself fails (the worker stopped answering), the work-horse falls back to
writing to the database directly.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import pickle
import selectors
import socket
import struct
import threading
import time
import uuid
from typing import Any

from flow_tracker.store.bulk import BatchWriter, Prepared
from flow_tracker.store.engine import Store, error_line, is_transient

internal_log = logging.getLogger("flow_tracker.internal")

MAX_KEPT = 10_000  # batches kept by the worker while the database is away
REPLY_TIMEOUT_S = 30.0  # a work-horse waits this long for the worker's answer
FRAME_TIMEOUT_S = 5.0  # the worker waits this long for the rest of a frame
RETRY_START_S = 0.25
RETRY_MAX_S = 15.0
_HEADER = struct.Struct("!I")


class RelayUnavailableError(ConnectionError):
    """The worker's relay did not answer: the work-horse writes on its own from now on."""


class RelayRefusedError(Exception):
    """The database refused the batch the relay executed (bad data, not an outage)."""


def _send(sock: socket.socket, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _receive(sock: socket.socket) -> Any:
    header = _read_exactly(sock, _HEADER.size)
    return pickle.loads(_read_exactly(sock, _HEADER.unpack(header)[0]))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the relay")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# -- the work-horse's side ------------------------------------------------------------


class RelayClient:
    """The work-horse's end: sends prepared batches, waits for the worker's answer."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()  # the job's thread and the writer thread share it

    def store(self, prepared: Prepared) -> tuple[int, dict[int, uuid.UUID], bool]:
        """Have the worker store ``prepared``: (rows, requeued copies, stored now).

        ``stored`` is False when the worker kept the batch to store later (the
        database is away).

        Raises:
            RelayUnavailableError: no answer; the relay must not be used again.
            RelayRefusedError: the database refused the batch.
        """
        with self._lock:
            try:
                self._sock.settimeout(REPLY_TIMEOUT_S)
                _send(self._sock, ("store", prepared))
                reply = _receive(self._sock)
            except (OSError, EOFError, pickle.PickleError) as exc:
                raise RelayUnavailableError(f"the worker's relay did not answer: {exc}") from None
        if reply[0] == "stored":
            return reply[1], reply[2], True
        if reply[0] == "kept":
            return prepared.rows, {}, False
        raise RelayRefusedError(reply[1])

    def close(self) -> None:
        """Close the work-horse's end."""
        with contextlib.suppress(OSError):
            self._sock.close()


# A socket pair opened for the next child, read by that child right after the fork.
_next_pair: tuple[socket.socket, socket.socket] | None = None


def open_for_child() -> tuple[socket.socket, socket.socket] | None:
    """Open the socket pair for the work-horse about to be forked (None if that fails)."""
    global _next_pair
    try:
        pair = socket.socketpair()
    except OSError as exc:  # out of file descriptors: the horse writes on its own
        internal_log.warning("flow-tracker: no relay for a work-horse: %s", exc)
        return None
    _next_pair = pair
    return pair


def client_for_child() -> RelayClient | None:
    """In a just-forked child: its end of the relay, when its parent opened one."""
    global _next_pair
    pair, _next_pair = _next_pair, None
    if pair is None:
        return None
    parent_end, child_end = pair
    with contextlib.suppress(OSError):
        parent_end.close()
    return RelayClient(child_end)


def after_fork_in_parent(
    pair: tuple[socket.socket, socket.socket] | None, store: Store, builder: BatchWriter
) -> None:
    """In the worker after the fork: serve the work-horse's end of ``pair``."""
    global _next_pair
    _next_pair = None
    if pair is None:
        return
    parent_end, child_end = pair
    with contextlib.suppress(OSError):
        child_end.close()
    _server(store, builder).add(parent_end)


# -- the worker's side ----------------------------------------------------------------


class RelayServer:
    """The worker's relay thread: executes its work-horses' batches, in order.

    Args:
        store: the worker's database.
        builder: runs prepared batches (``BatchWriter.execute``).
    """

    def __init__(self, store: Store, builder: BatchWriter) -> None:
        self.store = store
        self.builder = builder
        self.kept: collections.deque[Prepared] = collections.deque()
        self.dropped = 0
        self.batches = 0
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._added: collections.deque[socket.socket] = collections.deque()
        self._retry_at = 0.0
        self._delay = RETRY_START_S
        self._thread = threading.Thread(target=self._run, name="flow-tracker-relay", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket) -> None:
        """Serve one more work-horse."""
        self._added.append(sock)
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")

    def _run(self) -> None:
        while True:
            try:
                self._run_once()
            except Exception:  # pragma: no cover - keep serving; a horse falls back on its own
                internal_log.exception("flow-tracker: the relay for work-horses failed")
                time.sleep(RETRY_START_S)

    def _run_once(self) -> None:
        """Wait for a request (or the next retry of kept batches) and answer it."""
        timeout = None
        if self.kept:
            timeout = max(0.0, self._retry_at - time.monotonic())
        for key, _ in self._selector.select(timeout):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            if sock is self._wake_read:
                with contextlib.suppress(OSError):
                    sock.recv(4096)
            else:
                self._serve(sock)
        while self._added:
            new = self._added.popleft()
            new.setblocking(True)
            self._selector.register(new, selectors.EVENT_READ)
        if self.kept and time.monotonic() >= self._retry_at:
            self._store_kept()

    def _serve(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(FRAME_TIMEOUT_S)
            request = _receive(sock)
        except (OSError, EOFError, pickle.PickleError):
            self._forget(sock)  # the work-horse ended (or died mid-message)
            return
        try:
            reply = self._store(request[1])
        except Exception as exc:  # pragma: no cover - _store answers every error
            reply = ("refused", error_line(exc))
        try:
            _send(sock, reply)
        except OSError:
            self._forget(sock)

    def _store(self, prepared: Prepared) -> tuple[Any, ...]:
        if self.kept:  # behind what is waiting for the database, in order
            self._keep(prepared)
            return ("kept",)
        try:
            self.store.ensure_schema()
            rows, copies = self.store.write_connections.run(
                functools.partial(self._execute, prepared=prepared)
            )
        except Exception as exc:
            if is_transient(exc):
                if not self.kept:
                    internal_log.error(
                        "flow-tracker: the work-horses' records cannot be stored (%s); "
                        "the worker keeps up to %d batches and retries",
                        error_line(exc),
                        MAX_KEPT,
                    )
                self._keep(prepared)
                self._retry_at = time.monotonic() + self._delay
                return ("kept",)
            return ("refused", error_line(exc))
        self.batches += 1
        return ("stored", rows, copies)

    def _execute(self, conn: Any, *, prepared: Prepared) -> tuple[int, dict[int, uuid.UUID]]:
        return self.builder.execute(conn, prepared)

    def _keep(self, prepared: Prepared) -> None:
        if len(self.kept) >= MAX_KEPT:
            self.kept.popleft()
            self.dropped += 1
        self.kept.append(prepared)

    def _store_kept(self) -> None:
        while self.kept:
            prepared = self.kept[0]
            try:
                self.store.ensure_schema()
                self.store.write_connections.run(
                    functools.partial(self._execute, prepared=prepared)
                )
            except Exception as exc:
                if is_transient(exc):
                    self._delay = min(self._delay * 2, RETRY_MAX_S)
                    self._retry_at = time.monotonic() + self._delay
                    return
                internal_log.error(
                    "flow-tracker: dropped a work-horse batch the database refused: %s",
                    error_line(exc),
                )
            self.kept.popleft()
        self._delay = RETRY_START_S
        internal_log.warning(
            "flow-tracker: the work-horses' kept records are stored; %d batches dropped so far",
            self.dropped,
        )

    def _forget(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        with contextlib.suppress(OSError):
            sock.close()


_lock = threading.Lock()
_servers: dict[int, RelayServer] = {}  # by store, one thread each


def _server(store: Store, builder: BatchWriter) -> RelayServer:
    with _lock:
        server = _servers.get(id(store))
        if server is None or server.store is not store:
            server = _servers[id(store)] = RelayServer(store, builder)
        return server


def forget_after_fork() -> None:
    """In a forked child: the parent's relay threads do not exist here."""
    global _lock
    _servers.clear()
    _lock = threading.Lock()
