"""The audit log's page (``/audit``) and its API (``/api/audit``): who did what.

Both need ``audit:read`` (checked where the routes are registered) and read
the same filters from the URL: actor, action, outcome, target and a time range,
newest first, a keyset page at a time. A filter the log cannot use (an unknown
outcome, a date that is none, a broken page link) answers 400 with the reason.

Every value of a row is anyone's text — an actor's name comes from the host's
users, a target from a URL — and is only ever shown escaped (the templates
autoescape, the API is JSON); a row never holds a payload value to hide.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from flow_tracker.errors import UsageError
from flow_tracker.permissions import PERMISSIONS
from flow_tracker.store import audit
from flow_tracker.web.context import dashboard_of, now, render
from flow_tracker.web.errors import json_response
from flow_tracker.web.params import RANGES, ParamError, clamp_int

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# A filter longer than its column is cut as the stored value was, marker and all
# (which counts what was cut): cut here first, it would no longer match it.
MAX_TEXT = 65_536
DETAIL_SHOWN = 240  # characters of a row's detail in the table; the rest behind "more"
# The pill of each outcome, in the colours the process statuses use.
OUTCOME_PILLS = {audit.ALLOWED: "completed", audit.REFUSED: "lost", audit.FAILED: "failed"}


def _text(params: QueryParams, name: str) -> str | None:
    raw = params.get(name)
    if raw is None:
        return None
    value = raw.strip()[:MAX_TEXT]
    return value or None


def _moment(params: QueryParams, name: str) -> datetime | None:
    value = _text(params, name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ParamError(
            f"{name}: {value[:40]!r} is not a date and time (YYYY-MM-DDTHH:MM)"
        ) from None
    try:
        # Compared in UTC: a moment whose UTC value leaves years 1-9999 is in no row.
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise ParamError(f"{name}: {value[:40]!r} is outside the years 1 to 9999 in UTC") from None


@dataclass
class AuditFilters:
    """The audit log's filters, as read from the URL."""

    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    target: str | None = None
    range: str = ""
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    @classmethod
    def from_query(cls, params: QueryParams, moment: datetime) -> AuditFilters:
        """Read the filters; raise :class:`ParamError` with a readable reason."""
        filters = cls(
            actor=_text(params, "actor"),
            action=_text(params, "action"),
            outcome=_text(params, "outcome"),
            target=_text(params, "target"),
            limit=clamp_int(params.get("limit"), DEFAULT_LIMIT, 1, MAX_LIMIT),
            cursor=_text(params, "cursor"),
        )
        if filters.outcome is not None and filters.outcome not in audit.OUTCOMES:
            raise ParamError(
                f"outcome {filters.outcome[:40]!r} is unknown (one of {', '.join(audit.OUTCOMES)})"
            )
        chosen = params.get("range", "")
        if chosen and chosen not in RANGES:
            raise ParamError(f"range {chosen[:40]!r} is unknown (one of {', '.join(RANGES)})")
        filters.range = chosen
        filters.since = _moment(params, "since")
        filters.until = _moment(params, "until")
        if filters.range and filters.since is None:
            filters.since = moment - RANGES[filters.range]
        return filters

    def query_items(self, *, cursor: str | None = None) -> list[tuple[str, str]]:
        """The URL parameters that reproduce these filters (optionally at another page)."""
        items: list[tuple[str, str]] = []
        for name in ("actor", "action", "outcome", "target"):
            value = getattr(self, name)
            if value:
                items.append((name, value))
        if self.range:
            items.append(("range", self.range))
        elif self.since:
            items.append(("since", self.since.isoformat()))
        if self.until:
            items.append(("until", self.until.isoformat()))
        if self.limit != DEFAULT_LIMIT:
            items.append(("limit", str(self.limit)))
        if cursor:
            items.append(("cursor", cursor))
        return items

    def query_string(self, *, cursor: str | None = None) -> str:
        """:meth:`query_items` encoded for a URL (lone surrogates escaped, not an error)."""
        return urlencode(self.query_items(cursor=cursor), errors="backslashreplace")

    def narrowed(self, **changes: str) -> str:
        """The query string of these filters with ``changes``, from the first page."""
        items = [(k, v) for k, v in self.query_items() if k not in changes]
        items += [(k, v) for k, v in changes.items() if v]
        return urlencode(items, errors="backslashreplace")

    @property
    def active(self) -> bool:
        """Whether any filter narrows the log."""
        return bool(
            self.actor or self.action or self.outcome or self.target or self.since or self.until
        )

    def list_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`flow_tracker.store.audit.list_entries`."""
        return {
            "actor": self.actor,
            "action": self.action,
            "outcome": self.outcome,
            "target": self.target,
            "since": self.since,
            "until": self.until,
            "limit": self.limit,
            "cursor": self.cursor,
        }


def _page(request: Request, filters: AuditFilters) -> audit.AuditPage:
    try:
        return audit.list_entries(dashboard_of(request).store, **filters.list_kwargs())
    except UsageError as exc:  # a cursor that is not one: a broken page link
        raise ParamError(f"that page link is broken ({exc}): start from the first page") from None


def _detail_text(detail: Any) -> str:
    return "" if not detail else json.dumps(detail, ensure_ascii=False, sort_keys=True)


def audit_page(request: Request) -> Response:
    """``GET /audit``: the audit log with filters in the URL, newest first, keyset pages."""
    moment = now()
    error = None
    page = None
    try:
        filters = AuditFilters.from_query(request.query_params, moment)
        page = _page(request, filters)
    except ParamError as exc:
        error = str(exc)
        filters = AuditFilters()
    rows = [
        {
            "entry": entry,
            "pill": OUTCOME_PILLS.get(entry.outcome, "unknown"),
            "detail": _detail_text(entry.detail),
        }
        for entry in (page.entries if page is not None else [])
    ]
    return render(
        request,
        "audit.html",
        status_code=400 if error else 200,
        nav="audit",
        filters=filters,
        page=page,
        rows=rows,
        error=error,
        actions=list(PERMISSIONS),
        outcomes=list(audit.OUTCOMES),
        ranges=list(RANGES),
        detail_shown=DETAIL_SHOWN,
        now=moment,
        live=page is not None and filters.cursor is None,
    )


def audit_json(request: Request) -> Response:
    """``GET /api/audit``: a page of the audit log as JSON, newest first, with ``next_cursor``.

    The same filters as the page; a bad one is a 400 JSON problem.
    """
    filters = AuditFilters.from_query(request.query_params, datetime.now(timezone.utc))
    page = _page(request, filters)
    return json_response(
        {"items": [entry.to_dict() for entry in page], "next_cursor": page.next_cursor}
    )


__all__ = ["AuditFilters", "audit_json", "audit_page"]
