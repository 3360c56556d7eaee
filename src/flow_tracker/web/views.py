"""The dashboard's HTML pages: overview, process list, process detail, cleanup.

Handlers that only read are plain functions (Starlette runs them in its thread
pool, so blocking database calls never stall the event loop). Errors become
pages: a bad filter is a 400 with the reason, a missing process a 404, an
unreachable database a 503; nothing is a stack trace.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from flow_tracker.errors import FlowTrackerError
from flow_tracker.ids import parse_id
from flow_tracker.levels import LEVELS
from flow_tracker.status import Status
from flow_tracker.store import queries
from flow_tracker.web import charts, statistics
from flow_tracker.web.context import dashboard_of, render
from flow_tracker.web.params import RANGES, ParamError, ProcessFilters, clamp_int
from flow_tracker.web.security import check_post

logger = logging.getLogger("flow_tracker")

MAX_FLOWS_SHOWN = 2_000
MAX_LOGS_SHOWN = 5_000
MAX_FORM_BYTES = 16_384
# Stored level names and their logging numbers, lowest first ("warn" is stored as "warning").
LEVEL_RANKS = dict(LEVELS.values())
LEVEL_NAMES = sorted(LEVEL_RANKS, key=LEVEL_RANKS.__getitem__)

Handler = Callable[[Request], Any]


def _guard(handler: Handler) -> Handler:
    """Turn an unreachable database into a 503 page instead of a 500."""

    @functools.wraps(handler)
    def wrapper(request: Request) -> Any:
        try:
            return handler(request)
        except DBAPIError as exc:
            logger.warning("flow-tracker dashboard: database error", exc_info=True)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            return render(
                request,
                "error.html",
                status_code=503,
                heading="The tracking database is not answering",
                message=reason,
            )

    return wrapper


def _now() -> datetime:
    return datetime.now(timezone.utc)


@_guard
def overview(request: Request) -> Response:
    """Counts, throughput, failure rate, slowest names and recent failures over a window."""
    board = dashboard_of(request)
    window = request.query_params.get("window", statistics.DEFAULT_WINDOW)
    if window not in statistics.WINDOWS:
        window = statistics.DEFAULT_WINDOW
    summary = statistics.overview(
        board.store,
        window,
        stale_after=board.stale_after,
        lost_after=board.lost_after,
        rollup_state=board.rollup_state(),
    )
    return render(
        request,
        "overview.html",
        ov=summary,
        chart=charts.throughput(summary.bars, summary.bar_seconds),
        windows=list(statistics.WINDOWS),
        window=window,
        now=_now(),
        live=True,
    )


def _known_categories(request: Request, now: datetime) -> list[str]:
    """Categories seen in the last 30 days (from the day rollups: a few thousand rows)."""
    return queries.categories_seen(dashboard_of(request).store, now - timedelta(days=31))


@_guard
def process_list(request: Request) -> Response:
    """Processes with filters in the URL, newest first, keyset pages."""
    board = dashboard_of(request)
    now = _now()
    error = None
    try:
        filters = ProcessFilters.from_query(request.query_params, now)
        page = queries.list_processes(board.store, **filters.list_kwargs())
    except (ParamError, FlowTrackerError, ValueError) as exc:
        error = str(exc)
        filters = ProcessFilters()
        page = None
    categories = _known_categories(request, now)
    for category in filters.categories:
        if category not in categories:
            categories.append(category)
    return render(
        request,
        "processes.html",
        status_code=400 if error else 200,
        filters=filters,
        page=page,
        error=error,
        statuses=[s.value for s in Status],
        categories=categories,
        ranges=list(RANGES),
        now=now,
        live=page is not None and filters.cursor is None,
    )


@_guard
def process_detail(request: Request) -> Response:
    """One process: header, metadata, error, timeline, flow tree with logs."""
    board = dashboard_of(request)
    pid = parse_id(request.path_params["process_id"])
    process = None
    if pid is not None:
        process = queries.get_process(
            board.store, pid, max_flows=MAX_FLOWS_SHOWN, max_logs=MAX_LOGS_SHOWN
        )
    if pid is None or process is None:
        raise HTTPException(404, "no process with this id")
    level = request.query_params.get("level", "debug")
    if level not in LEVEL_RANKS:
        level = "debug"
    n_flows, n_logs = queries.count_children(board.store, pid)
    now = _now()
    return render(
        request,
        "process.html",
        p=process,
        timeline=charts.waterfall(process, now),
        children=queries.child_processes(board.store, pid),
        level=level,
        visible_levels=[n for n in LEVEL_NAMES if LEVEL_RANKS[n] >= LEVEL_RANKS[level]],
        level_names=LEVEL_NAMES,
        n_flows=n_flows,
        n_logs=n_logs,
        max_flows=MAX_FLOWS_SHOWN,
        max_logs=MAX_LOGS_SHOWN,
        now=now,
        live=not process.status.is_finished,
    )


def _cleanup_statuses(values: list[str]) -> list[str]:
    chosen = []
    for value in values:
        try:
            chosen.append(Status(value).value)
        except ValueError:
            raise ParamError(f"status {value!r} is unknown") from None
    return chosen


@_guard
def cleanup_form(request: Request) -> Response:
    """Choose what to delete and see how many processes that is before confirming."""
    board = dashboard_of(request)
    if board.read_only:
        return _read_only(request)
    days = clamp_int(request.query_params.get("days"), 30, 0, 36_500)
    error = None
    try:
        statuses = _cleanup_statuses(request.query_params.getlist("status"))
    except ParamError as exc:
        error, statuses = str(exc), []
    count = None if error else queries.count_for_cleanup(board.store, days, statuses or None)
    deleted = request.query_params.get("deleted")
    return render(
        request,
        "cleanup.html",
        status_code=400 if error else 200,
        days=days,
        chosen=statuses,
        statuses=[s.value for s in Status],
        count=count,
        error=error,
        deleted=clamp_int(deleted, 0, 0, 10**12) if deleted is not None else None,
    )


async def cleanup_run(request: Request) -> Response:
    """Delete what the confirmed form says (POST, CSRF token, same origin)."""
    board = dashboard_of(request)
    if board.read_only:
        return _read_only(request)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return _refused(request, 413, "form too large")
    form = parse_qs(body.decode("utf-8", "replace"))
    flat = {k: v[0] for k, v in form.items()}
    problem = check_post(request, flat)
    if problem:
        return _refused(request, 403, problem)
    if flat.get("confirm") != "yes":
        return _refused(request, 400, "tick the confirmation box to delete")
    days = clamp_int(flat.get("days"), 30, 0, 36_500)
    try:
        statuses = _cleanup_statuses(form.get("status", []))
    except ParamError as exc:
        return _refused(request, 400, str(exc))
    deleted = await run_in_threadpool(queries.cleanup, board.store, days, statuses or None)
    query = f"days={days}&deleted={deleted}" + "".join(f"&status={s}" for s in statuses)
    target = request.url_for("cleanup").path + "?" + query
    return RedirectResponse(target, status_code=303)


def _read_only(request: Request) -> Response:
    return _refused(request, 403, "this dashboard is read-only")


def _refused(request: Request, status_code: int, message: str) -> Response:
    response: Response = render(
        request, "error.html", status_code=status_code, heading="Not done", message=message
    )
    return response


async def not_found(request: Request, exc: Exception) -> Response:
    """The 404 page."""
    detail = getattr(exc, "detail", "") or "nothing here"
    response: Response = render(
        request, "error.html", status_code=404, heading="Not found", message=detail
    )
    return response


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """The 405 page (a GET to an action, a POST to a page)."""
    response: Response = render(
        request,
        "error.html",
        status_code=405,
        heading="Method not allowed",
        message=f"{request.method} is not accepted here",
    )
    return response
