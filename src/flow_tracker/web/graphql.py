"""``/graphql``: the GraphQL API beside REST, with graphql-core alone.

Needs the ``graphql`` extra: ``pip install 'flow-tracker[graphql]'``; mounted by
``create_app(graphql=True)``. :func:`graphql_endpoint` is the route's endpoint:

* ``POST`` with ``Content-Type: application/json`` and one object
  ``{"query", "variables", "operationName"}`` runs a query or a mutation. The
  request passes the checks of the REST actions (:mod:`flow_tracker.web.workflow_api`):
  a browser's cross-site request is refused (403) and only JSON is read (415
  otherwise), which a cross-site form cannot send; a body over the limit is
  refused before it is read (413); a batch (a JSON array) is refused (400).
* ``GET ?query=...`` runs a query, never a mutation (405): a link or an image
  tag must not change anything. ``GET`` alone answers a short description and
  the schema as text.

Every field checks its permission and hides payloads like REST
(:mod:`~flow_tracker.web.graphql_resolvers`); a document over a size, nesting,
depth or breadth limit is refused before it runs
(:mod:`~flow_tracker.web.graphql_limits`). A document that cannot run is a
400 with ``errors``; one that ran is a 200 with ``data`` and, for each field
that failed, an error naming why (a permission, an unknown id) and its path.
No traceback is ever sent: an error we did not expect reads ``internal error``
and is logged. A database outage is the dashboard's 503 with ``Retry-After``
— unless a mutation of the same request was done before it: then that is
answered, and the fields left unanswered say why.

Introspection stays on, read-only dashboards included: the schema is the same
in every deployment, printed by ``GET /graphql`` and in the package's source, so
hiding it would hide nothing while breaking every GraphQL client's tooling; it
reveals no data, and introspection queries pass the same limits as any other.
A read-only dashboard refuses mutations because its principals hold no write
permission (each refusal audited), not by hiding them.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("graphql") is None:  # pragma: no cover - depends on the install
    raise ImportError("the GraphQL API needs graphql-core: pip install 'flow-tracker[graphql]'")

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from graphql import (
    ExecutionResult,
    GraphQLError,
    OperationType,
    execute,
    get_operation_ast,
    print_schema,
    validate,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from flow_tracker.errors import DatabaseUnavailableError, FlowTrackerError
from flow_tracker.store.engine import TimeBudgetSpentError
from flow_tracker.web.access import principal_of
from flow_tracker.web.context import dashboard_of, read_capped
from flow_tracker.web.errors import BAD_VALUE, is_bad_value, json_response
from flow_tracker.web.graphql_limits import LimitsRule, TooMuchAskedError, parse_checked
from flow_tracker.web.graphql_resolvers import Asked
from flow_tracker.web.graphql_schema import field_value, schema
from flow_tracker.web.params import ParamError
from flow_tracker.web.start_api import body_limit
from flow_tracker.web.workflow_api import _cross_site

__all__ = ["graphql_endpoint"]

logger = logging.getLogger("flow_tracker.web")

FIELDS = frozenset({"query", "variables", "operationName", "extensions"})
# The database is away or too slow: the app's handlers answer 503 (web/errors.py).
_OUTAGES = (DBAPIError, PoolTimeout, TimeBudgetSpentError, DatabaseUnavailableError)
# Errors whose message is written for the client: ours, and graphql-core's own.
_TOLD = (GraphQLError, FlowTrackerError, ParamError)
INTERNAL = "internal error"
UNAVAILABLE = "tracking database unavailable; this field was not answered, try it again"


@dataclass(frozen=True)
class Operation:
    """What a request asks to run."""

    query: str
    variables: dict[str, Any] | None
    operation_name: str | None


class _Refused(Exception):
    """A request that cannot run: its status and the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _errors(status: int, *messages: str) -> Response:
    return json_response({"errors": [{"message": m} for m in messages]}, status)


async def graphql_endpoint(request: Request) -> Response:
    """``GET``/``POST /graphql``: run one GraphQL operation (see the module's docstring)."""
    try:
        if request.method == "POST":
            operation = await _posted(request)
        elif request.method in ("GET", "HEAD"):
            if "query" not in request.query_params:
                return _about()
            operation = _from_query_string(request)
        else:
            raise _Refused(405, f"{request.method} is not accepted here; POST a JSON object")
    except _Refused as refused:
        return _errors(refused.status, str(refused))
    return await run_in_threadpool(_answer, request, operation, request.method != "POST")


