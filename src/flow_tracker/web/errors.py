"""The dashboard's one error policy: what each failure answers, on every route.

Registered as Starlette exception handlers in :func:`flow_tracker.web.create_app`,
so a page, an API call and an action (cleanup, reap, requeue) answer alike:

* the tracking database unreachable (``DBAPIError``), busy past the request's
  time budget, or slower than it: **503** with ``Retry-After``;
* a request the dashboard cannot serve (:class:`ParamError`, a
  :class:`FlowTrackerError` such as a bad cursor): **400** with the reason;
* a value of the request the database refuses to store or compare (a NUL on
  PostgreSQL, a lone surrogate, a number out of range: a ``DataError``, or the
  driver's ``UnicodeEncodeError``): **400**, not an outage;
* no such page or process: **404**; a method the route does not take: **405**.

Paths under ``/api/`` get a JSON problem (``{"error": ..., "status": ...}``),
the others the HTML error page. Nothing is a stack trace.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from sqlalchemy.exc import DataError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import Request
from starlette.responses import Response

from flow_tracker.errors import SearchTooBroadError
from flow_tracker.store.engine import TimeBudgetSpentError, error_line, is_timeout
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
    path = request.url.path[len(request.scope.get("root_path", "")) :]
    return path.startswith("/api/") or path == "/graphql"  # GraphQL clients read JSON too


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
TOO_SLOW = (
    "This page's queries ran past the dashboard's time budget; try a shorter window, "
    "or again in a few seconds. (The first time the dashboard opens on a database "
    "that already holds months of runs, it rolls up their statistics in the "
    "background, newest day first: until then, long windows read the runs themselves.)"
)
_SEARCHES = ("/processes", "/api/processes")


BAD_VALUE = (
    "The database refused a value of this request: a NUL character, a lone surrogate "
    "or a number out of range. Remove it and try again."
)


def is_bad_value(exc: BaseException) -> bool:
    """True when the database refused a value, not the request's connection.

    SQLSTATE class 22 (data exception) on PostgreSQL, ``sqlite3.DataError``
    ("string or blob too big") on SQLite: the same request fails the same way
    each time, so it is the sender's to fix, and no sign of an outage.
    """
    if isinstance(exc, DataError):
        return True
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    return str(sqlstate).startswith("22")


async def bad_value(request: Request, exc: Exception) -> Response:
    """400: a value the database refused (see :func:`is_bad_value`), or could not be sent.

    Both drivers raise ``UnicodeEncodeError`` themselves (SQLAlchemy does not wrap
    it) for a string with a lone surrogate, which UTF-8 cannot encode.
    """
    logger.info("flow-tracker dashboard: a value refused by the database: %s", error_line(exc))
    return error(request, 400, "Bad request", BAD_VALUE)


RETRY_AFTER_S = 5  # a lock or a crowd behind the database: come back in a few seconds
BUSY_DATABASE = (
    "The tracking database is busy (every connection in use, or a table locked by "
    "maintenance) and this page could not be answered within the dashboard's time budget. "
    "Try again in a few seconds."
)


def is_lock_wait(exc: BaseException) -> bool:
    """True when a statement gave up waiting for another session's lock.

    PostgreSQL's ``lock_timeout`` (SQLSTATE 55P03), SQLite's busy timeout
    ("database is locked"): the database is busy, not away.
    """
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) == "55P03":
        return True
    return isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig)


# The process list's parameters that select: with none, the list is the newest
# page of an index, which no narrowing makes cheaper.
_FILTERS = ("q", "name", "meta", "status", "category", "since", "until", "range")


def _narrowable(request: Request) -> bool:
    """Whether ``request`` is a search or a filtered list, which narrowing makes faster."""
    path = request.url.path[len(request.scope.get("root_path", "")) :]
    return path in _SEARCHES and any(request.query_params.get(k) for k in _FILTERS)


def _retry_later(response: Response) -> Response:
    response.headers["retry-after"] = str(RETRY_AFTER_S)
    return response


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """503 with ``Retry-After``: the database did not answer within the request's budget.

    Told apart, each with its own page and log line:

    * a value the database refused (:func:`is_bad_value`): 400, the sender's to fix;
    * the request's time budget spent (a query cancelled, or none could start): a
      search or a filtered list of processes answers 400 "too broad" (narrowing
      it helps), anything else 503 "too slow";
    * no pooled connection free within the budget, or a lock waited on for too
      long (:func:`is_lock_wait`): 503 "busy", no outage;
    * anything else: the database is away, 503, logged as a warning. The
      driver's message names the database's host and port: it goes to the log,
      not to the page, which anyone who can open the dashboard reads.
    """
    if is_bad_value(exc):
        return await bad_value(request, exc)
    if is_timeout(exc) or isinstance(exc, TimeBudgetSpentError):
        if _narrowable(request):
            return error(request, 400, "Search too broad", TOO_BROAD)
        return _retry_later(error(request, 503, "Too slow", TOO_SLOW))
    if isinstance(exc, PoolTimeout) or is_lock_wait(exc):
        logger.info("flow-tracker dashboard: database busy: %s", error_line(exc))
        return _retry_later(error(request, 503, "Busy", BUSY_DATABASE))
    logger.warning("flow-tracker dashboard: database unavailable: %s", error_line(exc))
    if _is_api(request):
        return _retry_later(problem(503, "tracking database unavailable"))
    return _retry_later(error(request, 503, "The tracking database is not answering", UNAVAILABLE))


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
