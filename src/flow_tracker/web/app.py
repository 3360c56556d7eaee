"""``create_app``: the dashboard's ASGI app, its routes and what every handler shares.

Every route declares the permission it needs, in the one table below
(:func:`route_table`), and :class:`GuardedRoute` checks it, with
:func:`flow_tracker.permissions.allowed`, before its handler runs: a forbidden
request answers 403 (the HTML error page, or a JSON problem under ``/api/``),
runs no handler and so changes nothing; an authenticated principal's refusal
is kept in the audit log.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from flow_tracker import config
from flow_tracker.actors import current_actor
from flow_tracker.errors import DatabaseUnavailableError, FlowTrackerError, UsageError
from flow_tracker.permissions import WRITE_PERMISSIONS, Principal, allowed
from flow_tracker.store import audit
from flow_tracker.store.engine import Store, TimeBudgetSpentError
from flow_tracker.web import (
    api,
    audit_views,
    compare_views,
    definition_views,
    errors,
    health_views,
    probes,
    start_api,
    views,
    workflow_api,
    workflow_views,
)
from flow_tracker.web.access import OPEN, principal_of
from flow_tracker.web.budget import TimeBudgetMiddleware
from flow_tracker.web.context import HERE, Dashboard, SearchesBusyError, make_templates
from flow_tracker.web.params import ParamError
from flow_tracker.web.security import (
    AuthHook,
    BasicAuth,
    SecurityMiddleware,
    basic_users,
    route_path,
)
from flow_tracker.web.statistics_keeper import StatisticsKeeper

logger = logging.getLogger("flow_tracker.web")

Permission = str | Callable[[Mapping[str, Any]], str] | None
"""What a route needs: a permission, one chosen by its path parameters, or None
(being let in is enough: the probes, which carry no data)."""

#: The permission of each workflow action of ``POST /workflows/{run_id}/{action}``.
WORKFLOW_ACTIONS: Mapping[str, str] = {
    "retry": "workflows:retry",
    "retry-failed": "workflows:retry",
    "resolve": "workflows:resolve",
    "cancel": "workflows:cancel",
}


def _action_permission(params: Mapping[str, Any]) -> str:
    # An action that does not exist changes nothing: whoever may read the run is
    # told so (404) by the handler.
    return WORKFLOW_ACTIONS.get(str(params.get("action", "")), "runs:read")


class GuardedRoute(Route):
    """A route with the permission it needs, checked before its handler runs.

    Attributes:
        permission: a permission string, a function of the path parameters that
            gives one (the workflow action route), or None (being let in is enough).
    """

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        permission: Permission,
        *,
        methods: Collection[str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(path, endpoint, methods=methods, name=name)
        self.permission = permission

    def permission_for(self, path_params: Mapping[str, Any]) -> str | None:
        """The permission a request with these path parameters needs."""
        if callable(self.permission):
            return self.permission(path_params)
        return self.permission

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 403 unless the request's principal holds the route's permission."""
        if self.methods and scope["method"] not in self.methods:
            await super().handle(scope, receive, send)  # 405, as any route answers
            return
        params = scope.get("path_params", {})
        permission = self.permission_for(params)
        if permission is not None:
            request = Request(scope, receive)
            principal = principal_of(request)
            target = _target(scope, params)
            if not allowed(principal, permission, target):
                response = await _forbidden(request, principal, permission, target)
                await response(scope, receive, send)
                return
        await super().handle(scope, receive, send)


def route(
    path: str,
    endpoint: Callable[..., Any],
    permission: Permission,
    *,
    methods: Collection[str] | None = None,
    name: str,
) -> GuardedRoute:
    """A route of the table: its path, handler, the permission it needs and its name."""
    return GuardedRoute(path, endpoint, permission, methods=methods, name=name)


TARGET_LIMIT = 200  # characters of a refused request's target the audit row keeps


