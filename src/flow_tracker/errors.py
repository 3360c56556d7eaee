"""The exceptions flow-tracker raises: one base class, specific subclasses."""

from __future__ import annotations


class FlowTrackerError(Exception):
    """Base class of every error flow-tracker raises on purpose."""


class ConfigurationError(FlowTrackerError, ValueError):
    """A setting is invalid: an unknown option, a bad value or a malformed database URL."""


class DatabaseUnavailableError(FlowTrackerError):
    """The tracking database could not be reached when it had to be (configure, ``db upgrade``)."""


class NotFoundError(FlowTrackerError, LookupError):
    """A process asked for by id or job id does not exist.

    Raised where a process must exist (``flow-tracker show`` and ``status``); the
    library's readers (``get_process``, ``get_status``) return None instead.
    """


class UsageError(FlowTrackerError, ValueError):
    """flow-tracker was called wrongly: an unknown log level, a bad category or name."""


class LockConflictError(FlowTrackerError):
    """A lock of ``flow_tracker.exclusive`` is held by another holder.

    Raised with ``on_conflict="raise"``, and with ``"wait"`` once ``timeout`` has passed.
    """

    def __init__(self, name: str, key: str, holder: str | None, waited: float = 0.0) -> None:
        self.name, self.key, self.holder, self.waited = name, key, holder, waited
        by = f" by {holder}" if holder else ""
        after = f" after waiting {waited:.1f} s" if waited else ""
        super().__init__(f"lock {name!r} for key {key!r} is held{by}{after}")


class Skipped(FlowTrackerError):
    """Raised by an ``exclusive(..., on_conflict="skip")`` block whose lock is held.

    The current process ends ``skipped``; a ``flow_tracker.track`` block and every
    job integration (Celery, RQ, Dramatiq) swallow it. The decorator form never
    raises it: the function is not called and returns None.
    """


class StepTimeout(FlowTrackerError, TimeoutError):
    """A workflow step ran past its ``timeout=``: that attempt failed.

    It ends the attempt like any failure, so the step retries per its policy:
    it is an ``Exception`` (the default ``retry_on``) and a ``TimeoutError``
    (``retry_on=(TimeoutError,)`` retries it too). Each queue's own time-limit
    error (Celery's soft time limit, RQ's job timeout, Dramatiq's time limit) is
    stored as this one, so a timed-out step reads the same on every queue.

    Args:
        seconds: the step's timeout; None when a queue's own limit stopped it.
    """

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = seconds
        super().__init__(
            f"timed out after {seconds:g} s"
            if seconds is not None
            else "timed out (the queue's own time limit)"
        )

    def __reduce__(self) -> tuple[type[StepTimeout], tuple[float | None]]:
        # Built from its seconds, not its message (a queue may pickle it).
        return (type(self), (self.seconds,))


# Named as users import it, in every record that stores its class.
StepTimeout.__module__ = "flow_tracker"


class SearchTooBroadError(UsageError):
    """A search of the process list ran past its time budget (the dashboard's ``query_timeout``).

    Narrowing it helps: a shorter time range, a name, a status or a category.
    """

    def __init__(self) -> None:
        super().__init__(
            "This search is too broad: it ran past the dashboard's time budget. "
            "Narrow the time range, or add a name, status or category."
        )
