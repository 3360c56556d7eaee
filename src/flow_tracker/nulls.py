"""Stand-ins used when tracking is off: the user's code runs, nothing is stored.

:func:`flow_tracker.track` yields :data:`NULL_TRACKER` when ``enabled=False`` (or
when starting a process failed inside flow-tracker), and :func:`flow_tracker.flow`
yields :data:`NULL_FLOW` outside any process. Every method does nothing, except
that unknown log levels are still refused: that is a bug either way.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from flow_tracker.levels import LEVELS, resolve_level
from flow_tracker.progress import NullProgress, Progress
from flow_tracker.status import Status

NIL_ID = uuid.UUID(int=0)


class NullFlow:
    """The flow of a disabled tracker or of :func:`flow` outside any process: does nothing."""

    __slots__ = ()
    name = ""
    status = Status.COMPLETED

    def __enter__(self) -> NullFlow:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    async def __aenter__(self) -> NullFlow:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def log(self, message: object, level: str = "info", data: object = None) -> None:
        """Check the level, store nothing."""
        if level not in LEVELS:
            resolve_level(level)

    def debug(self, message: object, data: object = None) -> None:
        """Do nothing."""

    info = warning = warn = error = critical = debug

    def flow(self, name: str, metadata: Mapping[str, Any] | None = None) -> NullFlow:
        """Return the null flow."""
        return NULL_FLOW

    def update_metadata(self, **values: Any) -> None:
        """Do nothing."""

    def complete(self, error: BaseException | None = None, **_: Any) -> None:
        """Do nothing."""

    @property
    def process_id(self) -> uuid.UUID:
        """The nil UUID: nothing is recorded."""
        return NIL_ID

    @property
    def progress(self) -> Progress:
        """A progress that stores nothing."""
        return NullProgress()

    metadata: dict[str, Any] = {}


class NullTracker(NullFlow):
    """The tracker of a disabled flow-tracker: the user's code runs, nothing is stored."""

    __slots__ = ()
    _tracker = None
    attempt = 1


NULL_FLOW = NullFlow()
NULL_TRACKER = NullTracker()
