"""The workflow pages: the list of runs, a run drawn as a DAG, and retry, resolve and cancel.

Actions are POST forms with the CSRF token, each refused (and hidden) without
its permission (``workflows:retry``, ``workflows:resolve``, ``workflows:cancel``),
and kept in the run's state history with who did them: the authenticated
principal's name (``dashboard`` on a dashboard without auth).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from flow_tracker.errors import FlowTrackerError, NotFoundError
from flow_tracker.ids import parse_id
from flow_tracker.status import STEP_DONE_STATES, RunState, StepState
from flow_tracker.store.starting import started_as
from flow_tracker.web import dag, hiding, statistics, workflow_statistics
from flow_tracker.web.access import principal_of
from flow_tracker.web.context import (
    SHOWN_VALUE_LIMIT,
    checked_form,
    dashboard_of,
    now,
    path_for,
    refuse,
    render,
)
from flow_tracker.web.params import ParamError, clean, run_cursor
from flow_tracker.web.tag_filters import tag_filters
from flow_tracker.workflows import manage
from flow_tracker.workflows.status import StepStatus, WorkflowStatus, explain

RUN_STATUSES = tuple(s.value for s in RunState)
PAGE = 50
REASON_LIMIT = 300
LISTED = 300  # step rows a run's page lists (every step not done, then done ones)
MERMAID_INLINE = 200
_SOME_ID = "00000000-0000-0000-0000-000000000000"


def workflow_list(request: Request) -> Response:
    """Runs newest first: status, name, started, duration, steps done of total, failed step."""
    board = dashboard_of(request)
    params = request.query_params
    name = clean(params["name"])[:255] if params.get("name") else None
    status = params.get("status") or None
    # Several tag filters combine (AND): each is one ``tag=key:value`` parameter.
    tags = [t for t in (clean(v).strip()[:330] for v in params.getlist("tag")) if t]
    error = None
    runs: list[dict[str, Any]] = []
    try:
        if status is not None and status not in RUN_STATUSES:
            raise ParamError(f"status must be one of {', '.join(RUN_STATUSES)}")
        runs = manage.list_workflows(
            name=name,
            status=status,
            limit=PAGE,
            before=run_cursor(params.get("before")),
            tags=tag_filters(tags),
            store=board.store,
        )
    except (ParamError, FlowTrackerError) as exc:
        error = str(exc)
    last = runs[-1] if len(runs) == PAGE else None
    for run in runs:
        run["created"] = datetime.fromisoformat(run["created_at"])
    return render(
        request,
        "workflows.html",
        status_code=400 if error else 200,
        runs=runs,
        name=name or "",
        status=status or "",
        tags=tags,
        filters=_filter_query(name, status, tags),
        statuses=RUN_STATUSES,
        error=error,
        next_cursor=f"{last['created_at']}|{last['id']}" if last else None,
        nav="workflows",
        now=now(),
        live=True,
    )


def _filter_query(name: str | None, status: str | None, tags: list[str]) -> str:
    """The run list's filters as a query string, for its pager and its tag links."""
    pairs = [("name", name or ""), ("status", status or "")] + [("tag", t) for t in tags]
    return urlencode([(k, v) for k, v in pairs if v])


def workflow_analytics(request: Request) -> Response:
    """Per workflow and step: runs, p50/p95, failure and retry rates, a critical path.

    Each workflow lists its slowest steps; ``?name=`` shows one workflow with all of them.
    """
    board = dashboard_of(request)
    window = request.query_params.get("window", statistics.DEFAULT_WINDOW)
    if window not in statistics.WINDOWS:
        raise ParamError(f"window must be one of {', '.join(statistics.WINDOWS)}")
    only = clean(request.query_params["name"])[:255] if request.query_params.get("name") else None
    found = workflow_statistics.analytics(board.store, window, board.rollup_state(), only=only)
    return render(
        request,
        "workflow_analytics.html",
        workflows=found,
        only=only,
        window=window,
        windows=list(statistics.WINDOWS),
        nav="workflows",
        now=now(),
    )


def _run_of(request: Request) -> WorkflowStatus:
    run_id = parse_id(request.path_params["run_id"])
    if run_id is None:
        raise HTTPException(404, "no workflow run with this id")
    try:
        return manage.get_workflow_outline(
            run_id, store=dashboard_of(request).store, preview_over=SHOWN_VALUE_LIMIT
        )
    except NotFoundError:
        raise HTTPException(404, "no workflow run with this id") from None


EXPAND_DIGITS = 6  # group numbers of a run: a few thousand at most


def _expanded(request: Request) -> set[int]:
    """The group numbers of ``?expand=``; any other value is ignored (the group stays shut).

    ``str.isdigit`` alone also says yes to "²" and to 5,000 digits, which
    ``int`` refuses: only short runs of ASCII digits are group numbers.
    """
    chosen = set()
    for raw in request.query_params.getlist("expand")[:50]:
        if raw.isascii() and raw.isdigit() and len(raw) <= EXPAND_DIGITS:
            chosen.add(int(raw))
    return chosen


