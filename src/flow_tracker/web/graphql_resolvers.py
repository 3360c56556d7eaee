"""What each GraphQL field answers: the REST API's reads and the library's actions.

Every root field checks its permission first (``runs:read`` to read, the
action's ``workflows:*`` to act) through :func:`flow_tracker.permissions.allowed`,
as every REST route does; a refusal is an error naming the permission, written
to the audit log, with nothing read or changed. The reads build the REST
API's dicts from the same functions (so both answer the same for the same
data), then hide payload values from a principal without ``payloads:read``
through :mod:`flow_tracker.web.hiding`, as REST does.
The actions call the library (``start_workflow``, ``retry_step``, ...), which
writes their audit rows, and answer what it says happened: ``sent``, or
``waiting for a worker of <queue>``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from graphql import GraphQLError, GraphQLResolveInfo
from starlette.datastructures import QueryParams
from starlette.requests import Request

from flow_tracker.actors import current_actor
from flow_tracker.delivery import Delivery
from flow_tracker.errors import NotFoundError
from flow_tracker.ids import parse_id
from flow_tracker.permissions import WRITE_PERMISSIONS, Principal, allowed
from flow_tracker.store import audit, queries
from flow_tracker.web import api, hiding, start_api
from flow_tracker.web.access import OPEN
from flow_tracker.web.context import SHOWN_VALUE_LIMIT, Dashboard, now
from flow_tracker.web.graphql_limits import checked_limit
from flow_tracker.web.params import ProcessFilters, clean, run_cursor
from flow_tracker.web.tag_filters import MAX_TAG_FILTERS
from flow_tracker.web.workflow_views import REASON_LIMIT, who_acts
from flow_tracker.workflows import manage, starting
from flow_tracker.workflows.definitions import list_workflow_definitions

TARGET_LIMIT = 200  # what an audit row keeps of a target named in the request
SOURCE = "graphql"
"""What a run started here keeps as its source system (REST's is ``api``)."""


@dataclass(frozen=True)
class Asked:
    """What every resolver of one request shares (GraphQL's ``info.context``)."""

    request: Request
    board: Dashboard
    principal: Principal


def _asked(info: GraphQLResolveInfo[Asked]) -> Asked:
    return info.context


def _need(info: GraphQLResolveInfo[Asked], permission: str, target: str | None = None) -> Asked:
    """The request's context once its principal may do ``permission``; else a refusal.

    The refusal is an error for the client and a ``refused`` row of the audit log.
    On a read-only dashboard the principal holds no permission that changes data.
    """
    asked = _asked(info)
    # A read-only dashboard's principals hold no write permission; its own flag is
    # checked too, as every REST action checks it, so no principal can slip past it.
    read_only = permission in WRITE_PERMISSIONS and asked.board.read_only
    if not read_only and allowed(asked.principal, permission, target):
        return asked
    # As the route table does: a principal who authenticated is worth a row; on an
    # open dashboard (its only refusals are read-only ones) there is no one to name.
    if asked.principal.via != OPEN.via:
        audit.record_refusal(
            asked.board.store,
            action=permission,
            target=None if target is None else target[:TARGET_LIMIT],
            actor=current_actor(),
        )
    why = f"forbidden: needs {permission}"
    raise GraphQLError(why + " (this dashboard is read-only)" if read_only else why)


# -- payload hiding: web/hiding.py decides, as for every REST answer ---------


def _hidden(asked: Asked, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its ``hidden`` field: whether payload values read ``[hidden]``."""
    data["hidden"] = hiding.hides(asked.request)
    return data


def _shown_run(asked: Asked, data: dict[str, Any]) -> dict[str, Any]:
    shown = _hidden(asked, hiding.workflow_dict(asked.request, data))
    shown["tags"] = _tag_list(shown.get("tags"))
    return shown


# -- reads (runs:read) -----------------------------------------------------------------


def processes(
    _root: Any,
    info: GraphQLResolveInfo[Asked],
    status: Sequence[str] | None = None,
    category: Sequence[str] | None = None,
    name: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """``processes``: what ``GET /api/processes`` answers for the same filters."""
    asked = _need(info, "runs:read")
    checked_limit(limit)
    # Read as the REST API reads its query string: the same cleaning, checks and messages.
    params: list[tuple[str, str]] = [("status", s) for s in status or ()]
    params += [("category", c) for c in category or ()]
    params += [("name", name)] if name is not None else []
    params += [("cursor", cursor)] if cursor is not None else []
    params.append(("limit", str(limit)))
    filters = ProcessFilters.from_query(QueryParams(params), now())
    page = queries.list_processes(asked.board.store, **filters.list_kwargs())
    shown = hiding.processes(asked.request, page.items)
    return {
        "items": [_hidden(asked, p.to_dict(include_tree=False)) for p in shown],
        "next_cursor": page.next_cursor,
    }


def process(_root: Any, info: GraphQLResolveInfo[Asked], id: str) -> dict[str, Any]:
    """``process(id)``: what ``GET /api/processes/{id}`` answers, its flows depth first."""
    asked = _need(info, "runs:read")
    store = asked.board.store
    pid = parse_id(id)
    record = None
    if pid is not None:
        record = queries.get_process(
            store, pid, max_flows=api.MAX_API_FLOWS, max_logs=api.MAX_API_LOGS
        )
    if pid is None or record is None:
        raise GraphQLError("no process with this id")
    n_flows, n_logs = queries.count_children(store, pid, record.created_at)
    data = _hidden(asked, hiding.process_for(asked.request, record).to_dict())
    data["flows"] = _depth_first(data["flows"])
    data["counts"] = {"flows": n_flows, "logs": n_logs}
    data["truncated"] = n_flows > api.MAX_API_FLOWS or n_logs > api.MAX_API_LOGS
    return data


def _depth_first(tree: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flow tree as one list, depth first, each flow with its ``depth``.

    A loop, not a recursion: flows may nest deeper than Python recurses.
    """
    flat: list[dict[str, Any]] = []
    pending = [(flow, 0) for flow in reversed(tree)]
    while pending:
        flow, depth = pending.pop()
        children = flow.pop("children", [])
        flat.append({**flow, "depth": depth})
        pending.extend((child, depth + 1) for child in reversed(children))
    return flat


def workflow_runs(
    _root: Any,
    info: GraphQLResolveInfo[Asked],
    name: str | None = None,
    status: str | None = None,
    tags: Sequence[dict[str, str]] | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """``workflowRuns``: what ``GET /api/workflows`` answers for the same filters."""
    asked = _need(info, "runs:read")
    checked_limit(limit)
    if tags is not None and len(tags) > MAX_TAG_FILTERS:
        raise GraphQLError(f"at most {MAX_TAG_FILTERS} tag filters")
    items = manage.list_workflows(
        name=clean(name)[:255] if name else None,
        status=status or None,
        limit=limit,
        before=run_cursor(cursor),
        tags=_tag_dict(tags),
        store=asked.board.store,
    )
    last = items[-1] if len(items) == limit else None
    for item in items:
        item["tags"] = _tag_list(item.get("tags"))
    return {
        "items": items,
        "next_cursor": f"{last['created_at']}|{last['id']}" if last else None,
    }


def workflow_run(_root: Any, info: GraphQLResolveInfo[Asked], id: str) -> dict[str, Any]:
    """``workflowRun(id)``: what ``GET /api/workflows/{id}`` answers."""
    return _run(_need(info, "runs:read"), id)


def _run(asked: Asked, ident: str) -> dict[str, Any]:
    run_id = parse_id(ident)
    try:
        if run_id is None:
            raise NotFoundError(ident)
        run = manage.get_workflow(run_id, store=asked.board.store, preview_over=SHOWN_VALUE_LIMIT)
    except NotFoundError:
        raise GraphQLError("no workflow run with this id") from None
    return _shown_run(asked, manage.shown(run, store=asked.board.store))


def workflow_definitions(_root: Any, info: GraphQLResolveInfo[Asked]) -> list[dict[str, Any]]:
    """``workflowDefinitions``: what ``GET /api/workflow-definitions`` answers."""
    asked = _need(info, "runs:read")
    return [d.to_dict() for d in list_workflow_definitions(store=asked.board.store)]


def run_after_action(source: dict[str, Any], info: GraphQLResolveInfo[Asked]) -> dict[str, Any]:
    """An action's ``run``: the run as it is once the action is done (needs ``runs:read``)."""
    asked = _need(info, "runs:read")
    return _run(asked, source.get("run_id") or source["id"])


# -- actions (workflows:*) ---------------------------------------------------------------


def start_workflow(
    _root: Any,
    info: GraphQLResolveInfo[Asked],
    name: str,
    namespace: str = "default",
    version: str | None = None,
    context: Any = None,
    idempotencyKey: str | None = None,  # the argument's GraphQL name
    skip: Sequence[str] | None = None,
    tags: Sequence[dict[str, str]] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """``startWorkflow``: what ``POST /api/workflows/{namespace}/{name}/runs`` does."""
    ref = f"{namespace}/{name}"
    asked = _need(info, "workflows:start", ref)
    if context is not None and not isinstance(context, dict):
        raise GraphQLError('context is a JSON object, such as {"cart_id": 7}')
    run = starting.start_workflow(
        ref,
        context,
        version=version,
        idempotency_key=idempotencyKey,
        skip=skip,
        tags=_tag_dict(tags),
        initiator=who_acts(asked.request),
        source=SOURCE,
        reason=None if reason is None else reason[: starting.REASON_LIMIT],
        store=asked.board.store,
    )
    answer = start_api.started(asked.request, run, {})
    del answer["run"]  # read when asked for, by run_after_action
    return _hidden(asked, answer)


def _run_id(ident: str) -> uuid.UUID:
    run_id = parse_id(ident)
    if run_id is None:
        raise GraphQLError("no workflow run with this id")
    return run_id


def _reason(reason: str | None) -> str | None:
    return None if reason is None else reason[:REASON_LIMIT]


def _delivered(delivery: Delivery) -> dict[str, Any]:
    return {
        "delivery": delivery.status,
        "waiting_for": list(delivery.waiting),
        "message": delivery.message,
    }


def retry_step(
    _root: Any, info: GraphQLResolveInfo[Asked], runId: str, step: str, reason: str | None = None
) -> dict[str, Any]:
    """``retryStep``: run a failed step again (the run page's Retry)."""
    asked = _need(info, "workflows:retry", runId)
    run_id = _run_id(runId)
    delivery = manage.retry_step(
        run_id, step, by=who_acts(asked.request), reason=_reason(reason), store=asked.board.store
    )
    return {"run_id": str(run_id), "step": step, **_delivered(delivery)}


def resolve_step(
    _root: Any,
    info: GraphQLResolveInfo[Asked],
    runId: str,
    step: str,
    result: Any = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """``resolveStep``: mark a failed step done with ``result`` (the run page's Resolve)."""
    asked = _need(info, "workflows:resolve", runId)
    run_id = _run_id(runId)
    delivery = manage.resolve_step(
        run_id,
        step,
        result=result,
        by=who_acts(asked.request),
        reason=_reason(reason),
        store=asked.board.store,
    )
    return {"run_id": str(run_id), "step": step, **_delivered(delivery)}


def cancel_workflow(
    _root: Any, info: GraphQLResolveInfo[Asked], runId: str, reason: str | None = None
) -> dict[str, Any]:
    """``cancelWorkflow``: no step of the run that has not started starts."""
    asked = _need(info, "workflows:cancel", runId)
    run_id = _run_id(runId)
    count = manage.cancel_workflow(
        run_id, by=who_acts(asked.request), reason=_reason(reason), store=asked.board.store
    )
    return {
        "run_id": str(run_id),
        "cancelled_steps": count,
        "message": f"cancelled; {count} step{'' if count == 1 else 's'} will not start",
    }


def retry_failed_steps(
    _root: Any, info: GraphQLResolveInfo[Asked], runId: str, reason: str | None = None
) -> dict[str, Any]:
    """``retryFailedSteps``: what ``POST /api/workflows/{id}/retry-failed`` does."""
    asked = _need(info, "workflows:retry", runId)
    run_id = _run_id(runId)
    retried = manage.retry_failed_steps(
        run_id, by=who_acts(asked.request), reason=_reason(reason), store=asked.board.store
    )
    return {"run_id": str(run_id), "retried": list(retried.steps), **_delivered(retried.delivery)}


# -- tags: a list of {key, value} here, a dict in the library ------------------------------


def _tag_dict(tags: Sequence[dict[str, str]] | None) -> dict[str, str] | None:
    """``[{key, value}]`` as the library's dict; a key given twice is refused, not dropped."""
    if tags is None:
        return None
    found: dict[str, str] = {}
    for tag in tags:
        key = tag["key"]
        if key in found:
            raise GraphQLError(f"tag {key[:80]!r} is given twice")
        found[key] = tag["value"]
    return found or None


def _tag_list(tags: Any) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in (tags or {}).items()]
