"""Progress of a process (activejob-status): total, current, increment, finish.

Updates are throttled: ``increment``/``decrement`` emit at most one event per
``progress_interval`` seconds; setting ``total``/``current`` and ``finish()``
emit at once. The final value is always stored with the process's end.

Values are always finite floats, because the database column is a float and
JSON (the API, the status endpoint) has no infinity or NaN:

* an argument that is not a finite number (NaN, an infinity, a string) is the
  caller's mistake and raises :class:`~flow_tracker.errors.UsageError` at the call;
* a finite argument never raises: an integer beyond the float range, or a sum
  of increments that overflows, stops at the largest finite float (with its sign).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable

from flow_tracker.errors import UsageError


class Progress:
    """How far a process has come: ``current`` out of ``total``, as finite floats.

    Args:
        emit: called with ``(current, total)`` whenever the value should be stored.
        interval: least seconds between two throttled emits.
    """

    __slots__ = ("_current", "_emit", "_interval", "_last_emit", "_lock", "_total")

    def __init__(self, emit: Callable[[float, float], None], interval: float) -> None:
        self._emit = emit
        self._interval = interval
        self._current = 0.0
        self._total = 0.0
        self._last_emit = 0.0
        self._lock = threading.Lock()

    @property
    def total(self) -> float:
        """The amount of work to do (0 = unknown)."""
        return self._total

    @total.setter
    def total(self, value: float) -> None:
        self._total = _number(value, "total")
        self._emit_now()

    @property
    def current(self) -> float:
        """The amount of work done."""
        return self._current

    @current.setter
    def current(self, value: float) -> None:
        self._current = _number(value, "current")
        self._emit_now()

    @property
    def fraction(self) -> float:
        """``current / total`` clamped to 0..1 (0 while the total is unknown)."""
        if self._total <= 0:
            return 0.0
        return max(0.0, min(1.0, self._current / self._total))

    def increment(self, n: float = 1) -> None:
        """Add ``n`` to ``current`` (throttled)."""
        n = _number(n, "increment")
        with self._lock:
            self._current = _bounded(self._current + n)
        self._maybe_emit()

    def decrement(self, n: float = 1) -> None:
        """Subtract ``n`` from ``current`` (throttled)."""
        n = _number(n, "decrement")
        with self._lock:
            self._current = _bounded(self._current - n)
        self._maybe_emit()

    def finish(self) -> None:
        """Mark all the work done: ``current = total``."""
        self._current = self._total
        self._emit_now()

    def update(self, current: float | None = None, total: float | None = None) -> None:
        """Set ``current`` and/or ``total`` in one emit."""
        # Both checked before either is set: a refused value changes nothing.
        new_total = self._total if total is None else _number(total, "total")
        new_current = self._current if current is None else _number(current, "current")
        self._total, self._current = new_total, new_current
        self._emit_now()

    def _maybe_emit(self) -> None:
        now = time.monotonic()
        if now - self._last_emit >= self._interval:
            self._last_emit = now
            self._emit(self._current, self._total)

    def _emit_now(self) -> None:
        self._last_emit = time.monotonic()
        self._emit(self._current, self._total)

    def __repr__(self) -> str:
        return f"<Progress {self._current:g}/{self._total:g}>"


_LARGEST = sys.float_info.max


def _number(value: object, name: str) -> float:
    # Infinity and NaN are no amount of work, and JSON (the API, the status
    # endpoint) cannot carry them: a caller's mistake, said at the call.
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise UsageError(f"progress {name} must be a finite number, got {value!r}")
    # A float, never an int: SQLite cannot bind an int beyond 64 bits, and the
    # batch holding it - the process's end with it - would be lost.
    return _bounded(value)


def _bounded(value: float) -> float:
    """``value`` as a float, an overflow stopped at the largest finite float.

    Finite arguments are no mistake, so going past the float range (``2**1024``,
    ``increment(1e308)`` twice) is not refused: the value stops at the limit.
    """
    if value > _LARGEST:
        return _LARGEST
    if value < -_LARGEST:
        return -_LARGEST
    return float(value)


class NullProgress(Progress):
    """The progress of a disabled tracker: stores nothing.

    Each read of ``NULL_TRACKER.progress`` is a new one, so values set on it are
    not kept either: tracking off means nothing to read back.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(_ignore, 0.0)


def _ignore(_current: float, _total: float) -> None:
    return None
