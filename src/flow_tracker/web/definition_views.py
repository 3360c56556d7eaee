"""The definitions page, "Start run" and "Run again".

The definitions page lists every recorded workflow version (no user code
imported); "Start run" opens a form with a JSON context, tags, an idempotency
key and steps to skip; "Run again" opens the same form filled with a finished
run's version, context and tags (the context only for a principal with
``payloads:read``). Submitting it is a POST with the CSRF token,
refused (and hidden) on a read-only dashboard; a form that cannot start a run
comes back with the reason and the values typed, and nothing is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from flow_tracker.errors import FlowTrackerError, NotFoundError, UsageError
from flow_tracker.ids import parse_id
from flow_tracker.redaction import Redactor
from flow_tracker.store import definitions as stored_definitions
from flow_tracker.store import starting as stored_starting
from flow_tracker.web import hiding
from flow_tracker.web.context import (
    SHOWN_VALUE_LIMIT,
    dashboard_of,
    now,
    path_for,
    read_capped,
    read_only_refusal,
    refuse,
    render,
)
from flow_tracker.web.security import check_post
from flow_tracker.web.start_api import body_limit
from flow_tracker.web.workflow_views import who_acts
from flow_tracker.workflows import manage
from flow_tracker.workflows.definition import version_key
from flow_tracker.workflows.definitions import (
    WorkflowDefinition,
    of_declared,
    stored_versions,
)
from flow_tracker.workflows.starting import (
    REASON_LIMIT,
    parse_tag_filter,
    resolve,
    start_workflow,
)


@dataclass
class StartForm:
    """What the start form shows: the workflow version, and the values typed (or prefilled)."""

    namespace: str
    name: str
    version: str
    steps: list[str]
    context: str = "{}"
    tags: str = ""
    idempotency_key: str = ""
    skip: set[str] = field(default_factory=set)
    reason: str = ""
    versions: list[str] = field(default_factory=list)
    again: str | None = None
    """The run this form starts again, if any."""
    note: str | None = None


def definitions_page(request: Request) -> Response:
    """Every recorded workflow version: steps, queue, module, last seen; Start run.

    Read without the DAGs (a step count from the database): a thousand
    definitions answer in the time of one small query and the page.
    """
    board = dashboard_of(request)
    board.store.ensure_schema()
    found = stored_definitions.summaries(board.store)
    found.sort(key=lambda d: version_key(d.version), reverse=True)
    found.sort(key=lambda d: (d.namespace, d.name))
    return render(
        request,
        "workflow_definitions.html",
        definitions=found,
        nav="workflows",
        now=now(),
    )


def _definition(
    request: Request, namespace: str, name: str, version: str | None
) -> WorkflowDefinition:
    """The version a form starts: declared here (a mounted dashboard) or recorded.

    Raises:
        NotFoundError: no such workflow or version.
    """
    here, found = resolve(f"{namespace}/{name}", version or None, dashboard_of(request).store)
    if here is not None:
        return of_declared(here)
    if found is None:
        raise NotFoundError(f"no workflow {namespace}/{name}")
    return found


def _form_for(request: Request, found: WorkflowDefinition) -> StartForm:
    store = dashboard_of(request).store
    versions = [d.version for d in stored_versions(store, found.namespace, found.name)]
    return StartForm(
        namespace=found.namespace,
        name=found.name,
        version=found.version,
        steps=[str(s.get("name")) for s in found.steps],
        versions=versions or [found.version],
    )


def start_form(request: Request) -> Response:
    """``GET /workflows/definitions/start?namespace=&name=&version=``: the empty start form."""
    if dashboard_of(request).read_only:
        return read_only_refusal(request)
    params = request.query_params
    try:
        found = _definition(
            request, params.get("namespace", ""), params.get("name", ""), params.get("version")
        )
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except UsageError as exc:
        return refuse(request, 400, str(exc))
    return _render_form(request, _form_for(request, found))


def run_again_form(request: Request) -> Response:
    """``GET /workflows/{run_id}/run-again``: the start form filled with a finished run's values."""
    board = dashboard_of(request)
    if board.read_only:
        return read_only_refusal(request)
    run_id = parse_id(request.path_params["run_id"])
    row = None if run_id is None else stored_starting.started_as(board.store, run_id)
    if run_id is None or row is None:
        raise HTTPException(404, "no workflow run with this id")
    run = manage.get_workflow_outline(run_id, store=board.store, preview_over=SHOWN_VALUE_LIMIT)
    if not run.finished:
        return refuse(request, 409, "this run has not finished: run it again once it has")
    try:
        found = _definition(request, row.namespace, row.name, row.version)
    except FlowTrackerError as exc:
        return refuse(request, 404, f"{exc} (the run's definition is no longer recorded)")
    form = _form_for(request, found)
    form.again = str(run_id)
    form.tags = "\n".join(f"{k}={v}" for k, v in sorted((row.tags or {}).items()))
    if hiding.hides(request):
        # The form may still start a run: with the context its user types.
        form.note = (
            f"The run's context is hidden from you (it needs the {hiding.PERMISSION} "
            "permission): type the context to start with."
        )
        return _render_form(request, form)
    context = run.context
    if isinstance(context, dict) and context.get("_truncated"):
        form.note = "The run's context is too large to show here: type the context to start with."
        return _render_form(request, form)
    shown = Redactor(_redact_keys()).scrub(context)
    form.context = json.dumps(shown, indent=2, ensure_ascii=False)
    if shown != context:
        form.note = (
            "Some values of the run's context are hidden (keys such as password or token): "
            "type them again, or the new run gets the hidden marker."
        )
    return _render_form(request, form)


