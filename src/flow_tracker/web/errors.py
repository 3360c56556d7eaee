"""The dashboard's one error policy: what each failure answers, on every route.

Registered as Starlette exception handlers in :func:`flow_tracker.web.create_app`,
so a page, an API call and an action (cleanup, reap, requeue) answer alike:

* the tracking database unreachable (``DBAPIError``): **503**;
* a request the dashboard cannot serve (:class:`ParamError`, a
  :class:`FlowTrackerError` such as a bad cursor): **400** with the reason;
* no such page or process: **404**; a method the route does not take: **405**.

Paths under ``/api/`` get a JSON problem (``{"error": ..., "status": ...}``),
the others the HTML error page. Nothing is a stack trace.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flow_tracker.errors import SearchTooBroadError
from flow_tracker.store.engine import error_line, is_timeout
from flow_tracker.web.context import render

logger = logging.getLogger("flow_tracker")


def json_response(data: Any, status_code: int = 200) -> Response:
    """JSON that never fails to encode: odd objects as their repr, lone surrogates escaped."""
    body = json.dumps(data, ensure_ascii=False, default=repr)
    return Response(
        body.encode("utf-8", "backslashreplace"),
        status_code=status_code,
        media_type="application/json",
    )


def problem(status_code: int, message: str) -> Response:
    """A JSON error of the API."""
    return json_response({"error": message, "status": status_code}, status_code)


def _is_api(request: Request) -> bool:
    return request.url.path[len(request.scope.get("root_path", "")) :].startswith("/api/")


def error(request: Request, status_code: int, heading: str, message: str) -> Response:
    """The error answer for ``request``: a JSON problem under ``/api/``, else the error page."""
    if _is_api(request):
        return problem(status_code, message)
    response: Response = render(
        request, "error.html", status_code=status_code, heading=heading, message=message
    )
    return response


UNAVAILABLE = (
    "flow-tracker could not reach its database, or every connection was busy. "
    "It answers again as soon as the database does; the reason is in the server's log."
)


TOO_BROAD = str(SearchTooBroadError())
TOO_SLOW = "This page's query ran past the dashboard's time budget; try a shorter window."
_SEARCHES = ("/processes", "/api/processes")


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """503: the tracking database did not answer (or no pooled connection was free).

    A query cancelled for running past ``query_timeout`` is no outage: a list or a
    search answers 400 "too broad" (narrowing it helps), any other page 503.
    The driver's message names the database's host and port: it goes to the log,
    not to the page, which anyone who can open the dashboard reads.
    """
    if is_timeout(exc):
        path = request.url.path[len(request.scope.get("root_path", "")) :]
        if path in _SEARCHES:
            return error(request, 400, "Search too broad", TOO_BROAD)
        return error(request, 503, "Too slow", TOO_SLOW)
    logger.warning("flow-tracker dashboard: database unavailable: %s", error_line(exc))
    if _is_api(request):
        return problem(503, "tracking database unavailable")
    return error(request, 503, "The tracking database is not answering", UNAVAILABLE)


BUSY = "Too many searches are running right now; try again in a moment."


async def searches_busy(request: Request, exc: Exception) -> Response:
    """503 with ``Retry-After``: every search slot is taken (see ``Dashboard.search_slot``)."""
    response = error(request, 503, "Busy", BUSY)
    response.headers["retry-after"] = "2"
    return response


async def bad_request(request: Request, exc: Exception) -> Response:
    """400: a parameter or a value the dashboard cannot use, with the reason."""
    return error(request, 400, "Bad request", str(exc))


async def not_found(request: Request, exc: Exception) -> Response:
    """404: no such page, process or job."""
    detail = getattr(exc, "detail", "") or "nothing here"
    return error(request, 404, "Not found", detail)


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """405: a GET to an action, a POST to a page."""
    return error(request, 405, "Method not allowed", f"{request.method} is not accepted here")