def _about() -> Response:
    text = (
        "flow-tracker GraphQL API.\n\n"
        'POST a JSON object {"query": "...", "variables": {...}, "operationName": "..."}\n'
        "with Content-Type: application/json; a query (never a mutation) may also be sent\n"
        "as GET ?query=... . Reading needs runs:read, payload values payloads:read, and each\n"
        "action its workflows:* permission.\n\nThe schema:\n\n"
    )
    return PlainTextResponse(text + print_schema(schema()) + "\n")


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which are no JSON: refused as in the page's forms.
    raise ValueError(f"{name} is not a JSON value")


def _json(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise _Refused(400, f"{what} is not JSON") from None


async def _posted(request: Request) -> Operation:
    if _cross_site(request):
        raise _Refused(403, "cross-origin request refused")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise _Refused(415, "send a JSON object with Content-Type: application/json")
    limit = body_limit()
    body = await read_capped(request, limit)
    if body is None:
        raise _Refused(413, f"the body is over {limit:,} bytes")
    data = _json(body, "the body")
    if isinstance(data, list):
        raise _Refused(400, "one operation per request: batches (JSON arrays) are not accepted")
    if not isinstance(data, dict):
        raise _Refused(400, 'the body is a JSON object, such as {"query": "{ processes { ... } }"}')
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise _Refused(
            400, f"unknown field {unknown[0][:80]!r}; send query, variables, operationName"
        )
    return _operation(data.get("query"), data.get("variables"), data.get("operationName"))


def _from_query_string(request: Request) -> Operation:
    params = request.query_params
    raw = params.get("variables")
    variables = _json(raw, "variables") if raw else None
    return _operation(params.get("query"), variables, params.get("operationName") or None)


def _operation(query: Any, variables: Any, name: Any) -> Operation:
    if not isinstance(query, str) or not query.strip():
        raise _Refused(400, "query is the GraphQL document, a non-empty string")
    if variables is not None and not isinstance(variables, dict):
        raise _Refused(400, "variables is a JSON object")
    if name is not None and not isinstance(name, str):
        raise _Refused(400, "operationName is a string")
    return Operation(query, variables, name)


def _answer(request: Request, asked: Operation, over_get: bool) -> Response:
    """Parse, check and run ``asked`` (in a worker thread: resolvers read the database)."""
    try:
        document = parse_checked(asked.query)
    except TooMuchAskedError as exc:
        return _errors(400, str(exc))
    except GraphQLError as exc:
        return _errors(400, exc.message)
    # The limits first, alone: graphql-core's own rules cost more on a large document.
    problems = validate(schema(), document, [LimitsRule]) or validate(schema(), document)
    if problems:
        return _errors(400, *(p.message for p in problems))
    operation = get_operation_ast(document, asked.operation_name)
    if operation is None:
        return _errors(400, "name the operation to run (operationName): none, or none by that name")
    if over_get and operation.operation != OperationType.QUERY:
        response = _errors(405, "a mutation is sent by POST, never by GET")
        response.headers["allow"] = "POST"
        return response
    result = execute(
        schema(),
        document,
        context_value=Asked(request, dashboard_of(request), principal_of(request)),
        variable_values=asked.variables,
        operation_name=asked.operation_name,
        field_resolver=field_value,
    )
    if not isinstance(result, ExecutionResult):  # pragma: no cover - every resolver is sync
        raise TypeError("a resolver returned an awaitable")
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        # A mutation done before the database went away: the answer says so, rather
        # than a 503 that would read as "nothing happened".
        answered = operation.operation == OperationType.MUTATION and any(
            value is not None for value in (result.data or {}).values()
        )
        body["errors"] = [error.formatted for error in _told(result.errors, answered)]
    # No data at all: the variables did not fit the operation, nothing ran.
    return json_response(body, 400 if result.data is None else 200)


def _told(errors: Iterable[GraphQLError], answered: bool) -> list[GraphQLError]:
    """The errors as the client may read them; an outage raised for the app's 503.

    An outage after a mutation was done (``answered``) is told on its own field
    instead. A value the database refused (a NUL on PostgreSQL) is the
    sender's to fix, told like REST's 400; an exception of no known kind is
    logged here and reads ``internal error`` there: its message may hold anything.
    """
    told: list[GraphQLError] = []
    for error in errors:
        original = error.original_error
        if isinstance(original, _OUTAGES) and not is_bad_value(original):
            if not answered:
                raise original
            logger.warning("flow-tracker GraphQL: %s: database unavailable", error.path)
            message = UNAVAILABLE
        elif original is None or isinstance(original, _TOLD):
            told.append(error)
            continue
        elif isinstance(original, (UnicodeEncodeError, DBAPIError)):
            message = BAD_VALUE
        else:
            logger.error("flow-tracker GraphQL: %s failed", error.path, exc_info=original)
            message = INTERNAL
        told.append(GraphQLError(message, error.nodes, path=error.path))
    return told