def _redact_keys() -> Any:
    from flow_tracker import config

    return config.current().redact_keys


def _render_form(request: Request, form: StartForm, error: str | None = None) -> Response:
    return render(
        request,
        "workflow_start.html",
        status_code=400 if error else 200,
        form=form,
        error=error,
        nav="workflows",
        now=now(),
    )


def _field(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0]


def _parse_tags(text: str) -> dict[str, str] | None:
    """``key=value`` per line, as the CLI's ``--tag``."""
    tags = dict(parse_tag_filter(line.strip(), "=") for line in text.splitlines() if line.strip())
    return tags or None


async def start_submit(request: Request) -> Response:
    """``POST /workflows/definitions/start``: start a run; to its page, or the form and why not."""
    board = dashboard_of(request)
    if board.read_only:
        return read_only_refusal(request)
    body = await read_capped(request, body_limit())
    if body is None:
        return refuse(request, 413, "form too large")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    problem = check_post(request, {k: v[0] for k, v in fields.items()})
    if problem:
        return refuse(request, 403, problem)
    try:
        found = _definition(
            request, _field(fields, "namespace"), _field(fields, "name"), _field(fields, "version")
        )
    except NotFoundError as exc:
        return refuse(request, 404, str(exc))
    except UsageError as exc:
        return refuse(request, 400, str(exc))
    form = _form_for(request, found)
    form.context = _field(fields, "context") or "{}"
    form.tags = _field(fields, "tags")
    form.idempotency_key = _field(fields, "idempotency_key").strip()
    form.skip = set(fields.get("skip") or [])
    form.reason = _field(fields, "reason")[:REASON_LIMIT]
    form.again = _field(fields, "again") or None
    try:
        context = json.loads(form.context)
    except (ValueError, RecursionError):
        return _render_form(request, form, "the context is not JSON")
    by = who_acts(request)
    reason = form.reason or (f"run again from {form.again}" if form.again else None)
    try:
        tags = _parse_tags(form.tags)
        run = await run_in_threadpool(
            lambda: start_workflow(
                f"{found.namespace}/{found.name}",
                context,
                version=found.version,
                idempotency_key=form.idempotency_key or None,
                skip=sorted(form.skip),
                tags=tags,
                initiator=by,
                source="dashboard",
                reason=reason,
                store=board.store,
            )
        )
    except FlowTrackerError as exc:
        return _render_form(request, form, str(exc))
    target = path_for(request, "workflow", run_id=run.id)
    target += "?done=start" if run.created else "?done=existing"
    if run.delivery.waiting:
        target += "&waiting=" + quote(",".join(run.delivery.waiting))
    return RedirectResponse(target, status_code=303)
