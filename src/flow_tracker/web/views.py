"""The dashboard's HTML pages: overview, process list, process detail, cleanup.

Handlers that only read are plain functions (Starlette runs them in its thread
pool, so blocking database calls never stall the event loop). Errors become
pages: a bad filter is a 400 with the reason, a missing process a 404, an
unreachable database a 503 (:mod:`flow_tracker.web.errors`); nothing is a stack trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from flow_tracker.errors import FlowTrackerError, NotFoundError
from flow_tracker.ids import parse_id
from flow_tracker.levels import LEVELS
from flow_tracker.records import ProcessRecord
from flow_tracker.status import Status
from flow_tracker.store import queries, retention
from flow_tracker.store.engine import time_budget
from flow_tracker.store.workflows import CATEGORY as WORKFLOW_CATEGORY
from flow_tracker.web import charts, compare_views, hiding, statistics
from flow_tracker.web.context import (
    SHOWN_VALUE_LIMIT,
    checked_form,
    dashboard_of,
    now,
    path_for,
    read_only_refusal,
    refuse,
    render,
)
from flow_tracker.web.params import RANGES, ParamError, ProcessFilters, clamp_int
from flow_tracker.workflows import manage as workflows

logger = logging.getLogger("flow_tracker")

MAX_FLOWS_SHOWN = 2_000
MAX_LOGS_SHOWN = 5_000
# Stored level names and their logging numbers, lowest first ("warn" is stored as "warning").
LEVEL_RANKS = dict(LEVELS.values())
LEVEL_NAMES = sorted(LEVEL_RANKS, key=LEVEL_RANKS.__getitem__)

Handler = Callable[[Request], Any]


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
        ov=hiding.overview(request, summary),
        chart=charts.throughput(summary.bars, summary.bar_seconds),
        windows=list(statistics.WINDOWS),
        window=window,
        now=now(),
        live=True,
    )


def _known_categories(request: Request, now: datetime) -> list[str]:
    """Categories seen in the last 30 days (from the day rollups: a few thousand rows)."""
    return queries.categories_seen(dashboard_of(request).store, now - timedelta(days=31))


def process_list(request: Request) -> Response:
    """Processes with filters in the URL, newest first, keyset pages."""
    board = dashboard_of(request)
    moment = now()
    error = None
    refused = hiding.refused_filters(request)
    try:
        if refused is not None:
            raise ParamError(refused)
        filters = ProcessFilters.from_query(request.query_params, moment)
        with board.search_slot() if filters.search else contextlib.nullcontext():
            page = queries.list_processes(board.store, **filters.list_kwargs())
        page = dataclasses.replace(page, items=hiding.processes(request, page.items))
    except (ParamError, FlowTrackerError, ValueError) as exc:
        error = str(exc)
        filters = ProcessFilters()
        page = None
    categories = _known_categories(request, moment)
    for category in filters.categories:
        if category not in categories:
            categories.append(category)
    return render(
        request,
        "processes.html",
        status_code=403 if refused else 400 if error else 200,
        filters=filters,
        page=page,
        error=error,
        statuses=[s.value for s in Status],
        categories=categories,
        ranges=list(RANGES),
        now=moment,
        live=page is not None and filters.cursor is None,
    )


def _workflow_of(request: Request, process: ProcessRecord) -> dict[str, Any] | None:
    """A workflow run's steps as its process page shows them (values redacted, or hidden)."""
    if process.category != WORKFLOW_CATEGORY or process.parent_process_id is not None:
        return None
    store = dashboard_of(request).store
    try:
        run = workflows.get_workflow(process.id, store=store, preview_over=SHOWN_VALUE_LIMIT)
        return hiding.workflow_dict(request, workflows.shown(run))
    except NotFoundError:
        return None


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
    n_flows, n_logs = queries.count_children(board.store, pid, process.created_at)
    moment = now()
    return render(
        request,
        "process.html",
        p=hiding.process_for(request, process),
        workflow=_workflow_of(request, process),
        timeline=charts.waterfall(process, moment),
        children=hiding.processes(request, queries.child_processes(board.store, pid)),
        level=level,
        visible_levels=[n for n in LEVEL_NAMES if LEVEL_RANKS[n] >= LEVEL_RANKS[level]],
        level_names=LEVEL_NAMES,
        n_flows=n_flows,
        n_logs=n_logs,
        max_flows=MAX_FLOWS_SHOWN,
        max_logs=MAX_LOGS_SHOWN,
        now=moment,
        live=not process.status.is_finished,
        compare_offer=compare_views.offer(board.store, process, moment),
    )


def _cleanup_statuses(values: list[str]) -> list[str]:
    chosen = []
    for value in values:
        try:
            chosen.append(Status(value).value)
        except ValueError:
            raise ParamError(f"status {value!r} is unknown") from None
    return chosen


def cleanup_form(request: Request) -> Response:
    """Choose what to delete and see how many processes that is before confirming."""
    board = dashboard_of(request)
    if board.read_only:
        return read_only_refusal(request)
    days = clamp_int(request.query_params.get("days"), 30, 0, 36_500)
    error = None
    try:
        statuses = _cleanup_statuses(request.query_params.getlist("status"))
    except ParamError as exc:
        error, statuses = str(exc), []
    preview = None if error else retention.preview_cleanup(board.store, days, statuses or None)
    deleted = request.query_params.get("deleted")
    return render(
        request,
        "cleanup.html",
        status_code=400 if error else 200,
        days=days,
        chosen=statuses,
        statuses=[s.value for s in Status],
        preview=preview,
        error=error,
        deleted=clamp_int(deleted, 0, 0, 10**12) if deleted is not None else None,
    )


async def cleanup_run(request: Request) -> Response:
    """Delete what the confirmed form says (POST, CSRF token, same origin)."""
    form, refused = await checked_form(request)
    if refused is not None:
        return refused
    if form.get("confirm") != ["yes"]:
        return refuse(request, 400, "tick the confirmation box to delete")
    days = clamp_int(next(iter(form.get("days", [])), None), 30, 0, 36_500)
    try:
        statuses = _cleanup_statuses(form.get("status", []))
    except ParamError as exc:
        return refuse(request, 400, str(exc))
    board = dashboard_of(request)
    # Deleting takes as long as what was asked for: out of the request's time
    # budget, each statement still bounded by the store's statement timeout.
    with time_budget(None):
        deleted = await run_in_threadpool(retention.cleanup, board.store, days, statuses or None)
    query = f"days={days}&deleted={deleted}" + "".join(f"&status={s}" for s in statuses)
    target = path_for(request, "cleanup") + "?" + query
    return RedirectResponse(target, status_code=303)
