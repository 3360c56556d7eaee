"""Workflow actions of the JSON API: ``POST /api/workflows/{run_id}/retry-failed``.

The page's actions are forms with a CSRF token; an API client has no page to
take a token from. What keeps another site from sending this request in a
visitor's name instead: the body must be ``application/json``, which a
cross-site form cannot send and a cross-site script can only send after a CORS
preflight this app never grants; and a browser's ``Origin`` or
``Sec-Fetch-Site`` naming another site is refused outright. Refused on a
read-only dashboard (403), like every action.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from flow_tracker.errors import FlowTrackerError, NotFoundError
from flow_tracker.ids import parse_id
from flow_tracker.web.context import MAX_FORM_BYTES, dashboard_of, read_capped
from flow_tracker.web.errors import json_response, problem
from flow_tracker.web.workflow_views import REASON_LIMIT, who_acts
from flow_tracker.workflows import manage


def _cross_site(request: Request) -> bool:
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    expected = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
    return origin is not None and origin.lower() != expected


async def _json_body(request: Request) -> tuple[dict[str, Any], Response | None]:
    """The action's JSON object, or the refusal to answer instead."""
    if dashboard_of(request).read_only:
        return {}, problem(403, "this dashboard is read-only")
    if _cross_site(request):
        return {}, problem(403, "cross-origin request refused")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        return {}, problem(415, "send a JSON object with Content-Type: application/json")
    body = await read_capped(request, MAX_FORM_BYTES)
    if body is None:
        return {}, problem(413, f"the body is over {MAX_FORM_BYTES:,} bytes")
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        return {}, problem(400, "the body is not JSON")
    if not isinstance(data, dict):
        return {}, problem(400, 'the body is a JSON object, such as {"reason": "..."}')
    return data, None


async def retry_failed(request: Request) -> Response:
    """``POST /api/workflows/{run_id}/retry-failed``: retry every failed step of the run.

    Body: ``{"reason": "..."}`` (optional). 200 with the steps retried and what
    became of their messages (``sent``, or ``waiting`` for a worker of a queue);
    404 no such run; 409 nothing to retry (no failed step, a cancelled run).
    """
    data, refused = await _json_body(request)
    if refused is not None:
        return refused
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        return problem(400, "reason is a string")
    run_id = parse_id(request.path_params["run_id"])
    if run_id is None:
        return problem(404, "no workflow run with this id")
    store = dashboard_of(request).store
    by = who_acts(request)
    text = None if reason is None else reason[:REASON_LIMIT]
    try:
        retried = await run_in_threadpool(
            lambda: manage.retry_failed_steps(run_id, by=by, reason=text, store=store)
        )
    except NotFoundError as exc:
        return problem(404, str(exc))
    except FlowTrackerError as exc:
        return problem(409, str(exc))
    delivery = retried.delivery
    return json_response(
        {
            "run_id": str(run_id),
            "retried": list(retried.steps),
            "delivery": delivery.status,
            "waiting_for": list(delivery.waiting),
            "message": delivery.message,
        }
    )
