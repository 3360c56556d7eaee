"""Starting runs over the JSON API and listing the definitions they start.

``POST /api/workflows/{namespace}/{name}/runs`` takes a JSON object (``context``,
``version``, ``idempotency_key``, ``skip``, ``tags``, ``reason``) and answers 201
with the new run, or 200 with the run a repeated idempotency key started. The
request passes the same checks as ``POST /api/workflows/{run_id}/retry-failed``
(:mod:`flow_tracker.web.workflow_api`): refused on a read-only dashboard (403), a
browser's cross-site request refused (403), a JSON content type required (415,
which a cross-site form cannot send). Every other refusal is a 4xx with the
reason, and nothing is stored: a body over the limit (413), not a JSON object,
a field of the wrong type or unknown, a step to skip the workflow lacks, bad
tags (400); an unknown namespace, name or version (404).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from flow_tracker import config
from flow_tracker.errors import FlowTrackerError, NotFoundError
from flow_tracker.redaction import Redactor
from flow_tracker.status import RunState, StepState
from flow_tracker.store.engine import Store
from flow_tracker.web import hiding
from flow_tracker.web.context import SHOWN_VALUE_LIMIT, dashboard_of, path_for, read_capped
from flow_tracker.web.errors import json_response, problem
from flow_tracker.web.workflow_api import _cross_site
from flow_tracker.web.workflow_views import who_acts
from flow_tracker.workflows import manage
from flow_tracker.workflows.definitions import list_workflow_definitions
from flow_tracker.workflows.starting import REASON_LIMIT, StartedRun, start_workflow

FIELDS = ("context", "version", "idempotency_key", "skip", "tags", "reason")
# Room for the largest context a run may have, plus the other fields.
ENVELOPE_BYTES = 65_536


def body_limit() -> int:
    """The most bytes a start's body may have: the context limit and an envelope."""
    return config.current().max_context_bytes + ENVELOPE_BYTES


def _typed(data: dict[str, Any]) -> str | None:
    """Why the body's fields cannot be a start request, or None."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        return f"unknown field {unknown[0][:80]!r}; a start takes {', '.join(FIELDS)}"
    if "context" in data and not isinstance(data["context"], (dict, type(None))):
        return 'context is a JSON object, such as {"cart_id": 7}'
    for name in ("version", "idempotency_key", "reason"):
        if data.get(name) is not None and not isinstance(data[name], str):
            return f"{name} is a string"
    skip = data.get("skip")
    if skip is not None and not (isinstance(skip, list) and all(isinstance(s, str) for s in skip)):
        return "skip is a list of step names"
    tags = data.get("tags")
    if tags is not None and not (
        isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())
    ):
        return 'tags is an object of strings, such as {"customer": "c-42"}'
    return None


async def start_run(request: Request) -> Response:
    """``POST /api/workflows/{namespace}/{name}/runs``: start a run (see the module's docstring)."""
    board = dashboard_of(request)
    if board.read_only:
        return problem(403, "this dashboard is read-only")
    if _cross_site(request):
        return problem(403, "cross-origin request refused")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        return problem(415, "send a JSON object with Content-Type: application/json")
    limit = body_limit()
    body = await read_capped(request, limit)
    if body is None:
        return problem(413, f"the body is over {limit:,} bytes")
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        return problem(400, "the body is not JSON")
    if not isinstance(data, dict):
        return problem(400, 'the body is a JSON object, such as {"context": {"cart_id": 7}}')
    wrong = _typed(data)
    if wrong:
        return problem(400, wrong)
    namespace, name = request.path_params["namespace"], request.path_params["name"]
    reason = data.get("reason")
    by = who_acts(request)

    def start() -> tuple[StartedRun, dict[str, Any]]:
        run: StartedRun = start_workflow(
            f"{namespace}/{name}",
            data.get("context"),
            version=data.get("version"),
            idempotency_key=data.get("idempotency_key"),
            skip=data.get("skip"),
            tags=data.get("tags"),
            initiator=by,
            source="api",
            reason=None if reason is None else reason[:REASON_LIMIT],
            store=board.store,
        )
        return run, _outline(run, data.get("context"), board.store)

    try:
        run, shown = await run_in_threadpool(start)
    except NotFoundError as exc:
        return problem(404, str(exc))
    except FlowTrackerError as exc:
        return problem(400, str(exc))
    return json_response(started(request, run, shown), status_code=201 if run.created else 200)


def _outline(run: StartedRun, context: Any, store: Store) -> dict[str, Any]:
    """The run an answer shows: its status, context (redacted) and each step's status.

    A new run's is what was just stored (nothing to read back: a start answers
    in the time of its one transaction); an existing run's is read.
    """
    if run.first_statuses is None:
        stored = manage.get_workflow_outline(run.id, store=store, preview_over=SHOWN_VALUE_LIMIT)
        statuses = {name: step.status for name, step in stored.steps.items()}
        status, context, queue = stored.status, stored.context, stored.queue
    else:
        statuses = run.first_statuses
        ended = all(s == StepState.RESOLVED.value for s in statuses.values())
        status = RunState.COMPLETED.value if ended else RunState.RUNNING.value
        queue = run.queue
    return {
        "id": str(run.id),
        "name": run.name,
        "queue": queue,
        "status": status,
        "context": Redactor(config.current().redact_keys).scrub(context or {}),
        "steps": [{"name": name, "status": s} for name, s in statuses.items()],
    }


def started(request: Request, run: StartedRun, shown: dict[str, Any]) -> dict[str, Any]:
    """What a start answers: the run, whether it is new, and what became of its first steps.

    The run's context is hidden from a principal without ``payloads:read``: a
    repeated idempotency key answers with the run it started before, whose
    context someone else sent.
    """
    delivery = run.delivery
    shown = {**shown, "context": hiding.context_for(request, shown.get("context"))}
    answer = {
        "id": str(run.id),
        "namespace": run.namespace,
        "name": run.name,
        "version": run.version,
        "created": run.created,
        "delivery": delivery.status if run.created else "existing run",
        "waiting_for": list(delivery.waiting),
        "message": delivery.message if run.created else "this idempotency key started it before",
        "url": path_for(request, "workflow", run_id=run.id),
        "run": shown,
    }
    return hiding.mark(request, answer)


def definitions(request: Request) -> Response:
    """``GET /api/workflow-definitions``: every recorded workflow version, with its steps."""
    board = dashboard_of(request)
    found = list_workflow_definitions(store=board.store)
    return json_response({"items": [d.to_dict() for d in found]})
