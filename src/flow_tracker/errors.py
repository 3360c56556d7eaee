"""The exceptions flow-tracker raises: one base class, specific subclasses."""

from __future__ import annotations


class FlowTrackerError(Exception):
    """Base class of every error flow-tracker raises on purpose."""


class ConfigurationError(FlowTrackerError, ValueError):
    """A setting is invalid: an unknown option, a bad value or a malformed database URL."""


class DatabaseUnavailableError(FlowTrackerError):
    """The tracking database could not be reached when it had to be (configure, ``db upgrade``)."""


class NotFoundError(FlowTrackerError, LookupError):
    """A process asked for by id or job id does not exist."""


class UsageError(FlowTrackerError, ValueError):
    """flow-tracker was called wrongly: an unknown log level, a bad category or name."""
