"""Log levels: the names flow-tracker stores and the ``logging`` numbers they match."""

from __future__ import annotations

import logging

from flow_tracker.errors import UsageError

# level name -> (stored name, logging level number)
LEVELS: dict[str, tuple[str, int]] = {
    "debug": ("debug", logging.DEBUG),
    "info": ("info", logging.INFO),
    "warning": ("warning", logging.WARNING),
    "warn": ("warning", logging.WARNING),
    "error": ("error", logging.ERROR),
    "critical": ("critical", logging.CRITICAL),
}


def resolve_level(level: object) -> tuple[str, int]:
    """Return ``(stored name, logging number)`` for ``level`` or raise :class:`UsageError`.

    Accepts the names in any case and the standard ``logging`` numbers.
    """
    found = LEVELS.get(level) if isinstance(level, str) else None
    if found is not None:
        return found
    if isinstance(level, str) and level.lower() in LEVELS:
        return LEVELS[level.lower()]
    if isinstance(level, int) and not isinstance(level, bool):
        for name in ("critical", "error", "warning", "info", "debug"):
            if level >= LEVELS[name][1]:
                return LEVELS[name]
        return LEVELS["debug"]
    raise UsageError(
        f"unknown log level {level!r}; use one of debug, info, warning (warn), error, critical"
    )