def _target(scope: Scope, params: Mapping[str, Any]) -> str:
    """What a request acts on, as its audit row names it: a run, a workflow, else the path."""
    if "run_id" in params:
        return str(params["run_id"])[:TARGET_LIMIT]
    if "namespace" in params and "name" in params:
        return f"{params['namespace']}/{params['name']}"[:TARGET_LIMIT]
    return route_path(scope)[:TARGET_LIMIT] or "/"


def _record_refusal(board: Dashboard, permission: str, target: str) -> None:
    """Keep a refusal in the audit log, as the request's actor (coalesced; never raises)."""
    audit.record_refusal(board.store, action=permission, target=target, actor=current_actor())


async def _forbidden(request: Request, principal: Principal, permission: str, target: str) -> Any:
    """403: the HTML error page, or a JSON problem under ``/api/``; the refusal audited."""
    board: Dashboard = request.app.state.dashboard
    # Someone who authenticated, refused: worth a row. Nobody authenticated on an
    # open dashboard (its only refusals are read-only ones): nothing to attribute.
    if principal.via != OPEN.via:
        await run_in_threadpool(_record_refusal, board, permission, target)
    if board.read_only and permission in WRITE_PERMISSIONS:
        return errors.error(request, 403, "Not done", "this dashboard is read-only")
    return errors.error(
        request,
        403,
        "Not allowed",
        f"this needs the permission {permission}, which {principal.name[:100]} "
        f"({principal.role_label}) does not have",
    )


