"""Reading the dashboard's query parameters: the process filters, clamped and checked.

The filter state lives in the URL, so a filtered list can be bookmarked and
shared. Bad values become a message for the page (or a 400 from the API), never
an exception.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from flow_tracker.ids import parse_id
from flow_tracker.status import Status

RANGES: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_TEXT = 200
MAX_META_FILTERS = 5
# Without a time filter, a search looks at the names of every process but only at
# the log messages of the last day: scanning every message ever written is slow.
LOG_SEARCH_DEFAULT = timedelta(hours=24)


class ParamError(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


def clamp_int(raw: str | None, default: int, low: int, high: int) -> int:
    """``raw`` as an int within [low, high]; ``default`` when missing or not a number."""
    try:
        value = int(str(raw).strip()) if raw not in (None, "") else default
    except ValueError:
        value = default
    return max(low, min(high, value))


def clean(raw: str) -> str:
    """``raw`` without NUL characters and lone surrogates, which no database can compare."""
    return raw.replace("\x00", "").encode("utf-8", "ignore").decode("utf-8")


def _text(raw: str | None) -> str | None:
    if raw is None:
        return None
    value = clean(raw).strip()[:MAX_TEXT]
    return value or None


def _parse_time(raw: str | None, label: str) -> datetime | None:
    value = _text(raw)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ParamError(f"{label}: {value!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    try:
        # The database compares UTC: a moment whose UTC value leaves years 1-9999
        # (0001-01-01T00:00+14:00) exists in no table.
        return (
            parsed.astimezone(timezone.utc)
            if parsed.tzinfo
            else parsed.replace(tzinfo=timezone.utc)
        )
    except (OverflowError, ValueError):
        raise ParamError(f"{label}: {value!r} is outside the years 1 to 9999 in UTC") from None


INT64 = 2**63 - 1


def _meta_value(raw: str) -> Any:
    # Numbers, true/false/null and "quoted strings" are read as JSON; anything else
    # is a plain string (so user=alice needs no quotes, and id="42" matches a string).
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(value, (dict, list)):
        return raw
    # What JSON reads but no database compares: NaN, infinities (1e999 too), integers
    # past 64 bits, and (from "\u0000" escapes) NUL characters or lone surrogates.
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamError(f"metadata value {raw[:50]!r} is not a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64:
        raise ParamError(f"metadata value {raw[:50]!r} is beyond 64-bit integers")
    if isinstance(value, str) and clean(value) != value:
        raise ParamError(f"metadata value {raw[:50]!r} holds a NUL or a lone surrogate")
    return value


@dataclass
class ProcessFilters:
    """The filters of the process list, as read from the URL."""

    statuses: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    name: str | None = None
    search: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    meta_raw: list[str] = field(default_factory=list)
    range: str = ""
    since: datetime | None = None
    until: datetime | None = None
    order: str = "newest"
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    logs_since: datetime | None = None

    @classmethod
    def from_query(cls, params: QueryParams, now: datetime) -> ProcessFilters:
        """Read the filters; raise :class:`ParamError` with a readable reason."""
        filters = cls()
        for raw in map(clean, params.getlist("status")):
            for value in raw.split(","):
                value = value.strip()
                if not value:
                    continue
                try:
                    filters.statuses.append(Status(value).value)
                except ValueError:
                    known = ", ".join(s.value for s in Status)
                    raise ParamError(f"status {value!r} is unknown (one of {known})") from None
        for raw in map(clean, params.getlist("category")):
            filters.categories.extend(c.strip() for c in raw.split(",") if c.strip())
        filters.categories = [c[:32] for c in filters.categories][:20]
        filters.name = _text(params.get("name"))
        filters.search = _text(params.get("q"))
        for raw in map(clean, params.getlist("meta")[:MAX_META_FILTERS]):
            raw = raw.strip()[:MAX_TEXT]
            if not raw:
                continue
            key, sep, value = raw.partition("=")
            if not sep or not key.strip():
                raise ParamError(f"metadata filter {raw!r} must look like key=value")
            filters.metadata[key.strip()] = _meta_value(value.strip())
            filters.meta_raw.append(raw)
        filters.range = params.get("range", "")
        if filters.range and filters.range not in RANGES:
            filters.range = ""
        filters.since = _parse_time(params.get("since"), "since")
        filters.until = _parse_time(params.get("until"), "until")
        if filters.range and filters.since is None:
            filters.since = now - RANGES[filters.range]
        filters.order = "oldest" if params.get("order") == "oldest" else "newest"
        filters.limit = clamp_int(params.get("limit"), DEFAULT_LIMIT, 1, MAX_LIMIT)
        filters.cursor = _text(params.get("cursor"))
        if filters.search and filters.since is None:
            filters.logs_since = now - LOG_SEARCH_DEFAULT
        return filters

    def query_items(self, *, cursor: str | None = None) -> list[tuple[str, str]]:
        """The URL parameters that reproduce these filters (optionally at another page)."""
        items: list[tuple[str, str]] = [("status", s) for s in self.statuses]
        items += [("category", c) for c in self.categories]
        if self.name:
            items.append(("name", self.name))
        if self.search:
            items.append(("q", self.search))
        items += [("meta", m) for m in self.meta_raw]
        if self.range:
            items.append(("range", self.range))
        elif self.since:
            items.append(("since", self.since.isoformat()))
        if self.until:
            items.append(("until", self.until.isoformat()))
        if self.order != "newest":
            items.append(("order", self.order))
        if self.limit != DEFAULT_LIMIT:
            items.append(("limit", str(self.limit)))
        if cursor:
            items.append(("cursor", cursor))
        return items

    def query_string(self, *, cursor: str | None = None) -> str:
        """:meth:`query_items` encoded for a URL."""
        return urlencode(self.query_items(cursor=cursor))

    @property
    def active(self) -> bool:
        """Whether any filter narrows the list."""
        return bool(
            self.statuses
            or self.categories
            or self.name
            or self.search
            or self.metadata
            or self.since
            or self.until
        )

    def list_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`flow_tracker.store.queries.list_processes`."""
        return {
            "status": self.statuses or None,
            "category": self.categories or None,
            "name": self.name,
            "search": self.search,
            "metadata": self.metadata or None,
            "since": self.since,
            "until": self.until,
            "limit": self.limit,
            "cursor": self.cursor,
            "order": self.order,
            "search_logs_since": self.logs_since,
        }


