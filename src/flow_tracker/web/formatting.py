"""Jinja filters: durations, times, numbers and JSON as people read them.

Every filter returns plain text; Jinja's autoescape escapes it in the page.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from jinja2 import Environment

NOTHING = "\u2013"  # an en dash: "no value" in tables


def duration(ms: float | None) -> str:
    """``1.2 s``, ``340 ms``, ``2 min 5 s``, ``1 h 04 min``; an en dash for unknown."""
    if ms is None:
        return NOTHING
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """``just now``, ``5 min ago``, ``3 h ago``, ``2 d ago`` (or ``in …`` for the future)."""
    if moment is None:
        return NOTHING
    now = now or datetime.now(timezone.utc)
    seconds = (now - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 10:
        return "just now"
    if seconds < 60:
        text = f"{seconds:.0f} s"
    elif seconds < 3600:
        text = f"{seconds // 60:.0f} min"
    elif seconds < 172_800:
        text = f"{seconds // 3600:.0f} h"
    else:
        text = f"{seconds // 86_400:.0f} d"
    return f"in {text}" if future else f"{text} ago"


def timestamp(moment: datetime | None) -> str:
    """``2026-11-23 10:04:12 UTC``."""
    if moment is None:
        return NOTHING
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(moment: datetime | None) -> str:
    """``10:04:12.345``: the time of day, for log lines."""
    if moment is None:
        return NOTHING
    return moment.astimezone(timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def iso(moment: datetime | None) -> str:
    """ISO 8601, for ``<time datetime=…>``."""
    return "" if moment is None else moment.astimezone(timezone.utc).isoformat()


def number(value: float | int | None) -> str:
    """``1,234,567``; ``12.5k`` is not used, exact counts read better in a table."""
    if value is None:
        return NOTHING
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def percent(fraction: float | None) -> str:
    """``4.2 %``; an en dash when there is nothing to divide."""
    if fraction is None:
        return NOTHING
    return f"{fraction * 100:.1f} %" if fraction < 0.995 or fraction == 1 else "99.5+ %"


def pretty_json(value: Any) -> str:
    """Indented JSON of stored data (already JSON-safe); unknown objects as their repr."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=repr)


def short_id(value: Any) -> str:
    """The last 12 hex digits of a UUID: unique enough on a page, short enough to scan."""
    text = str(value)
    return text[-12:]


def install(env: Environment) -> None:
    """Register the filters on a Jinja environment."""
    env.filters.update(
        duration=duration,
        ago=ago,
        timestamp=timestamp,
        clock=clock,
        iso=iso,
        number=number,
        percent=percent,
        pretty_json=pretty_json,
        short_id=short_id,
    )