def create_app(
    database_url: str | None = None,
    auth: AuthHook | None = None,
    read_only: bool = False,
    *,
    basic_auth: BasicAuth | None = None,
    title: str = "flow-tracker",
    refresh_seconds: int = 5,
    keep_statistics: bool = True,
    allowed_hosts: Sequence[str] | None = None,
    query_timeout: float = 5.0,
    public_probes: bool = True,
    graphql: bool = False,
) -> Starlette:
    """The dashboard as an ASGI app, to mount under any prefix or serve on its own.

    Args:
        database_url: the tracking database; default: the configured one
            (``flow_tracker.configure`` / ``FLOW_TRACKER_DATABASE_URL``).
        auth: who may come in, called with each request (sync or async). It
            returns a :class:`~flow_tracker.permissions.Principal` (who it is and
            what it may do, used as is), ``True`` (an admin, as before), ``None``
            or ``False`` (403), or a Starlette ``Response``, sent as it is (a
            redirect to the host app's login page). A hook that raises answers
            403 and is logged once.
        read_only: take every permission that changes data from whoever asks:
            the actions (cleanup, reap, requeue, workflow starts, retries,
            resolves, cancels) are hidden and refused (403), whatever the role.
        basic_auth: require HTTP basic auth: ``(user, password)`` for one admin,
            or a list of ``(user, password)`` / ``(user, password, role)`` tuples
            (a role of :data:`~flow_tracker.permissions.ROLES`; admin when left
            out). Compared in constant time over every user. A bad shape, an
            empty user or password, a ``:`` in a user name, a user given twice or
            an unknown role is a :class:`~flow_tracker.errors.UsageError` here.
            With ``auth`` too, both must pass; a hook's ``Principal`` then wins,
            its ``True`` keeps the basic user's role.
        title: shown in the header and the browser tab.
        refresh_seconds: how often live pages refresh themselves (they can be paused).
        keep_statistics: refresh and sum the overview's rollups in a background
            thread (started by the first request), so no page view waits for them.
        allowed_hosts: the host names the dashboard answers to (``Host`` header;
            ``"*.example.com"`` and ``"*"`` are patterns); any other gets 400, which
            stops DNS-rebinding pages. None (the default when mounted) leaves the
            check to the host app; ``flow-tracker serve`` always sets it.
        query_timeout: seconds a page, an API call or an action may spend on the
            database, all its queries and its wait for a pooled connection
            together; past it, a search answers 400 (narrow it), anything else
            503 with ``Retry-After``. Deleting (cleanup) is the exception: only
            each of its statements is bounded, its length is what was asked for.
        public_probes: answer ``/health/live`` and ``/health/ready`` without
            ``auth``, ``basic_auth`` or the ``allowed_hosts`` check (they carry no
            data; orchestrators' probes send no credentials). False: they are
            checked like every other route.
        graphql: serve ``/graphql`` beside the JSON API (needs the ``graphql``
            extra): the same data, permissions, payload hiding and audit log.

    Each route needs one permission (``runs:read`` for pages and API reads;
    ``history:delete``, ``jobs:reap``, ``jobs:requeue``, ``workflows:start``,
    ``workflows:retry``, ``workflows:resolve``, ``workflows:cancel`` for the
    actions; ``audit:read`` for the audit log); a principal without it gets 403
    and an audit row, and pages do not show what it may not do. API tokens
    (``Authorization: Bearer ft_…``, made with ``flow-tracker tokens create``)
    are accepted on ``/api/*`` and ``/metrics`` only; a bad, expired or revoked
    one answers 401. Without ``auth`` and ``basic_auth`` everyone may do
    everything (a host app guards the mount), as before.

    Returns:
        A Starlette application.

    Raises:
        UsageError: a bad ``basic_auth``, ``auth`` or ``query_timeout``.
    """
    settings = config.current()
    if not query_timeout > 0:
        raise UsageError(
            f"query_timeout must be a positive number of seconds, not {query_timeout!r}"
        )
    if basic_auth is not None:
        basic_users(basic_auth)  # a bad shape or role is a UsageError here, not at a request
    if auth is not None and not callable(auth):
        raise UsageError(f"auth is a function of the request, not {type(auth).__name__}")
    url = database_url or settings.database_url
    store = Store(
        url, auto_migrate=settings.auto_migrate, reader=True, statement_timeout=query_timeout
    )
    routes = route_table(graphql=graphql)
    # The keeper rolls up what the pages read, off the request path: its first
    # roll-up of a large database may run longer than a page's query budget.
    keeper = StatisticsKeeper(Store(url, reader=True)) if keep_statistics else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if keeper is not None:  # mounted apps get no lifespan: the thread is a daemon
            keeper.stop()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                SecurityMiddleware,
                auth=auth,
                basic_auth=basic_auth,
                allowed_hosts=allowed_hosts,
                public_probes=public_probes,
                read_only=read_only,
                store=store,
            ),
            Middleware(TimeBudgetMiddleware, seconds=query_timeout),
        ],
        # One error policy for pages, the API and the actions alike (see web/errors.py).
        exception_handlers={
            404: errors.not_found,
            405: errors.method_not_allowed,
            DBAPIError: errors.database_unavailable,
            PoolTimeout: errors.database_unavailable,
            TimeBudgetSpentError: errors.database_unavailable,
            SearchesBusyError: errors.searches_busy,
            DatabaseUnavailableError: errors.database_unavailable,
            UnicodeEncodeError: errors.bad_value,
            ParamError: errors.bad_request,
            FlowTrackerError: errors.bad_request,
        },
    )
    # Starlette answers "/processes/" with a redirect to an absolute URL built from
    # the request's Host header: a reflected Host. Every link here is exact; a
    # trailing slash is simply not found.
    app.router.redirect_slashes = False
    app.state.dashboard = Dashboard(
        store=store,
        templates=make_templates(),
        read_only=read_only,
        title=title,
        refresh_seconds=max(1, int(refresh_seconds)),
        stale_after=settings.stale_after,
        lost_after=settings.lost_after,
        keeper=keeper,
    )
    return app


READ = "runs:read"