PAYLOAD_FILTERS = ("q", "meta")
"""The process list's parameters that match payloads: the search and the metadata filters."""


def payload_filters(params: QueryParams) -> list[str]:
    """The parameters of :data:`PAYLOAD_FILTERS` that ``params`` uses (not left blank).

    Without the ``payloads:read`` permission these are refused (see
    :mod:`flow_tracker.web.hiding`): a match would confirm a hidden value.
    """
    return [
        name
        for name in PAYLOAD_FILTERS
        if any(clean(value).strip() for value in params.getlist(name))
    ]


def run_cursor(raw: str | None) -> tuple[datetime, uuid.UUID] | None:
    """A workflow list's page cursor (``<created_at ISO>|<run id>``), or None for page one.

    Raises:
        ParamError: a cursor that is not one (edited, truncated).
    """
    if not raw:
        return None
    moment, _sep, ident = clean(raw).partition("|")
    run_id = parse_id(ident)
    broken = ParamError("that page link is broken (before=): start from the first page")
    try:
        when = datetime.fromisoformat(moment)
    except ValueError:
        raise broken from None
    if run_id is None or when.tzinfo is None:
        raise broken
    try:
        # The database compares UTC (SQLite stores it as text): a moment whose UTC
        # value leaves years 1-9999 (9999-12-31T23:59-14:00) is in no table.
        return when.astimezone(timezone.utc), run_id
    except (OverflowError, ValueError):
        raise broken from None
