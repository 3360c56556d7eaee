"""The JSON API under ``/api/``: processes, one process, a job's status, statistics, workflows.

Read-only, with the same filters as the HTML list; described by the OpenAPI
document at ``/api/openapi.json`` (:mod:`flow_tracker.web.openapi`). Errors are
JSON problems (:mod:`flow_tracker.web.errors`): 400 with the reason, 404, 503.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from flow_tracker.errors import NotFoundError, UsageError
from flow_tracker.ids import parse_id
from flow_tracker.status import JobStatus
from flow_tracker.store import queries
from flow_tracker.web import hiding, statistics
from flow_tracker.web import openapi as openapi_doc
from flow_tracker.web.context import SHOWN_VALUE_LIMIT, dashboard_of
from flow_tracker.web.errors import json_response, problem
from flow_tracker.web.params import ParamError, ProcessFilters, clean, run_cursor
from flow_tracker.web.tag_filters import tag_filters
from flow_tracker.workflows import manage as workflows

MAX_API_LOGS = 10_000
MAX_API_FLOWS = 10_000


def list_processes(request: Request) -> Response:
    """``GET /api/processes``: a page of processes, newest first, with ``next_cursor``.

    A search (``q``) or a metadata filter (``meta``) is 403 for a principal
    without ``payloads:read`` (:func:`flow_tracker.web.hiding.refused_filters`).
    """
    board = dashboard_of(request)
    refused = hiding.refused_filters(request)
    if refused is not None:
        return problem(403, refused)
    filters = ProcessFilters.from_query(request.query_params, datetime.now(timezone.utc))
    with board.search_slot() if filters.search else contextlib.nullcontext():
        page = queries.list_processes(board.store, **filters.list_kwargs())
    items = [
        hiding.mark(request, p.to_dict(include_tree=False))
        for p in hiding.processes(request, page.items)
    ]
    return json_response(hiding.mark(request, {"items": items, "next_cursor": page.next_cursor}))


def get_process(request: Request) -> Response:
    """``GET /api/processes/{id}``: one process with its flow tree and logs."""
    board = dashboard_of(request)
    pid = parse_id(request.path_params["process_id"])
    record = None
    if pid is not None:
        record = queries.get_process(
            board.store, pid, max_flows=MAX_API_FLOWS, max_logs=MAX_API_LOGS
        )
    if pid is None or record is None:
        return problem(404, "no process with this id")
    n_flows, n_logs = queries.count_children(board.store, pid, record.created_at)
    data = hiding.mark(request, hiding.process_for(request, record).to_dict())
    data["counts"] = {"flows": n_flows, "logs": n_logs}
    data["truncated"] = n_flows > MAX_API_FLOWS or n_logs > MAX_API_LOGS
    return json_response(data)


def get_status(request: Request) -> Response:
    """``GET /api/status/{id}``: a process's status by process id or by the queue's job id."""
    board = dashboard_of(request)
    ident = clean(str(request.path_params["ident"]))[:255]
    row = queries.find_process_row(board.store, ident)
    if row is None:
        return problem(404, "no process or job with this id")
    record = hiding.process_for(request, queries.process_from_row(row))
    return json_response(hiding.mark(request, JobStatus(record).to_dict()))


def stats(request: Request) -> Response:
    """``GET /api/stats?window=24h``: the overview's numbers."""
    board = dashboard_of(request)
    window = request.query_params.get("window", statistics.DEFAULT_WINDOW)
    if window not in statistics.WINDOWS:
        raise ParamError(f"window must be one of {', '.join(statistics.WINDOWS)}")
    summary = statistics.overview(
        board.store,
        window,
        stale_after=board.stale_after,
        lost_after=board.lost_after,
        rollup_state=board.rollup_state(),
    )
    return json_response(hiding.mark(request, hiding.overview(request, summary).to_dict()))


def openapi(request: Request) -> Response:
    """``GET /api/openapi.json``: the OpenAPI 3.1 description of this API."""
    base = request.scope.get("root_path", "")
    return json_response(openapi_doc.document(server_url=base or "/"))


# -- workflows ---------------------------------------------------------------


def list_workflows(request: Request) -> Response:
    """``GET /api/workflows``: runs newest first, paged; ``name``, ``status``, ``tag=k:v``."""
    board = dashboard_of(request)
    params = request.query_params
    try:
        limit = int(params.get("limit", "50"))
    except ValueError:
        raise ParamError("limit must be a whole number") from None
    name = clean(params["name"])[:255] if params.get("name") else None
    try:
        items = workflows.list_workflows(
            name=name,
            status=params.get("status") or None,
            limit=limit,
            before=run_cursor(params.get("before")),
            tags=tag_filters(params.getlist("tag")),
            store=board.store,
        )
    except UsageError as exc:
        raise ParamError(str(exc)) from None
    last = items[-1] if len(items) == limit else None
    cursor = f"{last['created_at']}|{last['id']}" if last else None
    return json_response({"items": items, "next_cursor": cursor})


def _run(request: Request) -> workflows.WorkflowStatus | None:
    run_id = parse_id(request.path_params["run_id"])
    if run_id is None:
        return None
    try:
        return workflows.get_workflow(
            run_id, store=dashboard_of(request).store, preview_over=SHOWN_VALUE_LIMIT
        )
    except NotFoundError:
        return None


def get_workflow(request: Request) -> Response:
    """``GET /api/workflows/{id}``: a run with every step (status, attempts, result, error)."""
    run = _run(request)
    if run is None:
        return problem(404, "no workflow run with this id")
    shown = workflows.shown(run, store=dashboard_of(request).store)
    return json_response(hiding.workflow_dict(request, shown))


def workflow_diagram(request: Request) -> Response:
    """``GET /api/workflows/{id}/diagram``: the run as Mermaid flowchart text."""
    run = _run(request)
    if run is None:
        return problem(404, "no workflow run with this id")
    return PlainTextResponse(workflows.diagram_text(run), media_type="text/plain; charset=utf-8")