def route_table(*, graphql: bool = False) -> list[BaseRoute]:
    """Every route of the dashboard, each with the permission it needs.

    Pages and ``/api/*`` reads need ``runs:read`` (payload values need
    ``payloads:read`` besides, checked where they are shown); each action its
    own permission; the probes nothing beyond being let in (and, with
    ``public_probes``, not even that); static files only being let in.
    """
    routes: list[BaseRoute] = [
        route("/", views.overview, READ, name="overview"),
        route("/processes", views.process_list, READ, name="processes"),
        route("/processes/{process_id}", views.process_detail, READ, name="process"),
        route(
            "/processes/{process_id}/compare",
            compare_views.compare_page,
            READ,
            name="process_compare",
        ),
        route("/workflows", workflow_views.workflow_list, READ, name="workflows"),
        route(
            "/workflows/analytics",
            workflow_views.workflow_analytics,
            READ,
            name="workflow_analytics",
        ),
        route(
            "/workflows/definitions",
            definition_views.definitions_page,
            READ,
            name="workflow_definitions",
        ),
        route(
            "/workflows/definitions/start",
            definition_views.start_form,
            "workflows:start",
            methods=["GET"],
            name="workflow_start_form",
        ),
        route(
            "/workflows/definitions/start",
            definition_views.start_submit,
            "workflows:start",
            methods=["POST"],
            name="workflow_start",
        ),
        route("/workflows/{run_id}", workflow_views.workflow_detail, READ, name="workflow"),
        route(
            "/workflows/{run_id}/run-again",
            definition_views.run_again_form,
            "workflows:start",
            methods=["GET"],
            name="workflow_run_again",
        ),
        route(
            "/workflows/{run_id}/{action}",
            workflow_views.workflow_action,
            _action_permission,
            methods=["POST"],
            name="workflow_action",
        ),
        route("/cleanup", views.cleanup_form, "history:delete", methods=["GET"], name="cleanup"),
        route(
            "/cleanup", views.cleanup_run, "history:delete", methods=["POST"], name="cleanup_run"
        ),
        route("/health", health_views.health_page, READ, name="health"),
        route(
            "/health/reap", health_views.reap_now, "jobs:reap", methods=["POST"], name="health_reap"
        ),
        route(
            "/health/requeue",
            health_views.requeue_now,
            "jobs:requeue",
            methods=["POST"],
            name="health_requeue",
        ),
        route("/health/live", probes.live, None, name="health_live"),
        route("/health/ready", probes.ready, None, name="health_ready"),
        route("/api/health", health_views.health_json, READ, name="api_health"),
        route("/metrics", health_views.metrics, READ, name="metrics"),
        route("/api/processes", api.list_processes, READ, name="api_processes"),
        route("/api/processes/{process_id}", api.get_process, READ, name="api_process"),
        route(
            "/api/processes/{process_id}/compare",
            compare_views.compare_json,
            READ,
            name="api_process_compare",
        ),
        route("/api/status/{ident:path}", api.get_status, READ, name="api_status"),
        route("/api/stats", api.stats, READ, name="api_stats"),
        route("/api/workflows", api.list_workflows, READ, name="api_workflows"),
        route("/api/workflows/{run_id}", api.get_workflow, READ, name="api_workflow"),
        route(
            "/api/workflows/{run_id}/diagram",
            api.workflow_diagram,
            READ,
            name="api_workflow_diagram",
        ),
        route(
            "/api/workflows/{run_id}/retry-failed",
            workflow_api.retry_failed,
            "workflows:retry",
            methods=["POST"],
            name="api_workflow_retry_failed",
        ),
        route(
            "/api/workflows/{namespace}/{name}/runs",
            start_api.start_run,
            "workflows:start",
            methods=["POST"],
            name="api_workflow_start",
        ),
        route(
            "/api/workflow-definitions",
            start_api.definitions,
            READ,
            name="api_workflow_definitions",
        ),
        route("/api/openapi.json", api.openapi, READ, name="api_openapi"),
    ]
    routes += [
        route("/audit", audit_views.audit_page, "audit:read", name="audit"),
        route("/api/audit", audit_views.audit_json, "audit:read", name="api_audit"),
    ]
    if graphql:
        # ImportError without graphql-core, with the extra to install.
        from flow_tracker.web.graphql import graphql_endpoint

        # Reading is the route's permission; each mutation checks its own
        # (workflows:*) in its resolver, and each field hides payloads.
        routes.append(
            route("/graphql", graphql_endpoint, READ, methods=["GET", "POST"], name="graphql")
        )
    # Static files: being let in is enough (the stylesheet of the 403 page too).
    routes.append(Mount("/static", StaticFiles(directory=HERE / "static"), name="static"))
    return routes
