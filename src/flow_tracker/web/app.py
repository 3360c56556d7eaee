"""``create_app``: the dashboard's ASGI app, its routes and what every handler shares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from flow_tracker import config
from flow_tracker.errors import DatabaseUnavailableError, FlowTrackerError, UsageError
from flow_tracker.store.engine import Store, TimeBudgetSpentError
from flow_tracker.web import (
    api,
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
from flow_tracker.web.budget import TimeBudgetMiddleware
from flow_tracker.web.context import HERE, Dashboard, SearchesBusyError, make_templates
from flow_tracker.web.params import ParamError
from flow_tracker.web.security import AuthHook, SecurityMiddleware
from flow_tracker.web.statistics_keeper import StatisticsKeeper


def create_app(
    database_url: str | None = None,
    auth: AuthHook | None = None,
    read_only: bool = False,
    *,
    basic_auth: tuple[str, str] | None = None,
    title: str = "flow-tracker",
    refresh_seconds: int = 5,
    keep_statistics: bool = True,
    allowed_hosts: Sequence[str] | None = None,
    query_timeout: float = 5.0,
    public_probes: bool = True,
) -> Starlette:
    """The dashboard as an ASGI app, to mount under any prefix or serve on its own.

    Args:
        database_url: the tracking database; default: the configured one
            (``flow_tracker.configure`` / ``FLOW_TRACKER_DATABASE_URL``).
        auth: called with each request (sync or async); a falsy result answers 403.
        read_only: hide and refuse every action (cleanup, reap, requeue).
        basic_auth: ``(user, password)`` to require HTTP basic auth.
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

    Returns:
        A Starlette application.
    """
    settings = config.current()
    if not query_timeout > 0:
        raise UsageError(
            f"query_timeout must be a positive number of seconds, not {query_timeout!r}"
        )
    url = database_url or settings.database_url
    store = Store(
        url, auto_migrate=settings.auto_migrate, reader=True, statement_timeout=query_timeout
    )
    if basic_auth is not None and (not basic_auth[0] or not basic_auth[1]):
        raise UsageError("basic_auth needs a non-empty user and password")
    routes = [
        Route("/", views.overview, name="overview"),
        Route("/processes", views.process_list, name="processes"),
        Route("/processes/{process_id}", views.process_detail, name="process"),
        Route(
            "/processes/{process_id}/compare", compare_views.compare_page, name="process_compare"
        ),
        Route("/workflows", workflow_views.workflow_list, name="workflows"),
        Route(
            "/workflows/analytics",
            workflow_views.workflow_analytics,
            name="workflow_analytics",
        ),
        Route(
            "/workflows/definitions",
            definition_views.definitions_page,
            name="workflow_definitions",
        ),
        Route(
            "/workflows/definitions/start",
            definition_views.start_form,
            methods=["GET"],
            name="workflow_start_form",
        ),
        Route(
            "/workflows/definitions/start",
            definition_views.start_submit,
            methods=["POST"],
            name="workflow_start",
        ),
        Route("/workflows/{run_id}", workflow_views.workflow_detail, name="workflow"),
        Route(
            "/workflows/{run_id}/run-again",
            definition_views.run_again_form,
            methods=["GET"],
            name="workflow_run_again",
        ),
        Route(
            "/workflows/{run_id}/{action}",
            workflow_views.workflow_action,
            methods=["POST"],
            name="workflow_action",
        ),
        Route("/cleanup", views.cleanup_form, methods=["GET"], name="cleanup"),
        Route("/cleanup", views.cleanup_run, methods=["POST"], name="cleanup_run"),
        Route("/health", health_views.health_page, name="health"),
        Route("/health/reap", health_views.reap_now, methods=["POST"], name="health_reap"),
        Route("/health/requeue", health_views.requeue_now, methods=["POST"], name="health_requeue"),
        Route("/health/live", probes.live, name="health_live"),
        Route("/health/ready", probes.ready, name="health_ready"),
        Route("/api/health", health_views.health_json, name="api_health"),
        Route("/metrics", health_views.metrics, name="metrics"),
        Route("/api/processes", api.list_processes, name="api_processes"),
        Route("/api/processes/{process_id}", api.get_process, name="api_process"),
        Route(
            "/api/processes/{process_id}/compare",
            compare_views.compare_json,
            name="api_process_compare",
        ),
        Route("/api/status/{ident:path}", api.get_status, name="api_status"),
        Route("/api/stats", api.stats, name="api_stats"),
        Route("/api/workflows", api.list_workflows, name="api_workflows"),
        Route("/api/workflows/{run_id}", api.get_workflow, name="api_workflow"),
        Route("/api/workflows/{run_id}/diagram", api.workflow_diagram, name="api_workflow_diagram"),
        Route(
            "/api/workflows/{run_id}/retry-failed",
            workflow_api.retry_failed,
            methods=["POST"],
            name="api_workflow_retry_failed",
        ),
        Route(
            "/api/workflows/{namespace}/{name}/runs",
            start_api.start_run,
            methods=["POST"],
            name="api_workflow_start",
        ),
        Route("/api/workflow-definitions", start_api.definitions, name="api_workflow_definitions"),
        Route("/api/openapi.json", api.openapi, name="api_openapi"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
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