def workflow_detail(request: Request) -> Response:
    """One run: its DAG, every step and why it waits, context and results, the actions."""
    run = _run_of(request)
    names, unlisted = _listed(run)
    run = manage.with_results(
        run, names, store=dashboard_of(request).store, preview_over=SHOWN_VALUE_LIMIT
    )
    shown = manage.shown(run, names, store=dashboard_of(request).store)
    # Context, results and errors hidden from a principal without payloads:read.
    shown = hiding.workflow_dict(request, shown)
    run = hiding.workflow(request, run)
    expand = _expanded(request)

    # One route look-up, not one per step (~45 µs each, 14 ms on a 2,000-step page).
    process_path = path_for(request, "process", process_id=_SOME_ID)

    def link(step: StepStatus) -> str | None:
        if step.process_id is None:
            return None
        return process_path.replace(_SOME_ID, str(step.process_id))

    def expand_link(group: int) -> str:
        wanted = sorted(expand | {group})
        query = "&".join(f"expand={g}" for g in wanted)
        return path_for(request, "workflow", run_id=run.id) + "?" + query

    drawing = dag.draw(run, link, expand_link, expand)
    listed = []
    for row in shown["steps"]:
        step = run.steps[row["name"]]
        listed.append({**row, "why": explain(run, step), "link": link(step)})
    return render(
        request,
        "workflow.html",
        run=run,
        shown=shown,
        steps=listed,
        unlisted=unlisted,
        steps_done=sum(1 for s in run.steps.values() if s.status in STEP_DONE_STATES),
        steps_total=len(run.steps),
        drawing=drawing,
        # A large run's Mermaid text is a download, not part of every page view.
        mermaid=manage.diagram_text(run) if len(run.steps) <= MERMAID_INLINE else None,
        failed_steps=[n for n, s in run.steps.items() if s.status == StepState.FAILED.value][
            :LISTED
        ],
        started_as=started_as(dashboard_of(request).store, run.id),
        nav="workflows",
        now=now(),
        live=not run.finished,
    )


def _listed(run: WorkflowStatus) -> tuple[list[str], int]:
    """The steps the table lists: all of a small run; of a large one, every step not done first.

    Returns their names and how many done steps were left out.
    """
    if len(run.steps) <= LISTED:
        return list(run.steps), 0
    keep = [n for n, s in run.steps.items() if s.status not in STEP_DONE_STATES][:LISTED]
    chosen = set(keep)
    for name in run.steps:
        if len(keep) >= LISTED:
            break
        if name not in chosen:
            keep.append(name)
            chosen.add(name)
    return keep, len(run.steps) - len(keep)


def who_acts(request: Request) -> str:
    """Who an action of this request is kept as, in the run's history (the API's too).

    The name of the principal the security middleware authenticated (the basic
    user, the hook's principal, the token's name; ``dashboard`` on a dashboard
    without auth), never a header of the request: anyone who can post could
    write any name there.
    """
    return principal_of(request).name


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which are no JSON and no stored result.
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: a number past any float
        raise ValueError(f"{text[:20]} is too large a number")
    return value


def _field(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


async def workflow_action(request: Request) -> Response:
    """Retry or resolve a failed step, or cancel the run (POST, CSRF token, same origin)."""
    form, refused = await checked_form(request)
    if refused is not None:
        return refused
    run_id = parse_id(request.path_params["run_id"])
    if run_id is None:
        return refuse(request, 404, "no workflow run with this id")
    action = request.path_params["action"]
    reason = _field(form, "reason")[:REASON_LIMIT] or None
    step = _field(form, "step")
    board = dashboard_of(request)
    who = who_acts(request)
    delivery = None
    try:
        if action == "retry":
            delivery = await run_in_threadpool(
                lambda: manage.retry_step(run_id, step, by=who, reason=reason, store=board.store)
            )
        elif action == "resolve":
            try:
                result = json.loads(
                    _field(form, "result") or "null",
                    parse_constant=_no_constant,
                    parse_float=_finite_float,
                )
            except ValueError as exc:
                return refuse(request, 400, f"the result must be JSON: {exc}")
            except RecursionError:
                # "[[[[..." past Python's recursion limit: the parser gives up, not the page.
                return refuse(request, 400, "the result is nested too deeply")
            delivery = await run_in_threadpool(
                lambda: manage.resolve_step(
                    run_id, step, result=result, by=who, reason=reason, store=board.store
                )
            )
        elif action == "retry-failed":
            retried = await run_in_threadpool(
                lambda: manage.retry_failed_steps(run_id, by=who, reason=reason, store=board.store)
            )
            delivery = retried.delivery
        elif action == "cancel":
            await run_in_threadpool(
                lambda: manage.cancel_workflow(run_id, by=who, reason=reason, store=board.store)
            )
        else:
            return refuse(request, 404, f"no action {action!r}")
    except NotFoundError as exc:
        return refuse(request, 404, str(exc))
    except FlowTrackerError as exc:
        return refuse(request, 409, str(exc))
    target = path_for(request, "workflow", run_id=run_id) + f"?done={action}"
    if delivery is not None and delivery.waiting:
        # Said on the page: nothing was sent, a worker of that queue will send it.
        target += "&waiting=" + quote(",".join(delivery.waiting))
    return RedirectResponse(target, status_code=303)
