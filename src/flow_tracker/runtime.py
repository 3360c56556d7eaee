"""The process-wide state behind the public functions: one store and one writer.

Both are created on first use from the settings in force, replaced by
:func:`flow_tracker.configure`, reset in a forked child (which must never reuse
its parent's thread, buffer or connections) and flushed at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time

from flow_tracker import config, relay
from flow_tracker.redaction import Redactor
from flow_tracker.sink import Sink
from flow_tracker.store.bulk import BatchWriter
from flow_tracker.store.engine import Store
from flow_tracker.subscribers import BUS
from flow_tracker.writer import Writer

internal_log = logging.getLogger("flow_tracker.internal")

_lock = threading.RLock()
_writer: Writer | None = None
_store: Store | None = None
_capture: Sink | None = None  # while flow_tracker.testing.capture() runs
_internal_errors = 0
_last_error_logged = 0.0
ERROR_LOG_INTERVAL_S = 10.0


def report_internal_error(exc: BaseException, where: str) -> None:
    """Count an error of flow-tracker's own and log it, at most once per interval.

    Never raises: this is what keeps tracking from hurting the job.
    """
    global _internal_errors, _last_error_logged
    _internal_errors += 1
    now = time.monotonic()
    if now - _last_error_logged >= ERROR_LOG_INTERVAL_S:
        _last_error_logged = now
        with contextlib.suppress(Exception):  # a broken logging set-up must not spread
            internal_log.error(
                "flow-tracker internal error while %s (%d so far): %s: %s",
                where,
                _internal_errors,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )


def internal_error_count() -> int:
    """How many internal errors this interpreter has had."""
    return _internal_errors


def store() -> Store:
    """The store of the settings in force (created on first use)."""
    global _store
    current = _store
    if current is None:
        with _lock:
            if _store is None:
                _install_hooks()
                settings = config.current()
                _store = Store(
                    settings.database_url,
                    auto_migrate=settings.auto_migrate,
                    pg_synchronous_commit=settings.pg_synchronous_commit,
                )
            current = _store
    return current


def writer() -> Writer:
    """The writer of the settings in force (its thread starts with the first event)."""
    global _writer
    current = _writer
    if current is None:
        with _lock:
            if _writer is None:
                settings = config.current()
                the_store = store()
                redactor = Redactor(settings.redact_keys, max_size=settings.max_data_size)
                _writer = Writer(
                    the_store,
                    BatchWriter(the_store.dialect, redactor, settings.max_message_length),
                    capacity=settings.buffer_size,
                    batch_size=settings.batch_size,
                    flush_interval=settings.flush_interval,
                    on_error=report_internal_error,
                )
            current = _writer
    return current


def sink() -> Sink:
    """Where a new process records: the writer, or a test's capture while one runs."""
    capture = _capture
    return writer() if capture is None else capture


def capture_into(capture: Sink | None) -> Sink | None:
    """Make new processes record into ``capture`` (None: the writer again); return the previous.

    For :func:`flow_tracker.testing.capture`; the writer and store are left as they are.
    """
    global _capture
    with _lock:
        previous, _capture = _capture, capture
    return previous


def redactor() -> Redactor:
    """The redaction rules in force: what is stored, and all that leaves the process."""
    return writer().batch_writer.redactor


def warm_up() -> None:
    """Prepare what a forked worker child would otherwise redo for every job.

    Builds the engine (importing the database driver) and checks the schema once,
    then closes the connection it used. Children forked afterwards (Celery prefork,
    RQ work-horses, Dramatiq workers) inherit both and start recording at once.
    Never raises; without a reachable database it only builds the engine.
    """
    if not config.current().enabled:
        return
    try:
        writer()  # its redaction rules compiled once, not in every child
        the_store = store()
        engine = the_store.engine
        try:
            the_store.ensure_schema()
        except Exception as exc:  # the database may come later; children retry then
            internal_log.info("flow-tracker: schema check at start-up failed: %s", exc)
        engine.dispose()
    except Exception as exc:
        report_internal_error(exc, "warming up")


def flush(timeout: float | None = None) -> bool:
    """Wait until everything recorded so far in this interpreter is stored.

    Args:
        timeout: seconds to wait at most (default: the ``completion_timeout`` setting,
            or 5 s when that is 0).

    Returns:
        True when it is all stored, False on timeout or while the database is away.
    """
    if timeout is None:
        timeout = config.current().completion_timeout or 5.0
    current = _writer
    deadline = time.monotonic() + timeout
    stored = current is None or current.flush(timeout)
    # ...and handed to the subscribers (an RQ work-horse exits right after this).
    delivered = BUS.drain(max(0.0, deadline - time.monotonic()))
    return stored and delivered


def shutdown(timeout: float = 5.0) -> None:
    """Store what is buffered and drop the writer and store (the next use builds new ones)."""
    global _writer, _store
    with _lock:
        old_writer, old_store = _writer, _store
        _writer = None
        _store = None
    if old_writer is not None:
        old_writer.close(timeout)
    if old_store is not None:
        old_store.dispose()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()
    relay.forget_after_fork()
    if _writer is not None:
        _writer.after_fork_in_child()
    elif _store is not None:
        _store.after_fork()


def _at_exit() -> None:
    current = _writer
    if current is not None:
        settings = config.current()
        current.close(max(settings.completion_timeout, 1.0))
        BUS.drain(1.0)


_hooks_installed = False


def _install_hooks() -> None:
    # Done on first use rather than at import: importing flow_tracker does nothing.
    global _hooks_installed
    if not _hooks_installed:
        _hooks_installed = True
        os.register_at_fork(after_in_child=_after_fork_in_child)
        atexit.register(_at_exit)
